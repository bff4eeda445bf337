"""MLflow tracking: stage runs with provenance, dataset inputs, artifacts, epoch curves.

Submodules are imported lazily (``import kappaflow.tracking`` does not import MLflow).
"""

from __future__ import annotations

from kappaflow._lazy import lazy_exports

_EXPORTS = {
    "start_stage_run": "kappaflow.tracking.runs",
    "setup_experiment": "kappaflow.tracking.runs",
    "experiment_name": "kappaflow.tracking.runs",
    "config_params": "kappaflow.tracking.runs",
    "run_label": "kappaflow.tracking.names",
    "dataset_alias": "kappaflow.tracking.names",
    "metric_key": "kappaflow.tracking.names",
    "finite_metrics": "kappaflow.tracking.names",
    "tracking_uri": "kappaflow.tracking.runs",
    "tracking_cfg": "kappaflow.tracking.runs",
    "log_dataset": "kappaflow.tracking.runs",
    "log_params": "kappaflow.tracking.runs",
    "log_artifact": "kappaflow.tracking.runs",
    "log_figure": "kappaflow.tracking.runs",
    "log_model_file": "kappaflow.tracking.runs",
    "file_sha256": "kappaflow.tracking.runs",
    "git_info": "kappaflow.tracking.git",
    "GitInfo": "kappaflow.tracking.git",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
