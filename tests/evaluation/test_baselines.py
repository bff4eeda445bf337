from __future__ import annotations

import numpy as np
import pytest

from kappaflow.evaluation.baselines import (
    MagpieExtraTrees,
    MagpieRandomForest,
    MeanPredictor,
    MedianPredictor,
    evaluate_baseline,
)


def test_mean_predictor_log10_is_geometric_mean() -> None:
    y = np.array([1.0, 10.0, 1000.0])
    model = MeanPredictor("log10").fit(["a", "b", "c"], y)
    assert model.constant_ == pytest.approx(10 ** (4 / 3))  # 10 ** mean(0, 1, 3)
    np.testing.assert_allclose(model.predict(["x", "y"]), [10 ** (4 / 3)] * 2)
    assert MeanPredictor().fit(range(3), y).constant_ == pytest.approx(337.0)


def test_median_predictor() -> None:
    y = np.array([1.0, 100.0, 10.0, 1000.0])
    # median of log10 values 0, 1, 2, 3 is 1.5 -> 10 ** 1.5
    assert MedianPredictor("log10").fit(range(4), y).constant_ == pytest.approx(10**1.5)
    assert MedianPredictor().fit(range(4), y).constant_ == pytest.approx(55.0)


def test_baseline_errors() -> None:
    with pytest.raises(ValueError, match="transform"):
        MeanPredictor("log")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        MeanPredictor("log10").fit(range(2), [1.0, 0.0])
    with pytest.raises(ValueError, match="inputs"):
        MeanPredictor().fit(range(3), [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        MeanPredictor().fit(range(2), [1.0, np.nan])
    with pytest.raises(RuntimeError, match="not fitted"):
        MedianPredictor().predict(range(2))


def test_random_forest_on_features_is_seeded_and_learns() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = 10 ** (X[:, 0] + 0.1 * rng.normal(size=200))  # κ-like, W/m/K
    model = MagpieRandomForest("log10", n_estimators=50, random_state=3)
    m = evaluate_baseline(model, X[:150], y[:150], X[150:], y[150:])
    const = evaluate_baseline(MeanPredictor("log10"), X[:150], y[:150], X[150:], y[150:])
    assert m["log10_mae"] < 0.5 * const["log10_mae"]
    again = MagpieRandomForest("log10", n_estimators=50, random_state=3).fit(X[:150], y[:150])
    np.testing.assert_array_equal(again.predict(X[150:]), model.predict(X[150:]))
    assert np.all(model.predict(X) > 0)
    assert model.feature_importances_.argmax() == 0


def test_extra_trees_baseline_is_seeded_learns_and_differs_from_the_forest() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = 10 ** (X[:, 0] + 0.1 * rng.normal(size=200))  # κ-like, W/m/K
    et = MagpieExtraTrees("log10", n_estimators=50, random_state=3)
    m = evaluate_baseline(et, X[:150], y[:150], X[150:], y[150:])
    const = evaluate_baseline(MeanPredictor("log10"), X[:150], y[:150], X[150:], y[150:])
    assert m["log10_mae"] < 0.5 * const["log10_mae"]
    again = MagpieExtraTrees("log10", n_estimators=50, random_state=3).fit(X[:150], y[:150])
    np.testing.assert_array_equal(again.predict(X[150:]), et.predict(X[150:]))
    rf = MagpieRandomForest("log10", n_estimators=50, random_state=3).fit(X[:150], y[:150])
    assert not np.array_equal(rf.predict(X[150:]), et.predict(X[150:]))
    assert type(et.model_.regressor_).__name__ == "ExtraTreesRegressor"


def test_random_forest_uses_featurizer_for_formulas() -> None:
    calls: list[list[str]] = []

    def fake(formulas: list[str]) -> np.ndarray:
        calls.append(list(formulas))
        return np.array([[len(f)] for f in formulas], dtype=float)

    model = MagpieRandomForest(n_estimators=10, featurizer=fake)
    model.fit(["NaCl", "MgO", "GaAs"], [1.0, 2.0, 3.0])
    assert model.predict(["Si"]).shape == (1,)
    assert calls[0] == ["NaCl", "MgO", "GaAs"]
    bad = MagpieRandomForest(n_estimators=5, featurizer=lambda f: np.zeros((1, 2)))
    with pytest.raises(ValueError, match="featurizer returned"):
        bad.fit(["NaCl", "MgO"], [1.0, 2.0])
    generic = evaluate_baseline(
        MagpieRandomForest(n_estimators=5, featurizer=fake),
        ["NaCl", "Si"],
        [1.0, 2.0],
        ["Ge"],
        [1.5],
    )
    assert set(generic) == {"mae", "rmse", "r2", "n"}


def test_random_forest_with_magpie_features() -> None:
    formulas = ["NaCl", "KCl", "MgO", "Si", "GaAs", "PbTe", "BAs", "AgI"]
    kappa = np.array([7.1, 7.1, 60.0, 153.0, 45.0, 2.0, 1300.0, 0.5])
    model = MagpieRandomForest("log10", n_estimators=20).fit(formulas, kappa)
    pred = model.predict(["NaCl", "CsCl"])
    assert pred.shape == (2,) and np.all(pred > 0)
