"""Featurization throughput: crystal graphs, ours vs the reference CGCNN loader; CIF -> cache.

Prints crystals/s and peak RSS for

(a) graph building from already-parsed structures (MP set, ``pretrain/mp_eform_bandgap``):
    - naive: the txie-93/cgcnn ``CIFData.__getitem__`` path on pymatgen ``Structure`` objects
      (``get_all_neighbors(8)``, sort each atom's list, take 12, Gaussian-expand in numpy, plus
      the per-site atom-feature lookup) on a seeded subsample;
    - ours on the *same* subsample: ``crystal_to_graph`` (+ ``GaussianExpansion``, which our models
      do at forward time) serially, and the parallel ``build_graph_cache``;
    - ours over every structure of the set (serial ``crystal_to_graph`` and ``build_graph_cache``).
(b) end to end, CIF text -> cached graphs for the MP set: ``prepare_dataset`` (parse, validate,
    parquet) then ``build_graph_cache``; then loading the cache and one pass of a PyG
    ``DataLoader`` over it.

CPU time (this process + reaped workers) is printed too: it is much less sensitive than wall
time to other jobs sharing the machine. Peak memory is sampled with psutil every 50 ms: RSS of
this process plus the USS (memory unique to the process) of its worker processes, so pages
forked workers share with the parent count once. It is the whole process, baseline included
(imports + the loaded table).

Usage::

    python benchmarks/featurize.py [--limit N] [--skip-naive] [--skip-a] [--n-jobs 2]
        [--naive-n 1500] [--symmetry-backend spglib|moyopy]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch
from omegaconf import OmegaConf
from torch_geometric.loader import DataLoader

from kappaflow.cards import DatasetSpec, spec_from_cfg
from kappaflow.graphs.build import crystal_to_graph
from kappaflow.graphs.cache import build_graph_cache, load_graph_cache
from kappaflow.graphs.expansion import GaussianExpansion
from kappaflow.layout import data_root, project_root
from kappaflow.structure.crystal import CrystalArrays
from kappaflow.structure.elements import element_feature_table

DATASET = "mp_eform_bandgap"
CUTOFF = 8.0
MAX_NBR = 12
MIB = 1024**2


# --------------------------------------------------------------------------- measurement


class PeakRSS:
    """Sample RSS of this process + USS of its children in a thread; ``peak`` in bytes.

    Children (forked pool workers) are counted by their unique set size, so pages they share
    with the parent are not counted twice.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _sample(self) -> int:
        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            with suppress(psutil.Error):  # a worker may exit between listing and reading
                total += child.memory_full_info().uss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.peak = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children, s."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclasses.dataclass
class Timing:
    """Wall time, CPU time and peak memory of one benchmark phase over ``n`` crystals."""

    name: str
    n: int
    seconds: float
    cpu_s: float
    peak_rss: int

    @property
    def rate(self) -> float:
        """Crystals per second."""
        return self.n / self.seconds if self.seconds > 0 else float("inf")

    def line(self) -> str:
        """One printed result line."""
        return (
            f"  {self.name:<58s} {self.n:>6d} crystals {self.seconds:7.2f} s "
            f"{self.rate:8.1f} crystals/s  CPU {self.cpu_s:7.2f} s "
            f"({self.n / max(self.cpu_s, 1e-9):7.1f} crystals/CPU-s)  "
            f"peak mem {self.peak_rss / MIB:5.0f} MiB"
        )


@contextmanager
def timed(name: str, n: int, results: list[Timing]) -> Iterator[None]:
    with PeakRSS() as mem:
        c0, t0 = cpu_seconds(), time.perf_counter()
        yield
        dt, dc = time.perf_counter() - t0, cpu_seconds() - c0
    results.append(Timing(name, n, dt, dc, mem.peak))
    print(results[-1].line(), flush=True)


# --------------------------------------------------------------------------- naive reference


