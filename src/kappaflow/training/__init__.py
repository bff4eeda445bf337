"""Training: target transform, Lightning module and data module, trainer factory, export.

Submodules are imported lazily (``import kappaflow.training`` does not import Lightning).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TargetTransform": "kappaflow.training.target_transform",
    "KappaLightningModule": "kappaflow.training.module",
    "masked_mse": "kappaflow.training.module",
    "GraphDataModule": "kappaflow.training.datamodule",
    "EpochSeededSampler": "kappaflow.training.datamodule",
    "dataset_targets": "kappaflow.training.datamodule",
    "build_trainer": "kappaflow.training.trainer",
    "fit": "kappaflow.training.trainer",
    "FitResult": "kappaflow.training.trainer",
    "load_weights": "kappaflow.training.trainer",
    "resolve_cfg": "kappaflow.training.trainer",
    "save_model": "kappaflow.training.export",
    "load_model": "kappaflow.training.export",
    "predict": "kappaflow.training.export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
