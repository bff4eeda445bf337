"""Tests of the vectorised Magpie composition features against matminer."""

from __future__ import annotations

import numpy as np
import pytest

from kappaflow.features.composition import (
    EXTRAS,
    magpie_feature_names,
    magpie_features,
    magpie_features_matminer,
    n_magpie_features,
)

# Varied formulas: binary/ternary, unequal weights, weight ties for the mode, fractional
# occupancies, a single element, many elements, f elements, noble gas, and "NaN" (sodium nitride).
FORMULAS = [
    "NaCl", "Fe2O3", "SrTiO3", "Cu2ZnSnS4", "Si", "Bi2Te3", "Mg2SiO4", "Fe0.5Ni0.5",
    "Al0.1Co0.2Cr0.3Fe0.15Ni0.25", "UO2", "CeCoIn5", "Xe", "NaN", "La2CuO4", "Li7La3Zr2O12",
    "H2O", "TeAg2", "CsPbBr3",
]  # fmt: skip


def column(name: str, extras: tuple[str, ...] = ()) -> int:
    return magpie_feature_names(extras).index(name)


def test_shape_names_dtype() -> None:
    x = magpie_features(FORMULAS)
    assert x.shape == (len(FORMULAS), 132) and x.dtype == np.float32
    assert np.isfinite(x).all()
    full = magpie_features(FORMULAS, extras=EXTRAS)
    assert full.shape == (len(FORMULAS), n_magpie_features(EXTRAS)) == (len(FORMULAS), 146)
    names = magpie_feature_names(EXTRAS)
    assert len(set(names)) == 146
    assert names[:2] == ["MagpieData minimum Number", "MagpieData maximum Number"]
    assert names[-1] == "frac f valence electrons"
    np.testing.assert_array_equal(full[:, :132], x)
    assert magpie_features([], extras=EXTRAS).shape == (0, 146)


def test_nacl_by_hand() -> None:
    """NaCl: Z = 11 and 17, equal amounts -> mean 14, range 6, avg_dev 3, mode = min = 11."""
    x = magpie_features(["NaCl"], extras=EXTRAS, dtype=np.float64)[0]
    expected = {
        "MagpieData minimum Number": 11.0,
        "MagpieData maximum Number": 17.0,
        "MagpieData range Number": 6.0,
        "MagpieData mean Number": 14.0,
        "MagpieData avg_dev Number": 3.0,
        "MagpieData mode Number": 11.0,  # tie between Na and Cl -> smaller value
        "0-norm": 2.0,
        "2-norm": np.sqrt(0.5),
        "avg s valence electrons": 1.5,  # Na 3s1, Cl 3s2
        "avg p valence electrons": 2.5,  # Cl 3p5
    }
    for name, value in expected.items():
        assert x[column(name, EXTRAS)] == pytest.approx(value), name


def test_weighted_mean_and_mode_fe2o3() -> None:
    x = magpie_features(["Fe2O3"], dtype=np.float64)[0]
    assert x[column("MagpieData mean Number")] == pytest.approx((2 * 26 + 3 * 8) / 5)
    assert x[column("MagpieData mode Number")] == 8.0  # O is the majority element
    mean = (2 * 26 + 3 * 8) / 5
    avg_dev = (2 * abs(26 - mean) + 3 * abs(8 - mean)) / 5
    assert x[column("MagpieData avg_dev Number")] == pytest.approx(avg_dev)


def test_equivalent_formulas_give_identical_rows() -> None:
    x = magpie_features(["NaCl", "Na2Cl2", "ClNa", "Cl1Na1"])
    assert (x == x[0]).all()


def test_deterministic_and_duplicates_share_rows() -> None:
    formulas = FORMULAS + FORMULAS[::-1]
    a = magpie_features(formulas, extras=EXTRAS)
    b = magpie_features(formulas, extras=EXTRAS)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[: len(FORMULAS)], a[len(FORMULAS) :][::-1])


@pytest.mark.parametrize("extras", [(), EXTRAS, ("valence_orbital",)])
def test_matches_matminer(extras: tuple[str, ...]) -> None:
    fast = magpie_features(FORMULAS, extras=extras, dtype=np.float64)
    ref = magpie_features_matminer(FORMULAS, extras=extras)
    np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=1e-12)


def test_names_match_matminer_labels() -> None:
    from matminer.featurizers.composition import ElementProperty, Stoichiometry, ValenceOrbital

    labels = ElementProperty.from_preset("magpie").feature_labels()
    labels += Stoichiometry().feature_labels() + ValenceOrbital().feature_labels()
    assert magpie_feature_names(EXTRAS) == labels


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="Qq"):
        magpie_features(["NaCl", "Qq2O"])
    with pytest.raises(ValueError, match="unknown composition feature"):
        magpie_features(["NaCl"], extras=["ionic"])
    with pytest.raises(ValueError, match="keep_default_na"):
        magpie_features(["NaCl", float("nan")])  # type: ignore[list-item]
