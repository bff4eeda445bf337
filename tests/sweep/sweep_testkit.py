"""Cheap objectives and helpers for sweep tests (top level: picklable for spawned workers)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

LR = "transfer.strategies.finetune.trainer.optim.lr"
MARKER_ENV = "KAPPAFLOW_TEST_MARKER"


def sweep_overrides(study: str, n_trials: int, *extra: str) -> tuple[str, ...]:
    """Hydra overrides of a fast test sweep (no best file, quick heartbeat)."""
    return (
        f"sweep.study_name={study}",
        f"sweep.n_trials={n_trials}",
        "sweep.best_file=null",
        "sweep.heartbeat.interval_s=1",
        "sweep.heartbeat.grace_s=3",
        "sweep.heartbeat.poll_s=0.5",
        "sweep.sampler.n_startup_trials=2",
        *extra,
    )


def quadratic(trial) -> float:  # noqa: ANN001 - optuna.Trial
    """(log10 lr + 3)^2, reported over 2 'folds'; minimum at the configured lr = 1e-3."""
    lr = trial.suggest_float(LR, 1e-4, 3e-3, log=True)
    value = (math.log10(lr) + 3.0) ** 2
    for step in range(2):
        trial.report(value, step)
    return value


def sleepy(trial) -> float:  # noqa: ANN001 - optuna.Trial
    """Suggest, write the trial number to $KAPPAFLOW_TEST_MARKER, then hang (to be killed)."""
    trial.suggest_float(LR, 1e-4, 3e-3, log=True)
    Path(os.environ[MARKER_ENV]).write_text(str(trial.number))
    time.sleep(300)
    return 0.0


def sweep_main(overrides: Sequence[str], storage: str, rank: int) -> None:
    """One 'machine' of a team sweep: ``run_sweep`` with the quadratic objective."""
    from kappaflow.sweep.objective import ConfigSource
    from kappaflow.sweep.runner import run_sweep

    run_sweep(ConfigSource(tuple(overrides)), storage=storage, rank=rank, objective=quadratic)


def wait_for(path: Path, timeout_s: float = 90.0) -> str:
    """Wait until ``path`` exists; return its text."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if path.is_file() and path.read_text():
            return path.read_text()
        time.sleep(0.1)
    raise TimeoutError(f"{path} did not appear within {timeout_s} s")
