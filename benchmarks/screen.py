"""Screening throughput: the funnel (tier 1) beside the champion-only path, in one run.

**Pool mode** (default): the ``screen`` stage's pool (every prepared structure dataset,
deduplicated: ``kappaflow.screen.pool.load_pool``; run ``dvc repro prepare`` first).

* **today's path**: the champion ensemble scores a seeded sample of ``--baseline-limit`` pool
  rows (graph + all members + domain flags: ``ChampionScorer``, what ``screen`` did for every
  crystal before the funnel); its rate is per crystal, so the sample measures it;
* **tier 1**: ``funnel_scores`` on the whole pool (``--limit``: a seeded sample of N): teacher
  sample + student + shortlists, every crystal accounted for; phase seconds and the student's
  agreement with the champion on held-out teacher rows;
* the ratio of the two rates, and the peak RSS of the process;
* **tier 2** (``--tier2 N``): phono3py κ from the universal potential for N D1 compounds of the
  cheapest families (``kappaflow.phonons``, ``verify.settings``; a temporary cache, so each is
  computed): seconds per compound.

**CIF mode** (``--cif``): CIF text -> κ ± σ per phase (parse, featurize, ensemble inference) over
the raw structure datasets, as ``kappaflow predict`` / user files take it.

The model: ``--model-uri`` (e.g. ``models:/kappaflow-kappa@champion``), else fold models
``--members 'models/finetune/stack/paraisite_mix/folds/repeat0-fold*.pt'``, else ``--random N``
freshly initialised members of the ``cgcnn`` card (timing only; the student then learns noise).

Usage::

    python benchmarks/screen.py [--members GLOB | --model-uri URI | --random 5]
        [--limit N] [--baseline-limit 3000] [--threads 2] [--tier2 2] [--out FILE]
    python benchmarks/screen.py --cif [--limit N] [--batch-size 64] [--devices cpu,cuda]
"""

from __future__ import annotations

import argparse
import glob
import json
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kappaflow.cards import spec_from_cfg
from kappaflow.config import load_params
from kappaflow.layout import data_root
from kappaflow.registry.domain import DomainInfo, fit_domain, ood_flags
from kappaflow.registry.ensemble import GraphSettings, KappaEnsemble
from kappaflow.registry.predictor import item_from_cif


def read_cifs(cfg: Any, limit: int | None) -> tuple[list[str], list[str], dict[str, int]]:
    """(ids, CIF texts, rows per dataset) of every structure dataset's raw table."""
    root = data_root(cfg.paths.data_root)
    ids: list[str] = []
    cifs: list[str] = []
    counts: dict[str, int] = {}
    for name, node in cfg.datasets.items():
        spec = spec_from_cfg(node, str(name))
        if spec.kind != "structure" or not spec.cif_col:
            continue
        frame = pd.read_csv(
            root / spec.path,
            usecols=[spec.id_col, spec.cif_col],
            dtype=str,
            keep_default_na=False,
            nrows=limit,
        )
        ids += [f"{name}:{i}" for i in frame[spec.id_col]]
        cifs += frame[spec.cif_col].tolist()
        counts[str(name)] = len(frame)
    return ids, cifs, counts


def load_model(args: argparse.Namespace, cfg: Any) -> tuple[KappaEnsemble, DomainInfo | None, str]:
    """Return the ensemble to time and a description of where it came from."""
    graph = GraphSettings(float(cfg.graphs.cutoff), int(cfg.graphs.max_neighbors))
    if args.model_uri:
        import mlflow

        from kappaflow.registry.champion import load_champion, resolve_model
        from kappaflow.tracking.runs import tracking_uri

        mlflow.set_tracking_uri(tracking_uri(cfg))
        uri, info = resolve_model(cfg, args.model_uri)
        model = load_champion(uri, "auto", info)  # verified ensemble data; no registry code runs
        return model.ensemble, model.domain, uri
    if args.members:
        paths = sorted(glob.glob(args.members))
        if not paths:
            raise SystemExit(f"no member files match {args.members!r}")
        return KappaEnsemble.from_files(paths, graph, "cpu"), None, f"members {args.members}"
    from kappaflow.models import build_model
    from kappaflow.training.target_transform import TargetTransform

    members, tfs = [], []
    for k in range(args.random):
        torch.manual_seed(k)
        members.append(build_model(cfg.models.cgcnn, 1))
        tfs.append(TargetTransform(["log10"], ["kappa"], [1.0], [0.5]))
    card = dict(cfg.models.cgcnn)
    return KappaEnsemble(members, tfs, card, graph, "cpu"), None, f"{args.random} random cgcnn"


