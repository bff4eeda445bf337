"""Trainer factory and a resumable ``fit``.

:func:`fit` resumes automatically from ``<out_dir>/checkpoints/last.ckpt``: after a crash
(even ``kill -9`` mid-epoch) re-running the same command continues from the last finished epoch
and, on CPU (deterministic), ends with the same metrics as an uninterrupted run. Checkpoints are
loaded with ``torch.load(weights_only=True)``; everything this package stores in them is plain
tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, Logger

from kappaflow.config import as_dict
from kappaflow.training.callbacks import EpochCounter, EpochSeed
from kappaflow.training.defaults import TRAINER_DEFAULTS

log = logging.getLogger(__name__)

MONITOR = "val/loss"
CHECKPOINT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"

#: Fallbacks of the ``trainer`` config node (:data:`kappaflow.training.defaults.TRAINER_DEFAULTS`,
#: which mirrors conf/trainer/default.yaml, the owner).
DEFAULTS: dict[str, Any] = TRAINER_DEFAULTS


def num_devices(devices: Any, gpu: bool) -> int:
    """Count the devices (processes) Lightning will use for the ``devices`` setting.

    An int (``-1``: every GPU), a digit string, a list of device indices, or ``auto`` (every GPU
    on a GPU, one process on CPU, like Lightning).
    """
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)
    if isinstance(devices, str):
        devices = devices.strip()
        if devices == "auto":
            return max(torch.cuda.device_count(), 1) if gpu else 1
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        devices = int(devices)
    n = int(devices)
    if n == -1 and gpu:
        return max(torch.cuda.device_count(), 1)
    return max(n, 1)


def resolve_cfg(trainer_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Trainer config merged over :data:`DEFAULTS` with the ``auto`` values resolved.

    ``accelerator: auto`` → ``gpu`` if CUDA is available else ``cpu``; ``precision: auto`` →
    ``bf16-mixed`` on a bf16-capable GPU, else ``32-true``; ``deterministic: auto`` → True on CPU,
    False on GPU (scatter ops have no fast deterministic CUDA kernels).

    ``strategy: auto`` stays ``auto`` (one device) when ``devices`` is 1. With more devices it
    becomes DDP whose workers the calling process starts itself, so that it works from any entry
    point (CLI, script, ``python -c``, pytest, notebook): ``ddp_fork`` on CPU (gloo; forked
    workers share the in-memory graphs and start in well under a second) and ``ddp_spawn`` on a
    GPU (a process that has touched CUDA cannot fork). Lightning's own choice, ``ddp``,
    re-executes ``sys.argv`` as subprocesses, which re-runs pytest or fails under ``python -c``.
    An explicit strategy is passed through unchanged.
    """
    cfg = {**DEFAULTS, **as_dict(trainer_cfg)}
    for key, default in DEFAULTS.items():  # nested nodes: missing keys from the defaults too
        if isinstance(default, dict):
            cfg[key] = {**default, **(cfg.get(key) or {})}
    if cfg["accelerator"] == "auto":
        cfg["accelerator"] = "gpu" if torch.cuda.is_available() else "cpu"
    gpu = cfg["accelerator"] in ("gpu", "cuda")
    if cfg["precision"] == "auto":
        cfg["precision"] = "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"
    if cfg["deterministic"] == "auto":
        cfg["deterministic"] = not gpu
    if cfg["strategy"] in ("auto", None) and num_devices(cfg["devices"], gpu) > 1:
        cfg["strategy"] = "ddp_spawn" if gpu else "ddp_fork"
    elif cfg["strategy"] is None:
        cfg["strategy"] = "auto"
    return cfg


def epoch_budget(trainer_cfg: Mapping[str, Any]) -> str:
    """Say how long a fit may train: ``up to N epochs (batch B, early stopping after P)``."""
    patience = (trainer_cfg.get("early_stopping") or {}).get("patience")
    stop = f", early stopping after {patience}" if patience else ""
    return f"up to {trainer_cfg['max_epochs']} epochs (batch {trainer_cfg['batch_size']}{stop})"


def checkpoint_dir(out_dir: str | Path) -> Path:
    """``<out_dir>/checkpoints``."""
    return Path(out_dir) / CHECKPOINT_DIR


