"""Bad-input corpus for the data validation tests: every case is built in code.

Each :class:`Case` is one raw table row (all values as text, as ``prepare`` reads them) with
exactly one problem, and the :class:`Reason` code it must be quarantined with. Structures are
pymatgen ``Structure`` objects written with ``CifWriter`` and then edited as text.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import cache

import numpy as np
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from kappaflow.cards import DatasetSpec, TargetSpec
from kappaflow.data.validation import Reason, ValidationOptions

#: Toy structure dataset card: a required κ target (log10, positive, <= 1e4 W/m/K) and an
#: optional formation energy target bounded to [-10, 10] eV/atom.
SPEC = DatasetSpec(
    name="toy",
    path="toy.csv.gz",
    kind="structure",
    id_col="id",
    formula_col="formula",
    cif_col="cif",
    targets=(
        TargetSpec("kappa", "kappa_wmk", "W/m/K", transform="log10", positive=True, max=1e4),
        TargetSpec("e_form", "e_form", "eV/atom", min=-10.0, max=10.0, required=False),
    ),
)
COMPOSITION_SPEC = DatasetSpec(
    name="toy_comp",
    path="toy_comp.csv.gz",
    kind="composition",
    id_col="id",
    formula_col="formula",
    cif_col=None,
    targets=(TargetSpec("e_form", "e_form", "eV/atom"),),
)
#: Options used with the corpus (max_sites=16 so that a 24-site cell is too big).
#: Small file / time limits and the dimensionality check on, so that each hostile case is cheap.
OPTS = ValidationOptions(
    cutoff=8.0,
    min_distance=0.5,
    max_sites=16,
    symprec=0.1,
    max_file_bytes=100_000,
    dimensionality_in_prepare=True,
)
COLUMNS = ("id", "formula", "cif", "kappa_wmk", "e_form")


# ----------------------------------------------------------------------------- structures


@cache
def nacl() -> Structure:
    """Rock-salt NaCl, conventional 8-atom cell (Fm-3m, 225)."""
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


@cache
def sic_zincblende() -> Structure:
    """Zinc-blende (3C) SiC, conventional 8-atom cell (F-43m, 216)."""
    return Structure.from_spacegroup(
        "F-43m", Lattice.cubic(4.36), ["Si", "C"], [[0, 0, 0], [0.25, 0.25, 0.25]]
    )


@cache
def si_diamond() -> Structure:
    """Diamond Si, i.e. zinc-blende positions with one species (Fd-3m, 227)."""
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])


@cache
def zno_wurtzite() -> Structure:
    """Wurtzite ZnO (P6_3mc, 186): hexagonal cell with 1/3, 2/3 coordinates."""
    return Structure.from_spacegroup(
        "P6_3mc",
        Lattice.hexagonal(3.25, 5.21),
        ["Zn", "O"],
        [[1 / 3, 2 / 3, 0.0], [1 / 3, 2 / 3, 0.382]],
    )


@cache
def triclinic() -> Structure:
    """Low-symmetry P1 cell, 3 species, no two atoms closer than 1.5 Å, coords in [0, 1)."""
    rng = np.random.default_rng(3)
    lattice = Lattice.from_parameters(4.1, 5.3, 6.2, 78.0, 85.0, 97.0)
    species = ["Ca", "Ti", "O", "O", "O"]
    while True:
        s = Structure(lattice, species, rng.random((5, 3)))
        dm = s.distance_matrix + np.eye(len(s)) * 99
        if dm.min() > 1.5:
            return s


def cif_text(structure: Structure, symprec: float | None = None) -> str:
    """CifWriter output (P1 unless ``symprec`` asks for a symmetrized CIF)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # spglib DeprecationWarnings via SpacegroupAnalyzer
        return str(CifWriter(structure, symprec=symprec))


def _sub_first(pattern: str, repl: str, text: str) -> str:
    out, n = re.subn(pattern, repl, text, count=1, flags=re.MULTILINE)
    assert n == 1, f"pattern {pattern!r} not found"
    return out


def _set_tag(text: str, tag: str, value: str) -> str:
    return _sub_first(rf"^{re.escape(tag)}\s+\S+$", f"{tag}   {value}", text)


def _atom_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.match(r"^\s+[A-Z][a-z]?\s+[A-Z][a-z]?\d+\s", ln)]


# ----------------------------------------------------------------------------- rows


def row(
    rid: str = "good-nacl",
    formula: str = "NaCl",
    cif: str | None = None,
    kappa: str = "7.1",
    e_form: str = "-2.1",
) -> dict[str, str]:
    """One raw row (strings only); the CIF defaults to rock-salt NaCl."""
    return {
        "id": rid,
        "formula": formula,
        "cif": cif_text(nacl()) if cif is None else cif,
        "kappa_wmk": kappa,
        "e_form": e_form,
    }


