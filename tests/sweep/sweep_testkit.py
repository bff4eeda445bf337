"""Cheap objectives and helpers for sweep tests (top level: picklable for spawned workers)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

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


def sweep_study(name: str, url: str) -> optuna.Study:
    """Load the study ``name`` from the storage ``url`` (any kind :func:`open_storage` takes)."""
    import optuna

    from kappaflow.sweep.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url))


def trial_runs(uri: str, study: str) -> list:
    """The MLflow trial runs (children of a sweep run) of ``study`` in the store at ``uri``."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("kappaflow-sweeps")
    return [
        r
        for r in client.search_runs([exp.experiment_id], f"tags.`optuna.study` = '{study}'")
        if "mlflow.parentRunId" in r.data.tags
    ]


def wait_for(path: Path, timeout_s: float = 90.0) -> str:
    """Wait until ``path`` exists; return its text."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if path.is_file() and path.read_text():
            return path.read_text()
        time.sleep(0.1)
    raise TimeoutError(f"{path} did not appear within {timeout_s} s")
