from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.core import Composition, Lattice, Structure

from kappaflow.data.leakage import (
    LEAKAGE_COLUMNS,
    exclude_overlapping,
    leakage_map,
    material_key,
    material_keys,
    normalize_formula,
    overlap_summary,
    overlapping_keys,
)
from kappaflow.data.splits import assert_no_leakage, grouped_kfold, train_val_test_split
from kappaflow.structure.crystal import CrystalArrays


def frame(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["id", "formula", "spacegroup"])


def test_material_key_levels() -> None:
    assert material_key("Te2Pb2") == "TePb"
    assert material_key("PbTe", 225, "formula") == "TePb"
    assert material_key("PbTe", 225, "formula+spacegroup") == "TePb@225"
    assert material_key("PbTe", -1, "formula+spacegroup") == "TePb@?"
    assert material_key("PbTe", None, "formula+spacegroup") == "TePb@?"
    with pytest.raises(ValueError, match="level"):
        material_key("PbTe", 225, "structure")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1..230"):
        material_key("PbTe", 231, "formula+spacegroup")
    with pytest.raises(ValueError, match="spacegroup_number"):
        material_key("PbTe", "Fm-3m", "formula+spacegroup")  # type: ignore[arg-type]


def test_normalize_formula_errors() -> None:
    assert normalize_formula("N2Na2") == "NaN"  # "NaN" is a real formula (Na1 N1)
    with pytest.raises(ValueError, match="keep_default_na"):
        normalize_formula(float("nan"))
    with pytest.raises(ValueError, match="cannot parse"):
        normalize_formula("Na(Cl")


def test_material_keys_series() -> None:
    df = frame([("a", "NaCl", 225), ("b", "Cl2Na2", -1)])
    df.index = [10, 20]
    keys = material_keys(df, "formula+spacegroup")
    assert keys.tolist() == ["NaCl@225", "NaCl@?"]
    assert keys.index.tolist() == [10, 20]
    assert material_keys(df).tolist() == ["NaCl", "NaCl"]


def test_leakage_map_formula_level() -> None:
    a = frame([("a1", "NaCl", 225), ("a2", "MgO", 225), ("a3", "Si", 227)])
    b = frame([("b1", "Na2Cl2", 221), ("b2", "GaAs", 216)])
    c = frame([("c1", "NaCl", 225), ("c2", "GaAs", 186), ("c3", "ZnO", 186)])
    out = leakage_map({"A": a, "B": b, "C": c})
    assert list(out.columns) == LEAKAGE_COLUMNS
    assert sorted(zip(out["dataset"], out["id"], strict=True)) == [
        ("A", "a1"),
        ("B", "b1"),
        ("B", "b2"),
        ("C", "c1"),
        ("C", "c2"),
    ]
    nacl = out[out["formula"] == "NaCl"]
    assert set(nacl["n_datasets"]) == {3}
    assert set(nacl["datasets"]) == {"A,B,C"}
    assert set(out.loc[out["formula"] == "GaAs", "datasets"]) == {"B,C"}


def test_leakage_map_spacegroup_level_and_wildcard() -> None:
    a = frame([("a1", "NaCl", 225), ("a2", "GaAs", 216)])
    b = frame([("b1", "NaCl", 221), ("b2", "GaAs", 216)])
    comp = frame([("k1", "NaCl", -1)])
    out = leakage_map({"A": a, "B": b}, "formula+spacegroup")
    assert out["id"].tolist() == ["a2", "b2"]
    assert out["key"].tolist() == ["GaAs@216", "GaAs@216"]
    # the composition-only row matches every NaCl polymorph
    out = leakage_map({"A": a, "B": b, "K": comp}, "formula+spacegroup")
    nacl = out[out["formula"] == "NaCl"].set_index("id")
    assert nacl.loc["a1", "datasets"] == "A,K"
    assert nacl.loc["b1", "datasets"] == "B,K"
    assert nacl.loc["k1", "datasets"] == "A,B,K"
    assert nacl.loc["k1", "key"] == "NaCl@?"


def test_leakage_map_empty_and_errors() -> None:
    a = frame([("a1", "NaCl", 225)])
    b = frame([("b1", "KCl", 225)])
    out = leakage_map({"A": a, "B": b})
    assert out.empty and list(out.columns) == LEAKAGE_COLUMNS
    with pytest.raises(ValueError, match="two datasets"):
        leakage_map({"A": a})
    with pytest.raises(ValueError, match="lacks column"):
        leakage_map({"A": a, "B": b.drop(columns="formula")})
    with pytest.raises(ValueError, match="'B'.*keep_default_na"):
        leakage_map({"A": a, "B": frame([("b1", float("nan"), 1)])})  # type: ignore[list-item]


