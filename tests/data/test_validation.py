from __future__ import annotations

import math

import numpy as np
import pytest
from bad_inputs import CASES, COMPOSITION_SPEC, OPTS, SPEC, good_cases, nacl, row
from pymatgen.core import Lattice, Structure

from kappaflow.cards import DatasetSpec, TargetSpec
from kappaflow.data.validation import (
    Reason,
    Rejection,
    ValidationOptions,
    ValidRecord,
    check_crystal,
    reduced_formula,
    spacegroup_number,
    validate_row,
)
from kappaflow.structure.crystal import CrystalArrays


def test_corpus_covers_every_row_level_reason() -> None:
    covered = {c.reason for c in CASES}
    # duplicate_id needs state across rows: covered in test_prepare. File-level reasons are
    # covered by tests/structure/test_hostile_inputs.py; check_failed is the safety net for
    # unforeseen exceptions.
    file_level = {
        Reason.MISSING_FILE, Reason.IS_DIRECTORY, Reason.NOT_REGULAR_FILE, Reason.SYMLINK_LOOP,
        Reason.UNREADABLE_FILE, Reason.UNKNOWN_FORMAT, Reason.MALFORMED_POSCAR,
        Reason.POSCAR_TOO_SHORT, Reason.POSCAR_COUNT_MISMATCH, Reason.CHECK_FAILED,
        Reason.PARSE_TIMEOUT,
    }  # fmt: skip
    assert set(Reason) - covered == {Reason.DUPLICATE_ID} | file_level
    assert len(CASES) >= 22
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.reason.value}-{c.name}" for c in CASES])
def test_bad_row_is_rejected_with_its_reason(case) -> None:
    out = validate_row(case.row, SPEC, OPTS)
    assert isinstance(out, Rejection), f"{case.name} passed validation"
    assert out.reason == case.reason, out.detail
    assert out.detail.strip()
    if case.reason != Reason.MISSING_ID:
        assert out.id == case.row["id"].strip()


@pytest.mark.parametrize("good", good_cases(), ids=lambda g: g.name)
def test_good_row_passes_with_formula_and_spacegroup(good) -> None:
    out = validate_row(good.row, SPEC, OPTS)
    assert isinstance(out, ValidRecord), getattr(out, "detail", "")
    assert out.id == good.row["id"]
    assert out.formula == good.formula
    assert out.spacegroup == good.spacegroup
    assert out.crystal is not None and out.n_sites == out.crystal.n_sites
    assert out.targets["kappa"] == float(good.row["kappa_wmk"])
    e_form = good.row["e_form"]
    if e_form in ("", "NaN"):
        assert math.isnan(out.targets["e_form"])
    else:
        assert out.targets["e_form"] == float(e_form)


def test_details_name_the_offending_thing() -> None:
    by_name = {c.name: validate_row(c.row, SPEC, OPTS) for c in CASES}
    assert "Xx" in by_name["fake_element_symbol"].detail
    assert "Md" in by_name["mendelevium_z101"].detail
    assert "0.2000 Å" in by_name["atoms_0p2_angstrom_apart"].detail
    assert "8.0 Å" in by_name["atoms_8p7_angstrom_apart"].detail
    assert "KCl" in by_name["formula_of_other_compound"].detail
    assert "fast" in by_name["kappa_word"].detail
    assert "100000 W/m/K > max 10000" in by_name["kappa_above_max"].detail
    assert "24 sites" in by_name["24_sites_over_max_16"].detail
    assert "0.5" in by_name["half_occupied_site"].detail


def test_values_may_be_python_numbers_and_none() -> None:
    r = row()
    ok = validate_row({**r, "kappa_wmk": 7.1, "e_form": None}, SPEC, OPTS)
    assert isinstance(ok, ValidRecord) and ok.targets["kappa"] == 7.1
    assert math.isnan(ok.targets["e_form"])
    nan_kappa = validate_row({**r, "kappa_wmk": float("nan")}, SPEC, OPTS)
    assert isinstance(nan_kappa, Rejection) and nan_kappa.reason == Reason.TARGET_MISSING
    flag = validate_row({**r, "kappa_wmk": True}, SPEC, OPTS)
    assert isinstance(flag, Rejection) and flag.reason == Reason.TARGET_NOT_NUMERIC
    no_id = validate_row({**r, "id": None}, SPEC, OPTS)
    assert isinstance(no_id, Rejection) and no_id.reason == Reason.MISSING_ID


def test_absent_target_column_counts_as_missing() -> None:
    r = row()
    del r["kappa_wmk"]
    out = validate_row(r, SPEC, OPTS)
    assert isinstance(out, Rejection) and out.reason == Reason.TARGET_MISSING


