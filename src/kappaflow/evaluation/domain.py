"""Does the out-of-domain flag catch the model's failures? Hold-out measurements and signals.

The flag is measured the way it will fail: whole structure families (train without wurtzite,
test on wurtzite; :func:`kappaflow.structure.families.structure_family`) and chemistries
(leave-one-anion-out) are held out, a model is trained on the rest, and on the held-out rows
each candidate signal is scored against the actual errors:

* a *miss* is a prediction off by more than ``miss_factor`` (3×: |Δ log10 κ| > log10 3);
* a *hit* is one within ``hit_factor`` (2×);
* ``recall`` = fraction of misses the signal flags (target ≥ 80 %);
* ``false_reject`` = fraction of hits it flags (target ≤ 20 %).

Signals need nothing but the training set and the crystal: elements unseen in training, a
structure family unseen in training, the distance to the nearest training compound in
standardized Magpie descriptor space above the ``quantile`` of the training set's own
nearest-neighbour distances (a per-model embedding distance is the registered flag's other
signal, :mod:`kappaflow.registry.domain`), and an *error model* (:func:`error_model`): extremely
randomized trees that learn, from the training rows' own out-of-fold errors (grouped inner folds
of a Magpie extra-trees κ model), how far off a prediction for such a composition tends to be;
it flags a row whose predicted |Δ log10 κ| exceeds log10 2 (i.e. "probably not within 2×").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from kappaflow.evaluation.baselines import FOREST_N_JOBS
from kappaflow.structure.families import anion, structure_family

#: Hold-out kinds: column of the group label per row.
HOLDOUTS = ("family", "anion")


def group_labels(table: pd.DataFrame, kind: str) -> pd.Series:
    """Family or anion label per row of a κ table (``formula``, ``spacegroup`` columns).

    Raises:
        ValueError: unknown hold-out kind.
    """
    if kind == "family":
        return pd.Series(
            [
                structure_family(f, int(s))
                for f, s in zip(table.formula, table.spacegroup, strict=True)
            ],
            index=table.index,
        )
    if kind == "anion":
        return table.formula.map(anion)
    raise ValueError(f"unknown hold-out kind {kind!r}; known: {HOLDOUTS}")


def elements_of(formula: str) -> set[str]:
    """Element symbols of a formula."""
    from pymatgen.core import Composition

    return {str(el) for el in Composition(formula).elements}


#: Query rows per block of the nearest-neighbour search (bounds memory to CHUNK × N distances).
CHUNK = 2048


def nearest_distance(
    queries: np.ndarray, train: np.ndarray, exclude_self: bool = False
) -> np.ndarray:
    """Euclidean distance of each query row to its nearest ``train`` row, in blocks of rows.

    Args:
        queries: [M, D] rows.
        train: [N, D] rows.
        exclude_self: ``queries`` is ``train``: a row's distance to itself does not count.

    Returns:
        [M] distances (the units of the inputs).
    """
    out = np.empty(len(queries))
    t2 = (train**2).sum(axis=1)
    for lo in range(0, len(queries), CHUNK):
        q = queries[lo : lo + CHUNK]
        d2 = (q**2).sum(axis=1)[:, None] + t2[None, :] - 2.0 * q @ train.T
        if exclude_self:
            d2[np.arange(len(q)), np.arange(lo, lo + len(q))] = np.inf
        out[lo : lo + CHUNK] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def descriptor_distance(
    train: np.ndarray, test: np.ndarray, quantile: float
) -> tuple[np.ndarray, float]:
    """Nearest-training-neighbour distance of each test row, and the training threshold.

    Features are standardized with the training mean/std; the threshold is the ``quantile`` of
    every training row's distance to its nearest *other* training row.

    Returns:
        ``(distances [n_test], threshold)``.
    """
    mu, sd = train.mean(axis=0), train.std(axis=0)
    sd[sd == 0] = 1.0
    a, b = (train - mu) / sd, (test - mu) / sd
    nn_train = nearest_distance(a, a, exclude_self=True)
    threshold = float(np.quantile(nn_train, quantile)) if len(a) > 1 else math.inf
    return nearest_distance(b, a), threshold


#: The error model flags a row whose predicted |Δ log10 κ| is above this (decades): 2×.
ERROR_MODEL_THRESHOLD = math.log10(2.0)


def error_model(
    features: np.ndarray,
    log10_kappa: np.ndarray,
    groups: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    seed: int = 0,
    inner_folds: int = 5,
) -> np.ndarray:
    """Predicted |Δ log10 κ| of the held-out rows, learned from the training rows' own errors.

    On the training rows only: grouped ``inner_folds``-fold out-of-fold predictions of a Magpie
    extra-trees κ model give each row's |Δ log10 κ|; extra trees fitted to those errors
    (features → error) predict the error of each held-out row.

    Args:
        features: descriptor per row (e.g. Magpie), [N, F].
        log10_kappa: log10 κ per row (κ in W/m/K), [N].
        groups: material key per row (inner folds never split a material).
        train_idx: rows the model was trained on.
        test_idx: held-out rows.
        seed: random state of the folds and trees.
        inner_folds: inner folds (fewer when there are fewer materials).

    Returns:
        [len(test_idx)] predicted |Δ log10 κ| (decades); zeros when the training part has fewer
        than 2 materials.
    """
    from sklearn.ensemble import ExtraTreesRegressor
    from sklearn.model_selection import GroupKFold

    X, y, g = features[train_idx], log10_kappa[train_idx], np.asarray(groups)[train_idx]
    k = min(inner_folds, len(np.unique(g)))
    if k < 2:
        return np.zeros(len(test_idx))
    oof = np.empty(len(y))
    for tr, va in GroupKFold(k, shuffle=True, random_state=seed).split(X, groups=g):
        model = ExtraTreesRegressor(200, max_features=0.5, random_state=seed, n_jobs=FOREST_N_JOBS)
        oof[va] = model.fit(X[tr], y[tr]).predict(X[va])
    errors = ExtraTreesRegressor(
        200, max_features=0.5, min_samples_leaf=3, random_state=seed, n_jobs=FOREST_N_JOBS
    )
    errors.fit(X, np.abs(oof - y))
    return np.asarray(errors.predict(features[test_idx]), dtype=np.float64)


def holdout_signals(
    table: pd.DataFrame,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    features: np.ndarray,
    quantile: float,
    groups: np.ndarray | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Signals for the held-out rows given what the model was trained on.

    Args:
        table: κ table (``formula``, ``spacegroup``).
        train_idx: rows trained on (training + validation part).
        test_idx: held-out rows.
        features: descriptor per row of ``table`` (e.g. Magpie).
        quantile: descriptor-distance threshold quantile.
        groups: material key per row; given, the :func:`error_model` signal is added (needs
            ``table.kappa``).
        seed: random state of the error model.

    Returns:
        One row per held-out row: ``unseen_elements``, ``unseen_family``,
        ``descriptor_distance`` (bool flags) and ``distance`` (float); with ``groups`` also
        ``error_model`` (bool: predicted |Δ log10 κ| > :data:`ERROR_MODEL_THRESHOLD`) and
        ``predicted_error`` (decades).
    """
    seen = set().union(*(elements_of(f) for f in table.formula.iloc[train_idx]))
    families = group_labels(table, "family")
    seen_families = set(families.iloc[train_idx])
    dist, threshold = descriptor_distance(features[train_idx], features[test_idx], quantile)
    test_formulas = table.formula.iloc[test_idx]
    out = pd.DataFrame(
        {
            "unseen_elements": [not elements_of(f) <= seen for f in test_formulas],
            "unseen_family": ~families.iloc[test_idx].isin(seen_families).to_numpy(),
            "descriptor_distance": dist > threshold,
            "distance": dist,
        }
    )
    if groups is not None:
        logk = np.log10(table["kappa"].to_numpy(dtype=np.float64))
        predicted = error_model(features, logk, groups, train_idx, test_idx, seed)
        out["error_model"] = predicted > ERROR_MODEL_THRESHOLD
        out["predicted_error"] = predicted
    return out


