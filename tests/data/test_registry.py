import pytest

from kappaflow.cards import DatasetSpec, TargetSpec, spec_from_cfg


def test_kappa_card_parses():
    spec = spec_from_cfg(
        {
            "name": "d1",
            "path": "ltc/x.csv.gz",
            "kind": "structure",
            "columns": {"id": "id", "formula": "formula", "cif": "cif"},
            "targets": {
                "kappa": {
                    "column": "kappa_wmk",
                    "unit": "W/m/K",
                    "transform": "log10",
                    "positive": True,
                }
            },
        }
    )
    assert spec.target_names == ["kappa"]
    assert spec.target("kappa").transform == "log10"
    with pytest.raises(KeyError, match="has no target 'e_form'"):
        spec.target("e_form")


def test_log10_needs_positive():
    with pytest.raises(ValueError, match="requires positive"):
        TargetSpec(name="k", column="k", unit="W/m/K", transform="log10")


def test_structure_needs_cif_column():
    with pytest.raises(ValueError, match="need columns.cif"):
        DatasetSpec(
            name="x",
            path="x",
            kind="structure",
            id_col="id",
            formula_col="formula",
            cif_col=None,
            targets=(),
        )


def test_missing_key_is_named():
    with pytest.raises(ValueError, match="lacks 'columns'"):
        spec_from_cfg({"name": "x", "path": "p", "kind": "composition"})