def naive_cgcnn_features(structures: list[Any], atom_table: np.ndarray) -> int:
    """Run the txie-93/cgcnn ``data.py`` ``CIFData.__getitem__`` featurization (no CIF parsing).

    Per structure: per-site atom features, ``get_all_neighbors(8)``, sort each atom's neighbours
    by distance and take 12 (pad if fewer), Gaussian distance expansion (0..8 Å, step 0.2) in
    numpy. Returns the number of neighbour entries (to keep the work observable).
    """
    gfilter = np.arange(0.0, CUTOFF + 0.2, 0.2)
    var = 0.2
    total = 0
    for crystal in structures:
        atom_fea = np.vstack([atom_table[crystal[i].specie.number] for i in range(len(crystal))])
        all_nbrs = crystal.get_all_neighbors(CUTOFF, include_index=True)
        all_nbrs = [sorted(nbrs, key=lambda x: x[1]) for nbrs in all_nbrs]
        nbr_fea_idx, nbr_fea = [], []
        for nbr in all_nbrs:
            if len(nbr) < MAX_NBR:
                nbr_fea_idx.append(list(map(lambda x: x[2], nbr)) + [0] * (MAX_NBR - len(nbr)))
                nbr_fea.append(
                    list(map(lambda x: x[1], nbr)) + [CUTOFF + 1.0] * (MAX_NBR - len(nbr))
                )
            else:
                nbr_fea_idx.append(list(map(lambda x: x[2], nbr[:MAX_NBR])))
                nbr_fea.append(list(map(lambda x: x[1], nbr[:MAX_NBR])))
        nbr_fea_idx, nbr_fea = np.array(nbr_fea_idx), np.array(nbr_fea)
        nbr_fea = np.exp(-((nbr_fea[..., np.newaxis] - gfilter) ** 2) / var**2)
        _ = torch.Tensor(atom_fea), torch.Tensor(nbr_fea), torch.LongTensor(nbr_fea_idx)
        total += nbr_fea_idx.size
    return total


def ours_serial(crystals: list[CrystalArrays], expand: bool) -> int:
    gauss = GaussianExpansion(0.0, CUTOFF, 0.2)
    total = 0
    with torch.no_grad():
        for c in crystals:
            g = crystal_to_graph(c, CUTOFF, MAX_NBR)
            if expand:
                _ = gauss(g.edge_dist)
            total += g.edge_index.shape[1]
    return total


# --------------------------------------------------------------------------- data


def mp_spec() -> DatasetSpec:
    card = OmegaConf.load(project_root() / "conf" / "data" / f"{DATASET}.yaml")
    return spec_from_cfg(card, DATASET)


def write_raw_subset(raw: Path, limit: int | None, seed: int, out_dir: Path) -> tuple[Path, int]:
    """Return the raw table, or a seeded ``limit``-row subset of it written to ``out_dir``."""
    if limit is None:
        return raw, len(pd.read_csv(raw, usecols=["id"]))
    df = pd.read_csv(raw)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(df), size=min(limit, len(df)), replace=False))
    path = out_dir / f"{DATASET}_subset.csv.gz"
    df.iloc[take].to_csv(path, index=False)
    return path, len(take)


def run_prepare(
    spec: DatasetSpec, raw: Path, out_dir: Path, n_jobs: int, symmetry_backend: str | None
) -> Path:
    """``prepare_dataset`` -> ``valid.parquet`` (fallback: parse only, if prepare is missing)."""
    try:
        from kappaflow.data.prepare import prepare_dataset
        from kappaflow.data.validation import ValidationOptions
    except ImportError as exc:  # H-data's module not there yet
        print(f"  [prepare_dataset unavailable ({exc}); falling back to parse_cif only]")
        return fallback_prepare(spec, raw, out_dir, n_jobs)
    conf = OmegaConf.load(project_root() / "conf" / "validation" / "default.yaml")
    opts_raw = OmegaConf.to_container(conf, resolve=False)
    assert isinstance(opts_raw, dict)
    opts_raw.pop("n_jobs", None)
    opts_raw["cutoff"] = CUTOFF
    if symmetry_backend:
        opts_raw["symmetry_backend"] = symmetry_backend
    opts = ValidationOptions(**opts_raw)
    prepare_dataset(spec, raw, out_dir, opts, n_jobs=n_jobs, progress=False)
    return out_dir / "valid.parquet"


