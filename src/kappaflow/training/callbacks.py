"""Small Lightning callbacks used by :func:`kappaflow.training.trainer.build_trainer`."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import seed_everything

from kappaflow.io_utils import atomic_write


class EpochSeed(L.Callback):
    """Re-seed all RNGs at the start of every training epoch from ``(seed, epoch)``.

    Makes everything random inside an epoch (dropout, random augmentation, worker seeds of the
    next loader) a function of ``(seed, epoch)`` only, so a run resumed from an epoch checkpoint
    continues exactly like an uninterrupted one (Lightning does not store RNG states).

    Args:
        seed: base seed (``trainer.seed``).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Seed torch/numpy/random with ``seed + 1_000 * (epoch + 1)``."""
        seed_everything(
            self.seed + 1_000 * (trainer.current_epoch + 1), workers=True, verbose=False
        )


class EpochCounter(L.Callback):
    """Record which training epochs ran in this process (``first_epoch``, ``epochs_run``)."""

    def __init__(self) -> None:
        self.first_epoch: int | None = None
        self.epochs_run = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Count a finished epoch."""
        if self.first_epoch is None:
            self.first_epoch = int(trainer.current_epoch)
        self.epochs_run += 1

    def state_dict(self) -> dict[str, Any]:
        """Nothing to checkpoint (per-process counter)."""
        return {}


class EpochHistory(L.Callback):
    """Keep one row of scalar metrics per epoch in a CSV that survives crash-and-resume.

    Rows are keyed by epoch: a redone epoch (after a resume) replaces its earlier row. Also
    records the wall time of each training epoch in seconds (``epoch_seconds``).

    Args:
        path: CSV file (e.g. ``<run dir>/history.csv``); created if missing.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the epoch clock."""
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Append (or replace) this epoch's row."""
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        row: dict[str, float] = {"epoch": float(trainer.current_epoch)}
        for key, value in trainer.callback_metrics.items():
            if (
                isinstance(value, torch.Tensor)
                and value.numel() == 1
                or isinstance(value, int | float)
            ):
                row[key] = float(value)
        row["epoch_seconds"] = time.perf_counter() - self._t0
        rows = [r for r in read_history(self.path) if int(r["epoch"]) != int(row["epoch"])]
        rows.append(row)
        rows.sort(key=lambda r: r["epoch"])
        keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "epoch", k))

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=keys)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.path, write)


def read_history(path: str | Path) -> list[dict[str, float]]:
    """Rows written by :class:`EpochHistory` (empty if the file does not exist)."""
    p = Path(path)
    if not p.is_file():
        return []
    with p.open(newline="") as fh:
        return [
            {k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(fh)
        ]
