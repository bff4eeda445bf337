"""Run a sweep: top the study up to ``n_trials`` queued trials, then workers claim them.

How ``n_trials`` is split across workers with nothing lost or duplicated:

1. :func:`prepare_study` (under :func:`kappaflow.sweep.storage.study_lock`, so concurrent
   starts on several machines serialize) creates or loads the study, fails stale trials and
   enqueues empty WAITING trials until COMPLETE + PRUNED + RUNNING + WAITING = ``n_trials``
   (FAIL does not count: re-running tops failed trials up). With ``enqueue_defaults`` the first
   queued trial carries the config's own values of the searched parameters (the baseline).
2. Workers (:func:`run_worker`; ``workers=K`` spawns K local processes, other machines run
   ``kappaflow sweep`` on the same storage) only ever *claim* a WAITING trial — an atomic
   WAITING -> RUNNING transition in the storage — and never create trials, so the study ends
   with exactly the queued trials. Parameters are sampled at claim time by each worker's TPE
   sampler (seed ``sweep.seed`` + rank + trials already finished) from the whole history.
3. A worker killed mid-trial stops its heartbeat (RDB storages); after ``grace_s`` the next
   worker that looks marks the trial FAIL and re-queues its parameters (``max_retry``), and the
   study continues. An idle worker keeps polling while trials it could inherit are running.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import socket
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kappaflow.layout import project_root
from kappaflow.sweep.objective import ConfigSource, CVObjective, trial_work_dir
from kappaflow.sweep.settings import SweepSettings
from kappaflow.sweep.space import check_paths, default_params
from kappaflow.sweep.storage import (
    open_storage,
    redact,
    resolve_url,
    study_lock,
    supports_heartbeat,
)
from kappaflow.sweep.tracking import PARENT_ATTR, SweepTracker, worker_label
from kappaflow.sweep.trial_queue import (
    WORKER_ATTR,
    Heartbeat,
    StaleTrialHandler,
    claim_waiting,
    fail_stale,
    quiet_optuna,
    should_wait,
    top_up,
)

if TYPE_CHECKING:
    import optuna
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: Name of the objective in the study (optuna-dashboard, ``study.metric_names``).
METRIC_NAME = "inner-CV log10-MAE"

Objective = Callable[["optuna.Trial"], float]
SCHEMA_LOCK = "__schema__"  # lock name (not a study) serializing Optuna's table creation


@dataclass
class WorkerReport:
    """What one worker did: trials run per final state, and why it stopped."""

    worker: str
    states: Counter[str] = field(default_factory=Counter)
    stopped: str = ""


@dataclass
class SweepReport:
    """Outcome of :func:`run_sweep` (counts over the whole study, not just this run).

    Attributes:
        study_name: the study.
        storage: storage URL (password redacted).
        states: trials per state (COMPLETE, PRUNED, FAIL, RUNNING, WAITING).
        best_number: best trial number (None without a complete trial).
        best_value: its objective (mean inner-CV log10-MAE, decades).
        best_overrides: its ``{override path: value}``.
        baseline_value: objective of the baseline trial (config defaults), if any.
        best_file: the written experiment file, if any.
        wall_s: wall time of this run (s).
        workers: reports of the workers of this run.
    """

    study_name: str
    storage: str
    states: dict[str, int]
    best_number: int | None
    best_value: float | None
    best_overrides: dict[str, Any]
    baseline_value: float | None
    best_file: str | None
    wall_s: float
    workers: list[WorkerReport]


def _quiet_training_logs() -> None:
    """Lightning's per-fit INFO lines would bury the sweep's own log in a worker."""
    import lightning.pytorch  # noqa: F401 - sets its loggers' levels on import: import first

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")


def make_sampler(
    settings: SweepSettings, rank: int = 0, offset: int = 0
) -> optuna.samplers.TPESampler:
    """TPE sampler of one worker: seed derived from ``settings.seed``, ``rank`` and ``offset``.

    ``offset`` (trials already finished when the worker starts) keeps a resumed study from
    replaying the first random suggestions; a fresh single-worker study is reproducible.
    """
    import optuna

    seed = int(np.random.SeedSequence([settings.seed, rank, offset]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=seed, **settings.sampler)


def make_pruner(settings: SweepSettings) -> optuna.pruners.MedianPruner:
    """Median pruner over inner folds (``settings.pruner`` keyword arguments)."""
    import optuna

    return optuna.pruners.MedianPruner(**settings.pruner)


def _settings_params(settings: SweepSettings) -> dict[str, Any]:
    return {
        "sweep.dataset": settings.dataset,
        "sweep.strategy": settings.strategy,
        "sweep.space": [s.__dict__ | {"when": dict(s.when)} for s in settings.params],
        "sweep.holdout_fraction": settings.holdout_fraction,
        "sweep.inner": {"n_splits": settings.n_splits, "n_repeats": settings.n_repeats},
        "sweep.seed": settings.seed,
        "sweep.sampler": settings.sampler,
        "sweep.pruner": settings.pruner,
        "sweep.trainer": settings.trainer,
    }


def prepare_study(
    settings: SweepSettings,
    storage_url: str,
    tracker: SweepTracker,
    base: DictConfig | None = None,
    local: bool = True,
) -> optuna.Study:
    """Create or load the study and top it up to ``settings.n_trials`` (under the study lock).

    Args:
        settings: the sweep settings.
        storage_url: absolute storage URL.
        tracker: creates the MLflow parent run once per study.
        base: base config, for the baseline trial (``enqueue_defaults``); None: no baseline.
        local: also fail RUNNING trials of dead processes on this host.
    """
    import optuna

    quiet_optuna()
    handler = StaleTrialHandler(tracker, settings.max_retry)
    with study_lock(storage_url, SCHEMA_LOCK):  # first use: workers would race creating tables
        storage = _open(settings, storage_url, handler)
    baseline = None
    if base is not None and settings.enqueue_defaults:
        baseline, problems = default_params(settings.params, base)
        if problems:
            log.warning("no baseline trial: configured value(s) outside the space: %s", problems)
            baseline = None
    with study_lock(storage_url, settings.study_name):
        study = optuna.create_study(
            study_name=settings.study_name,
            storage=storage,
            direction="minimize",
            load_if_exists=True,
        )
        if study.direction != optuna.study.StudyDirection.MINIMIZE:
            raise ValueError(f"study {settings.study_name!r} exists and does not minimize")
        if study.metric_names != [METRIC_NAME]:  # the dashboard's axis label ("Objective 0")
            study.set_metric_names([METRIC_NAME])
        _check_space(study, settings)
        fail_stale(study, storage, handler, local)
        added = top_up(study, settings.n_trials, baseline)
        tracker.ensure_parent(study, _settings_params(settings))
    log.info(
        "study %s on %s: %d trial(s) queued now, %d in total",
        settings.study_name,
        redact(storage_url),
        added,
        len(study.get_trials(deepcopy=False)),
    )
    return study


def _check_space(study: optuna.Study, settings: SweepSettings) -> None:
    space = [s.path for s in settings.params]
    known = study.user_attrs.get("space")
    if known is None:
        study.set_user_attr("space", space)
        study.set_user_attr("dataset", settings.dataset)
    elif list(known) != space:
        log.warning(
            "study %s was started with space %s; continuing with %s (TPE uses the shared params)",
            settings.study_name,
            known,
            space,
        )


def _open(
    settings: SweepSettings, storage_url: str, handler: StaleTrialHandler
) -> optuna.storages.BaseStorage:
    hb = supports_heartbeat(storage_url)
    return open_storage(
        storage_url,
        heartbeat_interval_s=settings.heartbeat_interval_s if hb else None,
        grace_s=settings.grace_s if hb else None,
        stale_callback=handler if hb else None,
    )


def run_trial(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    trial_id: int,
    objective: Objective,
    tracker: SweepTracker,
    settings: SweepSettings,
    rank: int = 0,
) -> optuna.trial.FrozenTrial:
    """Run a claimed trial: MLflow child run, heartbeat, objective, tell; return it finished."""
    import optuna
    from optuna.trial import TrialState

    trial = optuna.Trial(study, trial_id)
    trial.set_user_attr(
        WORKER_ATTR, {"host": socket.gethostname(), "pid": os.getpid(), "rank": rank}
    )
    if "work_key" not in trial.user_attrs:
        trial.set_user_attr("work_key", trial.number)
    try:
        run_id = tracker.start_trial(trial, study.user_attrs.get(PARENT_ATTR), worker_label(rank))
    except Exception as exc:  # noqa: BLE001 - the study goes on; the missing run is reported
        log.warning("trial %d: no MLflow run (tracking store unreachable?): %s", trial.number, exc)
        run_id = None
    heartbeat = settings.heartbeat_interval_s if isinstance(storage, _rdb_type()) else None
    value: float | None = None
    state: TrialState | None = None
    try:
        with Heartbeat(storage, trial_id, heartbeat):
            try:
                value = float(objective(trial))
            except optuna.TrialPruned as exc:
                state = TrialState.PRUNED
                log.info("trial %d pruned: %s", trial.number, exc)
            except Exception as exc:  # noqa: BLE001 - a failed trial is recorded, the sweep goes on
                state = TrialState.FAIL
                trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
                log.exception("trial %d failed", trial.number)
    except KeyboardInterrupt:
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        tracker.end_trial(run_id, storage.get_trial(trial_id))
        raise
    frozen = study.tell(trial, value if state is None else None, state=state, skip_if_finished=True)
    if state is None and frozen.state == TrialState.FAIL and frozen.value is None:
        log.warning(
            "trial %d was failed meanwhile (stale?); result %s discarded", trial.number, value
        )
    try:
        tracker.end_trial(run_id, frozen)
    except Exception as exc:  # noqa: BLE001 - the trial's result is in the study already
        log.warning("trial %d: MLflow run %s not closed: %s", trial.number, run_id, exc)
    if not settings.keep_work:
        work = trial_work_dir(settings.study_name, trial)
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):  # the study's cache dir, once its last trial is gone
            work.parent.rmdir()
    return frozen


def _rdb_type() -> type:
    import optuna

    return optuna.storages.RDBStorage


def run_worker(
    source: ConfigSource,
    *,
    storage: str | None = None,
    rank: int = 0,
    objective: Objective | None = None,
    local: bool = True,
    max_trials: int | None = None,
    base: DictConfig | None = None,
) -> WorkerReport:
    """Claim and run queued trials of the study until none is left (or could come back).

    Args:
        source: the sweep's config source (``sweep`` node: study, space, heartbeat...).
        storage: storage URL; default: ``sweep.storage`` / ``KAPPAFLOW_SWEEP_STORAGE``.
        rank: worker rank (seeds its sampler; spawned workers get 0..K-1 plus the base rank).
        objective: ``objective(trial) -> float`` to minimize; default: :class:`CVObjective`
            (tests pass cheap ones).
        local: fail RUNNING trials of dead processes on this host (besides heartbeats).
        max_trials: stop after this many trials (None: until the queue is empty).
        base: ``source.load()`` if already composed (saves a composition).
    """
    import optuna
    from optuna.trial import TrialState

    quiet_optuna()
    base = base if base is not None else source.load()
    settings = SweepSettings.from_cfg(base)
    url = resolve_url(storage or settings.storage)
    tracker = SweepTracker(base, settings.study_name)
    handler = StaleTrialHandler(tracker, settings.max_retry)
    store = _open(settings, url, handler)
    study = optuna.load_study(study_name=settings.study_name, storage=store)
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    study.sampler = make_sampler(settings, rank, len(finished))
    study.pruner = make_pruner(settings)
    if objective is None:
        _quiet_training_logs()
    run = objective or CVObjective(source, settings, base)
    report = WorkerReport(worker_label(rank))
    failures = 0
    heartbeat = supports_heartbeat(url)
    while max_trials is None or sum(report.states.values()) < max_trials:
        fail_stale(study, store, handler, local)
        trial_id = claim_waiting(study, store)
        if trial_id is None:
            if should_wait(study, heartbeat):
                time.sleep(settings.poll_s)
                continue
            report.stopped = "no queued trials left"
            break
        frozen = run_trial(study, store, trial_id, run, tracker, settings, rank)
        report.states[frozen.state.name] += 1
        failures = failures + 1 if frozen.state == TrialState.FAIL else 0
        if failures >= settings.max_consecutive_failures:
            report.stopped = f"{failures} failed trials in a row (see their `error` attribute)"
            log.error("worker %s stops: %s", report.worker, report.stopped)
            break
    else:
        report.stopped = f"max_trials={max_trials} reached"
    log.info("worker %s done: %s (%s)", report.worker, dict(report.states), report.stopped)
    return report


def _worker_process(
    source: ConfigSource,
    storage: str,
    rank: int,
    objective: Objective | None,
    threads: int | None,
    queue: Any,
) -> None:
    """Entry point of a spawned worker process: run, then put its report on ``queue``."""
    from kappaflow.logging_utils import setup_logging

    setup_logging()
    if threads:
        import torch

        torch.set_num_threads(threads)
    report = run_worker(source, storage=storage, rank=rank, objective=objective)
    queue.put(report)


@contextlib.contextmanager
def _timer() -> Iterator[Callable[[], float]]:
    start = time.perf_counter()
    yield lambda: time.perf_counter() - start


def study_report(
    study: optuna.Study, storage_url: str, wall_s: float, workers: list[WorkerReport]
) -> SweepReport:
    """Summarize a study (all trials so far)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    baseline = [t.value for t in complete if t.user_attrs.get("baseline")]
    return SweepReport(
        study_name=study.study_name,
        storage=redact(storage_url),
        states=dict(states),
        best_number=best.number if best else None,
        best_value=float(best.value) if best and best.value is not None else None,
        best_overrides=dict(best.user_attrs.get("overrides") or best.params) if best else {},
        baseline_value=float(baseline[0]) if baseline and baseline[0] is not None else None,
        best_file=None,
        wall_s=wall_s,
        workers=workers,
    )


