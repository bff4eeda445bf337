"""The trial queue of a study: top-up, atomic claims, heartbeats and trials of lost workers.

Workers never create trials: :func:`top_up` enqueues WAITING trials (under the study lock) and
:func:`claim_waiting` moves one to RUNNING atomically in the storage, so ``n_trials`` is split
across any number of workers with nothing lost or duplicated. A running trial's worker records a
heartbeat (:class:`Heartbeat`, RDB storages); :func:`fail_stale` marks trials of lost workers
FAIL (heartbeat older than the grace period, or a dead process on this host) and
:class:`StaleTrialHandler` closes their MLflow run and re-queues their parameters.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kappaflow.sweep.tracking import SweepTracker

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

WORKER_ATTR = "worker"


def quiet_optuna() -> None:
    """Silence Optuna's experimental-feature warnings (heartbeat, multivariate TPE, retries)."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*heartbeat.*", category=UserWarning)


class StaleTrialHandler:
    """Called with each trial failed for a lost worker: close its run, re-queue it.

    Args:
        tracker: closes the trial's MLflow run as FAILED.
        max_retry: re-queue (same parameters) at most this many times per original trial.
    """

    def __init__(self, tracker: SweepTracker, max_retry: int) -> None:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        self.tracker = tracker
        quiet_optuna()
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Handle one stale trial (already marked FAIL in the storage)."""
        log.warning("trial %d of %s: worker lost; marked FAIL", trial.number, study.study_name)
        self.tracker.mark_stale(trial)
        self.retry(study, trial)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:  # a killed child not yet reaped is a zombie: dead for our purpose
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _trial_id(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> int:
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def fail_dead_local_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, handler: StaleTrialHandler
) -> list[int]:
    """Fail RUNNING trials whose worker process on this host no longer exists.

    Needed for the journal storage (no heartbeat in Optuna 5) and faster than the heartbeat
    grace period on one machine. Returns the failed trial numbers.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    host, me, failed = socket.gethostname(), os.getpid(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER_ATTR) or {}
        pid = worker.get("pid")
        if worker.get("host") != host or not isinstance(pid, int) or pid == me or _alive(pid):
            continue
        trial_id = _trial_id(storage, study, t.number)
        try:
            changed = storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue
        if changed:
            failed.append(t.number)
            handler(study, storage.get_trial(trial_id))
    return failed


def fail_stale(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    handler: StaleTrialHandler,
    local: bool = True,
) -> None:
    """Fail trials of lost workers: heartbeat-stale (RDB) and, if ``local``, dead local pids."""
    import optuna

    quiet_optuna()
    optuna.storages.fail_stale_trials(study)  # no-op without heartbeat
    if local:
        fail_dead_local_trials(study, storage, handler)


def top_up(study: optuna.Study, n_trials: int, baseline: dict[str, Any] | None = None) -> int:
    """Enqueue WAITING trials until COMPLETE + PRUNED + RUNNING + WAITING = ``n_trials``.

    Call under :func:`kappaflow.sweep.storage.study_lock`. ``baseline`` (fixed parameters) is
    enqueued first, once per study. Returns the number of trials enqueued.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    live = {TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING}
    need = n_trials - sum(t.state in live for t in trials)
    added = 0
    if need > 0 and baseline is not None and not any(t.user_attrs.get("baseline") for t in trials):
        study.enqueue_trial(baseline, user_attrs={"baseline": True})
        added += 1
    while added < need:
        study.enqueue_trial({})
        added += 1
    return max(added, 0)


class Heartbeat:
    """Record a running trial's heartbeat every ``interval_s`` in a thread (RDB storages)."""

    def __init__(self, storage: Any, trial_id: int, interval_s: int | None) -> None:
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.interval_s:
            self.storage.record_heartbeat(self.trial_id)
            self._thread = threading.Thread(target=self._run, daemon=True, name="sweep-heartbeat")
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self.interval_s
        while not self._stop.wait(self.interval_s):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried next interval
                log.warning("heartbeat of trial id %d failed: %s", self.trial_id, exc)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def claim_waiting(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int | None:
    """Atomically move one WAITING trial to RUNNING; return its trial id (None: none left)."""
    from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
    from optuna.trial import TrialState

    for attempt in range(5):
        try:
            for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                trial_id = _trial_id(storage, study, t.number)
                try:
                    if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                        return trial_id
                except UpdateFinishedTrialError:
                    continue
            return None
        except StorageInternalError as exc:  # SQLite busy under concurrent writers: retry
            log.debug("claim attempt %d failed: %s", attempt, exc)
            time.sleep(0.2 + np.random.default_rng().random())
    return None


def should_wait(study: optuna.Study, heartbeat: bool) -> bool:
    """Whether an idle worker may still inherit work: RUNNING trials that could go stale."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if heartbeat:
        return bool(running)
    host = socket.gethostname()
    return any((t.user_attrs.get(WORKER_ATTR) or {}).get("host") == host for t in running)
