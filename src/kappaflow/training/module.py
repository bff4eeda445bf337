"""Lightning module: masked multi-target regression on standardized, transformed targets.

Loss: per target, the MSE over the rows where that target is present (NaN = missing), averaged
over the targets present in the batch. The model predicts in standardized transformed space
(log10 κ for κ); metrics are reported there and in original units (κ in W/m/K).

Learning-rate schedules (``scheduler.name``):

* ``cosine``: linear warm-up for ``warmup_epochs`` then cosine decay to ``min_lr_ratio * lr``,
  stepped every optimizer step (so the schedule state in a checkpoint is always current).
* ``plateau``: ``ReduceLROnPlateau`` on ``val/loss``, stepped by this module at the end of every
  validation epoch and saved in the checkpoint (Lightning does not step plateau schedulers on the
  first epoch after a resume; stepping it here keeps resumed runs identical).
* ``none``: constant learning rate.

Under DDP (``trainer.devices > 1``) validation/test metrics are computed once over the rows of
all ranks (gathered at epoch end), so they equal the single-process metrics of the whole split;
``train/loss`` is the mean over all ranks' batches (``sync_dist``). One process: no collectives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from kappaflow.config import as_dict
from kappaflow.training.defaults import OPTIM_DEFAULTS, SCHEDULER_DEFAULTS
from kappaflow.training.target_transform import TargetTransform

SCHEDULERS = ("cosine", "plateau", "none")
#: Schedule fallbacks (mirror conf/trainer/default.yaml ``scheduler``; see training.defaults).
DEFAULT_SCHEDULER: dict[str, Any] = SCHEDULER_DEFAULTS


def masked_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over targets of the per-target MSE on non-NaN entries.

    Args:
        pred: [B, T] predictions.
        target: [B, T] targets, NaN where missing.

    Returns:
        Scalar loss; ``0 * pred.sum()`` (keeps the graph) if no target is present.
    """
    mask = torch.isfinite(target)
    sq = torch.where(mask, (pred - torch.nan_to_num(target)) ** 2, torch.zeros_like(pred))
    n = mask.sum(dim=0)
    present = n > 0
    if not bool(present.any()):
        return (pred * 0.0).sum()
    per_target = sq.sum(dim=0) / n.clamp(min=1)
    return per_target[present].mean()


def masked_mae(pred: Tensor, target: Tensor) -> Tensor:
    """Per-target MAE ``[T]`` on non-NaN entries (NaN for a target with no entry)."""
    mask = torch.isfinite(target)
    ae = torch.where(mask, (pred - torch.nan_to_num(target)).abs(), torch.zeros_like(pred))
    n = mask.sum(dim=0)
    out = ae.sum(dim=0) / n.clamp(min=1)
    return torch.where(n > 0, out, torch.full_like(out, float("nan")))


