"""Screening throughput: CIF text -> κ ± σ with the κ ensemble, crystals/s per phase.

One streaming pass per device over every structure of the raw datasets in the data root (the
``cif`` column of each structure dataset card; ``--limit`` keeps the first N of each, in card
order), batch by batch:

* **parse**: ``parse_cif`` + the structure checks (``check_crystal``), CPU;
* **featurize**: crystal graphs (``crystal_to_graph`` with the ensemble's graph settings), CPU;
* **inference**: all ensemble members on the batch (host->device copy included; CUDA is
  synchronized before the clock stops) + the out-of-domain distances;
* **end to end**: wall time of the whole pass (the three phases + bookkeeping) =
  ``kappaflow.registry.predictor`` as the ``screen`` stage and the pyfunc use it.

Rates are crystals per second of that phase's own time (every structure counts, also the few
that fail the checks). The model: ``--model-uri`` (e.g. ``models:/kappaflow-kappa@champion``),
else fold models ``--members 'models/finetune/finetune/paraisite_mix/folds/repeat0-fold*.pt'``,
else ``--random N`` freshly initialised members of the ``cgcnn`` card (timing only: weights do
not change the cost). Devices: cpu, plus cuda when available (``--devices``).

Usage::

    python benchmarks/screen.py [--limit N] [--model-uri URI | --members GLOB | --random 5]
        [--batch-size 64] [--threads 1] [--devices cpu,cuda] [--out reports/bench.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N rows of each dataset")
    parser.add_argument("--model-uri")
    parser.add_argument("--members", help="glob of fold model files")
    parser.add_argument("--random", type=int, default=5, help="random members if no model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--devices", default="cpu,cuda", help="comma list; cuda if available")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = load_params()
    t_read = time.perf_counter()
    ids, cifs, counts = read_cifs(cfg, args.limit)
    t_read = time.perf_counter() - t_read
    ensemble, domain, source = load_model(args, cfg)
    if domain is None:  # time the OOD step too: a domain from 500 random embeddings
        rng = np.random.default_rng(0)
        domain = fit_domain(rng.normal(size=(500, ensemble.members[0].embed_dim)), [[1]])
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
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
