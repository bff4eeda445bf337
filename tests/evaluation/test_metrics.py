from __future__ import annotations

import math

import numpy as np
import pytest

from kappaflow.evaluation import aggregate_folds, basic_metrics, regression_metrics
from kappaflow.evaluation.metrics import BASIC_METRICS, KAPPA_METRICS


def test_regression_metrics_hand_computed() -> None:
    m = regression_metrics([1.0, 10.0, 100.0], [10.0, 10.0, 10.0])
    assert set(m) == set(KAPPA_METRICS)
    assert m["log10_mae"] == pytest.approx(2.0 / 3.0)
    assert m["log10_rmse"] == pytest.approx(math.sqrt(2.0 / 3.0))
    # log10 truth 0,1,2 (mean 1, SS_tot 2), prediction 1,1,1 (SS_res 2) -> R² = 0
    assert m["log10_r2"] == pytest.approx(0.0)
    assert math.isnan(m["spearman"])  # constant prediction
    # |10-1|/1 = 9, 0, |10-100|/100 = 0.9 -> mean 3.3 = 330 %
    assert m["mape"] == pytest.approx(330.0)
    assert m["mae"] == pytest.approx((9.0 + 0.0 + 90.0) / 3.0)
    assert m["within_2x"] == pytest.approx(100.0 / 3.0)  # only 10 vs 10
    assert m["n"] == 3
    # the factor-2 boundary counts as within; just beyond it does not
    assert regression_metrics([1.0, 1.0, 1.0], [2.0, 0.5, 2.01])["within_2x"] == pytest.approx(
        200.0 / 3.0
    )


def test_regression_metrics_perfect_and_rank() -> None:
    y = np.array([0.5, 2.0, 30.0, 1769.0])
    m = regression_metrics(y, y)
    assert m["log10_mae"] == 0 and m["mape"] == 0 and m["log10_r2"] == 1 and m["spearman"] == 1
    # factor-of-10 overestimate everywhere: 1 decade, ranks preserved
    m = regression_metrics(y, 10 * y)
    assert m["log10_mae"] == pytest.approx(1.0)
    assert m["spearman"] == pytest.approx(1.0)
    assert m["mape"] == pytest.approx(900.0)
    m = regression_metrics(y, y[::-1])
    assert m["spearman"] == pytest.approx(-1.0)
    assert math.isnan(regression_metrics([2.0], [3.0])["log10_r2"])


def test_column_vectors_accepted() -> None:
    m = regression_metrics(np.array([[1.0], [10.0]]), np.array([1.0, 10.0]))
    assert m["log10_mae"] == 0


@pytest.mark.parametrize(
    ("t", "p", "match"),
    [
        ([1.0, 2.0], [1.0], "length mismatch"),
        ([], [], "no values"),
        ([1.0, float("nan")], [1.0, 2.0], "y_true has 1 NaN"),
        ([1.0, 2.0], [1.0, float("inf")], "y_pred has 1 NaN/inf"),
        ([1.0, 0.0], [1.0, 2.0], "non-positive"),
        ([1.0, 2.0], [-1.0, 2.0], "y_pred has 1 non-positive"),
        (np.ones((2, 2)), np.ones((2, 2)), "1-D"),
    ],
)
def test_regression_metrics_validation(t: object, p: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        regression_metrics(t, p)  # type: ignore[arg-type]


def test_basic_metrics() -> None:
    m = basic_metrics([0.0, -1.0, 2.0], [1.0, -1.0, 0.0])
    assert set(m) == set(BASIC_METRICS)
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(math.sqrt(5.0 / 3.0))
    # mean 1/3; SS_tot = 1/9 + 16/9 + 25/9 = 42/9; SS_res = 5 -> R² = 1 - 45/42
    assert m["r2"] == pytest.approx(1.0 - 45.0 / 42.0)
    with pytest.raises(ValueError, match="NaN"):
        basic_metrics([1.0, np.nan], [1.0, 2.0])
    # negative values are fine for non-log targets
    assert basic_metrics([-3.0], [-3.0])["mae"] == 0


def test_aggregate_folds() -> None:
    agg = aggregate_folds([{"mae": 1.0, "r2": 0.5}, {"mae": 3.0, "r2": 0.7}])
    assert agg["mae_mean"] == pytest.approx(2.0)
    assert agg["mae_std"] == pytest.approx(math.sqrt(2.0))  # sample std
    assert agg["r2_mean"] == pytest.approx(0.6)
    assert agg["n_folds"] == 2
    assert aggregate_folds([{"mae": 1.0}])["mae_std"] == 0.0
    assert aggregate_folds([{"mae": 1.0}, {"mae": 3.0}], ddof=0)["mae_std"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no fold"):
        aggregate_folds([])
    with pytest.raises(ValueError, match="fold 1"):
        aggregate_folds([{"mae": 1.0}, {"rmse": 1.0}])
