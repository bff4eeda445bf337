"""MLflow runs of a sweep: one parent run per study, one nested child run per trial.

The parent run is created once per study (under the study lock) and its id is stored as the
study's user attribute ``mlflow_parent_run_id``, so every worker — other processes, other
machines sharing the tracking store — attaches its trial runs to the same parent
(``mlflow.parentRunId``). A child run holds the trial's overrides as params, the inner-fold
log10-MAE (``fold_log10_mae``, step = fold), the running mean the pruner saw
(``running_log10_mae``), the CV summary (``log10_mae_mean`` = the objective, ...) and the tags
``optuna.study``, ``optuna.trial_number``, ``optuna.state`` (COMPLETE / PRUNED / FAIL) and
``optuna.worker``. Runs are written with :class:`mlflow.MlflowClient` and explicit run ids (no
global active run), so a worker can also close the run of a trial another, killed, worker
left behind (marked FAILED).

Tracking URI and experiment: the ``tracking`` config node (:mod:`kappaflow.tracking.runs`).
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from kappaflow.tracking.names import is_count

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"
RUN_ATTR = "mlflow_run_id"
#: Optuna state -> MLflow run status.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}


def worker_label(rank: int) -> str:
    """``host:pid/rank`` of this worker process."""
    import os

    return f"{socket.gethostname()}:{os.getpid()}/{rank}"


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


class SweepTracker:
    """Write a sweep's runs to MLflow; every method is a no-op when tracking is disabled.

    Args:
        cfg: the base config (its ``tracking`` node).
        study_name: the Optuna study.
    """

    def __init__(self, cfg: DictConfig | None, study_name: str) -> None:
        from kappaflow.tracking.runs import tracking_cfg

        self.enabled = cfg is not None and bool(tracking_cfg(cfg)["enabled"])
        self.study_name = study_name
        self._cfg = cfg
        self._client: Any = None
        self._experiment_id: str | None = None
        self._tags: dict[str, str] | None = None

    def _connect(self) -> Any:
        if self._client is None:
            import mlflow

            from kappaflow.tracking.runs import setup_experiment

            self._experiment_id = setup_experiment(self._cfg, "sweeps")
            self._client = mlflow.MlflowClient()
        return self._client

    def _base_tags(self) -> dict[str, str]:
        if self._tags is None:
            self._tags = self._provenance()
        return dict(self._tags)

    def _provenance(self) -> dict[str, str]:
        import kappaflow
        from kappaflow.layout import project_root
        from kappaflow.tracking.git import git_info

        info = git_info(project_root())
        tags = {
            "kappaflow.stage": "sweep",
            "kappaflow.version": str(kappaflow.__version__),
            "optuna.study": self.study_name,
            "git.commit": info.commit or "unknown",
        }
        if info.commit:
            tags["mlflow.source.git.commit"] = info.commit
        return tags

    def ensure_parent(self, study: optuna.Study, params: Mapping[str, Any]) -> str | None:
        """Return the study's parent run id, creating the run (and the attribute) if needed.

        Call under :func:`kappaflow.sweep.storage.study_lock`. ``params`` (sweep settings) are
        logged when the run is created.
        """
        if not self.enabled:
            return None
        import mlflow

        client = self._connect()
        run_id = study.user_attrs.get(PARENT_ATTR)
        if run_id:
            try:
                client.get_run(run_id)
                client.update_run(run_id, status="RUNNING")
                return str(run_id)
            except mlflow.exceptions.MlflowException:
                log.warning(
                    "parent run %s of study %s is not in this tracking store; "
                    "trial runs get a new parent here",
                    run_id,
                    self.study_name,
                )
        run = client.create_run(
            self._experiment_id, run_name=f"sweep·{self.study_name}", tags=self._base_tags()
        )
        client.log_batch(
            run.info.run_id,
            params=[mlflow.entities.Param(k, _value(v)[:6000]) for k, v in params.items()],
        )
        if not run_id:
            study.set_user_attr(PARENT_ATTR, run.info.run_id)
        return str(run.info.run_id)

    def start_trial(self, trial: optuna.Trial, parent_id: str | None, worker: str) -> str | None:
        """Open the child run of ``trial``; its id is stored as the trial's ``mlflow_run_id``."""
        if not self.enabled:
            return None
        client = self._connect()
        tags = {
            **self._base_tags(),
            "optuna.trial_number": str(trial.number),
            "optuna.state": "RUNNING",
            "optuna.worker": worker,
        }
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        if trial.user_attrs.get("baseline"):
            tags["optuna.baseline"] = "true"
        run = client.create_run(self._experiment_id, run_name=f"trial·{trial.number}", tags=tags)
        trial.set_user_attr(RUN_ATTR, run.info.run_id)
        return str(run.info.run_id)

    def end_trial(self, run_id: str | None, frozen: optuna.trial.FrozenTrial) -> None:
        """Log the finished trial's params, fold metrics, summary and state; close its run."""
        if not self.enabled or run_id is None:
            return
        import mlflow
        from mlflow.entities import Metric, Param, RunTag

        client = self._connect()
        now = int(time.time() * 1000)
        params = frozen.user_attrs.get("overrides") or frozen.params
        metrics = [
            Metric("fold_log10_mae", float(v), now, k)
            for k, v in enumerate(frozen.user_attrs.get("fold_log10_mae") or [])
            if math.isfinite(v)
        ]
        metrics += [
            Metric("running_log10_mae", float(v), now, int(step))
            for step, v in sorted(frozen.intermediate_values.items())
            if math.isfinite(v)
        ]
        summary = {
            k: v for k, v in _finite(frozen.user_attrs.get("cv") or {}).items() if not is_count(k)
        }
        if frozen.value is not None and math.isfinite(frozen.value):
            summary.setdefault("objective", float(frozen.value))
        metrics += [Metric(k, v, now, 0) for k, v in summary.items()]
        state = frozen.state.name
        tags = [RunTag("optuna.state", state)]
        if frozen.user_attrs.get("error"):
            tags.append(RunTag("optuna.error", str(frozen.user_attrs["error"])[:5000]))
        try:
            client.log_batch(
                run_id,
                metrics=metrics,
                params=[Param(k, _value(v)[:6000]) for k, v in params.items()],
                tags=tags,
            )
        except mlflow.exceptions.MlflowException as exc:  # e.g. params of a resumed run
            log.warning("could not log trial %d to run %s: %s", frozen.number, run_id, exc)
        client.set_terminated(run_id, status=RUN_STATUS.get(state, "FAILED"))

    def mark_stale(self, frozen: optuna.trial.FrozenTrial) -> None:
        """Close the run of a trial failed for a lost worker (status FAILED)."""
        run_id = frozen.user_attrs.get(RUN_ATTR)
        if not self.enabled or not run_id:
            return
        try:
            client = self._connect()
            client.set_tag(run_id, "optuna.state", "FAIL")
            client.set_tag(run_id, "optuna.error", "worker lost (no heartbeat / process gone)")
            client.set_terminated(run_id, status="FAILED")
        except Exception as exc:  # noqa: BLE001 - failing a stale trial must not depend on MLflow
            log.warning("could not close run %s of stale trial %d: %s", run_id, frozen.number, exc)

    def finish_parent(
        self,
        parent_id: str | None,
        summary: Mapping[str, Any],
        best: Mapping[str, Any] | None,
        done: bool,
        artifact: str | None = None,
    ) -> None:
        """Log the study summary (counts, best value) to the parent run; close it when done."""
        if not self.enabled or parent_id is None:
            return
        client = self._connect()
        now = int(time.time() * 1000)
        from mlflow.entities import Metric, RunTag

        metrics = [Metric(k, v, now, 0) for k, v in _finite(summary).items()]
        tags = [RunTag(f"best.{k}", _value(v)[:5000]) for k, v in (best or {}).items()]
        client.log_batch(parent_id, metrics=metrics, tags=tags)
        if artifact:
            client.log_artifact(parent_id, artifact)
        if done:
            client.set_terminated(parent_id, status="FINISHED")
