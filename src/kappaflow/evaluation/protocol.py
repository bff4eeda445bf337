"""Honest evaluation protocol: repeated, material-grouped k-fold cross-validation for κ.

Rules enforced here (the reason this module exists; small κ sets make every shortcut visible):

* **Grouped by material.** Rows are grouped by :func:`kappaflow.data.leakage.material_keys`
  (reduced formula by default), so a material is never on both sides of a fold; this is asserted
  for every fold with :func:`kappaflow.data.splits.assert_no_leakage`.
* **The test fold is only ever predicted.** The model callback receives ``train_idx`` (fit),
  ``val_idx`` (early stopping / model selection, carved *out of the training part*, grouped) and
  ``test_idx`` (prediction only). Nothing derived from the test fold may select epochs,
  hyper-parameters or checkpoints.
* **Repeated.** ``n_repeats`` reshuffles of ``n_splits`` folds; metrics are reported as mean ±
  sample std over all ``n_repeats * n_splits`` folds.
* **Same folds for everything.** Baselines (:func:`median_fit_predict`,
  :func:`magpie_rf_fit_predict`) go through :func:`cross_validate` with the same seed, so they see
  exactly the folds the learned models see.

Cross-dataset leakage (two-stage transfer, e.g. AFLOW AGL stage 1 -> ParAIsite stage 2): for a
given high-quality test fold, every row of the low-fidelity set whose material occurs in that
fold must be dropped from stage-1 training. Inside a ``fit_predict`` callback::

    test_rows = hq_table.iloc[test_idx]
    keep = ~exclusion_mask(agl_table, [test_rows], level="formula")
    stage1_train = agl_table[keep]          # stage 1 never sees a test-fold material
    assert_disjoint_materials(stage1_train, test_rows, context=f"AGL vs fold {k}")

(:func:`forbidden_for` returns the same materials as keys, usable as ``forbidden_groups`` of
:func:`kappaflow.data.splits.grouped_kfold` on the other dataset.) A model pretrained once on the
*whole* AGL set is leak-free only for test materials absent from AGL; use per-fold stage 1 or a
stage-1 set with all κ-set materials removed (``exclude_overlapping``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kappaflow.data.leakage import Level, exclude_overlapping, material_keys, overlapping_keys
from kappaflow.data.splits import LeakageError, assert_no_leakage, grouped_kfold
from kappaflow.evaluation.baselines import FOREST_N_JOBS
from kappaflow.evaluation.metrics import aggregate_folds, regression_metrics

log = logging.getLogger(__name__)

#: ``fit_predict(train_idx, val_idx, test_idx) -> κ predictions (W/m/K) for test_idx``.
FitPredict = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
#: Columns of :attr:`CVResult.predictions`.
PREDICTION_COLUMNS = ["id", "repeat", "fold", "kappa_true", "kappa_pred"]
REQUIRED_COLUMNS = ("id", "formula")


@dataclass
class CVResult:
    """Outcome of :func:`cross_validate`.

    Attributes:
        folds: one dict per fold, ordered by (repeat, fold): ``repeat``, ``fold``, ``n_train``,
            ``n_val``, ``n_test`` and ``metrics`` (:func:`regression_metrics` of the test fold).
        summary: :func:`aggregate_folds` of the fold metrics (``<metric>_mean``,
            ``<metric>_std`` (sample std over folds), ``n_folds``).
        predictions: out-of-fold predictions, columns :data:`PREDICTION_COLUMNS` (κ in W/m/K);
            every row of the table appears once per repeat.
        config: protocol settings (n_splits, n_repeats, seed, val_fraction, group_level,
            n_forbidden_groups).
        selection: with ``score_val``, :func:`aggregate_folds` of the folds' validation-row
            metrics, keys prefixed ``val_`` (``val_log10_mae_mean``...), plus ``n_val_rows``:
            the score that may choose between strategies (the test folds never do); empty
            otherwise.
    """

    folds: list[dict[str, Any]]
    summary: dict[str, float]
    predictions: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, float] = field(default_factory=dict)

    def fold_table(self) -> pd.DataFrame:
        """Return one row per fold: repeat, fold, n_train, n_val, n_test and every metric.

        Validation-row metrics, when scored, are columns prefixed ``val_``.
        """
        rows = [
            {k: v for k, v in f.items() if k not in ("metrics", "val_metrics")}
            | f["metrics"]
            | {f"val_{k}": v for k, v in f.get("val_metrics", {}).items()}
            for f in self.folds
        ]
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``config``, ``summary``, ``folds`` and, when scored, ``selection``.

        Predictions are not included.
        """
        out = {"config": self.config, "summary": self.summary, "folds": self.folds}
        return out | ({"selection": self.selection} if self.selection else {})

    def to_json(self, indent: int | None = 2) -> str:
        """Serialize :meth:`to_dict` to JSON (NaN written as ``NaN``, as Python's json does)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)


def _check_table(table: pd.DataFrame, kappa_column: str) -> np.ndarray:
    missing = [c for c in (*REQUIRED_COLUMNS, kappa_column) if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}")
    if len(table) == 0:
        raise ValueError("table is empty")
    ids = table["id"].astype(str)
    if ids.duplicated().any():
        raise ValueError(f"duplicated id(s): {ids[ids.duplicated()].unique()[:5].tolist()}")
    kappa = table[kappa_column].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(kappa) | (kappa <= 0))
    if len(bad):
        raise ValueError(f"{len(bad)} κ value(s) not finite and > 0 W/m/K, rows {bad[:5]}")
    return kappa


def _check_fold_indices(train: np.ndarray, val: np.ndarray, test: np.ndarray, ctx: str) -> None:
    for a, b, what in (
        (train, test, "train/test"),
        (val, test, "val/test"),
        (train, val, "train/val"),
    ):
        shared = np.intersect1d(a, b)
        if len(shared):
            raise LeakageError([str(i) for i in shared], f"{ctx}: row indices shared {what}")


def dataset_evaluation(evaluation_cfg: Any, dataset: str) -> Any:
    """Return the ``evaluation`` node for one dataset: ``per_dataset[dataset]`` merged over it.

    ``evaluation.per_dataset.<dataset>`` may change any key (e.g. fewer repeats or a bigger batch
    on the 3.3k-row AGL set, ``max_folds`` on a big non-κ set); the result has no
    ``per_dataset`` key. Learned models and baselines both read their folds through this, so
    they always share them.
    """
    from omegaconf import DictConfig, OmegaConf

    plain = (
        OmegaConf.to_container(evaluation_cfg, resolve=True)
        if isinstance(evaluation_cfg, DictConfig)
        else dict(evaluation_cfg)
    )
    assert isinstance(plain, dict)
    extra = (plain.pop("per_dataset", None) or {}).get(dataset) or {}
    merged = OmegaConf.merge(OmegaConf.create(plain), extra)
    assert isinstance(merged, DictConfig)
    return merged


def protocol_settings(evaluation_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Return the :func:`cross_validate` keyword arguments of an ``evaluation`` config node.

    The one place the protocol settings are read, so that learned models and baselines run
    through identical folds. Pass the node of one dataset (:func:`dataset_evaluation`).
    """
    ev = evaluation_cfg
    max_folds = ev.get("max_folds")
    return {
        "n_splits": int(ev["n_splits"]),
        "n_repeats": int(ev["n_repeats"]),
        "seed": int(ev["seed"]),
        "val_fraction": float(ev["val_fraction"]),
        "group_level": str(ev["group_level"]),
        "max_folds": None if max_folds is None else int(max_folds),
    }


