"""Calibrated κ intervals from out-of-fold residuals (split conformal prediction).

Models learn log10 κ (κ in W/m/K); their errors are roughly symmetric in log space. The interval
for a coverage level ``c`` is ``log10 κ̂ ± q_c`` (decades), i.e. κ̂ ×/÷ 10^q_c, where ``q_c`` is the
finite-sample conformal quantile of the absolute out-of-fold residuals |log10 κ̂ − log10 κ|
(Vovk et al. 2005; Lei et al., JASA 113, 1094, 2018): the ⌈(n+1)c⌉-th smallest of n residuals.
Out-of-fold predictions come from models that never saw the row, so they are valid calibration
data; no held-out fold is used to calibrate itself when coverage is *measured*
(:func:`cross_conformal_coverage`: each fold's intervals use the quantile of the other folds).

The width is the same for every crystal (no per-crystal difficulty: the ensemble spread is not
available for out-of-fold rows, and on 100–240 crystals an error model would be fitted on too
little). Hand-written: MAPIE's regressors refit an sklearn estimator on folds themselves, while
here the folds were already trained by the CV protocol and only their residuals are needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

#: Coverage levels reported everywhere: ±1σ-like (68 %) and 95 %.
LEVELS: tuple[float, ...] = (0.68, 0.95)


def conformal_quantile(abs_residuals: Sequence[float] | np.ndarray, coverage: float) -> float:
    """Return the split-conformal quantile: the ⌈(n+1)·coverage⌉-th smallest residual.

    Args:
        abs_residuals: absolute residuals of calibration rows (decades for log10 κ).
        coverage: nominal coverage in (0, 1).

    Returns:
        The half-width; ``inf`` when there are too few residuals for that coverage.

    Raises:
        ValueError: coverage outside (0, 1) or no finite residual.
    """
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    r = np.sort(np.asarray(abs_residuals, dtype=np.float64))
    r = r[np.isfinite(r)]
    if r.size == 0:
        raise ValueError("no finite residual to calibrate on")
    k = math.ceil((r.size + 1) * coverage)
    return float(r[k - 1]) if k <= r.size else math.inf


def log10_residuals(predictions: pd.DataFrame) -> np.ndarray:
    """|log10 κ̂ − log10 κ| of a ``predictions.csv`` table (``kappa_true``, ``kappa_pred``)."""
    true = predictions["kappa_true"].to_numpy(dtype=np.float64)
    pred = predictions["kappa_pred"].to_numpy(dtype=np.float64)
    ok = (true > 0) & (pred > 0)
    return np.abs(np.log10(pred[ok]) - np.log10(true[ok]))


@dataclass(frozen=True)
class Calibration:
    """Conformal half-widths of the log10-κ interval, per coverage level.

    Attributes:
        half_width: coverage level -> half-width (decades): κ̂ ×/÷ 10^half_width.
        n: out-of-fold predictions calibrated on.
        method: description for reports and model cards.
    """

    half_width: dict[float, float]
    n: int
    method: str = "split conformal on |log10 residuals| of out-of-fold predictions"

    @classmethod
    def from_predictions(
        cls, predictions: pd.DataFrame, levels: Sequence[float] = LEVELS
    ) -> Calibration:
        """Calibrate on every out-of-fold prediction of a CV run (all repeats)."""
        r = log10_residuals(predictions)
        return cls({float(c): conformal_quantile(r, c) for c in levels}, int(r.size))

    def interval(self, log10_kappa: np.ndarray, coverage: float) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` κ bounds in W/m/K at ``coverage`` for predicted log10 κ."""
        q = self.half_width[float(coverage)]
        mu = np.asarray(log10_kappa, dtype=np.float64)
        return 10.0 ** (mu - q), 10.0 ** (mu + q)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (coverage keys as strings)."""
        d = asdict(self)
        d["half_width"] = {f"{k:g}": v for k, v in self.half_width.items()}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        hw = {float(k): float(v) for k, v in data["half_width"].items()}
        return cls(hw, int(data["n"]), str(data.get("method", cls.method)))

    def to_tags(self) -> dict[str, str]:
        """Model-version tags: ``calibration_q68``, ``calibration_q95`` (decades), ``_n``."""
        tags = {f"calibration_q{round(100 * c)}": f"{q:.6g}" for c, q in self.half_width.items()}
        return tags | {"calibration_n": str(self.n)}

    @classmethod
    def from_tags(cls, tags: dict[str, Any]) -> Calibration | None:
        """Inverse of :meth:`to_tags` for :data:`LEVELS` (None when a version has no such tags)."""
        try:
            hw = {c: float(tags[f"calibration_q{round(100 * c)}"]) for c in LEVELS}
            return cls(hw, int(tags["calibration_n"]))
        except (KeyError, TypeError, ValueError):
            return None


def cross_conformal_coverage(
    predictions: pd.DataFrame, levels: Sequence[float] = LEVELS
) -> pd.DataFrame:
    """Measured coverage on held-out folds: each fold's interval is calibrated on the others.

    For every (repeat, fold) of ``predictions`` (columns ``repeat, fold, kappa_true,
    kappa_pred``), the half-width is the conformal quantile of the residuals of the *other* folds
    of the same repeat; the fold's rows are then checked against it.

    Returns:
        One row per level: ``nominal``, ``coverage`` (fraction of rows inside), ``coverage_std``
        (over folds), ``half_width`` (mean decades) and ``factor`` (10^half_width: κ̂ ×/÷ it),
        ``n`` rows scored.
    """
    df = predictions.copy()
    df = df[(df["kappa_true"] > 0) & (df["kappa_pred"] > 0)]
    df["r"] = np.abs(np.log10(df["kappa_pred"]) - np.log10(df["kappa_true"]))
    rows = []
    for c in levels:
        inside, per_fold, widths = 0, [], []
        for (rep, fold), test in df.groupby(["repeat", "fold"]):
            calib = df[(df["repeat"] == rep) & (df["fold"] != fold)]["r"]
            if calib.empty:
                continue
            q = conformal_quantile(calib.to_numpy(), c)
            hit = int((test["r"] <= q).sum())
            inside += hit
            per_fold.append(hit / len(test))
            widths.append(q)
        n = int(sum(len(t) for _, t in df.groupby(["repeat", "fold"])))
        mean_w = float(np.mean(widths)) if widths else math.nan
        rows.append(
            {
                "nominal": c,
                "coverage": inside / n if n else math.nan,
                "coverage_std": float(np.std(per_fold, ddof=1)) if len(per_fold) > 1 else 0.0,
                "half_width": mean_w,
                "factor": 10.0**mean_w if math.isfinite(mean_w) else math.inf,
                "n": n,
            }
        )
    return pd.DataFrame(rows)


def reliability_curve(predictions: pd.DataFrame, n_levels: int = 19) -> pd.DataFrame:
    """Nominal vs measured (cross-conformal) coverage on a grid of levels 0.05 … 0.95."""
    grid = np.linspace(0.05, 0.95, n_levels)
    table = cross_conformal_coverage(predictions, [float(round(g, 4)) for g in grid])
    return table[["nominal", "coverage", "half_width"]]