@dataclass(frozen=True)
class GoodCase:
    """A row that must pass, with its expected reduced formula and space-group number."""

    name: str
    row: dict[str, str]
    formula: str
    spacegroup: int


def good_cases() -> list[GoodCase]:
    """Rows that pass validation (NaCl 225, zinc-blende SiC 216, diamond Si 227, ZnO 186)."""
    return [
        GoodCase("nacl_rocksalt", row("good-nacl", "NaCl"), "NaCl", 225),
        GoodCase(
            "sic_zincblende",
            row("good-sic", "CSi", cif_text(sic_zincblende()), kappa="490"),
            "SiC",
            216,
        ),
        GoodCase(
            "si_diamond", row("good-si", "Si8", cif_text(si_diamond()), kappa="153"), "Si", 227
        ),
        GoodCase(
            "zno_wurtzite_missing_optional_target",
            row("good-zno", "OZn", cif_text(zno_wurtzite()), kappa="50", e_form="NaN"),
            "ZnO",
            186,
        ),
        GoodCase(
            "nacl_symmetrized_cif_fallback",
            row("good-nacl-sym", "Na4Cl4", cif_text(nacl(), symprec=0.1), e_form=""),
            "NaCl",
            225,
        ),
    ]


@dataclass(frozen=True)
class Case:
    """A row with one problem and the reason it must be quarantined with."""

    name: str
    reason: Reason
    row: dict[str, str]