def cross_validate(
    table: pd.DataFrame,
    fit_predict: FitPredict,
    n_splits: int = 5,
    n_repeats: int = 3,
    seed: int = 0,
    val_fraction: float | None = 0.1,
    forbidden_groups: Collection[str] | None = None,
    group_level: Level = "formula",
    progress: bool = True,
    *,
    kappa_column: str = "kappa",
    max_folds: int | None = None,
    score_val: bool = False,
) -> CVResult:
    """Repeated grouped k-fold cross-validation of a κ model.

    Args:
        table: one row per material: ``id`` (unique), ``formula``, optionally ``spacegroup``,
            and κ in W/m/K (column ``kappa_column``, finite, > 0). Row positions are what the
            callback's indices refer to.
        fit_predict: ``fit_predict(train_idx, val_idx, test_idx)`` trains a fresh model on rows
            ``train_idx`` (early stopping on ``val_idx`` only; may be empty when
            ``val_fraction`` is None) and returns κ predictions (W/m/K, > 0) for ``test_idx``
            in that order. It gets copies of sorted int64 row positions.
        n_splits: folds per repeat.
        n_repeats: independent reshuffles (fold assignment seeds derived from ``seed``).
        seed: base seed of the fold assignment (the callback seeds its own model).
        val_fraction: fraction of each fold's training rows held out (grouped) for early
            stopping; None for no validation part.
        forbidden_groups: material keys never used for training/validation (they stay in their
            test fold), e.g. materials of another dataset's test set.
        group_level: ``"formula"`` (reduced formula, strictest) or ``"formula+spacegroup"``.
        progress: show a tqdm progress bar over folds.
        kappa_column: name of the κ column.
        max_folds: evaluate only the first ``max_folds`` folds (of repeat 0 first), e.g. on a big
            set where every fold costs minutes; each evaluated test fold is still held out.
            None: all ``n_repeats * n_splits``.
        score_val: also predict each fold's validation rows (the callback is asked for the
            sorted union of validation and test rows, fitted exactly as before) and record their
            metrics (``val_metrics`` per fold, :attr:`CVResult.selection`): the score by which
            strategies may be compared and chosen without looking at the test folds. It is
            optimistic for a model that early-stopped on those rows, honest for one that never
            saw them (stacks, scikit-learn heads).

    Returns:
        :class:`CVResult` with per-fold metrics, mean ± std summary and out-of-fold predictions.

    Raises:
        ValueError: bad table, or predictions of the wrong length / non-finite / <= 0.
        LeakageError: a material key on both sides of a fold, or a forbidden key in training.
    """
    from tqdm.auto import tqdm

    kappa = _check_table(table, kappa_column)
    ids = table["id"].astype(str).to_numpy()
    groups = material_keys(table, group_level).to_numpy().astype(str)
    forbidden = set(map(str, forbidden_groups)) if forbidden_groups is not None else set()
    folds = grouped_kfold(
        groups,
        n_splits=n_splits,
        n_repeats=n_repeats,
        seed=seed,
        forbidden_groups=forbidden or None,
        val_fraction=val_fraction,
    )
    if max_folds is not None:
        if max_folds < 1:
            raise ValueError(f"max_folds must be >= 1 or None, got {max_folds}")
        folds = list(folds)[:max_folds]
    fold_records: list[dict[str, Any]] = []
    pred_parts: list[pd.DataFrame] = []
    for f in tqdm(folds, desc="cv folds", disable=not progress):
        ctx = f"(repeat {f.repeat}, fold {f.fold})"
        train = np.asarray(f.train_idx, dtype=np.int64)
        val = np.asarray(f.val_idx if f.val_idx is not None else [], dtype=np.int64)
        test = np.asarray(f.test_idx, dtype=np.int64)
        _check_fold_indices(train, val, test, ctx)
        fit_groups = groups[np.concatenate([train, val])]
        assert_no_leakage(fit_groups, groups[test], ctx)
        assert_no_leakage(fit_groups, forbidden, f"{ctx}: forbidden groups in train/val")
        scoring = score_val and len(val) > 0
        asked = np.union1d(val, test) if scoring else test
        pred = np.asarray(fit_predict(train.copy(), val.copy(), asked.copy()), dtype=np.float64)
        pred = pred.reshape(-1) if pred.ndim == 2 and pred.shape[1] == 1 else pred
        if pred.shape != asked.shape:
            raise ValueError(
                f"{ctx}: fit_predict returned shape {pred.shape} for {len(asked)} rows"
            )
        record: dict[str, Any] = {
            "repeat": f.repeat,
            "fold": f.fold,
            "n_train": len(train),
            "n_val": len(val),
            "n_test": len(test),
        }
        if scoring:  # validation rows predicted too: split them off
            pred_val = pred[np.searchsorted(asked, val)]
            pred = pred[np.searchsorted(asked, test)]
            record["val_metrics"] = regression_metrics(kappa[val], pred_val)
        metrics = regression_metrics(kappa[test], pred)
        fold_records.append(record | {"metrics": metrics})
        pred_parts.append(
            pd.DataFrame(
                {
                    "id": ids[test],
                    "repeat": f.repeat,
                    "fold": f.fold,
                    "kappa_true": kappa[test],
                    "kappa_pred": pred,
                }
            )
        )
        log.debug("%s log10_mae=%.3f", ctx, metrics["log10_mae"])
    summary = aggregate_folds([r["metrics"] for r in fold_records])
    config = {
        "n_splits": n_splits,
        "n_repeats": n_repeats,
        "seed": seed,
        "val_fraction": val_fraction,
        "group_level": group_level,
        "n_rows": len(table),
        "n_groups": len(np.unique(groups)),
        "n_forbidden_groups": len(forbidden),
        "max_folds": max_folds,
    }
    predictions = pd.concat(pred_parts, ignore_index=True)[PREDICTION_COLUMNS]
    scored = [r for r in fold_records if "val_metrics" in r]
    selection: dict[str, float] = {}
    if scored:
        val_summary = aggregate_folds([r["val_metrics"] for r in scored])
        selection = {f"val_{k}": v for k, v in val_summary.items() if k != "n_folds"}
        selection |= {"n_val_folds": float(len(scored))}
        selection |= {"n_val_rows": float(sum(r["n_val"] for r in scored))}
    return CVResult(fold_records, summary, predictions, config, selection)


