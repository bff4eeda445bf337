from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pymatgen.core import Composition

from kappaflow.data.leakage import material_keys
from kappaflow.data.splits import LeakageError, grouped_kfold
from kappaflow.evaluation.protocol import (
    PREDICTION_COLUMNS,
    assert_disjoint_materials,
    cross_validate,
    exclusion_mask,
    forbidden_for,
    magpie_rf_fit_predict,
    median_fit_predict,
)

# Non-reduced variants (Na2Cl2, Si2, Pb2Te2) must group with their reduced formulas.
POOL = [
    "NaCl", "Na2Cl2", "Si", "Si2", "PbTe", "Pb2Te2", "MgO", "GaAs",
    "ZnS", "CdTe", "AlN", "BN", "SiC", "KBr", "LiF",
]  # fmt: skip


def _reduced(formula: str) -> str:
    return Composition(formula).reduced_formula


def _table(formulas: list[str], kappa: np.ndarray | None = None) -> pd.DataFrame:
    n = len(formulas)
    if kappa is None:
        kappa = np.geomspace(0.5, 500.0, n)
    return pd.DataFrame({"id": [f"m-{i}" for i in range(n)], "formula": formulas, "kappa": kappa})


class Recorder:
    """fit_predict that records its calls and returns a constant κ (W/m/K)."""

    def __init__(self, value: float = 3.0) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.value = value

    def __call__(self, train: np.ndarray, val: np.ndarray, test: np.ndarray) -> np.ndarray:
        self.calls.append((train.copy(), val.copy(), test.copy()))
        return np.full(len(test), self.value)


@st.composite
def tables(draw: st.DrawFn) -> tuple[pd.DataFrame, list[str]]:
    picks = draw(st.lists(st.sampled_from(POOL), min_size=10, max_size=30))
    keys = sorted({_reduced(f) for f in picks})
    assume(len(keys) >= 6)
    forbidden = draw(st.lists(st.sampled_from(keys), max_size=2, unique=True))
    kappa = np.asarray(
        draw(st.lists(st.floats(0.1, 1000.0), min_size=len(picks), max_size=len(picks)))
    )
    return _table(picks, kappa), forbidden


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables(), st.integers(0, 10_000))
def test_folds_never_leak(case: tuple[pd.DataFrame, list[str]], seed: int) -> None:
    table, forbidden = case
    rec = Recorder()
    res = cross_validate(
        table, rec, n_splits=3, n_repeats=2, seed=seed, forbidden_groups=forbidden, progress=False
    )
    groups = np.array([_reduced(f) for f in table["formula"]])
    assert len(rec.calls) == 6 == len(res.folds)
    for train, val, test in rec.calls:
        fit = np.concatenate([train, val])
        assert len(np.intersect1d(fit, test)) == 0  # no test index reaches fitting
        assert len(np.intersect1d(train, val)) == 0
        assert not set(groups[fit]) & set(groups[test])  # no formula on both sides
        assert not set(groups[fit]) & set(forbidden)  # forbidden materials never fitted
        assert len(val) > 0
    # every row is predicted exactly once per repeat
    for _, part in res.predictions.groupby("repeat"):
        assert sorted(part["id"]) == sorted(table["id"])


def test_perfect_predictor_scores_zero() -> None:
    table = _table(POOL)
    kappa = table["kappa"].to_numpy()
    res = cross_validate(table, lambda tr, va, te: kappa[te], seed=1, progress=False)
    assert res.summary["n_folds"] == 15
    assert res.summary["log10_mae_mean"] == 0.0
    assert res.summary["mape_mean"] == 0.0
    assert list(res.predictions.columns) == PREDICTION_COLUMNS
    np.testing.assert_allclose(res.predictions["kappa_pred"], res.predictions["kappa_true"])


def test_aggregate_hand_computed() -> None:
    # Two materials -> with 2 folds each fold tests exactly one material.
    # A (κ 1, 100) predicted 10: |Δlog10| = 1, 1 -> MAE 1; APE 900 %, 90 % -> MAPE 495 %.
    # B (κ 10, 10) predicted 10: MAE 0, MAPE 0.
    table = _table(["NaCl", "Na2Cl2", "Si", "Si2"], np.array([1.0, 100.0, 10.0, 10.0]))
    res = cross_validate(
        table, lambda tr, va, te: np.full(len(te), 10.0), n_splits=2, n_repeats=1,
        val_fraction=None, progress=False,
    )  # fmt: skip
    assert [f["n_test"] for f in res.folds] == [2, 2]
    assert sorted(f["metrics"]["log10_mae"] for f in res.folds) == [0.0, 1.0]
    assert res.summary["log10_mae_mean"] == pytest.approx(0.5)
    assert res.summary["log10_mae_std"] == pytest.approx(math.sqrt(0.5))
    assert res.summary["mape_mean"] == pytest.approx(247.5)
    assert res.summary["mape_std"] == pytest.approx(495.0 / math.sqrt(2))
    assert all(f["n_val"] == 0 and f["n_train"] == 2 for f in res.folds)
    payload = json.loads(res.to_json())
    assert payload["summary"]["log10_mae_mean"] == pytest.approx(0.5)
    assert len(payload["folds"]) == 2 and len(res.fold_table()) == 2


