"""The objective of a sweep trial: mean inner-CV log10-MAE of one config on one κ dataset.

A trial's config is the sweep's base config plus the trial's overrides (Hydra composition of
``conf/``, or ``params.yaml`` + dot-list overrides for the DVC entry). The κ dataset is split
once, grouped by material, into a search part and a held-out part (``sweep.holdout_fraction``);
**no trial ever sees the held-out rows** — not for training, early stopping or scoring — so they
stay an untouched check of the tuned config. The search part goes through the project's CV
protocol (:func:`kappaflow.evaluation.protocol.cross_validate`, ``sweep.inner`` folds) with the
same ``fit_predict`` the ``finetune`` stage uses
(:func:`kappaflow.transfer.stage.build_fit_predict`). After each fold the running mean
log10-MAE (decades of κ, κ in W/m/K) is reported to Optuna (step = fold) and the pruner may stop
the trial.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from kappaflow.layout import project_root
from kappaflow.sweep.settings import SweepSettings
from kappaflow.sweep.space import STRATEGY_PATH, suggest, to_overrides

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

#: ``fit_predict(train_idx, val_idx, test_idx) -> κ (W/m/K) for test_idx``.
FitPredict = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
#: ``(cfg, strategy, dataset, table, work_dir) -> FitPredict`` (default: build_fit_predict).
FitPredictFactory = Callable[[DictConfig, str, str, pd.DataFrame, Path], FitPredict]
#: ``(cfg, dataset) -> (table with id, formula, spacegroup, kappa; target name)``.
TableLoader = Callable[[DictConfig, str], tuple[pd.DataFrame, str]]


@dataclass(frozen=True)
class ConfigSource:
    """Where trial configs come from (picklable, so spawned workers rebuild them).

    Attributes:
        overrides: overrides applied to every trial (before the trial's own).
        params_file: None: compose ``conf/`` with Hydra (``kappaflow sweep``); a path: load that
            ``params.yaml`` and apply dot-list overrides (the DVC entry ``pipelines/sweep.py``;
            config-group choices cannot be searched there).
    """

    overrides: tuple[str, ...] = ()
    params_file: str | None = None

    def load(self, extra: Sequence[str] = ()) -> DictConfig:
        """Return the config with ``overrides`` then ``extra`` applied.

        Composing ``conf/``, the transfer recipes the sweep searches (``sweep.strategy`` and the
        searched choices) are added to the selected ones when missing (the default profile
        selects the stack alone; a TL-CGCNN sweep needs ``finetune``), unless ``overrides``
        choose ``transfer`` themselves.
        """
        if self.params_file is None:
            from kappaflow.config import compose

            return compose([*self.base_overrides(), *extra])
        from kappaflow.config import load_params

        cfg = load_params(self.params_file)
        for item in [*self.overrides, *extra]:
            key = item.partition("=")[0].lstrip("+~")
            if "." not in key and isinstance(cfg.get(key), DictConfig):
                raise ValueError(
                    f"override {item!r} picks a config group: not possible on "
                    f"{self.params_file}; use `kappaflow sweep` (Hydra composition of conf/)"
                )
        return load_params(self.params_file, [*self.overrides, *extra])

    def base_overrides(self) -> tuple[str, ...]:
        """Return ``overrides`` plus ``transfer=[selected..., searched...]`` if needed.

        That is, when a strategy the sweep searches is not selected (Hydra composition only; a
        params.yaml cannot pick config groups). Worked out once per source, not per trial.
        """
        return self._base_overrides

    @cached_property
    def _base_overrides(self) -> tuple[str, ...]:
        if self.params_file is not None or any(
            o.partition("=")[0].lstrip("+~") == "transfer" for o in self.overrides
        ):
            return self.overrides
        from kappaflow.config import compose
        from kappaflow.sweep.settings import SweepSettings
        from kappaflow.sweep.space import searched_strategies

        base = compose(list(self.overrides))
        if base.get("sweep") is None:
            return self.overrides
        selected = [str(s) for s in base.transfer.strategies]
        searched = searched_strategies(SweepSettings.from_cfg(base).params, base)
        missing = [s for s in searched if s not in selected]
        if not missing:
            return self.overrides
        return (*self.overrides, f"transfer=[{','.join(selected + missing)}]")


def holdout_split(
    table: pd.DataFrame, fraction: float, seed: int, group_level: str = "formula"
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into a search part and a grouped held-out part no trial may use.

    Args:
        table: rows with ``formula`` (and ``spacegroup`` for ``formula+spacegroup``).
        fraction: target fraction of rows held out, in [0, 1); 0 holds out nothing.
        seed: split seed (same seed, same split, whatever the row order).
        group_level: material grouping (:func:`kappaflow.data.leakage.material_keys`).

    Returns:
        ``(search_rows, holdout_rows)``: sorted row positions, no material on both sides.
    """
    from kappaflow.data.leakage import material_keys
    from kappaflow.data.splits import train_val_test_split

    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return np.arange(len(table)), np.array([], dtype=np.int64)
    keys = material_keys(table, group_level).to_numpy()  # type: ignore[arg-type]
    labels = train_val_test_split(keys, (1.0 - fraction, 0.0, fraction), seed=seed)
    return np.flatnonzero(labels == "train"), np.flatnonzero(labels == "test")


class FoldReporter:
    """Wrap a ``fit_predict``: score each fold, report the running mean, prune if told to.

    Args:
        trial: the Optuna trial.
        kappa: κ (W/m/K) of the rows the CV runs on.
        fit_predict: the wrapped callback.
        n_folds: folds the CV will run; after the last one the trial is finished, never pruned
            (None: unknown, the pruner is asked after every fold).
    """

    def __init__(
        self,
        trial: optuna.Trial,
        kappa: np.ndarray,
        fit_predict: FitPredict,
        n_folds: int | None = None,
    ) -> None:
        self.trial = trial
        self.kappa = np.asarray(kappa, dtype=np.float64)
        self.fit_predict = fit_predict
        self.n_folds = n_folds
        self.fold_log10_mae: list[float] = []

    def __call__(
        self, train_idx: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray
    ) -> np.ndarray:
        """Fit, predict the fold's test rows, report; raise ``TrialPruned`` when pruned."""
        import optuna

        from kappaflow.evaluation.metrics import regression_metrics

        pred = self.fit_predict(train_idx, val_idx, test_idx)
        pred = np.asarray(pred, dtype=np.float64).reshape(-1)
        mae = regression_metrics(self.kappa[test_idx], pred)["log10_mae"]
        self.fold_log10_mae.append(float(mae))
        step = len(self.fold_log10_mae) - 1
        running = float(np.mean(self.fold_log10_mae))
        self.trial.report(running, step)
        self.trial.set_user_attr("fold_log10_mae", list(self.fold_log10_mae))
        last = self.n_folds is not None and step + 1 >= self.n_folds
        if not last and self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after inner fold {step}: running mean log10-MAE {running:.4f}"
            )
        return pred


