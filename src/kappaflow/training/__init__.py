"""Training: target transform, Lightning module and data module, trainer factory, export.

Submodules are imported lazily (``import kappaflow.training`` does not import Lightning).
"""

from __future__ import annotations

from kappaflow._lazy import lazy_exports

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

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