def _fit_rows(train_idx: np.ndarray, val_idx: np.ndarray, include_val: bool) -> np.ndarray:
    return np.union1d(train_idx, val_idx) if include_val else np.asarray(train_idx)


def median_fit_predict(
    table: pd.DataFrame, *, kappa_column: str = "kappa", include_val: bool = False
) -> FitPredict:
    """Return a ``fit_predict`` for the median baseline (median of log10 κ of the fit rows).

    Args:
        table: the table given to :func:`cross_validate`.
        kappa_column: κ column (W/m/K).
        include_val: also fit on the validation rows (baselines need no early stopping); the
            default fits on ``train_idx`` only, the rows the learned models fit on.

    Returns:
        Callable for :func:`cross_validate`; predictions are κ in W/m/K.
    """
    from kappaflow.evaluation.baselines import MedianPredictor

    kappa = table[kappa_column].to_numpy(dtype=np.float64)

    def fit_predict(train_idx: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
        rows = _fit_rows(train_idx, val_idx, include_val)
        model = MedianPredictor("log10").fit(np.zeros(len(rows)), kappa[rows])
        return model.predict(np.zeros(len(test_idx)))

    return fit_predict


def magpie_rf_fit_predict(
    table: pd.DataFrame,
    seed: int = 0,
    *,
    kappa_column: str = "kappa",
    include_val: bool = False,
    n_estimators: int = 500,
    n_jobs: int | None = None,
    featurizer: Callable[[Sequence[str]], np.ndarray] | None = None,
    learner: str = "random_forest",
) -> FitPredict:
    """Return a ``fit_predict`` for a random forest on Magpie features, fitted on log10 κ.

    Features depend on the formula only (no labels), so they are computed once for the whole
    table on the first call; the forest is refitted from scratch in every fold.

    Args:
        table: the table given to :func:`cross_validate` (``formula`` column).
        seed: ``random_state`` of every forest.
        kappa_column: κ column (W/m/K).
        include_val: also fit on the validation rows (see :func:`median_fit_predict`).
        n_estimators: trees per forest.
        n_jobs: sklearn parallel jobs (None = 1).
        featurizer: formulas -> [N, F] features; defaults to Magpie (matminer).
        learner: ``random_forest`` (:class:`~kappaflow.evaluation.baselines.MagpieRandomForest`)
            or ``extra_trees`` (:class:`~kappaflow.evaluation.baselines.MagpieExtraTrees`).

    Returns:
        Callable for :func:`cross_validate`; predictions are κ in W/m/K.
    """
    from kappaflow.evaluation.baselines import MagpieExtraTrees, MagpieRandomForest

    learners = {"random_forest": MagpieRandomForest, "extra_trees": MagpieExtraTrees}
    if learner not in learners:
        raise ValueError(f"unknown Magpie learner {learner!r}; choose from {sorted(learners)}")
    model_cls = learners[learner]

    kappa = table[kappa_column].to_numpy(dtype=np.float64)
    formulas = table["formula"].astype(str).tolist()
    cache: dict[str, np.ndarray] = {}

    def features() -> np.ndarray:
        if "X" not in cache:
            featurize = featurizer
            if featurize is None:
                from kappaflow.features.composition import magpie_features

                featurize = magpie_features
            cache["X"] = np.asarray(featurize(formulas), dtype=np.float64)
        return cache["X"]

    def fit_predict(train_idx: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
        X = features()
        rows = _fit_rows(train_idx, val_idx, include_val)
        model = model_cls("log10", n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs).fit(
            X[rows], kappa[rows]
        )
        return model.predict(X[test_idx])

    return fit_predict


def magpie_et_fit_predict(table: pd.DataFrame, seed: int = 0, **kwargs: Any) -> FitPredict:
    """:func:`magpie_rf_fit_predict` with extremely randomized trees (``learner="extra_trees"``)."""
    return magpie_rf_fit_predict(table, seed, learner="extra_trees", **kwargs)


#: Baselines by name (``evaluation.baselines``): ``(table, seed) -> fit_predict`` (the median
#: has no randomness and ignores the seed).
BASELINES: Mapping[str, Callable[[pd.DataFrame, int], FitPredict]] = {
    "median": lambda table, seed: median_fit_predict(table),
    "magpie_rf": lambda table, seed: magpie_rf_fit_predict(table, seed, n_jobs=FOREST_N_JOBS),
    "magpie_et": lambda table, seed: magpie_et_fit_predict(table, seed, n_jobs=FOREST_N_JOBS),
}


def forbidden_for(
    table: pd.DataFrame, test_tables: Sequence[pd.DataFrame], level: Level = "formula"
) -> list[str]:
    """Material keys of ``table`` rows that occur in ``test_tables`` (must not be trained on).

    Typical use: ``table`` = AFLOW AGL (stage 1), ``test_tables`` = [the current ParAIsite test
    fold rows]; pass the result as ``forbidden_groups`` when splitting ``table`` or drop those
    rows (:func:`exclusion_mask`).

    Args:
        table: the other dataset (``id``, ``formula``, optionally ``spacegroup``).
        test_tables: held-out rows of the evaluated dataset(s).
        level: ``"formula"`` or ``"formula+spacegroup"`` (unknown space groups match any).

    Returns:
        Sorted unique keys at ``level`` (keys of ``table``'s rows).
    """
    return overlapping_keys(table, list(test_tables), level)


def exclusion_mask(
    table: pd.DataFrame, test_tables: Sequence[pd.DataFrame], level: Level = "formula"
) -> np.ndarray:
    """Boolean mask over the rows of ``table``: True where the material is in ``test_tables``.

    Args:
        table: the other dataset (e.g. AFLOW AGL for stage-1 training).
        test_tables: held-out rows of the evaluated dataset(s) (e.g. the current test fold).
        level: ``"formula"`` or ``"formula+spacegroup"``.

    Returns:
        ``bool`` array of length ``len(table)``; train stage 1 on ``table[~mask]``.
    """
    positional = table.reset_index(drop=True)
    _, excluded = exclude_overlapping(positional, list(test_tables), level)
    mask = np.zeros(len(table), dtype=bool)
    mask[excluded.index.to_numpy()] = True
    return mask


def assert_disjoint_materials(
    train_table: pd.DataFrame,
    test_table: pd.DataFrame,
    level: Level = "formula",
    context: str = "",
) -> None:
    """Raise :class:`LeakageError` if a material of ``test_table`` occurs in ``train_table``.

    Args:
        train_table: everything a model was trained or validated on (any stage).
        test_table: held-out rows.
        level: ``"formula"`` or ``"formula+spacegroup"`` (unknown space groups match any).
        context: text for the error message.
    """
    keys = forbidden_for(train_table, [test_table], level)
    if keys:
        raise LeakageError(keys, context)
