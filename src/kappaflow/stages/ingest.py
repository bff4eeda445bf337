"""DVC stage ``ingest``: copy (mirror) or download one raw dataset into ``data/raw/<name>.csv.gz``.

Reads ``datasets.<name>`` (path, sha256, source) and ``paths``; writes the raw table DVC pins.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from kappaflow.data.sources import fetch
from kappaflow.layout import dataset_spec, raw_path, resolved_data_root
from kappaflow.stages.common import log_data_stage

log = logging.getLogger(__name__)


def ingest_stage(cfg: DictConfig, name: str) -> Path:
    """Copy (mirror) or download dataset ``name`` into ``data/raw/<name>.csv.gz``."""
    spec = dataset_spec(cfg, name)
    dest = raw_path(cfg, name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    result = fetch(spec, dest=dest, data_root=resolved_data_root(cfg))
    log.info(
        "ingest %s: %d rows, sha256 %s (%s)", name, result.n_rows, result.sha256, result.source
    )
    summary = {"n_rows": result.n_rows, "sha256": result.sha256, "source": result.source}
    log_data_stage(cfg, "ingest", name, dest.parent, summary)
    return dest


def main() -> None:
    """Run the DVC stage ``ingest`` from the command line: ``pipelines/ingest.py``.

    Usage: ``python pipelines/ingest.py NAME [key=value ...]``.
    Loads ``params.yaml`` with the ``key=value`` overrides and calls :func:`ingest_stage`
    with the other words (:func:`kappaflow.stages.common.run_stage`).
    """
    from kappaflow.stages.common import run_stage

    run_stage(ingest_stage)
