"""Worker processes: two machines split N trials exactly; a killed worker's trial FAILs, not lost.

Spawned processes (each imports Optuna/MLflow/Hydra: a few seconds) make this file slow.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from optuna.trial import TrialState
from sweep_testkit import (
    MARKER_ENV,
    quadratic,
    sleepy,
    sweep_main,
    sweep_overrides,
    sweep_study,
    trial_runs,
    wait_for,
)

from kappaflow.sweep.objective import ConfigSource
from kappaflow.sweep.runner import _worker_process, prepare_study, run_worker
from kappaflow.sweep.settings import SweepSettings
from kappaflow.sweep.tracking import SweepTracker

pytestmark = pytest.mark.slow


def test_two_machines_split_the_trials_exactly(tmp_path: Path, mlflow_db: str):
    """Two independent `kappaflow sweep` processes on one journal storage: 6 trials, no more."""
    url = f"journal:{tmp_path / 'optuna.journal'}"
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=sweep_main, args=(sweep_overrides("team", 6), url, rank))
        for rank in (0, 10)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    trials = sweep_study("team", url).trials
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    ranks = {t.user_attrs["worker"]["rank"] for t in trials}
    assert ranks <= {0, 10}
    runs = trial_runs(mlflow_db, "team")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == list(range(6))


def _killed_worker(tmp_path, monkeypatch, url, study, local):
    """Start a worker that hangs in its first trial, SIGKILL it; return (source, killed no.)."""
    marker = tmp_path / "marker"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    source = ConfigSource(sweep_overrides(study, 2))
    base = source.load()
    settings = SweepSettings.from_cfg(base)
    prepare_study(settings, url, SweepTracker(base, study), base)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()  # referenced until the child is gone (its lock must outlive the spawn)
    proc = ctx.Process(target=_worker_process, args=(source, url, 0, sleepy, 1, queue))
    proc.start()
    killed = int(wait_for(marker))
    proc.kill()  # SIGKILL mid-trial: no cleanup, no tell
    proc.join()
    assert sweep_study(study, url).trials[killed].state == TrialState.RUNNING
    return source, killed


def test_killed_worker_trial_fails_after_the_heartbeat_grace(tmp_path, monkeypatch, mlflow_db):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    source, killed = _killed_worker(tmp_path, monkeypatch, url, "killed", local=False)
    # heartbeat only (as if the dead worker were on another machine): fails it after grace_s
    report = run_worker(source, storage=url, rank=1, objective=quadratic, local=False)
    trials = sweep_study("killed", url).trials
    assert trials[killed].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == trials[killed].params  # re-queued with the same parameters
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2 and len(trials) == 3 and report.states["COMPLETE"] == 2
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in trial_runs(mlflow_db, "killed")}
    assert runs[killed].info.status == "FAILED" and runs[killed].data.tags["optuna.state"] == "FAIL"


def test_killed_worker_on_a_journal_is_failed_by_pid(tmp_path, monkeypatch, mlflow_db):
    url = f"journal:{tmp_path / 'optuna.journal'}"
    source, killed = _killed_worker(tmp_path, monkeypatch, url, "journal_killed", local=True)
    run_worker(source, storage=url, rank=1, objective=quadratic)
    trials = sweep_study("journal_killed", url).trials
    assert trials[killed].state == TrialState.FAIL
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_workers_option_spawns_local_processes(tmp_path: Path, mlflow_db: str):
    from kappaflow.sweep.runner import run_sweep

    url = f"journal:{tmp_path / 'optuna.journal'}"
    report = run_sweep(
        ConfigSource(sweep_overrides("local2", 4)), storage=url, workers=2, objective=quadratic
    )
    assert report.states == {"COMPLETE": 4} and len(report.workers) == 2
    assert sum(sum(w.states.values()) for w in report.workers) == 4
    assert [t.number for t in sweep_study("local2", url).trials] == [0, 1, 2, 3]
