"""DVC stage functions of the data package: ``ingest`` and ``prepare`` (one dataset each)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kappaflow.data.registry import DatasetSpec, spec_from_cfg
from kappaflow.paths import DATA_ENV_VAR, data_root, project_root

log = logging.getLogger(__name__)


def dataset_spec(cfg: DictConfig, name: str) -> DatasetSpec:
    """Return the dataset card ``name`` from the config (``KeyError`` lists the known names)."""
    if name not in cfg.datasets:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(cfg.datasets)}")
    return spec_from_cfg(cfg.datasets[name], name)


def raw_path(cfg: DictConfig, name: str) -> Path:
    """``data/raw/<name>.csv.gz``: the DVC-tracked copy of the raw table."""
    return project_root() / cfg.paths.raw_dir / f"{name}.csv.gz"


def interim_dir(cfg: DictConfig, name: str) -> Path:
    """``data/interim/<name>/``: prepared table, quarantine and report."""
    return project_root() / cfg.paths.interim_dir / name


def resolved_data_root(cfg: DictConfig) -> Path:
    """Return the data root DVC tracks (``paths.data_root``), checked against the env var.

    Raises:
        ValueError: if ``KAPPAFLOW_DATA_DIR`` is set to a different directory than
            ``paths.data_root``: DVC would record hashes of files the stage did not read.
    """
    configured = (project_root() / cfg.paths.data_root).resolve()
    effective = data_root(cfg.paths.data_root)
    if effective != configured:
        raise ValueError(
            f"{DATA_ENV_VAR}={effective} differs from paths.data_root={configured}. DVC tracks "
            f"paths.data_root; run `dvc exp run -S paths.data_root={effective}` instead "
            f"(or unset {DATA_ENV_VAR})."
        )
    return configured


def ingest_stage(cfg: DictConfig, name: str) -> Path:
    """Copy (mirror) or download dataset ``name`` into ``data/raw/<name>.csv.gz``."""
    from kappaflow.data.sources import fetch

    spec = dataset_spec(cfg, name)
    dest = raw_path(cfg, name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    result = fetch(spec, dest=dest, data_root=resolved_data_root(cfg))
    log.info(
        "ingest %s: %d rows, sha256 %s (%s)", name, result.n_rows, result.sha256, result.source
    )
    _log_to_mlflow(
        cfg,
        "ingest",
        name,
        dest.parent,
        {"n_rows": result.n_rows, "sha256": result.sha256, "source": result.source},
    )
    return dest


def prepare_stage(cfg: DictConfig, name: str) -> dict:
    """Validate dataset ``name``: ``valid.parquet`` + ``quarantine.csv`` + ``report.json``."""
    from kappaflow.data.prepare import prepare_dataset
    from kappaflow.data.validation import ValidationOptions

    spec = dataset_spec(cfg, name)
    v = OmegaConf.to_container(cfg.validation, resolve=True)
    assert isinstance(v, dict)
    n_jobs = int(v.pop("n_jobs", 1))
    opts = ValidationOptions(**v)
    out = interim_dir(cfg, name)
    report = prepare_dataset(spec, raw_path(cfg, name), out, opts, n_jobs=n_jobs, progress=True)
    summary = json.loads((out / "report.json").read_text())
    _log_to_mlflow(cfg, "prepare", name, out, summary)
    return report if isinstance(report, dict) else summary


def _log_to_mlflow(cfg: DictConfig, stage: str, name: str, out: Path, summary: dict) -> None:
    """Log a data stage's counts and reports as an MLflow run (experiment ``<prefix>-data``)."""
    from kappaflow.tracking.data_runs import log_data_stage

    log_data_stage(cfg, stage=stage, dataset=name, out_dir=out, summary=summary)


def leakage_stage(cfg: DictConfig) -> dict:
    """Write the cross-dataset leakage map and per-pair overlap counts (``data/leakage/``).

    Outputs ``map_<level>.csv`` (every row whose material occurs in another dataset: key,
    formula, spacegroup, dataset, id, datasets) and ``summary.json`` (per level and dataset pair:
    shared formulas and matching rows; formula lists only where they are short).
    """
    from kappaflow.data.leakage import leakage_map, overlap_summary
    from kappaflow.data.prepare import load_prepared

    frames = {
        name: load_prepared(interim_dir(cfg, name))[["id", "formula", "spacegroup"]]
        for name in cfg.leakage.datasets
    }
    out = project_root() / "data" / "leakage"
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}
    for level in cfg.leakage.levels:
        table = leakage_map(frames, level=level)
        table.to_csv(out / f"map_{level.replace('+', '_')}.csv", index=False)
        pairs = overlap_summary(frames, level=level)
        for pair in pairs.values():
            formulas = pair.get("formulas", [])
            if isinstance(formulas, list) and len(formulas) > 50:
                pair["formulas"] = formulas[:50] + [f"... {len(formulas) - 50} more"]
        summary[level] = pairs
        log.info("leakage (%s): %d rows shared across datasets", level, len(table))
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(out / "summary.json")
    return summary
