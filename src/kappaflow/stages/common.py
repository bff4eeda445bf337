"""Helpers shared by the stage modules.

The command-line runner of every stage (:func:`run_stage`), the MLflow runs of the data stages
(``ingest``, ``prepare``, ``featurize``) and the epilogue of the study stages (``evaluate``,
``extrapolate``, ``pretrain_size``: :func:`finish_study`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kappaflow.config import stage_main
from kappaflow.io_utils import write_json
from kappaflow.logging_utils import setup_logging
from kappaflow.tracking.names import dataset_alias, is_count, run_label
from kappaflow.tracking.runs import file_sha256, log_artifact, log_dataset, start_stage_run

log = logging.getLogger(__name__)


#: Config subtrees each data stage reads besides its dataset card (logged as params).
DATA_STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "ingest": ("paths.data_root",),
    "prepare": ("validation",),
    "featurize": ("graphs",),
}


def log_data_stage(
    cfg: DictConfig, stage: str, dataset: str, out_dir: Path, summary: Mapping[str, Any]
) -> None:
    """Log one data-stage run: counts as params, other numbers as metrics, reports as artifacts.

    The run (``prepare·AGL``) records the dataset card and the config the stage reads
    (:data:`DATA_STAGE_PARAMS`) as params. ``prepare`` also records the prepared table as the
    run's dataset input (sha256 digest) and the quarantine file (every rejected row with its
    reason) as an artifact.

    Args:
        cfg: full config (its ``tracking`` node configures MLflow; disabled → nothing logged).
        stage: ``ingest``, ``prepare`` or ``featurize``.
        dataset: dataset card name.
        out_dir: the stage's output directory.
        summary: the stage's report (``n_input``, ``n_valid``, ``reasons``... or cache summary);
            counts (``n_*``, quarantine ``reasons`` as ``quarantined_<reason>``) become params,
            other numbers metrics (e.g. ``seconds``), strings (e.g. the ingested file's sha256)
            tags.
    """
    counts: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {"dataset": dataset}
    for key, value in summary.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            if is_count(key) or isinstance(value, int):
                counts[key] = value
            else:
                metrics[key] = float(value)
        elif key == "reasons" and isinstance(value, Mapping):
            counts.update({f"quarantined_{k}": v for k, v in value.items()})
        elif isinstance(value, str):
            tags[f"{stage}.{key}"] = value[:5000]
    with start_stage_run(
        cfg,
        stage,
        run_name=run_label(stage, dataset_alias(dataset, cfg.tracking.get("aliases"))),
        dvc_stage=f"{stage}@{dataset}",
        tags=tags,
        params=[f"datasets.{dataset}", *DATA_STAGE_PARAMS.get(stage, ())],
        extra_params=counts,
    ) as run:
        if run is None:
            return
        import mlflow

        if metrics:
            mlflow.log_metrics(metrics)
        if stage == "prepare":
            valid = out_dir / "valid.parquet"
            if valid.is_file():
                log_dataset(valid, name=dataset, digest=file_sha256(valid), context=stage)
            for name in ("report.json", "quarantine.csv"):
                if (out_dir / name).is_file():
                    log_artifact(out_dir / name, "data")


def finish_study(
    run: Any,
    report: Path,
    metrics_path: Path,
    metrics: Mapping[str, Any],
    artifacts: Iterable[Path],
    artifact_dir: str,
    mlflow_metrics: Iterable[tuple[Mapping[str, float], int | None]] = (),
) -> Path:
    """Write a study stage's metrics JSON, then log it and its report to the stage's MLflow run.

    The stage writes the report itself (:func:`kappaflow.evaluation.report.write_report`): this
    module, imported by every stage, stays free of ``evaluation/`` (a dvc.yaml dep of the study
    stages only).

    Args:
        run: the stage's active run (:func:`~kappaflow.tracking.start_stage_run`); None: only
            the metrics file is written.
        report: the written markdown report.
        metrics_path: metrics JSON for DVC (:func:`~kappaflow.io_utils.write_json`).
        metrics: its content.
        artifacts: further files logged after the report and the metrics (e.g. the plots).
        artifact_dir: artifact folder of them all in the run.
        mlflow_metrics: ``(metrics, step)`` batches logged to the run (``mlflow.log_metrics``)
            before the artifacts; read only when ``run`` is not None.

    Returns:
        The report path.
    """
    write_json(metrics_path, metrics)
    if run is not None:
        import mlflow

        for batch, step in mlflow_metrics:
            mlflow.log_metrics(dict(batch), step=step)
        for f in (report, metrics_path, *artifacts):
            log_artifact(f, artifact_dir)
    return report


def run_stage(fn: Callable[..., Any], argv: Sequence[str] | None = None) -> Any:
    """Run a stage function as a command-line entry point (``pipelines/<stage>.py``).

    Configures logging, loads ``params.yaml`` with the command line's ``key=value`` overrides
    and calls ``fn(cfg, *positional)`` (:func:`kappaflow.config.stage_main`).

    Args:
        fn: the stage function, e.g. :func:`kappaflow.stages.featurize.featurize_stage`.
        argv: command-line words; ``sys.argv[1:]`` when None. Plain words are ``fn``'s positional
            arguments (e.g. the dataset of a DVC foreach item), ``key=value`` words override
            ``params.yaml``.

    Returns:
        What ``fn`` returns.
    """
    setup_logging()
    return stage_main(fn, argv)
