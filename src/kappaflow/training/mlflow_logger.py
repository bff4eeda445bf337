"""Lightning ↔ MLflow: per-epoch metric curves and the fit summary.

Lightning keys (``train/loss``, ``val/kappa/mae_log10``…) are renamed at this boundary to the
MLflow scheme of :func:`kappaflow.tracking.names.metric_key` (``train_loss``,
``val_log10_mae``, ``val_e_form_mae_eV_per_atom``…).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from kappaflow.tracking.names import metric_key

#: Units of the targets whose MAE a curve's name carries when the caller gives none (W/m/K).
DEFAULT_UNITS: dict[str, str] = {"kappa": "W/m/K"}

if TYPE_CHECKING:
    from kappaflow.training.trainer import FitResult


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                continue
            v = v.item()
        if isinstance(v, int | float):
            out[k] = float(v)
    return out


class MlflowEpochLogger(L.Callback):
    """Log every epoch's metrics (``train_loss``, ``val_loss``, ``val_log10_mae``, ``lr_*``).

    Runs at the end of each training epoch (after that epoch's validation) with
    ``step = epoch``, so an MLflow metric history has one point per epoch. Resumed runs continue
    the same curves. Names: :func:`kappaflow.tracking.names.metric_key`.

    Args:
        run_id: MLflow run to log to; default: the active run at fit start (no-op if none).
        units: target name → unit of its MAE (e.g. ``{"e_form": "eV/atom"}``); default κ in
            W/m/K.
    """

    def __init__(self, run_id: str | None = None, units: Mapping[str, str | None] | None = None):
        self.run_id = run_id
        self.units = {**DEFAULT_UNITS, **dict(units or {})}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Bind to the active run if no run id was given."""
        if self.run_id is None:
            import mlflow

            run = mlflow.active_run()
            self.run_id = run.info.run_id if run is not None else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Send the epoch's scalar callback metrics to MLflow."""
        if self.run_id is None or trainer.sanity_checking or trainer.global_rank != 0:
            return
        import mlflow
        from mlflow.entities import Metric

        metrics = _scalars(trainer.callback_metrics)
        if not metrics:
            return
        ts = int(time.time() * 1000)
        step = int(trainer.current_epoch)
        mlflow.MlflowClient().log_batch(
            self.run_id,
            metrics=[
                Metric(metric_key(k, self.units), v, ts, step) for k, v in sorted(metrics.items())
            ],
        )

    def state_dict(self) -> dict[str, Any]:
        """Nothing to checkpoint."""
        return {}


def log_fit_result(
    result: FitResult,
    log_checkpoint: bool = True,
    units: Mapping[str, str | None] | None = None,
) -> None:
    """Log a :class:`~kappaflow.training.trainer.FitResult` to the active run.

    Metrics: the best checkpoint's validation metrics as ``best_val_loss``,
    ``best_val_log10_mae``… (test metrics are the stage's to log, once). Tags:
    ``epochs_trained`` and ``stopped_early`` (counts and flags are not metrics). Optionally the
    best checkpoint file under ``checkpoints/``.

    Args:
        result: the fit.
        log_checkpoint: log the best checkpoint file.
        units: target name → unit, as :class:`MlflowEpochLogger`.
    """
    import mlflow

    names = {**DEFAULT_UNITS, **dict(units or {})}
    metrics = {
        f"best_{metric_key(k, names)}": float(v)
        for k, v in _scalars(result.val_metrics).items()
        if k.startswith("val/")
    }
    if result.best_val_loss is not None:
        metrics["best_val_loss"] = float(result.best_val_loss)
    mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN-free
    mlflow.set_tags(
        {
            "epochs_trained": str(int(result.trainer.current_epoch)),
            "stopped_early": str(bool(result.stopped_early)).lower(),
        }
    )
    if log_checkpoint and result.best_ckpt is not None and result.best_ckpt.is_file():
        mlflow.log_artifact(str(result.best_ckpt), artifact_path="checkpoints")