def stand_in_domain(ensemble: KappaEnsemble) -> DomainInfo:
    """Fit a domain to 500 random embeddings, so the out-of-domain step is timed too."""
    rng = np.random.default_rng(0)
    return fit_domain(rng.normal(size=(500, ensemble.members[0].embed_dim)), [[1]])


def one_pass(
    ensemble: KappaEnsemble,
    domain: DomainInfo | None,
    ids: list[str],
    cifs: list[str],
    batch_size: int,
) -> dict[str, float]:
    """Stream every CIF through parse -> featurize -> ensemble (+ OOD); phase times in s."""
    cuda = ensemble.device.type == "cuda"
    t = {"parse": 0.0, "featurize": 0.0, "inference": 0.0}
    n_bad = 0
    t0 = time.perf_counter()
    for lo in range(0, len(cifs), batch_size):
        a = time.perf_counter()
        items = [
            item_from_cif(c, i, ensemble.graph.cutoff)
            for c, i in zip(cifs[lo : lo + batch_size], ids[lo : lo + batch_size], strict=True)
        ]
        good = [it for it in items if it.crystal is not None]
        n_bad += len(items) - len(good)
        b = time.perf_counter()
        data = [ensemble.featurize(it.crystal, it.id, it.formula) for it in good]
        c = time.perf_counter()
        if data:
            out = ensemble.predict(data)
            if domain is not None:
                ood_flags(domain, [it.crystal.numbers for it in good], out.embedding)
        if cuda:
            torch.cuda.synchronize()
        d = time.perf_counter()
        t["parse"] += b - a
        t["featurize"] += c - b
        t["inference"] += d - c
    t["end_to_end"] = time.perf_counter() - t0
    t["n_failed_checks"] = float(n_bad)
    return t