def run_sweep(
    source: ConfigSource,
    *,
    storage: str | None = None,
    workers: int = 1,
    rank: int = 0,
    objective: Objective | None = None,
) -> SweepReport:
    """Prepare the study, run ``workers`` local workers, write the best experiment file.

    Args:
        source: the sweep's config source (base overrides, e.g. ``sweep=strategy``).
        storage: storage URL; wins over ``KAPPAFLOW_SWEEP_STORAGE`` and ``sweep.storage``.
        workers: local worker processes (1: run in this process).
        rank: rank of the first local worker (give machines distinct ranks: distinct seeds).
        objective: test hook replacing :class:`CVObjective` (must be picklable for workers > 1);
            the baseline trial still carries the config's values as fixed parameters.

    Returns:
        :class:`SweepReport` of the whole study.
    """
    import optuna

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with _timer() as elapsed:
        base = source.load()
        settings = SweepSettings.from_cfg(base)
        if storage:
            settings = replace(settings, storage=storage)
        check_paths(settings.params, base)
        url = resolve_url(settings.storage)
        tracker = SweepTracker(base, settings.study_name)
        prepare_study(settings, url, tracker, base)
        if workers == 1:
            reports = [run_worker(source, storage=url, rank=rank, objective=objective, base=base)]
        else:
            reports = _spawn_workers(source, url, workers, rank, objective)
        study = optuna.load_study(
            study_name=settings.study_name,
            storage=_open(settings, url, StaleTrialHandler(tracker, settings.max_retry)),
        )
        report = study_report(study, url, 0.0, reports)
        if settings.best_file and report.best_number is not None:
            from kappaflow.sweep.best import write_best_experiment

            path = Path(settings.best_file)
            path = path if path.is_absolute() else project_root() / path
            report.best_file = str(write_best_experiment(study, path))
        _finish_parent(tracker, study, report)
        report.wall_s = elapsed()
    return report