def test_bad_predictions_and_table() -> None:
    table = _table(POOL)
    with pytest.raises(ValueError, match="shape"):
        cross_validate(table, lambda tr, va, te: np.ones(len(te) + 1), progress=False)
    with pytest.raises(ValueError, match="non-positive"):
        cross_validate(table, lambda tr, va, te: np.zeros(len(te)), progress=False)
    bad = table.assign(kappa=-1.0)
    with pytest.raises(ValueError, match="κ"):
        cross_validate(bad, Recorder(), progress=False)
    with pytest.raises(ValueError, match="duplicated"):
        cross_validate(table.assign(id="x"), Recorder(), progress=False)


def test_median_baseline_same_folds() -> None:
    table = _table(POOL)
    kappa = table["kappa"].to_numpy()
    rec = Recorder()
    ref = cross_validate(table, rec, seed=3, progress=False)
    res = cross_validate(table, median_fit_predict(table), seed=3, progress=False)
    for (train, _, test), (_, part) in zip(
        rec.calls, res.predictions.groupby(["repeat", "fold"]), strict=True
    ):
        expected = 10 ** np.median(np.log10(kappa[train]))
        np.testing.assert_allclose(part["kappa_pred"], expected)
        assert sorted(part["id"]) == sorted(table["id"].to_numpy()[test])
    assert ref.folds[0]["n_train"] == res.folds[0]["n_train"]


def test_magpie_rf_baseline_featurizes_once() -> None:
    table = _table(POOL)
    calls: list[int] = []

    def featurizer(formulas: list[str]) -> np.ndarray:
        calls.append(len(formulas))
        return np.array([[Composition(f).weight, len(Composition(f))] for f in formulas])

    fp = magpie_rf_fit_predict(table, seed=0, n_estimators=5, featurizer=featurizer)
    res = cross_validate(table, fp, n_splits=3, n_repeats=1, progress=False)
    assert calls == [len(table)]
    assert np.all(np.isfinite(res.predictions["kappa_pred"]))
    assert np.all(res.predictions["kappa_pred"] > 0)


def test_cross_dataset_exclusion() -> None:
    hq = pd.DataFrame({"id": ["h1", "h2"], "formula": ["PbTe", "Si"]})
    agl = pd.DataFrame(
        {"id": ["a1", "a2", "a3", "a4"], "formula": ["Pb2Te2", "NaCl", "Si2", "GaAs"]},
        index=[7, 7, 3, 1],  # duplicated index: mask must be positional
    )
    test_fold = hq.iloc[[0]]
    assert forbidden_for(agl, [test_fold]) == ["TePb"]
    mask = exclusion_mask(agl, [test_fold])
    np.testing.assert_array_equal(mask, [True, False, False, False])
    assert_disjoint_materials(agl[~mask], test_fold)
    with pytest.raises(LeakageError, match="TePb"):
        assert_disjoint_materials(agl, test_fold, context="AGL vs fold 0")
    np.testing.assert_array_equal(exclusion_mask(agl, [hq]), [True, False, True, False])


@pytest.mark.data
def test_median_baseline_on_paraisite_d1(real_data_root) -> None:  # noqa: ANN001
    raw = pd.read_csv(real_data_root / "ltc" / "paraisite_dataset1.csv.gz", keep_default_na=False)
    table = pd.DataFrame(
        {
            "id": raw["id"],
            "formula": raw["formula"],
            "spacegroup": raw["spacegroup_number"],
            "kappa": raw["kappa_wmk"].astype(float),
        }
    )
    res = cross_validate(table, median_fit_predict(table), seed=0, progress=False)
    assert len(res.folds) == 15 and res.summary["n_folds"] == 15
    for key in ("log10_mae", "log10_rmse", "mape", "mae"):
        assert np.isfinite(res.summary[f"{key}_mean"]) and np.isfinite(res.summary[f"{key}_std"])
    assert len(res.predictions) == 3 * len(table)
    assert 0.1 < res.summary["log10_mae_mean"] < 2.0


