"""Training throughput of CGCNN: our cached-graph data path vs the reference CGCNN data path.

For the first ``--n`` structures of ``pretrain/mp_eform_bandgap.csv.gz`` (CIFs parsed with
pymatgen ``Structure.from_str(cif, fmt="cif")``), times ONE training epoch (forward, masked MSE,
backward, AdamW step; after a short warm-up) of the same paper-size CGCNN
(``conf/models/cgcnn.yaml``) fed by:

* **ours**: graphs built once (``build_graph_cache`` = ``crystal_to_graph`` per crystal, 8 Å,
  12 neighbours) and loaded with ``load_graph_cache``; ``__getitem__`` only slices tensors;
  Gaussian expansion happens inside the model.
* **reference** (txie-93/cgcnn ``CIFData`` without its LRU cache): every ``__getitem__`` parses the
  CIF, runs ``Structure.get_all_neighbors(8.0)``, sorts and keeps 12 neighbours per atom, expands
  distances on Gaussians in numpy (0..8 Å, step 0.2) and stacks per-site atom features. The
  sample carries the same ``z``/``edge_index``/``edge_dist`` fields, so the SAME model consumes it
  (plus the reference's ``atom_fea``/``nbr_fea`` arrays, which it collates and moves too).
* **reference, pre-parsed**: as above with the ``Structure`` objects parsed once (neighbour
  search + expansion per access only).

Prints graphs/s per path, the ratios, one-off costs (parse, graph build) and peak RSS
(``ru_maxrss`` of the process after each phase; it only grows).

Usage::

    python benchmarks/train.py [--n 2000] [--batch-size 128] [--num-workers 0] [--device auto]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from pymatgen.core import Structure
from torch.utils.data import Dataset
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from kappaflow.graphs.cache import build_graph_cache, load_graph_cache
from kappaflow.layout import data_root, project_root
from kappaflow.models import build_model
from kappaflow.structure.crystal import CrystalArrays
from kappaflow.structure.elements import element_feature_table
from kappaflow.training.datamodule import EpochSeededSampler
from kappaflow.training.module import masked_mse
from kappaflow.training.target_transform import TargetTransform

CSV = "pretrain/mp_eform_bandgap.csv.gz"
TARGETS = {"e_form": "e_form_ev_per_atom", "band_gap": "band_gap_ev"}
RADIUS = 8.0
MAX_NBR = 12
MIB = 1024.0


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux ``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB


class ReferenceCIFData(Dataset[Data]):
    """txie-93/cgcnn ``CIFData.__getitem__`` work on every access (no cache).

    Args:
        cifs: CIF strings (parsed on every access) or pre-parsed ``Structure`` objects.
        y: [N, T] targets.
        ids: material ids.
        atom_table: [Z_max + 1, d] element feature table (the reference's ``atom_init.json``).
    """

    def __init__(
        self,
        cifs: Sequence[str] | Sequence[Structure],
        y: np.ndarray,
        ids: Sequence[str],
        atom_table: np.ndarray,
    ) -> None:
        self.cifs, self.y, self.ids, self.atom_table = cifs, y, ids, atom_table
        self.filter = np.arange(0.0, RADIUS + 0.2, 0.2)  # GaussianDistance(dmin=0, dmax=8, 0.2)
        self.var = 0.2

    def __len__(self) -> int:
        return len(self.cifs)

    def __getitem__(self, i: int) -> Data:
        item = self.cifs[i]
        crystal = Structure.from_str(item, fmt="cif") if isinstance(item, str) else item
        atom_fea = np.vstack([self.atom_table[site.specie.Z] for site in crystal])
        all_nbrs = crystal.get_all_neighbors(RADIUS, include_index=True)
        all_nbrs = [sorted(nbrs, key=lambda x: x[1]) for nbrs in all_nbrs]
        nbr_idx, nbr_dist = [], []
        for nbr in all_nbrs:
            if len(nbr) < MAX_NBR:  # reference: pad with index 0 at distance radius + 1
                nbr_idx.append([x[2] for x in nbr] + [0] * (MAX_NBR - len(nbr)))
                nbr_dist.append([x[1] for x in nbr] + [RADIUS + 1.0] * (MAX_NBR - len(nbr)))
            else:
                nbr_idx.append([x[2] for x in nbr[:MAX_NBR]])
                nbr_dist.append([x[1] for x in nbr[:MAX_NBR]])
        idx, dist = np.array(nbr_idx), np.array(nbr_dist)
        nbr_fea = np.exp(-((dist[..., np.newaxis] - self.filter) ** 2) / self.var**2)
        n = len(crystal)
        centres = np.repeat(np.arange(n), MAX_NBR)
        return Data(
            z=torch.tensor([site.specie.Z for site in crystal], dtype=torch.long),
            edge_index=torch.from_numpy(np.stack([idx.reshape(-1), centres])).long(),
            edge_dist=torch.from_numpy(dist.reshape(-1)).float(),
            atom_fea=torch.from_numpy(atom_fea).float(),
            nbr_fea=torch.from_numpy(nbr_fea.reshape(n * MAX_NBR, -1)).float(),
            y=torch.from_numpy(self.y[i : i + 1]).float(),
            material_id=self.ids[i],
            num_nodes=n,
        )


def train_epoch(
    model: torch.nn.Module,
    transform: TargetTransform,
    loader: DataLoader,
    device: torch.device,
    warmup_batches: int = 2,
) -> tuple[int, float]:
    """Warm up on a few batches, then time one full epoch; return (graphs, seconds)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp = device.type == "cuda"
    model.train()

    def step(batch: Any) -> None:
        batch = batch.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(batch).float()
        loss = masked_mse(pred, transform(batch.y.float()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i, batch in enumerate(loader):
        if i >= warmup_batches:
            break
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    n = 0
    t0 = time.perf_counter()
    for batch in loader:
        step(batch)
        n += batch.num_graphs
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n, time.perf_counter() - t0


def iterate(loader: DataLoader) -> tuple[int, float]:
    """Iterate the loader once without a model; return (graphs, seconds)."""
    n = 0
    t0 = time.perf_counter()
    for batch in loader:
        n += batch.num_graphs
    return n, time.perf_counter() - t0


def timed(label: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` and print its wall time and the peak RSS so far."""
    t0 = time.perf_counter()
    out = fn()
    print(f"  {label:<34} {time.perf_counter() - t0:8.2f} s   peak RSS {peak_rss_mib():7.0f} MiB")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="structures (first N rows)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (both paths)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    ap.add_argument("--skip-preparsed", action="store_true", help="skip the pre-parsed variant")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev_name = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    device = torch.device(dev_name)
    warnings.filterwarnings("ignore")
    print(
        f"CGCNN training throughput: n={args.n}, batch={args.batch_size}, "
        f"workers={args.num_workers}, device={device}, torch threads={torch.get_num_threads()}"
        f"{', bf16 autocast' if device.type == 'cuda' else ''}"
    )

    df = timed(
        "read csv",
        lambda: pd.read_csv(
            data_root() / CSV, nrows=args.n, usecols=["id", "cif", *TARGETS.values()]
        ),
    )
    y = df[list(TARGETS.values())].to_numpy(np.float32)
    ids = df["id"].astype(str).tolist()
    structures = timed(
        "parse CIFs (pymatgen)", lambda: [Structure.from_str(c, fmt="cif") for c in df["cif"]]
    )

    model_cfg = OmegaConf.load(project_root() / "conf" / "model" / "cgcnn.yaml")
    transform = TargetTransform.fit(torch.from_numpy(y), ["none", "none"], list(TARGETS)).to(device)
    sampler_kw = {"batch_size": args.batch_size, "num_workers": args.num_workers}

    def loader(ds: Dataset[Data]) -> DataLoader:
        return DataLoader(ds, sampler=EpochSeededSampler(len(ds), seed=0), **sampler_kw)  # type: ignore[arg-type]

    def fresh_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(model_cfg, len(TARGETS)).to(device)

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print("ours (cached graphs):")
        rows = [CrystalArrays.from_structure(s).to_row() for s in structures]
        table = pd.DataFrame({"id": ids, **{k: y[:, j] for j, k in enumerate(TARGETS)}})
        table["lattice"] = [r["lattice"] for r in rows]
        table["numbers"] = [r["numbers"] for r in rows]
        table["frac_coords"] = [r["frac_coords"] for r in rows]
        parquet = Path(tmp) / "valid.parquet"
        table.to_parquet(parquet)
        cache = Path(tmp) / "graphs.pt"
        summary = timed(
            "build graph cache (1 process)",
            lambda: build_graph_cache(
                parquet, cache, RADIUS, MAX_NBR, list(TARGETS), n_jobs=1, progress=False
            ),
        )
        ds = timed("load graph cache", lambda: load_graph_cache(cache))
        print(f"  cache: {summary['n_edges']} edges, {summary['bytes'] / 2**20:.1f} MiB on disk")
        n, s = timed("data only (iterate loader)", lambda: iterate(loader(ds)))
        print(f"  -> data path alone: {n / s:.1f} graphs/s")
        n, s = timed(
            "train 1 epoch", lambda: train_epoch(fresh_model(), transform, loader(ds), device)
        )
        results["ours"] = n / s
        print(f"  -> {results['ours']:.1f} graphs/s")

    atom_table = element_feature_table("cgcnn").numpy()
    print("reference (txie-93/cgcnn CIFData path, no cache):")
    ref = ReferenceCIFData(df["cif"].tolist(), y, ids, atom_table)
    n, s = timed(
        "train 1 epoch", lambda: train_epoch(fresh_model(), transform, loader(ref), device)
    )
    results["reference"] = n / s
    print(f"  -> {results['reference']:.1f} graphs/s")
    if not args.skip_preparsed:
        print("reference, structures pre-parsed (neighbours + Gaussians per access):")
        pre = ReferenceCIFData(structures, y, ids, atom_table)
        n, s = timed(
            "train 1 epoch", lambda: train_epoch(fresh_model(), transform, loader(pre), device)
        )
        results["reference_preparsed"] = n / s
        print(f"  -> {results['reference_preparsed']:.1f} graphs/s")

    print("summary (graphs/s, one training epoch):")
    for k, v in results.items():
        print(f"  {k:<22} {v:10.1f}")
    print(f"  speed-up ours / reference           {results['ours'] / results['reference']:.1f}x")
    if "reference_preparsed" in results:
        ratio = results["ours"] / results["reference_preparsed"]
        print(f"  speed-up ours / reference_preparsed {ratio:.1f}x")
    print(f"  peak RSS (whole run)                {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
