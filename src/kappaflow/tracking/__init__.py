"""MLflow tracking: stage runs with provenance, dataset inputs, artifacts, epoch curves.

Submodules are imported lazily (``import kappaflow.tracking`` does not import MLflow).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "start_stage_run": "kappaflow.tracking.runs",
    "setup_experiment": "kappaflow.tracking.runs",
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
    "MlflowEpochLogger": "kappaflow.tracking.lightning",
    "log_fit_result": "kappaflow.tracking.lightning",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