def trial_work_dir(study_name: str, trial: optuna.Trial) -> Path:
    """Cache directory of a trial's folds (a re-queued stale trial reuses its original's)."""
    key = trial.user_attrs.get("work_key", trial.number)
    return project_root() / ".cache" / "kappaflow" / "sweep" / study_name / f"trial-{key}"


def sweep_trainer_cfg(cfg: DictConfig, trainer: dict[str, Any]) -> None:
    """Merge ``sweep.trainer`` over ``cfg.evaluation.trainer`` in place (applied to every fit).

    ``cfg`` may be in struct mode (Hydra composition): the merge runs on a plain, unstructured
    copy of ``evaluation.trainer``, so keys it lacks (e.g. ``progress_bar`` under
    ``+experiment=smoke``) are added instead of raising ``ConfigKeyError``.
    """
    if not trainer:
        return
    current = cfg.evaluation.get("trainer")
    base = OmegaConf.to_container(current, resolve=False) if isinstance(current, DictConfig) else {}
    overlay = OmegaConf.to_container(trainer) if isinstance(trainer, DictConfig) else dict(trainer)
    merged = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(overlay))
    OmegaConf.update(cfg, "evaluation.trainer", merged, merge=False, force_add=True)


class CVObjective:
    """``objective(trial) -> mean inner-CV log10-MAE`` of the trial's config.

    Args:
        source: where trial configs come from.
        settings: the sweep settings (space, holdout, inner folds, sweep trainer).
        base: the base config (default: ``source.load()``), for ``when`` conditions.
        table_loader: κ table of a dataset (default: :func:`kappaflow.transfer.stage.kappa_table`).
        fit_predict_factory: builds each trial's ``fit_predict`` (default:
            :func:`kappaflow.transfer.stage.build_fit_predict`).
    """

    def __init__(
        self,
        source: ConfigSource,
        settings: SweepSettings,
        base: DictConfig | None = None,
        *,
        table_loader: TableLoader | None = None,
        fit_predict_factory: FitPredictFactory | None = None,
    ) -> None:
        self.source = source
        self.settings = settings
        self.base = base if base is not None else source.load()
        self.table_loader = table_loader
        self.fit_predict_factory = fit_predict_factory

    def config(self, trial: optuna.Trial) -> tuple[DictConfig, dict[str, Any]]:
        """Sample the trial's parameters; return its config and ``{override path: value}``."""
        params = suggest(trial, self.settings.params, self.base)
        trial.set_user_attr("overrides", params)
        cfg = self.source.load(to_overrides(params))
        sweep_trainer_cfg(cfg, self.settings.trainer)
        return cfg, params

    def __call__(self, trial: optuna.Trial) -> float:
        """Run the inner CV of the trial's config; return its mean log10-MAE (decades)."""
        from kappaflow.evaluation.protocol import cross_validate, protocol_settings

        cfg, params = self.config(trial)
        strategy = str(OmegaConf.select(cfg, STRATEGY_PATH))
        dataset = str(cfg.sweep.dataset)
        loader = self.table_loader or _kappa_table
        table, _ = loader(cfg, dataset)
        search, _holdout = holdout_split(
            table, self.settings.holdout_fraction, self.settings.seed, cfg.evaluation.group_level
        )
        part = table.iloc[search].reset_index(drop=True)
        factory = self.fit_predict_factory or _build_fit_predict
        work = trial_work_dir(self.settings.study_name, trial)
        fit_predict = factory(cfg, strategy, dataset, part, work)
        protocol = protocol_settings(cfg.evaluation)
        protocol.update(
            n_splits=int(cfg.sweep.inner.n_splits), n_repeats=int(cfg.sweep.inner.n_repeats)
        )
        n_folds = protocol["n_splits"] * protocol["n_repeats"]
        reporter = FoldReporter(trial, part["kappa"].to_numpy(), fit_predict, n_folds)
        log.info(
            "trial %d: %s on %s (%d of %d rows), %s",
            trial.number,
            strategy,
            dataset,
            len(part),
            len(table),
            params,
        )
        result = cross_validate(part, reporter, **protocol, progress=False)
        summary = {
            k: float(v)
            for k, v in result.summary.items()
            if isinstance(v, int | float) and np.isfinite(v)
        }
        trial.set_user_attr("cv", summary)
        trial.set_user_attr("strategy", strategy)
        trial.set_user_attr("n_search_rows", len(part))
        return float(result.summary["log10_mae_mean"])


def _kappa_table(cfg: DictConfig, dataset: str) -> tuple[pd.DataFrame, str]:
    from kappaflow.layout import kappa_table

    return kappa_table(cfg, dataset)


def _build_fit_predict(
    cfg: DictConfig, strategy: str, dataset: str, table: pd.DataFrame, work: Path
) -> FitPredict:
    from kappaflow.transfer.fit_predict import build_fit_predict

    return build_fit_predict(cfg, strategy, dataset, table, work)