def test_dataset_evaluation_merges_per_dataset_and_keeps_interpolations() -> None:
    from omegaconf import OmegaConf

    from kappaflow.evaluation.protocol import dataset_evaluation, protocol_settings

    cfg = OmegaConf.create(
        {
            "seed": 7,
            "evaluation": {
                "n_splits": 5,
                "n_repeats": 3,
                "seed": "${seed}",
                "val_fraction": 0.1,
                "group_level": "formula",
                "trainer": {"max_epochs": 2},
                "per_dataset": {
                    "big": {"n_repeats": 1, "max_folds": 2, "trainer": {"batch_size": 64}}
                },
            },
        }
    )
    big = dataset_evaluation(cfg.evaluation, "big")
    assert "per_dataset" not in big
    assert protocol_settings(big) == {
        "n_splits": 5,
        "n_repeats": 1,
        "seed": 7,  # the root interpolation resolved, not a self-reference
        "val_fraction": 0.1,
        "group_level": "formula",
        "max_folds": 2,
    }
    assert dict(big.trainer) == {"max_epochs": 2, "batch_size": 64}
    other = protocol_settings(dataset_evaluation(cfg.evaluation, "small"))
    assert (other["n_repeats"], other["max_folds"]) == (3, None)


def test_max_folds_runs_a_prefix_of_the_same_folds() -> None:
    table = _table([POOL[i % len(POOL)] + ("" if i < len(POOL) else "2") for i in range(30)])
    seen: list[np.ndarray] = []

    def fit_predict(train_idx, val_idx, test_idx):  # noqa: ANN001, ANN202
        seen.append(test_idx)
        return np.full(len(test_idx), 1.0)

    full = cross_validate(table, fit_predict, n_splits=3, n_repeats=2, seed=1, progress=False)
    first = [s.copy() for s in seen[:2]]
    seen.clear()
    part = cross_validate(
        table, fit_predict, n_splits=3, n_repeats=2, seed=1, progress=False, max_folds=2
    )
    assert part.summary["n_folds"] == 2 and full.summary["n_folds"] == 6
    assert all(np.array_equal(a, b) for a, b in zip(seen, first, strict=True))
    assert part.config["max_folds"] == 2
    with pytest.raises(ValueError, match="max_folds"):
        cross_validate(table, fit_predict, n_splits=3, progress=False, max_folds=0)


def test_score_val_scores_the_validation_rows_without_changing_the_test_folds() -> None:
    """score_val asks for validation + test rows; the fit and the test metrics stay the same."""
    table = _table([POOL[i % len(POOL)] + ("" if i < len(POOL) else "2") for i in range(30)])
    kappa = table["kappa"].to_numpy()
    fits: list[tuple[np.ndarray, np.ndarray]] = []

    def fit_predict(train_idx, val_idx, test_idx):  # noqa: ANN001, ANN202
        fits.append((train_idx, val_idx))
        # a "model" whose error differs by row: κ × 2 on even rows, κ / 3 on odd rows
        return np.where(test_idx % 2 == 0, kappa[test_idx] * 2.0, kappa[test_idx] / 3.0)

    kw = {"n_splits": 3, "n_repeats": 2, "seed": 4, "val_fraction": 0.25, "progress": False}
    plain = cross_validate(table, fit_predict, **kw)
    plain_fits = list(fits)
    fits.clear()
    scored = cross_validate(table, fit_predict, score_val=True, **kw)
    # the same fits (train and validation rows) and the same test-fold numbers
    assert all(
        np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        for a, b in zip(plain_fits, fits, strict=True)
    )
    assert scored.summary == plain.summary
    pd.testing.assert_frame_equal(scored.predictions, plain.predictions)
    assert plain.selection == {} and "selection" not in plain.to_dict()
    # validation metrics computed from the validation rows only, by hand
    groups = material_keys(table, "formula").to_numpy().astype(str)
    folds = list(grouped_kfold(groups, n_splits=3, n_repeats=2, seed=4, val_fraction=0.25))
    by_hand = []
    for f, rec in zip(folds, scored.folds, strict=True):
        val = np.asarray(f.val_idx)
        assert rec["n_val"] == len(val) > 0
        err = np.abs(np.log10(np.where(val % 2 == 0, 2.0, 1 / 3)))
        assert rec["val_metrics"]["log10_mae"] == pytest.approx(err.mean())
        by_hand.append(err.mean())
    assert scored.selection["val_log10_mae_mean"] == pytest.approx(np.mean(by_hand))
    assert scored.selection["n_val_rows"] == sum(r["n_val"] for r in scored.folds)
    assert scored.to_dict()["selection"] == scored.selection
    assert "val_log10_mae" in scored.fold_table().columns
    # no validation part: nothing to score, nothing recorded
    bare = cross_validate(table, fit_predict, score_val=True, **(kw | {"val_fraction": None}))
    assert bare.selection == {} and all("val_metrics" not in r for r in bare.folds)
