"""Per-family out-of-fold errors: family assignment, hand-computed errors, the markdown table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kappaflow.evaluation.families import families_of, family_error_section, family_errors

TABLE = pd.DataFrame(
    {
        "id": ["a", "b", "c", "d"],
        "formula": ["NaCl", "GaAs", "GaN", "Bi2Te3"],
        "spacegroup": [225, 216, 186, 166],
    }
)


def test_families_and_hand_computed_errors() -> None:
    fams = families_of(TABLE)
    assert fams.to_dict() == {"a": "rocksalt", "b": "zincblende", "c": "wurtzite", "d": "other"}
    preds = pd.DataFrame(  # two repeats of a and d; a: 1 decade and exact, d: factor 3 twice
        {
            "id": ["a", "a", "b", "d", "d"],
            "kappa_true": [10.0, 10.0, 50.0, 1.0, 1.0],
            "kappa_pred": [100.0, 10.0, 50.0, 3.0, 1 / 3],
        }
    )
    out = family_errors(preds, fams).set_index("family")
    assert list(out.index) == ["rocksalt", "zincblende", "other"]  # FAMILIES order, present only
    assert out.loc["rocksalt", "log10_mae"] == pytest.approx(0.5)
    assert out.loc["rocksalt", "within_2x"] == pytest.approx(50.0)
    assert out.loc["rocksalt", "n_compounds"] == 1 and out.loc["rocksalt", "n_predictions"] == 2
    assert out.loc["other", "log10_mae"] == pytest.approx(np.log10(3.0))
    assert out.loc["other", "within_2x"] == 0.0
    with pytest.raises(KeyError, match="without a family"):
        family_errors(pd.DataFrame({"id": ["z"], "kappa_true": [1.0], "kappa_pred": [1.0]}), fams)


def test_section_has_a_column_per_method_and_a_dash_where_absent() -> None:
    fams = families_of(TABLE)
    a = pd.DataFrame({"id": ["a", "c"], "kappa_true": [1.0, 1.0], "kappa_pred": [1.0, 10.0]})
    b = pd.DataFrame({"id": ["a"], "kappa_true": [1.0], "kappa_pred": [2.0]})
    text = family_error_section({"m1": a, "m2": b}, fams, "**set**")
    lines = text.splitlines()
    assert lines[0] == "**set**" and "| family | n | m1 | m2 |" in lines
    assert "| rocksalt | 1 | 0.000 (100 %) | 0.301 (100 %) |" in lines
    assert "| wurtzite | 1 | 1.000 (0 %) | — |" in lines
    assert family_error_section({}, fams) == ""
