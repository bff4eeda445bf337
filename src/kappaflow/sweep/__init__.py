"""Hyperparameter sweeps: Optuna studies over ``conf/sweep`` search spaces, MLflow run per trial.

``kappaflow sweep sweep=<space> n_trials=N storage=URL`` (:mod:`kappaflow.cli.sweep`) composes
each trial's config with Hydra, scores it by the mean inner-CV log10-MAE (decades of κ, κ in
W/m/K) on a κ dataset minus a held-out part no trial sees (:mod:`kappaflow.sweep.objective`),
with TPE sampling and median pruning over folds, on an SQLite, PostgreSQL or journal storage that
several workers share (:mod:`kappaflow.sweep.runner`, :mod:`kappaflow.sweep.storage`), and writes
the best parameters as ``conf/experiment/best_<study>.yaml`` (:mod:`kappaflow.sweep.best`).

Exports are lazy (importing the package does not import Optuna, MLflow or torch).
"""

from __future__ import annotations

from kappaflow._lazy import lazy_exports

_EXPORTS = {
    "ConfigSource": "kappaflow.sweep.objective",
    "CVObjective": "kappaflow.sweep.objective",
    "holdout_split": "kappaflow.sweep.objective",
    "ParamSpec": "kappaflow.sweep.space",
    "SpaceError": "kappaflow.sweep.space",
    "parse_space": "kappaflow.sweep.space",
    "SweepSettings": "kappaflow.sweep.settings",
    "open_storage": "kappaflow.sweep.storage",
    "run_sweep": "kappaflow.sweep.runner",
    "run_worker": "kappaflow.sweep.runner",
    "SweepReport": "kappaflow.sweep.runner",
    "write_best_experiment": "kappaflow.sweep.best",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