def cif_mode(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    """Per-phase rates of CIF text -> κ ± σ (the predictor path of user files)."""
    t_read = time.perf_counter()
    ids, cifs, counts = read_cifs(cfg, args.limit)
    t_read = time.perf_counter() - t_read
    ensemble, domain, source = load_model(args, cfg)
    domain = domain or stand_in_domain(ensemble)
    n = len(cifs)
    print(
        f"{n} structures from {counts} (CSV read {t_read:.1f} s); model: {source}, "
        f"{ensemble.n_members} members; batch {args.batch_size}; {args.threads} CPU thread(s)"
    )
    results: dict[str, Any] = {"n": n, "datasets": counts, "model": source, "devices": {}}
    for dev in args.devices.split(","):
        if dev == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        ensemble.to(dev)
        t = one_pass(ensemble, domain, ids, cifs, args.batch_size)
        rates = {k: n / v for k, v in t.items() if k != "n_failed_checks" and v > 0}
        results["devices"][dev] = {"seconds": t, "crystals_per_s": rates}
        name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
        phases = "  ".join(f"{k} {v:8.1f}/s" for k, v in rates.items())
        failed = int(t["n_failed_checks"])
        print(f"[{dev}: {name}] {phases}  ({t['end_to_end']:.1f} s, {failed} failed checks)")
    return results


def tier2_seconds(cfg: Any, n: int) -> dict[str, Any]:
    """Seconds per compound of phono3py κ (``verify``'s potential and settings) on D1 compounds.

    The ``n`` smallest primitive cells of D1's rocksalt / zincblende compounds, computed in one
    process into a temporary cache (nothing reused).
    """
    from kappaflow.layout import interim_dir, load_prepared, project_root
    from kappaflow.phonons.batch import compute_descriptors
    from kappaflow.phonons.conductivity import method_label
    from kappaflow.stages.verify import VerifyConfig
    from kappaflow.structure.crystal import CrystalArrays
    from kappaflow.structure.families import structure_family

    vc = VerifyConfig.from_cfg(cfg, project_root())
    potential, settings = vc.potential, vc.kappa
    table = load_prepared(interim_dir(cfg, "paraisite_d1"))
    fam = [
        structure_family(str(f), int(g))
        for f, g in zip(table.formula, table.spacegroup, strict=True)
    ]
    table = table[np.isin(fam, ["rocksalt", "zincblende"])].head(n)
    crystals = [
        CrystalArrays.from_row(r.lattice, r.numbers, r.frac_coords)
        for r in table.itertuples(index=False)
    ]
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        frame = compute_descriptors(
            table.id.astype(str).tolist(), crystals, settings, potential, cache,
            kind="kappa", workers=1, progress=False,
        )  # fmt: skip
        wall = time.perf_counter() - t0
    per = wall / max(len(frame), 1)
    print(
        f"tier 2 ({potential}, phono3py {method_label(settings.method)}, 1 process): "
        f"{len(frame)} D1 compounds "
        f"{frame.id.tolist()}: {per:.1f} s per compound "
        f"(κ {frame.ph3_kappa_w_mk.round(2).tolist()} W/m/K)"
    )
    return {"potential": potential, "n": len(frame), "s_per_compound": per, "wall_s": wall}


def pool_mode(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    """Tier-1 funnel on the pool beside the champion-only path (one run)."""
    from tqdm.auto import tqdm

    from kappaflow.registry.predictor import default_options
    from kappaflow.screen.funnel import ChampionScorer, funnel_scores
    from kappaflow.screen.pool import load_pool
    from kappaflow.screen.surrogate import FunnelSettings

    t = time.perf_counter()
    pool = load_pool(cfg)
    if args.limit is not None and args.limit < pool.n_total:
        pick = np.sort(np.random.default_rng(0).choice(pool.n_total, args.limit, replace=False))
        pool = replace(pool, index=pool.index.iloc[pick].reset_index(drop=True))
    load_s = time.perf_counter() - t
    ensemble, domain, source = load_model(args, cfg)
    domain = domain or stand_in_domain(ensemble)
    scorer = ChampionScorer(
        pool, ensemble, domain, args.batch_size, 0.1, "spglib", default_options(8.0)
    )
    print(
        f"pool: {pool.n_total} structures (index {load_s:.1f} s); model: {source}, "
        f"{ensemble.n_members} members; {args.threads} torch thread(s)"
    )
    rng = np.random.default_rng(1)
    base = np.sort(rng.choice(pool.n_total, min(args.baseline_limit, pool.n_total), replace=False))
    t = time.perf_counter()
    scorer.score(base, tqdm(total=len(base), desc="today's path", unit="crystal", leave=False))
    base_s = time.perf_counter() - t
    base_rate = len(base) / base_s

    settings = FunnelSettings.from_mapping(cfg.screen.get("funnel"))
    t = time.perf_counter()
    with tqdm(total=pool.n_total, desc="tier 1 funnel", unit="crystal", leave=False) as bar:
        scored, record = funnel_scores(pool, scorer, settings, int(cfg.seed), bar)
    funnel_s = time.perf_counter() - t
    assert len(scored) == pool.n_total
    rate = pool.n_total / funnel_s
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    agree = record["agreement"]
    print(
        f"today's path (champion on every crystal): {base_rate:8.1f} crystals/s "
        f"({len(base)} sampled pool rows, {base_s:.1f} s)"
    )
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in record["seconds"].items())
    print(
        f"tier 1 funnel (whole pool):               {rate:8.1f} crystals/s "
        f"({pool.n_total} in {funnel_s:.1f} s: {phases})"
    )
    print(
        f"ratio tier 1 / today's path: {rate / base_rate:.1f}x; champion scored "
        f"{record['n_champion']}, student {record['n_surrogate']}; peak RSS {rss_gib:.2f} GiB"
    )
    if agree:
        print(
            f"student vs champion on {int(agree['n'])} held-out teacher rows: Spearman "
            f"{agree['spearman']:.3f}, log10-MAE {agree['log10_mae']:.3f}, recall of the top / "
            f"bottom {100 * settings.top_fraction:g} %: {agree['top_recall']:.2f} / "
            f"{agree['bottom_recall']:.2f}"
        )
    out: dict[str, Any] = {
        "n_pool": pool.n_total,
        "model": source,
        "threads": args.threads,
        "today_crystals_per_s": base_rate,
        "tier1_crystals_per_s": rate,
        "ratio": rate / base_rate,
        "peak_rss_gib": rss_gib,
        "funnel": {k: v for k, v in record.items() if k != "holdout"},
    }
    if args.tier2:
        out["tier2"] = tier2_seconds(cfg, args.tier2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cif", action="store_true", help="per-phase rates from raw CIF text")
    parser.add_argument("--limit", type=int, default=None, help="pool sample / first N CIFs")
    parser.add_argument("--baseline-limit", type=int, default=3000, help="rows for today's path")
    parser.add_argument("--model-uri")
    parser.add_argument("--members", help="glob of fold model files")
    parser.add_argument("--random", type=int, default=5, help="random members if no model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--devices", default="cpu,cuda", help="--cif: comma list")
    parser.add_argument("--tier2", type=int, default=0, help="D1 compounds timed for tier 2")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = load_params()
    results = cif_mode(args, cfg) if args.cif else pool_mode(args, cfg)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