def _progress_bar(kind: str, refresh_rate: int) -> Callback | None:
    if kind == "rich":
        return RichProgressBar(refresh_rate=refresh_rate)
    if kind == "tqdm":
        return TQDMProgressBar(refresh_rate=refresh_rate)
    if kind in ("none", None, False):
        return None
    raise ValueError(f"progress_bar must be rich, tqdm or none, got {kind!r}")


#: Lightning loggers whose INFO lines repeat on every fit (accelerator availability, the
#: litlogger tip, one ``limit_*_batches`` line per limit, "fit stopped": ~8 lines per trainer,
#: thousands in a smoke log; under DDP one "Initializing distributed" line per process and
#: stage). Their warnings still show.
CHATTY_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
    "lightning.fabric.utilities.distributed",
)
#: Lightning warnings about choices this package makes on purpose (regexes of their messages):
#: small epochs below the logging interval, in-process data loading (graphs are in memory), and
#: deprecations inside Lightning itself (a pytree check; the torch collective behind
#: ``LightningModule.all_gather`` under DDP). Every other warning still shows.
KNOWN_WARNINGS = (
    r".*is smaller than the logging interval",
    r".*does not have many workers",
    r".*isinstance\(treespec, LeafSpec\)",
    r".*torch\.distributed\.nn\.functional\.all_gather is deprecated",
)


def quiet_lightning() -> None:
    """Silence Lightning's per-trainer boilerplate (idempotent; real warnings keep showing)."""
    import warnings

    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


class TorchThreads(Callback):
    """Set torch's intra-op threads at ``setup`` in every training process.

    :func:`build_trainer` sets them in the calling process; DDP workers (``ddp_fork`` /
    ``ddp_spawn``) are reset by Lightning to ``cores // processes``, so they set it again here.
    """

    def __init__(self, threads: int) -> None:
        self.threads = int(threads)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Apply the thread count."""
        torch.set_num_threads(self.threads)


#: Prefix of the keys :class:`FitSummary` adds to ``trainer.callback_metrics``.
SUMMARY_PREFIX = "kappaflow_fit/"


class FitSummary(Callback):
    """Put the fit's outcome into ``trainer.callback_metrics`` at the end of ``trainer.fit``.

    With a fork/spawn DDP strategy training runs in worker processes: Lightning sends rank 0's
    weights, best checkpoint path and ``callback_metrics`` back to the calling process, but not
    the state of the callbacks. :func:`fit` reads these keys (``kappaflow_fit/...``: best score,
    first epoch, epochs run, stopped early, current epoch) and removes them again.
    """

    @staticmethod
    def collect(trainer: L.Trainer) -> dict[str, Any]:
        """Outcome of the fit as this process's callbacks saw it.

        Keys: ``best_model_score`` (None if none), ``first_epoch`` (None if no epoch ran),
        ``epochs_run``, ``stopped_early``, ``current_epoch``.
        """
        ckpt = trainer.checkpoint_callback
        counter = next((c for c in trainer.callbacks if isinstance(c, EpochCounter)), None)  # type: ignore[attr-defined]
        es = trainer.early_stopping_callback
        return {
            "best_model_score": getattr(ckpt, "best_model_score", None),
            "first_epoch": counter.first_epoch if counter is not None else None,
            "epochs_run": counter.epochs_run if counter is not None else 0,
            "stopped_early": bool(es is not None and es.stopped_epoch > 0),
            "current_epoch": int(trainer.current_epoch),
        }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Store :meth:`collect` in ``callback_metrics`` (tensors; None as NaN)."""
        for key, value in self.collect(trainer).items():
            if torch.is_tensor(value):
                tensor = value.detach().cpu()
            else:
                tensor = torch.tensor(
                    float("nan") if value is None else float(value), dtype=torch.float64
                )
            trainer.callback_metrics[SUMMARY_PREFIX + key] = tensor


def _pop_summary(trainer: L.Trainer) -> dict[str, Any]:
    """Remove the :class:`FitSummary` keys from ``trainer.callback_metrics``; return the values.

    Falls back to :meth:`FitSummary.collect` of this process if no ``on_fit_end`` stored them.
    """
    metrics = trainer.callback_metrics
    keys = [k for k in metrics if k.startswith(SUMMARY_PREFIX)]
    stored = {k[len(SUMMARY_PREFIX) :]: metrics.pop(k) for k in keys}
    if not stored:
        return FitSummary.collect(trainer)
    out: dict[str, Any] = {}
    for key, tensor in stored.items():
        if key == "best_model_score":
            out[key] = None if torch.isnan(tensor) else tensor
        else:
            out[key] = None if torch.isnan(tensor) else int(tensor)
    out["stopped_early"] = bool(out.get("stopped_early"))
    return out