def test_missing_spacegroup_column_means_unknown() -> None:
    a = frame([("a1", "NaCl", 225)])
    comp = pd.DataFrame({"id": ["k1"], "formula": ["ClNa"]})
    kept, excluded = exclude_overlapping(a, [comp], "formula+spacegroup")
    assert kept.empty and excluded["id"].tolist() == ["a1"]


def test_overlap_summary_counts() -> None:
    a = frame([("a1", "NaCl", 225), ("a2", "NaCl", 221), ("a3", "MgO", 225)])
    b = frame([("b1", "NaCl", 225), ("b2", "MgO", 216)])
    s = overlap_summary({"A": a, "B": b})
    assert s == {
        "A|B": {"shared_formulas": 2, "rows_A": 3, "rows_B": 2, "formulas": ["MgO", "NaCl"]}
    }
    s = overlap_summary({"A": a, "B": b}, "formula+spacegroup")
    assert s["A|B"] == {"shared_formulas": 1, "rows_A": 1, "rows_B": 1, "formulas": ["NaCl"]}


def test_exclude_overlapping_keeps_columns_and_order() -> None:
    pre = pd.DataFrame(
        {
            "id": ["p1", "p2", "p3", "p4"],
            "formula": ["NaCl", "MgO", "Si", "Cl2Na2"],
            "spacegroup": [225, 225, 227, 221],
            "e_form": [1.0, 2.0, 3.0, 4.0],
        },
        index=[7, 8, 9, 10],
    )
    kappa = frame([("k1", "ClNa", 225)])
    kept, excluded = exclude_overlapping(pre, [kappa])
    assert kept["id"].tolist() == ["p2", "p3"] and kept.index.tolist() == [8, 9]
    assert excluded["id"].tolist() == ["p1", "p4"]
    assert excluded["e_form"].tolist() == [1.0, 4.0]
    kept, excluded = exclude_overlapping(pre, [kappa], "formula+spacegroup")
    assert excluded["id"].tolist() == ["p1"]
    kept, excluded = exclude_overlapping(pre, [])
    assert len(kept) == 4 and excluded.empty
    with pytest.raises(TypeError):
        exclude_overlapping(pre, kappa)  # type: ignore[arg-type]
    assert overlapping_keys(pre, [kappa]) == ["NaCl"]


def _rocksalt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]
    )


def _cscl_type(a: float = 3.4) -> Structure:
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])


def _prepared(rows: list[tuple[str, Structure, int]]) -> pd.DataFrame:
    records = []
    for id_, s, sg in rows:
        records.append(
            {"id": id_, "formula": s.composition.reduced_formula, "spacegroup": sg}
            | CrystalArrays.from_structure(s).to_row()
        )
    return pd.DataFrame(records)


def test_structure_matcher_refinement() -> None:
    conventional = _rocksalt()
    primitive = conventional.get_primitive_structure()
    a = _prepared([("a1", conventional, 225)])
    # same crystal, but its space group was (mis)classified differently; plus a real polymorph
    b = _prepared([("b1", primitive, 221), ("b2", _cscl_type(), 221)])
    plain = leakage_map({"A": a, "B": b}, "formula+spacegroup")
    assert plain.empty
    refined = leakage_map({"A": a, "B": b}, "formula+spacegroup", structure_matcher=True)
    assert sorted(refined["id"]) == ["a1", "b1"]
    summary = overlap_summary({"A": a, "B": b}, "formula+spacegroup", structure_matcher=True)
    assert summary["A|B"]["rows_B"] == 1


FORMULAS = ["NaCl", "MgO", "Si", "GaAs", "ZnO", "PbTe", "AgI", "CuBr", "TiSnPt", "LiZnSb", "BAs"]