def _parse_rows(cifs: list[str]) -> list[dict[str, Any]]:
    from kappaflow.structure.cif import parse_cif

    out = []
    for text in cifs:
        try:
            out.append(parse_cif(text).to_row())
        except ValueError:
            out.append({"lattice": None, "numbers": None, "frac_coords": None})
    return out


def fallback_prepare(spec: DatasetSpec, raw: Path, out_dir: Path, n_jobs: int) -> Path:
    from concurrent.futures import ProcessPoolExecutor

    df = pd.read_csv(raw)
    cifs = df[spec.cif_col].tolist()
    chunks = [cifs[i : i + 512] for i in range(0, len(cifs), 512)]
    with ProcessPoolExecutor(n_jobs) as pool:
        rows = [r for part in pool.map(_parse_rows, chunks) for r in part]
    table = pd.DataFrame(rows)
    table.insert(0, "id", df[spec.id_col].astype(str).values)
    for t in spec.targets:
        table[t.name] = df[t.column].astype(float).values
    table = table[table["lattice"].notna()]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "valid.parquet"
    table.to_parquet(path, index=False)
    return path


def crystals_from_parquet(path: Path) -> tuple[list[str], list[CrystalArrays]]:
    df = pd.read_parquet(path, columns=["id", "lattice", "numbers", "frac_coords"])
    crystals = [
        CrystalArrays.from_row(lat, num, frac)
        for lat, num, frac in zip(df["lattice"], df["numbers"], df["frac_coords"], strict=True)
    ]
    return df["id"].astype(str).tolist(), crystals


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="seeded subset of N MP rows")
    ap.add_argument("--skip-naive", action="store_true", help="skip the reference CGCNN loop")
    ap.add_argument("--naive-n", type=int, default=1500, help="subsample size for (a) naive")
    ap.add_argument("--skip-a", action="store_true", help="run only (b), CIF -> cache")
    ap.add_argument("--symmetry-backend", default=None, help="override conf/validation")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep outputs here (default tmp)")
    args = ap.parse_args(argv)

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    spec = dataclasses.replace(mp_spec(), sha256=None)
    raw_full = data_root() / spec.path
    print(
        f"python {sys.version.split()[0]}, torch {torch.__version__}, cpus {os.cpu_count()}, "
        f"n_jobs {args.n_jobs}, load avg {os.getloadavg()[0]:.1f}"
    )
    print(f"dataset {DATASET}: {raw_full}")

    tmp = tempfile.TemporaryDirectory(prefix="kf-featurize-")
    work = args.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    res: list[Timing] = []

    # ---- (b) CIF text -> cached graphs ------------------------------------------------------
    print("\n(b) end to end: CIF text -> prepare_dataset -> build_graph_cache")
    raw, n_raw = write_raw_subset(raw_full, args.limit, args.seed, work)
    interim = work / "interim"
    with timed("prepare_dataset (read CSV, parse, validate, parquet)", n_raw, res):
        parquet = run_prepare(spec, raw, interim, args.n_jobs, args.symmetry_backend)
    n_valid = len(pd.read_parquet(parquet, columns=["id"]))
    cache_path = work / "graphs.pt"
    with timed(f"build_graph_cache (n_jobs={args.n_jobs})", n_valid, res):
        summary = build_graph_cache(
            parquet,
            cache_path,
            CUTOFF,
            MAX_NBR,
            spec.target_names,
            n_jobs=args.n_jobs,
            progress=False,
        )
    total_b = res[-2].seconds + res[-1].seconds
    cpu_b = res[-2].cpu_s + res[-1].cpu_s
    size = summary["bytes"] / MIB
    print(
        f"  -> total {total_b:.1f} s wall ({cpu_b:.1f} CPU-s) for {n_raw} CIFs = "
        f"{n_raw / total_b:.1f} crystals/s; {n_valid} valid, {summary['n_edges']:,} edges, "
        f"cache {size:.0f} MiB"
    )

    with timed("load_graph_cache (torch.load weights_only=True)", n_valid, res):
        dataset = load_graph_cache(cache_path)
    with timed("iterate PyG DataLoader(batch_size=256) over the cache", n_valid, res):
        n_batches = sum(1 for _ in DataLoader(dataset, batch_size=256, shuffle=True))
    print(f"  ({n_batches} batches)")
    del dataset

    if args.skip_a:
        tmp.cleanup()
        return

    # ---- (a) graph building from parsed structures -------------------------------------------
    print("\n(a) graph building from already-parsed structures (cutoff 8 Å, 12 neighbours)")
    ids, crystals = crystals_from_parquet(parquet)
    rng = np.random.default_rng(args.seed)
    sub_idx = np.sort(
        rng.choice(len(crystals), size=min(args.naive_n, len(crystals)), replace=False)
    )
    sub = [crystals[i] for i in sub_idx]
    n_sub = len(sub)
    print(
        f"  subsample: {n_sub} structures (seed {args.seed}), {sum(c.n_sites for c in sub)} atoms"
    )

    naive_t: Timing | None = None
    if not args.skip_naive:
        structures = [c.to_structure() for c in sub]  # already parsed: not timed
        atom_table = element_feature_table("cgcnn").numpy()
        with timed("naive CGCNN loader (get_all_neighbors + sort + numpy GDF)", n_sub, res):
            naive_cgcnn_features(structures, atom_table)
        naive_t = res[-1]
        del structures
    with timed("ours: crystal_to_graph + GaussianExpansion, serial", n_sub, res):
        ours_serial(sub, expand=True)
    ours_exp = res[-1]
    with timed("ours: crystal_to_graph only, serial", n_sub, res):
        ours_serial(sub, expand=False)
    ours_graph = res[-1]
    sub_parquet = work / "subsample.parquet"
    pd.read_parquet(parquet).iloc[sub_idx].to_parquet(sub_parquet, index=False)
    with timed(f"ours: build_graph_cache (n_jobs={args.n_jobs}, incl. read+save)", n_sub, res):
        build_graph_cache(
            sub_parquet,
            work / "sub.pt",
            CUTOFF,
            MAX_NBR,
            spec.target_names,
            n_jobs=args.n_jobs,
            chunk_size=128,
            progress=False,
        )
    ours_cache = res[-1]
    if naive_t is not None:
        for t in (ours_exp, ours_graph, ours_cache):
            print(f"  speed-up vs naive: {t.name:<58s} {naive_t.seconds / t.seconds:6.1f}x")

    print(f"\n  ours over all {len(crystals)} structures of {DATASET}:")
    with timed("ours: crystal_to_graph, serial, all", len(crystals), res):
        ours_serial(crystals, expand=False)
    with timed(f"ours: build_graph_cache (n_jobs={args.n_jobs}), all", len(crystals), res):
        build_graph_cache(
            parquet,
            work / "all.pt",
            CUTOFF,
            MAX_NBR,
            spec.target_names,
            n_jobs=args.n_jobs,
            progress=False,
        )

    ru_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\nru_maxrss: main process {ru_self:.0f} MiB, largest child {ru_kids:.0f} MiB")
    print(f"load avg at end: {os.getloadavg()[0]:.1f} (wall-clock rates assume an idle machine)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
