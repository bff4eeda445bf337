"""The phonons stage's study pieces: feature alignment, the physics baseline, Δ-learning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kappaflow.phonons.descriptors import DESCRIPTOR_COLUMNS
from kappaflow.stages.phonons import _fit_predict, phonon_features


def _descriptors(ids: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        rng.uniform(0.5, 2.0, (len(ids), len(DESCRIPTOR_COLUMNS))), columns=list(DESCRIPTOR_COLUMNS)
    )
    frame.insert(0, "id", ids)
    frame["flags"] = ["imaginary" if i == ids[1] else "" for i in ids]
    return frame


def test_features_follow_the_table_order_and_log_positive_columns():
    frame = _descriptors(["a", "b", "c"])
    X = phonon_features(frame, pd.Series(["c", "a", "b"]))
    col = list(DESCRIPTOR_COLUMNS).index("ph_theta_acoustic_k")
    assert X[0, col] == pytest.approx(np.log10(frame.loc[2, "ph_theta_acoustic_k"]))
    signed = list(DESCRIPTOR_COLUMNS).index("ph_min_freq_thz")
    assert X[1, signed] == frame.loc[0, "ph_min_freq_thz"]  # signed: kept linear
    assert X[:, -1].tolist() == [0.0, 0.0, 1.0]  # imaginary flag of "b"


def test_missing_id_is_an_error_not_a_silent_row():
    with pytest.raises(KeyError, match="1 ids have no phonon descriptors"):
        phonon_features(_descriptors(["a", "b"]), pd.Series(["a", "z"]))


def test_physics_baseline_predicts_its_kappa_and_falls_back_to_the_train_median():
    table = pd.DataFrame({"kappa": [1.0, 10.0, 100.0, 1000.0]})
    base = np.array([0.0, 1.0, np.nan, 3.0])  # log10 κ of phono3py; row 2 not computed
    fp = _fit_predict(table, np.zeros((4, 1)), "none", 0, base)
    pred = fp(np.array([0, 1, 3]), np.array([], int), np.array([2, 3]))
    np.testing.assert_allclose(pred, [10.0**1.0, 1000.0])  # median of train finite base = 1


def test_delta_learning_recovers_an_exact_physics_model():
    rng = np.random.default_rng(1)
    n = 60
    base = rng.uniform(-1, 3, n)
    table = pd.DataFrame({"kappa": 10.0**base})  # labels equal the physics model
    X = rng.normal(size=(n, 3))
    fp = _fit_predict(table, X, "delta", 0, base)
    test = np.arange(40, 60)
    pred = fp(np.arange(40), np.array([], int), test)
    np.testing.assert_allclose(np.log10(pred), base[test], atol=1e-9)  # residual 0 everywhere
