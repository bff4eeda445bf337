"""Extrapolation test for κ after Ju et al. (2021): train on low κ, find the high-κ compounds.

The rows with the highest κ (above a quantile) are held out; a model trained on the rest must
rank them at the top of *all* compounds. Every held-out true κ exceeds every training κ, so the
true top-k of all rows is the top-k of the held-out rows (for k <= number held out).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats


def extrapolation_split(
    kappa: ArrayLike,
    quantile: float = 0.8,
    groups: Sequence[str] | np.ndarray | pd.Series | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into low-κ training rows and held-out high-κ rows.

    Args:
        kappa: κ per row, W/m/K (finite).
        quantile: threshold ``t = np.quantile(kappa, quantile)`` (linear interpolation); rows with
            κ < t train, rows with κ >= t are held out.
        groups: optional material key per row; a material with any held-out row is held out
            entirely (so no formula is on both sides). The held-out rows then need not all lie
            above every training κ; :func:`extrapolation_metrics` checks that when given
            ``kappa_true_train``.

    Returns:
        ``(train_idx, heldout_idx)``: sorted int64 row positions.

    Raises:
        ValueError: quantile outside (0, 1), non-finite κ, or an empty side.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    k = np.asarray(kappa, dtype=np.float64).reshape(-1)
    if len(k) == 0 or not np.all(np.isfinite(k)):
        raise ValueError("kappa must be a non-empty array of finite values")
    held = k >= np.quantile(k, quantile)
    if groups is not None:
        g = np.asarray(groups, dtype=object).astype(str)
        if len(g) != len(k):
            raise ValueError(f"{len(g)} groups for {len(k)} κ values")
        held = np.isin(g, np.unique(g[held]))
    train_idx, heldout_idx = np.flatnonzero(~held), np.flatnonzero(held)
    if len(train_idx) == 0 or len(heldout_idx) == 0:
        raise ValueError(
            f"empty side: {len(train_idx)} train / {len(heldout_idx)} held-out rows (ties?)"
        )
    return train_idx.astype(np.int64), heldout_idx.astype(np.int64)


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest values; ties broken by position (stable)."""
    return np.argsort(-values, kind="stable")[:k]


def extrapolation_metrics(
    kappa_true_heldout: ArrayLike,
    kappa_pred_heldout: ArrayLike,
    kappa_pred_train: ArrayLike,
    k_values: Sequence[int] = (5, 10, 20),
    *,
    kappa_true_train: ArrayLike | None = None,
) -> dict[str, float]:
    """Score the extrapolation to held-out high-κ compounds.

    Definitions (all rows = held-out + training rows, N_h held out):

    * ``recall@k``: let T_k be the k rows with the highest *true* κ among all rows and P_k the k
      rows with the highest *predicted* κ among all rows (training rows predicted in-sample by
      the final model). ``recall@k = |T_k ∩ P_k| / k``. Because held-out true κ exceeds all
      training κ, T_k is the top-k of the held-out rows; it is NaN for k > N_h (T_k would
      contain training rows). Ties are broken by position, held-out rows first.
    * ``spearman_heldout``: Spearman ρ between true and predicted κ within the held-out set
      (NaN for < 2 rows or constant input).
    * ``frac_above_train_max``: fraction of held-out rows predicted above the maximum *true*
      training κ (NaN without ``kappa_true_train``).
    * ``frac_above_train_pred_max``: fraction of held-out rows predicted above every training
      prediction.

    Args:
        kappa_true_heldout: true κ of held-out rows, W/m/K.
        kappa_pred_heldout: predicted κ of held-out rows, W/m/K (same order).
        kappa_pred_train: predicted κ of the training rows, W/m/K.
        k_values: the k of ``recall@k`` (positive).
        kappa_true_train: true κ of training rows, W/m/K (optional; enables
            ``frac_above_train_max`` and checks that held-out true κ exceed them).

    Returns:
        ``{"recall@<k>": ..., "spearman_heldout", "frac_above_train_max",
        "frac_above_train_pred_max", "n_heldout", "n_train"}`` (floats).

    Raises:
        ValueError: mismatched lengths, empty input, NaN/inf, k < 1, or (with
            ``kappa_true_train``) a training κ above the smallest held-out κ.
    """
    th = np.asarray(kappa_true_heldout, dtype=np.float64).reshape(-1)
    ph = np.asarray(kappa_pred_heldout, dtype=np.float64).reshape(-1)
    pt = np.asarray(kappa_pred_train, dtype=np.float64).reshape(-1)
    if len(th) != len(ph):
        raise ValueError(f"{len(th)} true vs {len(ph)} predicted held-out values")
    if len(th) == 0 or len(pt) == 0:
        raise ValueError("need at least one held-out and one training row")
    for name, arr in (("held-out true", th), ("held-out pred", ph), ("train pred", pt)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} κ contains NaN/inf")
    train_max = float("nan")
    if kappa_true_train is not None:
        tt = np.asarray(kappa_true_train, dtype=np.float64).reshape(-1)
        if len(tt) != len(pt) or not np.all(np.isfinite(tt)):
            raise ValueError("kappa_true_train must be finite and match kappa_pred_train")
        train_max = float(tt.max())
        if train_max > th.min():
            raise ValueError(
                f"a training κ ({train_max:g}) exceeds the smallest held-out κ ({th.min():g}); "
                "recall@k assumes the held-out rows are the top of all rows"
            )
    n_h = len(th)
    all_pred = np.concatenate([ph, pt])  # positions < n_h are held-out rows
    out: dict[str, float] = {}
    for k in k_values:
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = int(k)
        if k > n_h:
            out[f"recall@{k}"] = float("nan")
            continue
        true_top = set(_top_k(th, k).tolist())
        pred_top = set(_top_k(all_pred, k).tolist())
        out[f"recall@{k}"] = len(true_top & pred_top) / k
    if n_h >= 2 and np.ptp(th) > 0 and np.ptp(ph) > 0:
        out["spearman_heldout"] = float(stats.spearmanr(th, ph).statistic)
    else:
        out["spearman_heldout"] = float("nan")
    out["frac_above_train_max"] = (
        float(np.mean(ph > train_max)) if np.isfinite(train_max) else float("nan")
    )
    out["frac_above_train_pred_max"] = float(np.mean(ph > pt.max()))
    out["n_heldout"] = float(n_h)
    out["n_train"] = float(len(pt))
    return out
