"""Paired comparison on the same folds: hand-computed differences, corrected SE, p-value."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from kappaflow.evaluation.paired import fold_metrics, paired_comparison


def cv(values: list[float], n_train: int = 80, n_val: int = 10, n_test: int = 30) -> dict:
    """A cv.json-like record: one repeat, fold k has log10_mae ``values[k]``."""
    return {
        "folds": [
            {
                "repeat": 0,
                "fold": k,
                "n_train": n_train,
                "n_val": n_val,
                "n_test": n_test,
                "metrics": {"log10_mae": v},
            }
            for k, v in enumerate(values)
        ]
    }


def test_fold_metrics_are_keyed_by_repeat_and_fold():
    assert fold_metrics(cv([0.2, 0.3])) == {(0, 0): 0.2, (0, 1): 0.3}


def test_hand_computed_difference_se_and_p():
    # d = [-0.1, -0.2, 0.0]: mean -0.1, sd 0.1; n_test/n_train = 30/90 = 1/3
    a, b = cv([0.2, 0.2, 0.3]), cv([0.3, 0.4, 0.3])
    c = paired_comparison(a, b)
    assert c.n_folds == 3
    assert c.mean_diff == pytest.approx(-0.1)
    assert c.std_diff == pytest.approx(0.1)
    se = 0.1 * math.sqrt(1 / 3 + 1 / 3)
    assert c.se == pytest.approx(se)
    assert c.p_value == pytest.approx(stats.t.cdf(-0.1 / se, df=2))
    assert c.candidate_mean == pytest.approx(0.7 / 3) and c.reference_mean == pytest.approx(1 / 3)
    assert c.beats(alpha=0.5) and not c.beats(alpha=0.05)  # p ≈ 0.14
    assert not c.beats(alpha=0.5, min_delta=0.2)
    assert "Δ log10_mae -0.100" in c.text()


def test_a_worse_candidate_never_beats():
    c = paired_comparison(cv([0.5, 0.6, 0.55, 0.5]), cv([0.2, 0.3, 0.25, 0.2]))
    assert c.mean_diff > 0 and c.p_value > 0.99 and not c.beats(alpha=0.99)


def test_constant_improvement_has_p_zero_and_one_fold_cannot_claim():
    c = paired_comparison(cv([0.25, 0.5]), cv([0.5, 0.75]))  # exact in binary: d = -0.25, -0.25
    assert c.se == 0 and c.p_value == 0.0
    one = paired_comparison(cv([0.1]), cv([0.5]))
    assert one.p_value == 1.0 and not one.beats(alpha=0.5)


def test_different_folds_are_refused():
    with pytest.raises(ValueError, match="not the same folds"):
        paired_comparison(cv([0.1, 0.2], n_test=30), cv([0.2, 0.3], n_test=31))
    with pytest.raises(ValueError, match="no common folds"):
        paired_comparison(cv([0.1]), {"folds": []})