def _cases() -> list[Case]:
    base = cif_text(nacl())
    first_atom = _atom_lines(base)[0]
    c: list[tuple[str, Reason, dict[str, str]]] = []

    def add(name: str, reason: Reason, **kw: str) -> None:
        c.append((name, reason, row(rid=kw.pop("rid", f"bad-{name}"), **kw)))

    # ids
    add("empty_id", Reason.MISSING_ID, rid="")
    add("whitespace_id", Reason.MISSING_ID, rid="   ")
    # CIF text
    add("empty_cif", Reason.MISSING_CIF, cif="")
    add("whitespace_cif", Reason.MISSING_CIF, cif="  \n  ")
    add("garbage_cif", Reason.MALFORMED_CIF, cif="this is not a CIF file at all")
    add("truncated_cif", Reason.MALFORMED_CIF, cif=base[: base.index(first_atom) + 20])
    add(
        "missing_cell_length",
        Reason.MALFORMED_CIF,
        cif=_sub_first(r"^_cell_length_b.*\n", "", base),
    )
    add("nonnumeric_cell", Reason.MALFORMED_CIF, cif=_set_tag(base, "_cell_angle_beta", "ninety"))
    add(
        "nonnumeric_coordinate",
        Reason.MALFORMED_CIF,
        cif=base.replace(first_atom, first_atom.replace("0.00000000", "abc", 1)),
    )
    add("no_atom_loop", Reason.NO_SITES, cif=base[: base.index("loop_\n _atom_site_type_symbol")])
    add(
        "half_occupied_site",
        Reason.PARTIAL_OCCUPANCY,
        cif=base.replace(first_atom, re.sub(r"1(\.0)?$", "0.5", first_atom)),
    )
    mixed = Structure(
        Lattice.cubic(5.64), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    add("mixed_site", Reason.PARTIAL_OCCUPANCY, formula="Na0.5K0.5Cl", cif=cif_text(mixed))
    sym = cif_text(nacl(), symprec=0.1)
    sym_atom = _atom_lines(sym)[0]
    add(
        "partial_occupancy_symmetrized_cif",
        Reason.PARTIAL_OCCUPANCY,
        cif=sym.replace(sym_atom, re.sub(r"1(\.0)?$", "0.9", sym_atom)),
    )
    add(
        "fake_element_symbol",
        Reason.UNKNOWN_ELEMENT,
        cif=_sub_first(r"^  Na  Na0 ", "  Xx  Xx0 ", base),
    )
    label_only = (
        "data_q\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c 4\n"
        "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
        "loop_\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
        "Qq1 0 0 0\n"
    )
    add("label_only_unknown_symbol", Reason.UNKNOWN_ELEMENT, cif=label_only)
    md = Structure(Lattice.cubic(3.6), ["Md", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    add("mendelevium_z101", Reason.UNSUPPORTED_ELEMENT, formula="MdCl", cif=cif_text(md))
    add("zero_cell_length", Reason.NONPOSITIVE_VOLUME, cif=_set_tag(base, "_cell_length_a", "0.0"))
    add(
        "negative_cell_length",
        Reason.NONPOSITIVE_VOLUME,
        cif=_set_tag(base, "_cell_length_a", "-5.64"),
    )
    add(
        "flat_cell_gamma_180",
        Reason.NONPOSITIVE_VOLUME,
        cif=_set_tag(base, "_cell_angle_gamma", "180"),
    )
    close = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.04, 0, 0]])
    add("atoms_0p2_angstrom_apart", Reason.OVERLAPPING_ATOMS, cif=cif_text(close))
    add(
        "duplicated_atom_line",
        Reason.OVERLAPPING_ATOMS,
        formula="Na5Cl4",
        cif=base.replace(first_atom, first_atom + "\n" + first_atom),
    )
    tiny = Structure(Lattice.cubic(0.3), ["Na"], [[0, 0, 0]])
    add("cell_too_dense", Reason.CELL_TOO_SMALL, formula="Na", cif=cif_text(tiny))
    # hostile input (the file-level probes are in tests/structure/hostile_inputs.py)
    import hostile_inputs as hi

    add("cell_length_1e30", Reason.CELL_TOO_LARGE, cif=_set_tag(base, "_cell_length_a", "1e30"))
    add("cell_length_1e8", Reason.CELL_TOO_LARGE, cif=_set_tag(base, "_cell_length_a", "1e8"))
    add("cif_text_too_large", Reason.FILE_TOO_LARGE, cif=base + "#" * 100_001)
    add(
        "frac_1e30", Reason.COORDINATES_OUT_OF_RANGE, cif=hi.p1_cif(hi._sites(1e30), coord_fmt="{}")
    )
    add(
        "two_data_blocks",
        Reason.MULTIPLE_BLOCKS,
        cif=base + "\n" + base.replace("data_", "data_b2"),
    )
    add(
        "coplanar_119p99",
        Reason.DEGENERATE_CELL,
        cif=hi.nacl_cif(alpha=119.99, beta=119.99, gamma=119.99),
    )
    dense = Structure(Lattice.cubic(1.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    add("1p2_angstrom_cube", Reason.VOLUME_PER_ATOM_TOO_SMALL, cif=cif_text(dense))
    sparse = Structure(Lattice.cubic(20.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    add("20_angstrom_cube_2_atoms", Reason.VOLUME_PER_ATOM_TOO_LARGE, cif=cif_text(sparse))
    add("slab_30A_vacuum", Reason.LOW_DIMENSIONAL, cif=hi.slab_cif())
    lonely = Structure(Lattice.cubic(10.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    add("atoms_8p7_angstrom_apart", Reason.ISOLATED_ATOM, cif=cif_text(lonely))
    add("24_sites_over_max_16", Reason.TOO_MANY_SITES, cif=cif_text(nacl() * (1, 1, 3)))
    # formulas
    add("formula_syntax_error", Reason.FORMULA_UNPARSEABLE, formula="NaCl(")
    add("formula_empty", Reason.FORMULA_UNPARSEABLE, formula="")
    add("formula_NA_is_not_sodium", Reason.FORMULA_UNPARSEABLE, formula="NA")
    add("formula_of_other_compound", Reason.FORMULA_MISMATCH, formula="KCl")
    add("formula_wrong_stoichiometry", Reason.FORMULA_MISMATCH, formula="NaCl2")
    # targets
    add("kappa_empty", Reason.TARGET_MISSING, kappa="")
    add("kappa_nan_token", Reason.TARGET_MISSING, kappa="NaN")
    add("kappa_word", Reason.TARGET_NOT_NUMERIC, kappa="fast")
    add("kappa_decimal_comma", Reason.TARGET_NOT_NUMERIC, kappa="7,1")
    add("e_form_optional_word", Reason.TARGET_NOT_NUMERIC, e_form="abc")
    add("kappa_inf", Reason.TARGET_NONFINITE, kappa="inf")
    add("kappa_minus_infinity", Reason.TARGET_NONFINITE, kappa="-Infinity")
    add("kappa_zero_for_log10", Reason.TARGET_NONPOSITIVE, kappa="0")
    add("kappa_negative", Reason.TARGET_NONPOSITIVE, kappa="-3.2")
    add("kappa_above_max", Reason.TARGET_OUT_OF_RANGE, kappa="1e5")
    add("e_form_below_min", Reason.TARGET_OUT_OF_RANGE, e_form="-20")
    return [Case(name, reason, r) for name, reason, r in c]


CASES: list[Case] = _cases()