@settings(max_examples=40, deadline=None)
@given(
    d2=st.lists(st.sampled_from(FORMULAS), min_size=5, max_size=30),
    agl=st.lists(st.sampled_from(FORMULAS), min_size=5, max_size=30),
    pre=st.lists(st.sampled_from(FORMULAS), min_size=0, max_size=30),
    seed=st.integers(0, 1000),
)
def test_test_materials_never_reach_training(
    d2: list[str], agl: list[str], pre: list[str], seed: int
) -> None:
    """A material in D2's test fold is in no training stage (pretrain, AGL stage 1, D2 stage 2)."""
    d2_df = pd.DataFrame({"id": [f"d{i}" for i in range(len(d2))], "formula": d2})
    agl_df = pd.DataFrame({"id": [f"a{i}" for i in range(len(agl))], "formula": agl})
    pre_df = pd.DataFrame({"id": [f"p{i}" for i in range(len(pre))], "formula": pre})
    d2_keys = material_keys(d2_df).to_numpy()
    agl_keys = material_keys(agl_df).to_numpy()
    n_groups = len(set(d2_keys))
    if n_groups < 2:
        return
    for fold in grouped_kfold(d2_keys, n_splits=2, n_repeats=1, seed=seed):
        test_df = d2_df.iloc[fold.test_idx]
        test_keys = set(d2_keys[fold.test_idx])
        pre_kept, _ = exclude_overlapping(pre_df, [test_df])
        forbidden = overlapping_keys(agl_df, [test_df])
        agl_train: set[str] = set()
        if len(set(agl_keys) - set(forbidden)) >= 3:
            agl_labels = train_val_test_split(agl_keys, seed=seed, forbidden_groups=forbidden)
            agl_train = set(agl_keys[np.isin(agl_labels, ["train", "val"])])
        training_keys = set(material_keys(pre_kept)) | agl_train | set(d2_keys[fold.train_idx])
        assert_no_leakage(training_keys, test_keys)
        assert not training_keys & test_keys


@pytest.mark.data
@pytest.mark.filterwarnings("ignore:No Pauling electronegativity")
def test_readme_overlap_dataset2_vs_aflow_agl(real_data_root) -> None:  # noqa: ANN001
    """README: D2 and AFLOW-AGL share exactly 7 formulas; only TiSnPt is the same F-43m phase."""
    ltc = real_data_root / "ltc"
    cols = ["id", "formula", "spacegroup_number"]
    frames = {}
    for name, file in (("d2", "paraisite_dataset2.csv.gz"), ("agl", "aflow_agl.csv.gz")):
        path = ltc / file
        if not path.is_file():
            pytest.skip(f"{path} missing")
        df = pd.read_csv(
            path, usecols=cols, keep_default_na=False, dtype={"id": str, "formula": str}
        )
        frames[name] = df.rename(columns={"spacegroup_number": "spacegroup"})
    raw = {n: {Composition(f).reduced_formula for f in df["formula"]} for n, df in frames.items()}
    expected = {"CaCdSn", "LiZnSb", "NaBeSb", "ScGeAu", "TiSnPt", "ZrSiPd", "ZrSiPt"}
    assert raw["d2"] & raw["agl"] == expected
    summary = overlap_summary(frames)
    assert set(summary["d2|agl"]["formulas"]) == expected
    same_phase = leakage_map(frames, "formula+spacegroup")
    assert set(same_phase["formula"]) == {"TiSnPt"}
    assert set(same_phase["spacegroup"]) == {216}
    kept, excluded = exclude_overlapping(frames["agl"], [frames["d2"]])
    assert set(excluded["formula"].map(normalize_formula)) == expected
    assert len(kept) + len(excluded) == len(frames["agl"])


@pytest.mark.data
@pytest.mark.slow  # reads the 34 MB pretraining table and normalizes 75k formulas (~10 s)
def test_readme_overlap_pretrain_vs_ltc(real_data_root) -> None:  # noqa: ANN001
    """README: D1 rows 10/95, D2 rows 117/143, AGL 2,812/3,296 share a formula with MP pretrain."""
    frames = {}
    for name, file in (
        ("mp", "pretrain/mp_eform_bandgap.csv.gz"),
        ("d1", "ltc/paraisite_dataset1.csv.gz"),
        ("d2", "ltc/paraisite_dataset2.csv.gz"),
        ("agl", "ltc/aflow_agl.csv.gz"),
    ):
        path = real_data_root / file
        if not path.is_file():
            pytest.skip(f"{path} missing")
        frames[name] = pd.read_csv(
            path, usecols=["id", "formula"], keep_default_na=False, dtype=str
        )
    s = overlap_summary(frames)
    assert s["mp|d1"]["rows_d1"] == 10
    assert s["mp|d2"]["rows_d2"] == 117
    assert s["mp|agl"]["rows_agl"] == s["mp|agl"]["shared_formulas"] == 2812
    assert s["d1|d2"]["shared_formulas"] == 0 and s["d1|agl"]["shared_formulas"] == 0
    kept, excluded = exclude_overlapping(frames["mp"], [frames["d1"], frames["d2"], frames["agl"]])
    lm = leakage_map(frames)
    assert set(excluded["id"]) == set(lm.loc[lm["dataset"] == "mp", "id"])
    assert len(excluded) <= s["mp|d1"]["rows_mp"] + s["mp|d2"]["rows_mp"] + s["mp|agl"]["rows_mp"]
    assert len(kept) + len(excluded) == len(frames["mp"])
