"""DVC stage ``prepare``: parse and validate every row of one dataset.

Reads ``datasets.<name>`` and ``validation``; writes ``data/interim/<name>/valid.parquet``,
``quarantine.csv`` (every rejected row with its reason), ``report.json`` (the full report, a plain
DVC out) and the headline ``metrics/headline/prepare_<name>.json`` (``n_valid``,
``n_quarantined``: the DVC metrics).
"""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

from kappaflow.data.prepare import prepare_dataset
from kappaflow.data.validation import ValidationOptions
from kappaflow.io_utils import write_metrics
from kappaflow.layout import REPORT_FILE, dataset_spec, interim_dir, project_root, raw_path
from kappaflow.stages.common import log_data_stage


def prepare_stage(cfg: DictConfig, name: str) -> dict:
    """Validate dataset ``name``: ``valid.parquet`` + ``quarantine.csv`` + ``report.json``."""
    spec = dataset_spec(cfg, name)
    v = OmegaConf.to_container(cfg.validation, resolve=True)
    assert isinstance(v, dict)
    n_jobs = int(v.pop("n_jobs", 1))
    opts = ValidationOptions(**v)
    out = interim_dir(cfg, name)
    report = prepare_dataset(spec, raw_path(cfg, name), out, opts, n_jobs=n_jobs, progress=True)
    summary = json.loads((out / REPORT_FILE).read_text())
    write_metrics(
        project_root() / cfg.paths.metrics_dir / "headline" / f"prepare_{name}.json",
        {k: summary[k] for k in ("n_valid", "n_quarantined")},
    )
    log_data_stage(cfg, "prepare", name, out, summary)
    return report if isinstance(report, dict) else summary


def main() -> None:
    """Run the DVC stage ``prepare`` from the command line: ``pipelines/prepare.py``.

    Usage: ``python pipelines/prepare.py NAME [key=value ...]``.
    Loads ``params.yaml`` with the ``key=value`` overrides and calls :func:`prepare_stage`
    with the other words (:func:`kappaflow.stages.common.run_stage`).
    """
    from kappaflow.stages.common import run_stage

    run_stage(prepare_stage)
