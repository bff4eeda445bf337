"""DVC stage function of the graphs package: ``featurize`` (one dataset → one graph cache)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from kappaflow.data.stages import dataset_spec, interim_dir
from kappaflow.paths import project_root

log = logging.getLogger(__name__)


def graph_cache_path(cfg: DictConfig, name: str) -> Path:
    """``data/graphs/<name>.pt``: the cached crystal graphs of dataset ``name``."""
    return project_root() / cfg.paths.graphs_dir / f"{name}.pt"


def featurize_stage(cfg: DictConfig, name: str) -> dict:
    """Build the graph cache of a prepared structure dataset and log it to MLflow."""
    from kappaflow.graphs.cache import build_graph_cache
    from kappaflow.tracking.data_runs import log_data_stage

    spec = dataset_spec(cfg, name)
    if spec.kind != "structure":
        raise ValueError(f"dataset {name!r} is composition-only: it has no crystal graphs")
    out = graph_cache_path(cfg, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = build_graph_cache(
        interim_dir(cfg, name) / "valid.parquet",
        out,
        cutoff=float(cfg.graphs.cutoff),
        max_neighbors=int(cfg.graphs.max_neighbors),
        target_names=spec.target_names,
        n_jobs=int(cfg.graphs.n_jobs),
        chunk_size=int(cfg.graphs.chunk_size),
        progress=True,
    )
    log_data_stage(cfg, stage="featurize", dataset=name, out_dir=out.parent, summary=summary)
    return summary
