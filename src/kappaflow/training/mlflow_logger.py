"""Lightning ↔ MLflow: per-epoch metric curves and the fit summary."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

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
    """Log every epoch's metrics (``train/*``, ``val/*``, ``lr/*``) with ``step = epoch``.

    Runs at the end of each training epoch (after that epoch's validation), so an MLflow metric
    history has one point per epoch. Resumed runs continue the same curves.

    Args:
        run_id: MLflow run to log to; default: the active run at fit start (no-op if none).
    """

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id

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
            self.run_id, metrics=[Metric(k, v, ts, step) for k, v in sorted(metrics.items())]
        )

    def state_dict(self) -> dict[str, Any]:
        """Nothing to checkpoint."""
        return {}


def log_fit_result(result: FitResult, log_checkpoint: bool = True) -> None:
    """Log a :class:`~kappaflow.training.trainer.FitResult` to the active run.

    Logs ``best/val/...`` and ``best/test/...`` metrics of the best checkpoint,
    ``best_val_loss``, ``epochs_trained``, ``stopped_early`` and (optionally) the best
    checkpoint file under ``checkpoints/``.
    """
    import mlflow

    metrics = {f"best/{k}": v for k, v in {**result.val_metrics, **result.test_metrics}.items()}
    if result.best_val_loss is not None:
        metrics["best_val_loss"] = result.best_val_loss
    metrics["epochs_trained"] = float(result.trainer.current_epoch)
    metrics["stopped_early"] = float(result.stopped_early)
    mlflow.log_metrics(metrics)
    if log_checkpoint and result.best_ckpt is not None and result.best_ckpt.is_file():
        mlflow.log_artifact(str(result.best_ckpt), artifact_path="checkpoints")
