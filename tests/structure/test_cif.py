from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import cif_text, nacl, sic_zincblende, triclinic, zno_wurtzite
from pymatgen.core import Lattice, Structure
from pymatgen.io.vasp import Poscar

import kappaflow.structure.cif as cif_mod
from kappaflow.structure.cif import (
    CifError,
    Reason,
    StructureFileError,
    lattice_from_parameters,
    parse_cif,
    parse_structure_file,
)
from kappaflow.structure.crystal import CrystalArrays


def pymatgen_reference(text: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(text, fmt="cif")


def assert_same_crystal(ours: CrystalArrays, ref: Structure, atol: float = 1e-12) -> None:
    """Same lattice, same species and same wrapped coordinates, up to site order."""
    np.testing.assert_allclose(ours.lattice, ref.lattice.matrix, rtol=0, atol=atol)
    ref_z = np.array([site.specie.Z for site in ref])
    ref_f = ref.frac_coords % 1.0
    assert ours.n_sites == len(ref)
    o1 = np.lexsort((*ours.frac_coords.T[::-1], ours.numbers))
    o2 = np.lexsort((*ref_f.T[::-1], ref_z))
    np.testing.assert_array_equal(ours.numbers[o1], ref_z[o2])
    d = np.abs(ours.frac_coords[o1] - ref_f[o2])
    assert np.minimum(d, 1 - d).max() < atol


@pytest.fixture()
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(text: str, why: str) -> CrystalArrays:
        raise AssertionError(f"pymatgen fallback used: {why}")

    monkeypatch.setattr(cif_mod, "_parse_with_pymatgen", boom)


@pytest.mark.parametrize(
    "make", [nacl, sic_zincblende, zno_wurtzite, triclinic], ids=lambda f: f.__name__
)
def test_fast_path_matches_pymatgen(make, no_fallback) -> None:
    text = cif_text(make())
    assert_same_crystal(parse_cif(text), pymatgen_reference(text))


def test_lattice_is_exactly_pymatgen_from_parameters() -> None:
    params = (4.1, 5.3, 6.2, 78.0, 85.0, 97.0)
    np.testing.assert_array_equal(
        lattice_from_parameters(*params), Lattice.from_parameters(*params).matrix
    )


def test_fast_path_keeps_file_order_and_wraps(no_fallback) -> None:
    s = Structure(Lattice.cubic(4.0), ["Cl", "Na"], [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])
    text = cif_text(s).replace("0.00000000  0.00000000  0.00000000", "1.00000000  -0.0  2.0")
    c = parse_cif(text)
    np.testing.assert_array_equal(c.numbers, [17, 11])
    np.testing.assert_array_equal(c.frac_coords, [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])


def test_finite_precision_thirds_are_snapped_like_pymatgen(no_fallback) -> None:
    text = (
        cif_text(zno_wurtzite()).replace("0.33333333", "0.33333").replace("0.66666667", "0.66667")
    )
    assert "0.33333 " in text
    c = parse_cif(text)
    assert set(c.frac_coords[:, :2].ravel().tolist()) <= {1 / 3, 2 / 3}
    assert_same_crystal(c, pymatgen_reference(text))


def test_oxidation_state_symbols_are_stripped(no_fallback) -> None:
    s = nacl().copy()
    s.add_oxidation_state_by_element({"Na": 1, "Cl": -1})
    text = cif_text(s)
    assert "Na+" in text and "Cl-" in text
    c = parse_cif(text)
    assert sorted(set(c.numbers.tolist())) == [11, 17]


def test_symmetrized_cif_goes_through_pymatgen_fallback(monkeypatch) -> None:
    text = cif_text(nacl(), symprec=0.1)
    assert "'-x, -y, -z'" in text  # non-identity operations
    calls: list[str] = []
    real = cif_mod._parse_with_pymatgen

    def spy(t: str, why: str) -> CrystalArrays:
        calls.append(why)
        return real(t, why)

    monkeypatch.setattr(cif_mod, "_parse_with_pymatgen", spy)
    c = parse_cif(text)
    assert calls and "symmetry" in calls[0]
    assert c.n_sites == 8
    assert_same_crystal(c, pymatgen_reference(text))


def test_multiblock_cif_is_rejected_not_guessed() -> None:
    # Two structures in one file: which one was meant is unknown, so neither is scored.
    text = cif_text(nacl()) + "\n" + cif_text(sic_zincblende()).replace("data_SiC", "data_b2")
    with pytest.raises(CifError) as info:
        parse_cif(text)
    assert info.value.reason == Reason.MULTIPLE_BLOCKS
    # A header block without a structure does not count.
    c = parse_cif("data_global\n_journal_year 2024\n" + cif_text(nacl()))
    assert sorted(set(c.numbers.tolist())) == [11, 17]


def test_cif_with_uncertainties_parses(no_fallback) -> None:
    text = cif_text(nacl()).replace("5.64000000", "5.640(3)")
    np.testing.assert_allclose(parse_cif(text).lattice, np.eye(3) * 5.64, atol=1e-12)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", Reason.MALFORMED_CIF),
        ("data_empty\n", Reason.MALFORMED_CIF),
        ("not a cif", Reason.MALFORMED_CIF),
    ],
    ids=["empty", "block_without_cell", "garbage"],
)
def test_cif_errors_carry_reason_codes(text: str, reason: Reason) -> None:
    with pytest.raises(CifError) as info:
        parse_cif(text)
    assert info.value.reason == reason
    assert str(info.value).startswith(reason.value)


def test_pymatgen_failure_detail_is_kept() -> None:
    with pytest.raises(CifError) as info:
        parse_cif("this is not a cif")
    assert "pymatgen fallback" in info.value.detail and "gemmi" in info.value.detail


def test_parse_structure_file_cif_and_poscar(tmp_path: Path) -> None:
    s = triclinic()
    cif_path = tmp_path / "x.cif"
    cif_path.write_text(cif_text(s))
    poscar_path = tmp_path / "POSCAR"
    Poscar(s).write_file(poscar_path)
    vasp_path = tmp_path / "y.vasp"
    Poscar(s).write_file(vasp_path)
    other = tmp_path / "structure.txt"  # unknown suffix: tried as CIF, then POSCAR
    Poscar(s).write_file(other)
    assert_same_crystal(parse_structure_file(cif_path), s, atol=1e-7)  # CIF has 8 decimals
    for p in (poscar_path, vasp_path, other):
        c = parse_structure_file(p)
        np.testing.assert_allclose(c.lattice, s.lattice.matrix, atol=1e-6)
        np.testing.assert_array_equal(c.numbers, [site.specie.Z for site in s])
        np.testing.assert_allclose(c.frac_coords, s.frac_coords, atol=1e-6)


def test_parse_structure_file_errors(tmp_path: Path) -> None:
    with pytest.raises(StructureFileError, match="no such file"):
        parse_structure_file(tmp_path / "missing.cif")
    bad_poscar = tmp_path / "POSCAR"
    bad_poscar.write_text("hello\nworld\n")
    with pytest.raises(StructureFileError, match="not a valid POSCAR"):
        parse_structure_file(bad_poscar)
    junk = tmp_path / "junk.dat"
    junk.write_text("nothing to see")
    with pytest.raises(StructureFileError, match="nor POSCAR"):
        parse_structure_file(junk)
    bad_cif = tmp_path / "bad.cif"
    bad_cif.write_text(cif_text(nacl()).replace("  Na  Na0 ", "  Xx  Xx0 "))
    with pytest.raises(CifError) as info:
        parse_structure_file(bad_cif)
    assert info.value.reason == Reason.UNKNOWN_ELEMENT
