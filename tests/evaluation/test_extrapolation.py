from __future__ import annotations

import math

import numpy as np
import pytest

from kappaflow.evaluation.extrapolation import extrapolation_metrics, extrapolation_split


def test_split_by_quantile() -> None:
    kappa = np.array([5.0, 1.0, 9.0, 3.0, 10.0, 2.0, 4.0, 6.0, 7.0, 8.0])
    train, held = extrapolation_split(kappa, 0.8)  # threshold np.quantile = 8.2
    np.testing.assert_array_equal(held, [2, 4])
    assert kappa[train].max() < kappa[held].min()
    assert len(train) + len(held) == len(kappa)


def test_split_keeps_groups_together() -> None:
    kappa = np.array([1.0, 2.0, 3.0, 10.0, 2.5])
    groups = ["A", "B", "C", "D", "D"]  # D has a low-κ polymorph
    train, held = extrapolation_split(kappa, 0.8, groups=groups)  # threshold 4.4
    np.testing.assert_array_equal(held, [3, 4])
    np.testing.assert_array_equal(train, [0, 1, 2])


def test_split_errors() -> None:
    with pytest.raises(ValueError, match="quantile"):
        extrapolation_split([1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="empty side"):
        extrapolation_split([1.0, 1.0, 1.0], 0.5)


def test_metrics_hand_made() -> None:
    # all rows: held-out true [10, 20, 30]; predictions held-out [5, 25, 12], train [1, 2, 15, 3]
    # top-1 true {30}, top-1 pred {25 (held 20)}          -> recall@1 = 0
    # top-2 true {30, 20}, top-2 pred {25, 15 (train)}     -> recall@2 = 1/2
    # top-3 true {30, 20, 10}, top-3 pred {25, 15, 12}     -> recall@3 = 2/3
    out = extrapolation_metrics(
        [10.0, 20.0, 30.0], [5.0, 25.0, 12.0], [1.0, 2.0, 15.0, 3.0], k_values=(1, 2, 3, 4),
        kappa_true_train=[1.0, 2.0, 3.0, 4.0],
    )  # fmt: skip
    assert out["recall@1"] == 0.0
    assert out["recall@2"] == pytest.approx(0.5)
    assert out["recall@3"] == pytest.approx(2 / 3)
    assert math.isnan(out["recall@4"])  # more than the held-out rows
    assert out["spearman_heldout"] == pytest.approx(0.5)  # ranks (1,2,3) vs (1,3,2)
    assert out["frac_above_train_max"] == 1.0  # all held-out predictions > 4
    assert out["frac_above_train_pred_max"] == pytest.approx(1 / 3)  # only 25 > 15
    assert out["n_heldout"] == 3 and out["n_train"] == 4


def test_metrics_perfect_ranking_and_errors() -> None:
    out = extrapolation_metrics([10.0, 20.0], [10.0, 20.0], [1.0, 2.0], k_values=(1, 2))
    assert out["recall@1"] == out["recall@2"] == 1.0
    assert math.isnan(out["frac_above_train_max"])
    with pytest.raises(ValueError, match="exceeds"):
        extrapolation_metrics([10.0], [10.0], [1.0], kappa_true_train=[11.0])
    with pytest.raises(ValueError, match="held-out"):
        extrapolation_metrics([10.0, 1.0], [10.0], [1.0])
    with pytest.raises(ValueError, match="k must"):
        extrapolation_metrics([10.0], [10.0], [1.0], k_values=(0,))
