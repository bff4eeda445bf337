"""Domain signals: hand-computed recall / false reject, descriptor distance, hold-out fixture."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kappaflow.evaluation.domain import (
    combine,
    descriptor_distance,
    flag_quality,
    group_labels,
    holdout_signals,
)


def test_flag_quality_by_hand():
    err = np.log10([1.1, 1.5, 2.5, 4.0, 10.0])  # hit, hit, neither, miss, miss
    q = flag_quality(err, {"a": np.array([0, 1, 1, 1, 0], bool), "none": np.zeros(5, bool)})
    a = q.set_index("signal").loc["a"]
    assert (a.n_miss, a.caught, a.recall) == (2, 1, 0.5)
    assert (a.n_hit, a.rejected, a.false_reject) == (2, 1, 0.5)
    assert q.set_index("signal").loc["none", "recall"] == 0.0
    empty = flag_quality(np.zeros(2), {"a": np.ones(2, bool)}).iloc[0]
    assert math.isnan(empty.recall) and empty.false_reject == 1.0


def test_descriptor_distance_threshold_comes_from_training_only():
    train = np.array([[0.0], [1.0], [2.0], [3.0]])
    dist, thr = descriptor_distance(train, np.array([[1.5], [30.0]]), quantile=1.0)
    sd = train.std()
    assert thr == pytest.approx(1.0 / sd)  # every training row is 1 from its neighbour
    assert dist[0] == pytest.approx(0.5 / sd) and dist[1] == pytest.approx(27.0 / sd)


TABLE = pd.DataFrame(
    {
        "formula": ["NaCl", "KCl", "NaBr", "GaAs", "InP", "ZnO", "GaN"],
        "spacegroup": [225, 225, 225, 216, 216, 186, 186],
        "kappa": [7.0, 7.0, 3.0, 50.0, 90.0, 50.0, 200.0],
    }
)


def test_held_out_family_fixture_the_flag_fires():
    families = group_labels(TABLE, "family")
    assert families.tolist() == ["rocksalt"] * 3 + ["zincblende"] * 2 + ["wurtzite"] * 2
    test = np.flatnonzero(families == "wurtzite")
    train = np.flatnonzero(families != "wurtzite")
    features = np.arange(len(TABLE), dtype=float)[:, None] ** 2  # wurtzite rows far away
    sig = holdout_signals(TABLE, train, test, features, quantile=0.95)
    assert sig.unseen_family.all()  # wurtzite never trained on
    assert sig.unseen_elements.tolist() == [True, True]  # O (ZnO) and N (GaN) never seen
    assert sig.descriptor_distance.all()
    assert combine(sig, ["unseen_family"]).all()
    assert group_labels(TABLE, "anion").tolist() == ["Cl", "Cl", "Br", "As", "P", "O", "N"]


def test_error_model_learns_where_the_training_rows_were_hard():
    """Rows like the training rows that were predicted badly get a high predicted error."""
    from kappaflow.evaluation.domain import ERROR_MODEL_THRESHOLD, error_model

    rng = np.random.default_rng(0)
    n = 200
    x = rng.uniform(0, 1, size=(n, 2))
    # smooth where x0 < 0.5 (easy), pure noise of ±1 decade where x0 > 0.5 (hard)
    logk = np.where(x[:, 0] < 0.5, 1.0 + x[:, 1], rng.normal(1.0, 1.0, size=n))
    groups = np.array([f"m{i}" for i in range(n)])
    train, test = np.arange(0, 150), np.arange(150, n)
    pred = error_model(x, logk, groups, train, test, seed=0)
    easy, hard = x[test, 0] < 0.5, x[test, 0] > 0.5
    assert pred[hard].mean() > ERROR_MODEL_THRESHOLD > pred[easy].mean()
    assert pred.shape == (len(test),) and (pred >= 0).all()
    # with a single material in the training part there is nothing to learn from
    assert (error_model(x, logk, np.zeros(n), train, test) == 0).all()


def test_signals_with_groups_add_the_error_model():
    families = group_labels(TABLE, "family")
    test = np.flatnonzero(families == "wurtzite")
    train = np.flatnonzero(families != "wurtzite")
    features = np.arange(len(TABLE), dtype=float)[:, None]
    sig = holdout_signals(TABLE, train, test, features, 0.95, TABLE.formula.to_numpy(), seed=0)
    assert {"error_model", "predicted_error"} <= set(sig.columns)
    assert sig.error_model.dtype == bool and (sig.predicted_error >= 0).all()