def _finish_parent(tracker: SweepTracker, study: optuna.Study, report: SweepReport) -> None:
    """Log the study summary to the MLflow parent run (closed when nothing is pending)."""
    pending = report.states.get("RUNNING", 0) + report.states.get("WAITING", 0)
    best = None
    if report.best_number is not None:
        best = {"trial": report.best_number, **report.best_overrides}
    summary = {
        "best_log10_mae": report.best_value,
        "baseline_log10_mae": report.baseline_value,
        **{f"n_{k.lower()}": v for k, v in report.states.items()},
    }
    try:
        tracker.finish_parent(
            study.user_attrs.get(PARENT_ATTR), summary, best, pending == 0, report.best_file
        )
    except Exception as exc:  # noqa: BLE001 - the study and the best file are written already
        log.warning("could not update the MLflow parent run of %s: %s", study.study_name, exc)


def _spawn_workers(
    source: ConfigSource, url: str, workers: int, rank: int, objective: Objective | None
) -> list[WorkerReport]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    threads = None
    if not os.environ.get("OMP_NUM_THREADS"):
        threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [
        ctx.Process(
            target=_worker_process,
            args=(source, url, rank + i, objective, threads, queue),
            name=f"sweep-worker-{rank + i}",
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    reports: list[WorkerReport] = []
    while len(reports) < workers and (any(p.is_alive() for p in procs) or not queue.empty()):
        with contextlib.suppress(Exception):
            reports.append(queue.get(timeout=1.0))
    for p in procs:
        p.join()
        if p.exitcode != 0:
            log.error("worker %s exited with code %s", p.name, p.exitcode)
            reports.append(WorkerReport(p.name, stopped=f"exit code {p.exitcode}"))
    return reports