def build_trainer(
    trainer_cfg: Mapping[str, Any] | None,
    out_dir: str | Path,
    loggers: Sequence[Logger] | None = None,
    callbacks: Sequence[Callback] | None = None,
) -> L.Trainer:
    """Build a ``lightning.Trainer`` from the ``trainer`` config node.

    Adds: :class:`EpochSeed` (per-epoch reseeding), :class:`FitSummary`, :class:`TorchThreads`
    (CPU, ``cpu_threads`` set; also in DDP workers), early stopping on ``val/loss``
    (``early_stopping.patience``; null/0 disables), ``ModelCheckpoint`` (best on ``val/loss`` as
    ``best-epoch=NNN.ckpt`` + ``last.ckpt``, every epoch, in ``<out_dir>/checkpoints``), a progress
    bar, and a ``CSVLogger`` in ``<out_dir>/csv`` when ``csv_logger`` is true. Lightning's
    per-trainer boilerplate is silenced (:func:`quiet_lightning`).

    Args:
        trainer_cfg: the ``trainer`` node (keys of :data:`DEFAULTS`).
        out_dir: run directory (checkpoints, CSV logs).
        loggers: extra Lightning loggers.
        callbacks: extra callbacks.
    """
    cfg = resolve_cfg(trainer_cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quiet_lightning()
    if cfg["accelerator"] in ("gpu", "cuda"):
        torch.set_float32_matmul_precision("high")
    elif cfg.get("cpu_threads"):
        # Crystal graphs are small: one intra-op thread avoids OpenMP oversubscription, which
        # made a CGCNN step on a ParAIsite batch ~40x slower with 2 threads on a loaded 2-core
        # machine (0.59 s vs 0.014 s per step; see benchmarks/train.py --threads N).
        torch.set_num_threads(int(cfg["cpu_threads"]))

    cbs: list[Callback] = [EpochSeed(cfg["seed"]), EpochCounter(), FitSummary()]
    if cfg["accelerator"] not in ("gpu", "cuda") and cfg.get("cpu_threads"):
        cbs.append(TorchThreads(int(cfg["cpu_threads"])))
    es = cfg["early_stopping"]
    if es.get("patience"):
        cbs.append(
            EarlyStopping(
                monitor=MONITOR,
                mode="min",
                patience=int(es["patience"]),
                min_delta=float(es["min_delta"]),
            )
        )
    cbs.append(
        ModelCheckpoint(
            dirpath=checkpoint_dir(out),
            filename="best-{epoch:03d}",
            monitor=MONITOR,
            mode="min",
            save_top_k=1,
            save_last=True,
            every_n_epochs=1,
        )
    )
    bar = _progress_bar(cfg["progress_bar"], int(cfg["refresh_rate"]))
    if bar is not None:
        cbs.append(bar)
    cbs.extend(callbacks or [])

    all_loggers: list[Logger] = []
    if cfg["csv_logger"]:
        all_loggers.append(CSVLogger(save_dir=out, name="csv", version=0))
    all_loggers.extend(loggers or [])

    return L.Trainer(
        default_root_dir=out,
        accelerator=cfg["accelerator"],
        devices=cfg["devices"],
        strategy=cfg["strategy"],
        precision=cfg["precision"],
        deterministic=cfg["deterministic"],
        max_epochs=int(cfg["max_epochs"]),
        min_epochs=int(cfg["min_epochs"] or 0),
        gradient_clip_val=cfg["gradient_clip_val"],
        gradient_clip_algorithm="norm",
        check_val_every_n_epoch=1,
        limit_train_batches=cfg["limit_train_batches"],
        limit_val_batches=cfg["limit_val_batches"],
        limit_test_batches=cfg["limit_test_batches"],
        limit_predict_batches=cfg["limit_predict_batches"],
        num_sanity_val_steps=int(cfg["num_sanity_val_steps"]),
        log_every_n_steps=int(cfg["log_every_n_steps"]),
        enable_progress_bar=bar is not None,
        enable_model_summary=False,
        logger=all_loggers or False,
        callbacks=cbs,
    )


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        trainer: the Lightning trainer (``callback_metrics`` holds the last logged values).
        best_ckpt: best checkpoint on ``val/loss`` (None if none was written).
        last_ckpt: ``<out_dir>/checkpoints/last.ckpt``.
        resumed_from: checkpoint the run resumed from, or None for a fresh run.
        first_epoch: first epoch index trained in this call (None if no epoch ran).
        epochs_run: training epochs run in this call.
        stopped_early: early stopping ended the run.
        best_val_loss: best ``val/loss`` (standardized MSE).
        val_metrics: validation metrics of the best checkpoint.
        test_metrics: test metrics of the best checkpoint (empty without a test split).
    """

    trainer: L.Trainer
    best_ckpt: Path | None
    last_ckpt: Path
    resumed_from: Path | None
    first_epoch: int | None
    epochs_run: int
    stopped_early: bool
    best_val_loss: float | None
    val_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)


def _usable_checkpoint(path: Path) -> bool:
    """Check that ``path`` loads with ``weights_only=True``; move a corrupt file aside."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any failure means we cannot resume from it
        bad = path.with_suffix(".ckpt.corrupt")
        log.warning("cannot resume from %s (%s); moved to %s, starting fresh", path, exc, bad)
        shutil.move(path, bad)
        return False
    return True


def load_weights(module: torch.nn.Module, ckpt_path: str | Path) -> None:
    """Load a Lightning checkpoint's ``state_dict`` into ``module`` (``weights_only=True``)."""
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def fit(
    trainer_cfg: Mapping[str, Any] | None,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    out_dir: str | Path,
    *,
    loggers: Sequence[Logger] | None = None,
    callbacks: Sequence[Callback] | None = None,
    test: bool = True,
) -> FitResult:
    """Train with automatic resume, then evaluate the best checkpoint on val (and test).

    Resumes from ``<out_dir>/checkpoints/last.ckpt`` when it exists and ``trainer.resume`` is
    true. Call ``lightning.seed_everything(trainer.seed, workers=True)`` *before* building the
    model so that a fresh run and a resumed run construct the same objects. At the end the module
    holds the best checkpoint's weights.

    Args:
        trainer_cfg: the ``trainer`` config node.
        module: a :class:`~kappaflow.training.module.KappaLightningModule`.
        datamodule: a :class:`~kappaflow.training.datamodule.GraphDataModule`.
        out_dir: run directory.
        loggers: extra Lightning loggers.
        callbacks: extra callbacks (e.g. the MLflow epoch logger).
        test: evaluate the best checkpoint on the test split if the datamodule has one.
    """
    cfg = resolve_cfg(trainer_cfg)
    trainer = build_trainer(cfg, out_dir, loggers=loggers, callbacks=callbacks)
    last = checkpoint_dir(out_dir) / LAST_CKPT
    resume = last if cfg["resume"] and last.is_file() and _usable_checkpoint(last) else None
    if resume is not None:
        log.info("resuming from %s", resume)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)

    # The outcome as rank 0 saw it (FitSummary); after a fork/spawn DDP fit this process's
    # callbacks never ran, and Lightning only restored weights, best path and callback_metrics.
    summary = _pop_summary(trainer)
    ckpt_cb = trainer.checkpoint_callback
    assert isinstance(ckpt_cb, ModelCheckpoint)
    best = Path(ckpt_cb.best_model_path) if ckpt_cb.best_model_path else None
    best_score = summary["best_model_score"]
    stopped = summary["stopped_early"]
    progress = trainer.fit_loop.epoch_progress.current  # trainer.current_epoch reads .completed
    if progress.completed != summary["current_epoch"]:  # DDP workers trained: mirror rank 0
        for name in ("ready", "started", "processed", "completed"):
            setattr(progress, name, summary["current_epoch"])

    val_metrics: dict[str, float] = {}
    test_metrics: dict[str, float] = {}
    if best is not None and best.is_file():
        load_weights(module, best)
        val_metrics = _floats(trainer.validate(module, datamodule=datamodule, verbose=False)[0])
        has_test = bool(getattr(datamodule, "test_idx", None))
        if test and has_test:
            test_metrics = _floats(trainer.test(module, datamodule=datamodule, verbose=False)[0])
    return FitResult(
        trainer=trainer,
        best_ckpt=best,
        last_ckpt=last,
        resumed_from=resume,
        first_epoch=summary["first_epoch"],
        epochs_run=summary["epochs_run"],
        stopped_early=stopped,
        best_val_loss=float(best_score) if best_score is not None else None,
        val_metrics=val_metrics,
        test_metrics=test_metrics,
    )