def test_composition_rows_check_id_formula_and_targets_only() -> None:
    ok = validate_row({"id": "c1", "formula": "NaN", "e_form": "-0.5"}, COMPOSITION_SPEC, OPTS)
    assert isinstance(ok, ValidRecord)
    assert (ok.formula, ok.spacegroup, ok.crystal, ok.n_sites) == ("NaN", -1, None, None)
    bad = validate_row({"id": "c2", "formula": "NA", "e_form": "1"}, COMPOSITION_SPEC, OPTS)
    assert isinstance(bad, Rejection) and bad.reason == Reason.FORMULA_UNPARSEABLE
    miss = validate_row({"id": "c3", "formula": "Fe2O3", "e_form": ""}, COMPOSITION_SPEC, OPTS)
    assert isinstance(miss, Rejection) and miss.reason == Reason.TARGET_MISSING


def test_unlabeled_dataset_needs_no_targets() -> None:
    spec = DatasetSpec("pool", "p.csv.gz", "structure", "id", "formula", "cif", targets=())
    out = validate_row({"id": "x", "formula": "ClNa", "cif": row()["cif"]}, spec)
    assert isinstance(out, ValidRecord) and out.targets == {}


def test_formula_comparison_uses_reduced_compositions() -> None:
    # TePb-style ordering and multiples of the reduced formula are the same material.
    for formula in ("ClNa", "Na4Cl4", "Na1Cl1"):
        assert isinstance(validate_row(row(formula=formula), SPEC, OPTS), ValidRecord)
    assert reduced_formula("TePb") == reduced_formula("PbTe") == "TePb"
    with pytest.raises(ValueError, match="cannot parse"):
        reduced_formula("Xx2")


def test_cutoff_controls_isolation() -> None:
    lonely = Structure(Lattice.cubic(10.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    crystal = CrystalArrays.from_structure(lonely)
    rej = check_crystal(crystal, ValidationOptions(cutoff=8.0))
    assert rej is not None and rej.reason == Reason.ISOLATED_ATOM
    assert check_crystal(crystal, ValidationOptions(cutoff=9.0)) is None  # 8.66 Å apart


def test_isolation_search_beyond_first_pass_radius() -> None:
    # Nearest neighbour at 5 Å: outside the 4 Å first pass, inside the 8 Å cutoff -> valid.
    s = Structure(Lattice.cubic(5.0), ["Cs"], [[0, 0, 0]])
    assert check_crystal(CrystalArrays.from_structure(s), OPTS) is None


def test_check_crystal_on_good_structure_and_unsupported_element() -> None:
    assert check_crystal(CrystalArrays.from_structure(nacl())) is None
    og = CrystalArrays(np.eye(3) * 4.0, [118], [[0, 0, 0]])
    rej = check_crystal(og)
    assert rej is not None and rej.reason == Reason.UNSUPPORTED_ELEMENT and "Og" in rej.detail


def test_left_handed_cell_is_nonpositive_volume() -> None:
    c = CrystalArrays(np.diag([5.64, 5.64, -5.64]), [11, 17], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rej = check_crystal(c)
    assert rej is not None and rej.reason == Reason.NONPOSITIVE_VOLUME


def test_spacegroup_backends_and_failure() -> None:
    c = CrystalArrays.from_structure(nacl())
    assert spacegroup_number(c, 0.1, "spglib") == 225
    pytest.importorskip("moyopy")
    assert spacegroup_number(c, 0.1, "moyopy") == 225


def test_options_validation_and_from_mapping() -> None:
    assert ValidationOptions.from_mapping({"cutoff": 6.0}).cutoff == 6.0
    assert ValidationOptions.from_mapping(None) == ValidationOptions()
    with pytest.raises(KeyError, match="unknown validation option"):
        ValidationOptions.from_mapping({"cuttoff": 6.0})
    with pytest.raises(ValueError):
        ValidationOptions(min_distance=9.0, cutoff=8.0)
    with pytest.raises(ValueError):
        ValidationOptions(max_sites=0)
    with pytest.raises(ValueError):
        ValidationOptions(symmetry_backend="pymatgen")  # type: ignore[arg-type]


def test_positive_target_without_log_is_still_checked() -> None:
    spec = DatasetSpec(
        "t",
        "t.csv.gz",
        "composition",
        "id",
        "formula",
        None,
        targets=(TargetSpec("n", "n", "1", positive=True),),
    )
    rej = validate_row({"id": "a", "formula": "Si", "n": "-1"}, spec)
    assert isinstance(rej, Rejection) and rej.reason == Reason.TARGET_NONPOSITIVE
