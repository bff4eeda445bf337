"""DVC stage ``featurize``: one prepared structure dataset → one crystal-graph cache.

Reads ``graphs`` (which datasets, the neighbour cutoff and count, workers); writes
``data/graphs/<name>.pt``.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from kappaflow.graphs.cache import build_graph_cache
from kappaflow.layout import dataset_spec, graph_cache_path, interim_dir
from kappaflow.stages.common import log_data_stage

log = logging.getLogger(__name__)


def featurize_stage(cfg: DictConfig, name: str) -> dict:
    """Build the graph cache of a prepared structure dataset and log it to MLflow."""
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
    log_data_stage(cfg, "featurize", name, out.parent, summary)
    return summary


def main() -> None:
    """Run the DVC stage ``featurize`` from the command line: ``pipelines/featurize.py``.

    Usage: ``python pipelines/featurize.py NAME [key=value ...]``.
    Loads ``params.yaml`` with the ``key=value`` overrides and calls :func:`featurize_stage`
    with the other words (:func:`kappaflow.stages.common.run_stage`).
    """
    from kappaflow.stages.common import run_stage

    run_stage(featurize_stage)
