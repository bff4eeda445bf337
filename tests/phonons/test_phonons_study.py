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


def test_offset_model_corrects_phono3py_by_the_training_median_and_falls_back_to_trees():
    rng = np.random.default_rng(2)
    n = 40
    X = rng.normal(size=(n, 2))
    log_kappa = X[:, 0]  # what the trees can learn
    base = log_kappa - 0.3  # physics 2x too low everywhere ...
    base[[3, 7]] = np.nan  # ... but not computed for two rows
    table = pd.DataFrame({"kappa": 10.0**log_kappa})
    train, test = np.arange(10, n), np.arange(10)
    pred = _fit_predict(table, X, "offset", 0, base)(train, np.array([], int), test)
    physics = np.isfinite(base[test])
    # where phono3py gave κ: κ × 10^0.3 (the median offset of the training rows), exactly
    np.testing.assert_allclose(np.log10(pred[physics]), log_kappa[test][physics], atol=1e-12)
    # where it did not: the trees' prediction, not the physics fallback of the median
    trees = _fit_predict(table, X, "et", 0)(train, np.array([], int), test)
    np.testing.assert_allclose(pred[~physics], trees[~physics])
    # the offset is fitted on the training rows only: moving a test label changes nothing
    moved = table.copy()
    moved.loc[0, "kappa"] *= 1000.0
    again = _fit_predict(moved, X, "offset", 0, base)(train, np.array([], int), test)
    np.testing.assert_allclose(again, pred)


def test_kappa_rows_skipped_by_family_or_budget_keep_their_reason(tmp_path, monkeypatch):
    from crystal_fixtures import diamond_si, rocksalt_nacl
    from kappaflow.config import load_params
    from kappaflow.phonons import plan as plan_module
    from kappaflow.stages import phonons as stage
    from kappaflow.structure.crystal import CrystalArrays
    from stage_testkit import full_profile_params

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    full_profile_params(tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    kcl = rocksalt_nacl().copy()
    kcl.replace_species({"Na": "K"})
    rows = [
        ("mp-si", "Si", 227, diamond_si()),  # family other
        ("mp-kcl", "KCl", 225, kcl),  # rocksalt, over the budget
        ("mp-nacl", "NaCl", 225, rocksalt_nacl()),  # computed
    ]
    prepared = tmp_path / "data/interim/paraisite_d1"
    prepared.mkdir(parents=True)
    pd.DataFrame(
        [
            {"id": i, "formula": f, "spacegroup": g, "kappa": 1.0}
            | CrystalArrays.from_structure(s).to_row()
            for i, f, g, s in rows
        ]
    ).to_parquet(prepared / "valid.parquet")

    def fake_plan(crystal, settings):  # KCl costly, NaCl cheap (force-atoms)
        return plan_module.ForcePlan(5000 if 19 in set(crystal.numbers) else 10, 1, 0, 1)

    def fake_compute(ids, crystals, *args, **kwargs):
        return pd.DataFrame(
            {
                "id": ids, "ph3_kappa_w_mk": 5.0, "flags": "", "reason": "", "n_primitive": 2,
                "seconds": 1.0, "cached": False,
            }
        )  # fmt: skip

    monkeypatch.setattr(plan_module, "force_plan", fake_plan)
    monkeypatch.setattr(stage, "compute_descriptors", fake_compute)
    cfg = load_params(
        tmp_path / "params.yaml",
        ["phonons.kappa.families=[rocksalt]", "phonons.kappa.max_force_atoms=1000"],
    )
    frame = stage.descriptor_table(cfg, "paraisite_d1", progress=False, kind="kappa")
    assert frame["id"].tolist() == ["mp-si", "mp-kcl", "mp-nacl"]  # every structure, in order
    reasons = frame["reason"].tolist()
    assert reasons[0] == "family other not in phonons.kappa.families (CPU budget)"
    assert reasons[1] == (
        "5000 atoms in 5000 + 0 displaced supercells > phonons.kappa.max_force_atoms=1000 "
        "(CPU budget)"
    )
    assert reasons[2] == "" and frame["ph3_kappa_w_mk"].iloc[2] == 5.0
    assert np.isnan(frame["ph3_kappa_w_mk"].iloc[:2]).all()
