"""Tier-1 student: features from prepared arrays, agreement, shortlists, settings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import registry_testkit as kit

from kappaflow.features.composition import magpie_features
from kappaflow.screen.funnel import SURROGATE_NONFINITE, _surrogate_rows
from kappaflow.screen.surrogate import (
    SCALAR_NAMES,
    FunnelSettings,
    agreement,
    cell_scalars,
    element_count_matrix,
    pool_features,
    shortlist,
)


def _arrays(structures):
    lattices = np.stack([s.lattice.matrix for s in structures])
    numbers = [np.array(s.atomic_numbers) for s in structures]
    return lattices, numbers


def test_magpie_block_equals_the_formula_featurizer_and_scalars_are_physical():
    structures = [kit.nacl(), kit.silicon(), kit.zincblende("Ga", "As", 5.65)]
    lattices, numbers = _arrays(structures)
    x = pool_features(np.array([225, 227, 216]), lattices, numbers)
    formulas = [s.composition.reduced_formula for s in structures]
    assert x.shape == (3, 132 + len(SCALAR_NAMES))
    np.testing.assert_allclose(x[:, :132], magpie_features(formulas, dtype=np.float64), atol=1e-9)
    assert x[:, 132].tolist() == [225, 227, 216]
    for k, s in enumerate(structures):
        assert x[k, 133] == len(s)
        assert x[k, 134] == pytest.approx(s.volume / len(s))
        assert x[k, 135] == pytest.approx(s.density, rel=1e-4)  # g/cm³
    assert 2.0 < x[0, 135] < 2.3  # rock salt NaCl, a = 5.64 Å: 2.17 g/cm³


def test_element_counts_and_a_degenerate_cell_gives_non_finite_scalars():
    counts = element_count_matrix([np.array([11, 17, 17]), np.array([14])])
    assert counts[0, 11] == 1 and counts[0, 17] == 2 and counts[1, 14] == 1 and counts.sum() == 4
    flat = np.zeros((1, 3, 3))
    with np.errstate(all="ignore"):
        scalars = cell_scalars(flat, [np.array([11, 17])])
    assert not np.isfinite(scalars[0, 2])  # zero volume: density inf, not a silent number


def test_agreement_is_perfect_for_a_monotone_copy_and_zero_for_a_reversed_one():
    rng = np.random.default_rng(0)
    c = rng.normal(size=200)
    same = agreement(2 * c + 1, c, 0.05)
    assert same["spearman"] == pytest.approx(1.0) and same["top_recall"] == 1.0
    assert same["bottom_recall"] == 1.0 and same["n"] == 200
    rev = agreement(-c, c, 0.05)
    assert rev["spearman"] == pytest.approx(-1.0) and rev["top_recall"] == 0.0
    assert agreement(c, c, 0.05)["log10_mae"] == 0.0


def test_shortlist_takes_both_extremes_once():
    values = np.array([5.0, 1.0, 3.0, 9.0, 7.0, 2.0])
    assert shortlist(values, 2).tolist() == [1, 3, 4, 5]
    assert shortlist(values, 10).tolist() == list(range(6))  # overlapping sides: no duplicates


def test_settings_are_checked_and_the_funnel_only_applies_to_large_pools():
    s = FunnelSettings.from_mapping({"teacher_size": 100, "shortlist": 10})
    assert not s.applies(120) and s.applies(121)
    assert not FunnelSettings.from_mapping({"enabled": False}).applies(10**6)
    assert FunnelSettings.from_mapping(None) == FunnelSettings()
    with pytest.raises(KeyError, match="teacher"):
        FunnelSettings.from_mapping({"teachers": 3})
    with pytest.raises(ValueError, match="holdout_fraction"):
        FunnelSettings(holdout_fraction=0.7)
    with pytest.raises(ValueError, match="teacher_size"):
        FunnelSettings(teacher_size=2)


def test_student_rows_carry_no_sigma_and_a_non_finite_prediction_is_an_error():
    index = pd.DataFrame({"id": ["a", "b"], "formula": ["NaCl", "NaXe"], "spacegroup": [225, 225]})
    counts = element_count_matrix([np.array([11, 17]), np.array([11, 54])])
    rows = _surrogate_rows(index, np.array([0.5, np.nan]), counts, None)
    assert rows.loc[0, "kappa"] == pytest.approx(10**0.5) and np.isnan(rows.loc[0, "sigma_log10"])
    assert rows.loc[0, "error"] == "" and rows.loc[0, "in_domain"]
    assert rows.loc[1, "error"].startswith(SURROGATE_NONFINITE) and not rows.loc[1, "in_domain"]
    assert (rows["scored_by"] == "surrogate").all()
