"""Conformal calibration: hand-computed quantiles, coverage on held-out folds, intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kappaflow.evaluation.calibration import (
    Calibration,
    conformal_quantile,
    cross_conformal_coverage,
    reliability_curve,
)


def test_conformal_quantile_by_hand():
    r = [0.4, 0.1, 0.3, 0.2]  # sorted 0.1 0.2 0.3 0.4; n = 4
    assert conformal_quantile(r, 0.5) == 0.3  # ceil(5 * 0.5) = 3rd smallest
    assert conformal_quantile(r, 0.6) == 0.3  # ceil(3.0) = 3
    assert conformal_quantile(r, 0.61) == 0.4  # ceil(3.05) = 4
    assert conformal_quantile(r, 0.9) == math.inf  # ceil(4.5) = 5 > n: too few residuals
    with pytest.raises(ValueError):
        conformal_quantile(r, 1.0)
    with pytest.raises(ValueError, match="no finite"):
        conformal_quantile([math.nan], 0.5)


def _predictions(n_folds: int = 5, per_fold: int = 200, sigma: float = 0.2, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(n_folds):
        true = 10 ** rng.uniform(-0.5, 2.5, per_fold)
        pred = true * 10 ** rng.normal(0.0, sigma, per_fold)
        rows.append(pd.DataFrame({"repeat": 0, "fold": f, "kappa_true": true, "kappa_pred": pred}))
    return pd.concat(rows, ignore_index=True)


def test_held_out_coverage_is_close_to_nominal_for_exchangeable_errors():
    table = cross_conformal_coverage(_predictions()).set_index("nominal")
    assert table.loc[0.68, "coverage"] == pytest.approx(0.68, abs=0.04)
    assert table.loc[0.95, "coverage"] == pytest.approx(0.95, abs=0.03)
    # |N(0, 0.2)| quantiles: 0.68 -> ~0.199 decades, 0.95 -> ~0.392
    assert table.loc[0.68, "half_width"] == pytest.approx(0.2, abs=0.02)
    assert table.loc[0.95, "factor"] == pytest.approx(10**0.392, rel=0.1)
    curve = reliability_curve(_predictions())
    assert np.all(np.abs(curve["coverage"] - curve["nominal"]) < 0.06)


def test_a_fold_never_calibrates_itself():
    # fold 1 has errors 10x larger: its own residuals must not widen its interval
    df = _predictions(n_folds=2, per_fold=300)
    big = df["fold"] == 1
    df.loc[big, "kappa_pred"] = df.loc[big, "kappa_true"] * 10 ** (
        10 * np.log10(df.loc[big, "kappa_pred"] / df.loc[big, "kappa_true"])
    )
    table = cross_conformal_coverage(df, [0.68]).iloc[0]
    assert table["coverage"] < 0.55  # fold 1 is mostly outside fold 0's narrow interval


def test_calibration_round_trip_and_interval_in_w_per_m_k():
    cal = Calibration.from_predictions(_predictions(n_folds=1, per_fold=99))
    assert cal.n == 99 and set(cal.half_width) == {0.68, 0.95}
    assert Calibration.from_dict(cal.to_dict()) == cal
    lo, hi = cal.interval(np.array([1.0]), 0.95)  # κ̂ = 10 W/m/K
    q = cal.half_width[0.95]
    assert lo[0] == pytest.approx(10 ** (1 - q)) and hi[0] == pytest.approx(10 ** (1 + q))