def flag_quality(
    abs_err_log10: np.ndarray,
    flags: Mapping[str, np.ndarray],
    miss_factor: float = 3.0,
    hit_factor: float = 2.0,
) -> pd.DataFrame:
    """Recall of misses and false rejection of hits, per signal (see the module docstring).

    Args:
        abs_err_log10: |log10 κ̂ − log10 κ| per row.
        flags: signal name -> boolean flag per row.
        miss_factor: a miss is an error above this factor.
        hit_factor: a hit is an error within this factor.

    Returns:
        One row per signal: ``signal, n_miss, caught, recall, n_hit, rejected, false_reject``
        (recall / false_reject NaN when there is no miss / hit).
    """
    err = np.asarray(abs_err_log10, dtype=np.float64)
    miss, hit = err > math.log10(miss_factor), err <= math.log10(hit_factor)
    rows = []
    for name, flag in flags.items():
        f = np.asarray(flag, dtype=bool)
        caught, rejected = int((f & miss).sum()), int((f & hit).sum())
        rows.append(
            {
                "signal": name,
                "n_miss": int(miss.sum()),
                "caught": caught,
                "recall": caught / miss.sum() if miss.any() else math.nan,
                "n_hit": int(hit.sum()),
                "rejected": rejected,
                "false_reject": rejected / hit.sum() if hit.any() else math.nan,
            }
        )
    return pd.DataFrame(rows)


def combine(signals: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """Logical OR of the named boolean signal columns."""
    out = np.zeros(len(signals), dtype=bool)
    for n in names:
        out |= signals[n].to_numpy(dtype=bool)
    return out


#: Signal combinations scored (the registered flag is an OR of signals).
COMBINATIONS: dict[str, tuple[str, ...]] = {
    "unseen_elements": ("unseen_elements",),
    "unseen_family": ("unseen_family",),
    "descriptor_distance": ("descriptor_distance",),
    "elements|distance": ("unseen_elements", "descriptor_distance"),
    "elements|family": ("unseen_elements", "unseen_family"),
    "any": ("unseen_elements", "unseen_family", "descriptor_distance"),
    "error_model": ("error_model",),
    "error_model|elements": ("error_model", "unseen_elements"),
    "error_model|distance": ("error_model", "descriptor_distance"),
}
