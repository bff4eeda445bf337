"""Structure families and anions of the κ sets' prototypes."""

from __future__ import annotations

import pytest

from kappaflow.structure.families import anion, structure_family


@pytest.mark.parametrize(
    ("formula", "sg", "family"),
    [
        ("NaCl", 225, "rocksalt"),
        ("ClNa", 225, "rocksalt"),
        ("GaAs", 216, "zincblende"),
        ("ZnO", 186, "wurtzite"),
        ("TiNiSn", 216, "half-Heusler"),
        ("NiSnTi", 216, "half-Heusler"),
        ("Bi2Te3", 166, "other"),
        ("NaCl", 221, "other"),  # CsCl-type: not one of the four prototypes
        ("TiNiSn", -1, "other"),
        ("not a formula", 225, "other"),
    ],
)
def test_structure_family(formula, sg, family):
    assert structure_family(formula, sg) == family


@pytest.mark.parametrize(
    ("formula", "expected"),
    [("PbTe", "Te"), ("GaAs", "As"), ("TiNiSn", "Sn"), ("ZnO", "O"), ("NaCl", "Cl"),
     ("MgAgSb", "Sb"), ("CuAu", "Au")],
)  # fmt: skip
def test_anion_is_the_main_group_element_of_highest_group(formula, expected):
    assert anion(formula) == expected
