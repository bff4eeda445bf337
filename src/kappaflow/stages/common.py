"""MLflow runs of the data stages (``ingest``, ``prepare``, ``featurize``): counts, reports."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kappaflow.tracking.runs import file_sha256, log_artifact, log_dataset, start_stage_run

log = logging.getLogger(__name__)


def log_data_stage(
    cfg: DictConfig, stage: str, dataset: str, out_dir: Path, summary: Mapping[str, Any]
) -> None:
    """Log one data-stage run: numeric summary values as metrics, reports as artifacts.

    ``prepare`` also records the prepared table as the run's dataset input (sha256 digest) and
    the quarantine file (every rejected row with its reason) as an artifact.

    Args:
        cfg: full config (its ``tracking`` node configures MLflow; disabled → nothing logged).
        stage: ``ingest``, ``prepare`` or ``featurize``.
        dataset: dataset card name.
        out_dir: the stage's output directory.
        summary: the stage's report (``n_input``, ``n_valid``, ``reasons``... or cache summary);
            numbers become metrics, strings (e.g. the ingested file's sha256) tags.
    """
    with start_stage_run(
        cfg,
        stage,
        run_name=f"{stage}/{dataset}",
        dvc_stage=f"{stage}@{dataset}",
        tags={"dataset": dataset},
    ) as run:
        if run is None:
            return
        import mlflow

        metrics: dict[str, float] = {}
        for key, value in summary.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                metrics[key] = float(value)
            elif key == "reasons" and isinstance(value, Mapping):
                metrics.update({f"quarantined/{k}": float(v) for k, v in value.items()})
            elif isinstance(value, str):
                mlflow.set_tag(f"{stage}.{key}", value[:5000])
        if metrics:
            mlflow.log_metrics(metrics)
        if stage == "prepare":
            valid = out_dir / "valid.parquet"
            if valid.is_file():
                log_dataset(valid, name=dataset, digest=file_sha256(valid), context=stage)
            for name in ("report.json", "quarantine.csv"):
                if (out_dir / name).is_file():
                    log_artifact(out_dir / name, "data")
