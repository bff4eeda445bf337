"""The ``sweep`` config node (``conf/sweep/*.yaml``), checked once into :class:`SweepSettings`."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from kappaflow.config import as_dict
from kappaflow.sweep.space import ParamSpec, parse_space

#: Environment variable naming the storage URL; wins over ``sweep.storage`` (keeps a team
#: server's password out of the committed config). ``storage=`` on the command line wins over it.
STORAGE_ENV = "KAPPAFLOW_SWEEP_STORAGE"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class SettingsError(ValueError):
    """The ``sweep`` config node is invalid (the message names the key)."""


@dataclass(frozen=True)
class SweepSettings:
    """Everything a sweep needs besides the trial configs.

    Attributes:
        study_name: Optuna study name (also names the MLflow parent run and the best file).
        dataset: κ dataset (key of ``datasets``) the trials are scored on.
        strategy: transfer strategy (key of ``transfer.strategies``) unless a trial searches
            ``sweep.strategy``.
        n_trials: finished (complete + pruned) trials the study should reach; failed trials do
            not count, so re-running tops them up.
        storage: Optuna storage URL (``sqlite:///``, ``postgresql+psycopg2://``, ``journal:``).
        seed: base seed of the TPE sampler (worker ``rank`` is added) and of the held-out part.
        enqueue_defaults: run the config's own values of the searched parameters as the first
            trial (the baseline the best trial is compared with).
        holdout_fraction: grouped fraction of ``dataset``'s rows no trial ever sees.
        n_splits: inner folds per repeat (the pruner's steps).
        n_repeats: inner repeats.
        sampler: keyword arguments of ``optuna.samplers.TPESampler`` (besides ``seed``).
        pruner: keyword arguments of ``optuna.pruners.MedianPruner``.
        heartbeat_interval_s: RDB storages: seconds between a running trial's heartbeats.
        grace_s: RDB storages: a running trial without a heartbeat for this long is failed.
        max_retry: a failed stale trial (killed worker) is re-queued with the same parameters
            this many times.
        poll_s: seconds an idle worker waits before checking again for stale / queued trials.
        trainer: merged over ``evaluation.trainer`` for every fit of a trial (e.g. fewer epochs).
        best_file: where the best trial's overrides are written (Hydra experiment file), or None.
        keep_work: keep each trial's fold checkpoints under ``.cache/kappaflow/sweep/``.
        max_consecutive_failures: a worker stops after this many failed trials in a row.
        params: the search space.
    """

    study_name: str
    dataset: str
    strategy: str
    n_trials: int
    storage: str
    seed: int
    enqueue_defaults: bool
    holdout_fraction: float
    n_splits: int
    n_repeats: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    heartbeat_interval_s: int
    grace_s: int
    max_retry: int
    poll_s: float
    trainer: dict[str, Any]
    best_file: str | None
    keep_work: bool
    max_consecutive_failures: int
    params: list[ParamSpec] = field(default_factory=list)

    @classmethod
    def from_cfg(cls, cfg: DictConfig | Mapping[str, Any]) -> SweepSettings:
        """Read ``cfg.sweep`` (a full config) with the storage from ``KAPPAFLOW_SWEEP_STORAGE``.

        Raises:
            SettingsError: a missing ``sweep`` node or an invalid value.
            kappaflow.sweep.space.SpaceError: a malformed search space.
        """
        node = cfg.get("sweep") if isinstance(cfg, Mapping | DictConfig) else None
        if node is None:
            raise SettingsError(
                "the config has no `sweep` node: add `- sweep: default` to conf/config.yaml "
                "defaults or pass sweep=<space>"
            )
        s = as_dict(node)
        inner, hb = dict(s.get("inner") or {}), dict(s.get("heartbeat") or {})
        out = cls(
            study_name=_name(s.get("study_name")),
            dataset=_str(s, "dataset"),
            strategy=_str(s, "strategy"),
            n_trials=_int(s.get("n_trials"), "n_trials", 0),
            storage=os.environ.get(STORAGE_ENV) or _str(s, "storage"),
            seed=_int(s.get("seed"), "seed", 0),
            enqueue_defaults=bool(s.get("enqueue_defaults", True)),
            holdout_fraction=float(s.get("holdout_fraction", 0.2)),
            n_splits=_int(inner.get("n_splits", 3), "inner.n_splits", 2),
            n_repeats=_int(inner.get("n_repeats", 1), "inner.n_repeats", 1),
            sampler=dict(s.get("sampler") or {}),
            pruner=dict(s.get("pruner") or {}),
            heartbeat_interval_s=_int(hb.get("interval_s", 20), "heartbeat.interval_s", 1),
            grace_s=_int(hb.get("grace_s", 60), "heartbeat.grace_s", 1),
            max_retry=_int(hb.get("max_retry", 1), "heartbeat.max_retry", 0),
            poll_s=float(hb.get("poll_s", 5.0)),
            trainer=dict(s.get("trainer") or {}),
            best_file=str(s["best_file"]) if s.get("best_file") else None,
            keep_work=bool(s.get("keep_work", False)),
            max_consecutive_failures=_int(
                s.get("max_consecutive_failures", 3), "max_consecutive_failures", 1
            ),
            params=parse_space(s.get("params")),
        )
        if not 0.0 <= out.holdout_fraction < 1.0:
            raise SettingsError(
                f"sweep.holdout_fraction must be in [0, 1), got {out.holdout_fraction}"
            )
        if out.grace_s <= out.heartbeat_interval_s:
            raise SettingsError(
                f"sweep.heartbeat.grace_s ({out.grace_s}) must exceed interval_s "
                f"({out.heartbeat_interval_s}), or live trials would be failed"
            )
        if out.poll_s <= 0:
            raise SettingsError(f"sweep.heartbeat.poll_s must be > 0, got {out.poll_s}")
        if "seed" in out.sampler:
            raise SettingsError("sweep.sampler.seed: set sweep.seed instead (the rank is added)")
        return out


def _str(s: Mapping[str, Any], key: str) -> str:
    value = s.get(key)
    if not isinstance(value, str) or not value:
        raise SettingsError(f"sweep.{key} must be a non-empty string, got {value!r}")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise SettingsError(
            f"sweep.study_name must be letters, digits, '_', '.', '-' (it names files), "
            f"got {value!r}"
        )
    return value


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SettingsError(f"sweep.{key} must be an integer >= {minimum}, got {value!r}")
    return value