class KappaLightningModule(L.LightningModule):
    """Train a ``KappaModel`` on standardized, transformed targets.

    Args:
        model: a ``KappaModel`` (``forward(batch) -> [B, T]`` standardized transformed space);
            if it has an ``encoder`` attribute its parameters form a separate parameter group.
        transform: fitted :class:`TargetTransform` (train-split statistics).
        lr: base (head) learning rate of AdamW.
        weight_decay: AdamW weight decay.
        encoder_lr_mult: encoder learning rate = ``lr * encoder_lr_mult`` (transfer learning);
            ``0`` freezes the encoder (``KappaModel.freeze_encoder(0)``). Parameters with
            ``requires_grad = False`` (e.g. a model frozen beforehand) are never optimized.
        scheduler: schedule config (keys of :data:`DEFAULT_SCHEDULER`; missing keys take the
            defaults).
    """

    def __init__(
        self,
        model: nn.Module,
        transform: TargetTransform,
        *,
        lr: float = OPTIM_DEFAULTS["lr"],
        weight_decay: float = OPTIM_DEFAULTS["weight_decay"],
        encoder_lr_mult: float = OPTIM_DEFAULTS["encoder_lr_mult"],
        scheduler: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.transform = transform
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.encoder_lr_mult = float(encoder_lr_mult)
        self.sched_cfg = {**DEFAULT_SCHEDULER, **as_dict(scheduler)}
        if self.sched_cfg["name"] not in SCHEDULERS:
            raise ValueError(f"scheduler.name must be one of {SCHEDULERS}")
        if self.encoder_lr_mult < 0:
            raise ValueError("encoder_lr_mult must be >= 0")
        if self.encoder_lr_mult == 0 and hasattr(model, "encoder"):
            if hasattr(model, "freeze_encoder"):
                model.freeze_encoder(0)  # also keeps the frozen encoder in eval mode (BN stats)
            else:
                model.encoder.requires_grad_(False)
        # Plain values only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "lr": self.lr,
                "weight_decay": self.weight_decay,
                "encoder_lr_mult": self.encoder_lr_mult,
                "scheduler": dict(self.sched_cfg),
                "transform": transform.to_dict(),
                "model_class": type(model).__name__,
            }
        )
        self._plateau: ReduceLROnPlateau | None = None
        self._plateau_state: dict[str, Any] | None = None
        self._eval_buf: dict[str, list[tuple[Tensor, Tensor]]] = {"val": [], "test": []}

    @classmethod
    def from_cfg(
        cls, model: nn.Module, transform: TargetTransform, trainer_cfg: Mapping[str, Any]
    ) -> KappaLightningModule:
        """Build from ``trainer.optim`` (lr, weight_decay, encoder_lr_mult) and ``.scheduler``."""
        cfg = as_dict(trainer_cfg)
        optim = {**OPTIM_DEFAULTS, **(cfg.get("optim") or {})}
        return cls(
            model,
            transform,
            lr=optim["lr"],
            weight_decay=optim["weight_decay"],
            encoder_lr_mult=optim["encoder_lr_mult"],
            scheduler=cfg.get("scheduler"),
        )

    # ------------------------------------------------------------------ forward / steps
    def forward(self, batch: Any) -> Tensor:
        """Model output ``[B, T]`` in standardized transformed space (float32)."""
        return self.model(batch).float()

    def _targets(self, batch: Any) -> Tensor:
        y = batch.y.float()
        return y.reshape(-1, self.transform.n_targets)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Masked MSE on standardized targets; logs ``train/loss`` (epoch mean)."""
        pred = self(batch)
        loss = masked_mse(pred, self.transform(self._targets(batch)))
        self.log(
            "train/loss",
            loss,
            on_step=False,
            on_epoch=True,
            batch_size=pred.shape[0],
            prog_bar=True,
            sync_dist=self._distributed,  # epoch mean over all ranks' batches (one reduce/epoch)
        )
        return loss

    def _eval_step(self, stage: str, batch: Any) -> None:
        pred = self(batch)
        self._eval_buf[stage].append((pred.detach(), self._targets(batch).detach()))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accumulate predictions; metrics are computed over the whole split at epoch end."""
        self._eval_step("val", batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Accumulate predictions; metrics are computed over the whole split at epoch end."""
        self._eval_step("test", batch)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Return ``{"ids": list[str], "pred": [B, T] original units (κ in W/m/K)}``."""
        pred = self.transform.inverse(self(batch))
        ids = batch.material_id if hasattr(batch, "material_id") else [None] * pred.shape[0]
        return {"ids": list(ids), "pred": pred.detach().cpu()}

    # ------------------------------------------------------------------ metrics
    def split_metrics(self, stage: str, pred_z: Tensor, y_raw: Tensor) -> dict[str, Tensor]:
        """Loss and MAEs of one split.

        Returns:
            ``{stage}/loss`` (standardized MSE), ``{stage}/mae_std`` (mean standardized MAE),
            ``{stage}/{name}/mae`` (original units, e.g. W/m/K) and, for log10 targets,
            ``{stage}/{name}/mae_log10`` (MAE of log10 values).
        """
        z_true = self.transform(y_raw)
        out = {
            f"{stage}/loss": masked_mse(pred_z, z_true),
            f"{stage}/mae_std": torch.nanmean(masked_mae(pred_z, z_true)),
        }
        mae_raw = masked_mae(self.transform.inverse(pred_z), y_raw)
        mae_t = masked_mae(self.transform.unstandardize(pred_z), self.transform.transform(y_raw))
        for j, (name, kind) in enumerate(
            zip(self.transform.names, self.transform.transforms, strict=True)
        ):
            out[f"{stage}/{name}/mae"] = mae_raw[j]
            if kind == "log10":
                out[f"{stage}/{name}/mae_log10"] = mae_t[j]
        return out

    @property
    def _distributed(self) -> bool:
        """Attached to a trainer with more than one process (DDP)."""
        trainer = self._trainer
        return trainer is not None and trainer.world_size > 1

    def _gather_rows(self, pred: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Every rank's rows ``[sum N_r, T]`` on every rank (identity in one process).

        Ranks may hold different row counts: the shorter ones are padded with NaN targets, which
        the masked metrics ignore (as they do the datamodule's padding rows).
        """
        if not self._distributed:
            return pred, y
        counts = self.all_gather(torch.tensor(pred.shape[0], device=pred.device)).reshape(-1)
        pad = int(counts.max()) - pred.shape[0]
        if pad:
            pred = torch.cat([pred, pred.new_zeros(pad, pred.shape[1])])
            y = torch.cat([y, y.new_full((pad, y.shape[1]), float("nan"))])
        return (
            self.all_gather(pred).reshape(-1, pred.shape[1]),
            self.all_gather(y).reshape(-1, y.shape[1]),
        )

    def _eval_epoch_end(self, stage: str) -> None:
        buf = self._eval_buf[stage]
        self._eval_buf[stage] = []
        if not buf and not self._distributed:
            return
        n_targets = self.transform.n_targets
        pred = torch.cat([p for p, _ in buf]).float() if buf else torch.zeros(0, n_targets)
        y = torch.cat([t for _, t in buf]).float() if buf else torch.zeros(0, n_targets)
        # DDP: metrics of the whole split (all ranks' rows), identical on every rank; the
        # sync_dist mean of identical values changes nothing but keeps Lightning's reduction
        # (and its "use sync_dist" warning) in line. One process: no collective at all.
        pred, y = self._gather_rows(pred.to(self.device), y.to(self.device))
        if pred.shape[0] == 0:
            return
        metrics = self.split_metrics(stage, pred, y)
        metrics = {k: v for k, v in metrics.items() if torch.isfinite(v)}
        self.log_dict(
            metrics,
            on_step=False,
            on_epoch=True,
            batch_size=pred.shape[0],
            sync_dist=self._distributed,
        )
        fitting = self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking
        if stage == "val" and fitting and self._plateau is not None:
            self._plateau.step(float(metrics[f"{stage}/loss"]))

    def on_validation_epoch_end(self) -> None:
        """Log validation metrics; step the plateau scheduler."""
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        """Log test metrics."""
        self._eval_epoch_end("test")

    def on_train_epoch_start(self) -> None:
        """Log the learning rate of every parameter group at the epoch start (``lr/<group>``)."""
        opt = self.optimizers()
        opt = opt.optimizer if hasattr(opt, "optimizer") else opt
        for group in opt.param_groups:  # type: ignore[union-attr]
            name = f"lr/{group.get('name', 'all')}"
            self.log(name, float(group["lr"]), on_epoch=True, sync_dist=self._distributed)

    # ------------------------------------------------------------------ optimization
    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups: ``encoder`` (``lr * encoder_lr_mult``) and ``head`` (rest)."""
        encoder = getattr(self.model, "encoder", None)
        enc_ids = {id(p) for p in encoder.parameters()} if isinstance(encoder, nn.Module) else set()
        enc = [p for p in self.model.parameters() if id(p) in enc_ids and p.requires_grad]
        rest = [p for p in self.model.parameters() if id(p) not in enc_ids and p.requires_grad]
        groups = []
        if enc and self.encoder_lr_mult > 0:
            groups.append({"params": enc, "lr": self.lr * self.encoder_lr_mult, "name": "encoder"})
        if rest:
            groups.append({"params": rest, "lr": self.lr, "name": "head"})
        if not groups:
            raise ValueError("no trainable parameters")
        return groups

    def configure_optimizers(self) -> Any:
        """AdamW plus the configured schedule (see module docstring)."""
        opt = torch.optim.AdamW(self.param_groups(), lr=self.lr, weight_decay=self.weight_decay)
        name = self.sched_cfg["name"]
        if name != "cosine":
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        max_epochs = max(int(self.trainer.max_epochs or 1), 1)
        warmup = int(round(float(self.sched_cfg["warmup_epochs"]) * total / max_epochs))
        floor = float(self.sched_cfg["min_lr_ratio"])

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_start(self) -> None:
        """Create the plateau scheduler (after optimizer state has been restored)."""
        if self.sched_cfg["name"] != "plateau":
            return
        opt = self.optimizers()
        opt = opt.optimizer if hasattr(opt, "optimizer") else opt
        self._plateau = ReduceLROnPlateau(
            opt,  # type: ignore[arg-type]
            mode="min",
            factor=float(self.sched_cfg["factor"]),
            patience=int(self.sched_cfg["patience"]),
            min_lr=float(self.sched_cfg["min_lr"]),
        )
        if self._plateau_state is not None:
            self._plateau.load_state_dict(self._plateau_state)
            self._plateau_state = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the plateau scheduler state (plain numbers) with the checkpoint."""
        if self._plateau is not None:
            checkpoint["plateau_scheduler"] = self._plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Stash the plateau scheduler state until :meth:`on_train_start`."""
        self._plateau_state = checkpoint.get("plateau_scheduler")
