"""Regression metrics for κ (W/m/K, scored mostly in log10 space) and for generic targets.

κ spans four orders of magnitude, so the headline metrics are computed on log10 κ:
``log10_mae`` (decades), ``log10_rmse`` and ``log10_r2``; rank agreement is Spearman ρ
(transform-invariant). ``mape`` (%) and ``mae`` (W/m/K) are on the κ scale, for comparison with
ParAIsite and similar papers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_squared_error,
    r2_score,
)

#: Keys of :func:`regression_metrics`.
KAPPA_METRICS = (
    "log10_mae", "log10_rmse", "log10_r2", "spearman", "mape", "within_2x", "mae", "n"
)  # fmt: skip
#: Keys of :func:`basic_metrics`.
BASIC_METRICS = ("mae", "rmse", "r2", "n")

#: log10 of a factor 2 (decades): "within 2×" means |Δ log10 κ| <= this.
LOG10_2 = float(np.log10(2.0))


def _validate(
    y_true: ArrayLike, y_pred: ArrayLike, *, positive: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Return float 1-D copies; raise ValueError on shape mismatch, NaN/inf or non-positive κ."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if t.ndim != 1 or p.ndim != 1:
        raise ValueError(f"expected 1-D arrays, got shapes {t.shape} and {p.shape}")
    if len(t) != len(p):
        raise ValueError(f"length mismatch: {len(t)} true vs {len(p)} predicted values")
    if len(t) == 0:
        raise ValueError("no values to score")
    for name, arr in (("y_true", t), ("y_pred", p)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            raise ValueError(f"{name} has {len(bad)} NaN/inf value(s), first at rows {bad[:5]}")
        if positive:
            bad = np.flatnonzero(arr <= 0)
            if len(bad):
                raise ValueError(
                    f"{name} has {len(bad)} non-positive κ value(s) (log10 metrics need κ > 0 "
                    f"W/m/K), first at rows {bad[:5]}: {arr[bad[:5]]}"
                )
    return t, p


def _r2(t: np.ndarray, p: np.ndarray) -> float:
    if len(t) < 2:
        return float("nan")
    return float(r2_score(t, p))


def _spearman(t: np.ndarray, p: np.ndarray) -> float:
    if len(t) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(t, p).statistic)


def regression_metrics(y_true_kappa: ArrayLike, y_pred_kappa: ArrayLike) -> dict[str, float]:
    """Score κ predictions.

    Args:
        y_true_kappa: reference κ, W/m/K, all > 0.
        y_pred_kappa: predicted κ, W/m/K, all > 0 (invert the log10 transform first).

    Returns:
        ``log10_mae`` (mean |Δ log10 κ|, decades), ``log10_rmse``, ``log10_r2`` (R² of log10 κ;
        NaN for < 2 values), ``spearman`` (Spearman ρ; NaN for constant input or < 2 values),
        ``mape`` (mean |Δκ|/κ_true in %), ``within_2x`` (% of predictions within a factor 2 of
        the reference), ``mae`` (W/m/K) and ``n`` (number of values).

    Raises:
        ValueError: length/shape mismatch, empty input, NaN/inf or κ <= 0.
    """
    t, p = _validate(y_true_kappa, y_pred_kappa, positive=True)
    lt, lp = np.log10(t), np.log10(p)
    return {
        "log10_mae": float(mean_absolute_error(lt, lp)),
        "log10_rmse": float(np.sqrt(mean_squared_error(lt, lp))),
        "log10_r2": _r2(lt, lp),
        "spearman": _spearman(t, p),
        "mape": float(100.0 * mean_absolute_percentage_error(t, p)),
        "within_2x": float(100.0 * np.mean(np.abs(lt - lp) <= LOG10_2)),
        "mae": float(mean_absolute_error(t, p)),
        "n": float(len(t)),
    }


def basic_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """Score a generic (non-log) target, e.g. formation energy in eV/atom.

    Args:
        y_true: reference values (any unit).
        y_pred: predictions (same unit).

    Returns:
        ``mae`` and ``rmse`` (same unit as the input), ``r2`` (NaN for < 2 values) and ``n``.

    Raises:
        ValueError: length/shape mismatch, empty input or NaN/inf.
    """
    t, p = _validate(y_true, y_pred, positive=False)
    return {
        "mae": float(mean_absolute_error(t, p)),
        "rmse": float(np.sqrt(mean_squared_error(t, p))),
        "r2": _r2(t, p),
        "n": float(len(t)),
    }


def aggregate_folds(results: Sequence[Mapping[str, float]], ddof: int = 1) -> dict[str, float]:
    """Aggregate per-fold metric dicts into mean and standard deviation per metric.

    Args:
        results: one metric dict per fold (e.g. from :func:`regression_metrics`); all must have
            the same keys.
        ddof: delta degrees of freedom of the standard deviation (1 = sample std).

    Returns:
        Flat dict ``{"<metric>_mean": ..., "<metric>_std": ..., "n_folds": k}``. The std is 0.0
        for a single fold. NaN in any fold propagates to that metric's mean and std.

    Raises:
        ValueError: empty input or folds with different metric keys.
    """
    if not results:
        raise ValueError("no fold results to aggregate")
    keys = list(results[0])
    for i, r in enumerate(results):
        if set(r) != set(keys):
            raise ValueError(f"fold {i} has metrics {sorted(r)}, fold 0 has {sorted(keys)}")
    out: dict[str, float] = {}
    for key in keys:
        values = np.asarray([r[key] for r in results], dtype=np.float64)
        out[f"{key}_mean"] = float(np.mean(values))
        out[f"{key}_std"] = float(np.std(values, ddof=ddof)) if len(values) > ddof else 0.0
    out["n_folds"] = float(len(results))
    return out
