"""CIF (and POSCAR) text -> :class:`~kappaflow.structure.crystal.CrystalArrays`.

Fast path: every CIF in the shared data is pymatgen ``CifWriter`` output in P1 with the single
symmetry operation ``x, y, z``. Those are read with gemmi's CIF tokenizer and turned into arrays
with exactly the arithmetic pymatgen's ``CifParser`` uses (``Lattice.from_parameters``, the 1/3
and 2/3 rounding of finite-precision coordinates, wrapping into [0, 1)), about 20x faster than
``Structure.from_str(cif, fmt="cif")``.

Fallback: a CIF with non-identity symmetry operations (or a space-group symbol other than P1 and
no explicit operations), several data blocks, magnetic (magCIF) tags or anything gemmi cannot
tokenize goes through pymatgen's ``CifParser``, with its warnings captured into the error detail.

Differences from pymatgen, on purpose:

* Sites keep the file order (pymatgen sorts them by electronegativity).
* On the fast path two atoms listed at the same position are both kept, so validation reports
  them as ``overlapping_atoms``; pymatgen silently merges same-species duplicates.
* Unknown element symbols raise ``unknown_element``; pymatgen guesses (``"Xx1"`` -> ``Xx``) or
  silently drops the site.

Every problem with the *data* raises :class:`CifError` with a :class:`Reason` code, which
:mod:`kappaflow.data.validation` re-exports and turns into a quarantine row.
"""

from __future__ import annotations

import math
import re
import warnings
from enum import StrEnum
from functools import cache, lru_cache
from pathlib import Path

import gemmi
import numpy as np

from kappaflow.structure.crystal import CrystalArrays

#: Occupancies within this of 1 count as fully occupied.
OCCUPANCY_TOL = 1e-3
#: pymatgen ``CifParser`` default: coordinates within this relative tolerance of 1/3 or 2/3 are
#: snapped to the exact fraction.
FRAC_TOLERANCE = 1e-4

_SYMOP_TAGS = (
    "_symmetry_equiv_pos_as_xyz",
    "_space_group_symop_operation_xyz",
    "_symmetry_equiv_pos_as_xyz_",
    "_space_group_symop_operation_xyz_",
)
_SG_NAME_TAGS = (
    "_symmetry_space_group_name_H-M",
    "_symmetry_space_group_name_H_M",
    "_space_group_name_H-M_alt",
    "_space_group_name_Hall",
    "_symmetry_space_group_name_Hall",
)
_SG_NUMBER_TAGS = ("_symmetry_Int_Tables_number", "_space_group_IT_number")
_IDENTITY_OPS = frozenset({"x,y,z", "+x,+y,+z"})
_P1_NAMES = frozenset({"p1", "p 1", "1"})
_CELL_TAGS = (
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
)
_TYPE_SYMBOL_RE = re.compile(r"([A-Za-z]{1,2})(?:\d*(?:\.\d+)?[+-]?|[+-]\d*(?:\.\d+)?)")
_LABEL_RE = re.compile(r"([A-Za-z]{1,2})")


class Reason(StrEnum):
    """Why a row (or a structure) is rejected. Values are the codes written to quarantine.csv."""

    MISSING_ID = "missing_id"
    DUPLICATE_ID = "duplicate_id"
    MISSING_CIF = "missing_cif"
    MALFORMED_CIF = "malformed_cif"
    NO_SITES = "no_sites"
    PARTIAL_OCCUPANCY = "partial_occupancy"
    UNKNOWN_ELEMENT = "unknown_element"
    UNSUPPORTED_ELEMENT = "unsupported_element"
    NONPOSITIVE_VOLUME = "nonpositive_volume"
    OVERLAPPING_ATOMS = "overlapping_atoms"
    ISOLATED_ATOM = "isolated_atom"
    TOO_MANY_SITES = "too_many_sites"
    FORMULA_UNPARSEABLE = "formula_unparseable"
    FORMULA_MISMATCH = "formula_mismatch"
    TARGET_MISSING = "target_missing"
    TARGET_NOT_NUMERIC = "target_not_numeric"
    TARGET_NONFINITE = "target_nonfinite"
    TARGET_NONPOSITIVE = "target_nonpositive"
    TARGET_OUT_OF_RANGE = "target_out_of_range"


class CifError(ValueError):
    """A CIF (or structure file) that cannot become an ordered crystal.

    Attributes:
        reason: machine-readable :class:`Reason` code.
        detail: human-readable specifics (which symbol, which value, parser messages).
    """

    def __init__(self, reason: Reason | str, detail: str) -> None:
        self.reason = Reason(reason)
        self.detail = detail
        super().__init__(f"{self.reason.value}: {detail}")


class StructureFileError(ValueError):
    """A structure file that cannot be read (missing, unknown format, unparseable POSCAR)."""


@cache
def _symbol_to_z() -> dict[str, int]:
    """Map canonical element symbols (H..Og) to atomic numbers, from pymatgen."""
    from pymatgen.core.periodic_table import Element

    return {Element.from_Z(z).symbol: z for z in range(1, 119)}


def element_z(symbol: str) -> int | None:
    """Atomic number of a canonical element symbol (``"Fe"``), or ``None`` if not an element."""
    return _symbol_to_z().get(symbol)


@lru_cache(maxsize=4096)
def _symbol_from_type(raw: str) -> str | None:
    """Element symbol of an ``_atom_site_type_symbol`` value such as ``Fe``, ``Fe2+``, ``O2-``."""
    m = _TYPE_SYMBOL_RE.fullmatch(raw.strip())
    return m.group(1).title() if m else None


@lru_cache(maxsize=4096)
def _symbol_from_label(raw: str) -> str | None:
    """Element symbol guessed from an ``_atom_site_label`` such as ``Fe1`` (pymatgen's rule)."""
    m = _LABEL_RE.match(raw.strip())
    if not m:
        return None
    letters = m.group(1)
    if len(letters) == 2 and element_z(letters.title()) is not None:
        return letters.title()
    return letters[0].upper()


def _numbers_from_symbols(raw_symbols: list[str], from_label: bool) -> np.ndarray:
    parse = _symbol_from_label if from_label else _symbol_from_type
    table = _symbol_to_z()
    out = np.empty(len(raw_symbols), dtype=np.int64)
    for i, raw in enumerate(raw_symbols):
        sym = parse(raw)
        z = table.get(sym) if sym is not None else None
        if z is None:
            what = "_atom_site_label" if from_label else "_atom_site_type_symbol"
            raise CifError(
                Reason.UNKNOWN_ELEMENT,
                f"site {i}: {what} {raw!r} is not a chemical element symbol",
            )
        out[i] = z
    return out


def _as_floats(values: list[str], tag: str) -> np.ndarray:
    """Parse CIF numbers (uncertainties like ``0.25(3)`` allowed); malformed_cif otherwise."""
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        pass
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        x = gemmi.cif.as_number(v)
        if gemmi.cif.is_null(v) or math.isnan(x):
            raise CifError(Reason.MALFORMED_CIF, f"{tag}[{i}] = {v!r} is not a number")
        out[i] = x
    return out


def _cell_parameters(block: gemmi.cif.Block) -> tuple[float, ...]:
    params = []
    for tag in _CELL_TAGS:
        raw = block.find_value(tag)
        if raw is None:
            raise CifError(Reason.MALFORMED_CIF, f"missing cell parameter {tag}")
        x = gemmi.cif.as_number(raw)
        if gemmi.cif.is_null(raw) or not math.isfinite(x):
            raise CifError(Reason.MALFORMED_CIF, f"cell parameter {tag} = {raw!r} is not a number")
        params.append(x)
    return tuple(params)


def lattice_from_parameters(
    a: float, b: float, c: float, alpha: float, beta: float, gamma: float
) -> np.ndarray:
    """Lattice matrix from cell parameters, identical to pymatgen ``Lattice.from_parameters``.

    Args:
        a: cell length a, Å.
        b: cell length b, Å.
        c: cell length c, Å.
        alpha: angle between b and c, degrees.
        beta: angle between a and c, degrees.
        gamma: angle between a and b, degrees.

    Returns:
        [3, 3] float64, rows are lattice vectors in Å (c along z, a in the xz plane).
    """
    from pymatgen.core import Lattice

    return np.array(Lattice.from_parameters(a, b, c, alpha, beta, gamma).matrix, dtype=np.float64)


def _snap_and_wrap(frac: np.ndarray) -> np.ndarray:
    """Apply pymatgen's CIF coordinate clean-up: snap to 1/3, 2/3, then wrap into [0, 1)."""
    frac = frac.copy()
    for ideal in (1 / 3, 2 / 3):
        frac[np.abs(frac / ideal - 1.0) <= FRAC_TOLERANCE] = ideal
    return frac - np.floor(frac)


def _has_only_identity(block: gemmi.cif.Block) -> bool:
    """Return True if the block is P1 (explicit ``x,y,z`` op only, a P1 symbol, or nothing)."""
    for tag in _SYMOP_TAGS:
        ops = list(block.find_values(tag))
        if ops:
            return all(
                re.sub(r"\s+", "", gemmi.cif.as_string(op)).lower() in _IDENTITY_OPS for op in ops
            )
    for tag in _SG_NAME_TAGS:
        raw = block.find_value(tag)
        if raw is not None and not gemmi.cif.is_null(raw):
            return re.sub(r"\s+", " ", gemmi.cif.as_string(raw)).strip().lower() in _P1_NAMES
    for tag in _SG_NUMBER_TAGS:
        raw = block.find_value(tag)
        if raw is not None and not gemmi.cif.is_null(raw):
            return gemmi.cif.as_string(raw).strip() == "1"
    return True


def _is_magnetic(block: gemmi.cif.Block) -> bool:
    for item in block:
        tags = item.loop.tags if item.loop is not None else ([item.pair[0]] if item.pair else [])
        for tag in tags:
            low = tag.lower()
            if "_magn" in low or low.startswith("_atom_site_moment"):
                return True
    return False


def _read_atoms(block: gemmi.cif.Block) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers [n] and raw fractional coordinates [n, 3] of a block's atom_site loop.

    Raises:
        CifError: ``no_sites``, ``unknown_element``, ``partial_occupancy`` or ``malformed_cif``.
    """
    cols = {
        key: list(block.find_values(f"_atom_site_{key}"))
        for key in ("type_symbol", "label", "fract_x", "fract_y", "fract_z", "occupancy")
    }
    symbols = cols["type_symbol"] or cols["label"]
    n = max(len(v) for v in cols.values())
    if n == 0:
        raise CifError(Reason.NO_SITES, "no _atom_site_ rows (the structure has no atoms)")
    if not symbols:
        raise CifError(Reason.MALFORMED_CIF, "atom_site loop has neither type_symbol nor label")
    numbers = _numbers_from_symbols(symbols, from_label=not cols["type_symbol"])
    xyz = []
    for axis in "xyz":
        values = cols[f"fract_{axis}"]
        if len(values) != len(symbols):
            raise CifError(
                Reason.MALFORMED_CIF,
                f"_atom_site_fract_{axis} has {len(values)} values for {len(symbols)} sites",
            )
        xyz.append(_as_floats(values, f"_atom_site_fract_{axis}"))
    frac = np.stack(xyz, axis=1)
    if not np.isfinite(frac).all():
        bad = int(np.flatnonzero(~np.isfinite(frac).all(axis=1))[0])
        raise CifError(Reason.MALFORMED_CIF, f"site {bad}: non-finite fractional coordinate")
    if cols["occupancy"]:
        # '?' / '.' mean unknown: treated as fully occupied, like pymatgen.
        raw_occ = ["1" if gemmi.cif.is_null(v) else v for v in cols["occupancy"]]
        occ = _as_floats(raw_occ, "_atom_site_occupancy")
        if not np.isfinite(occ).all():
            bad = int(np.flatnonzero(~np.isfinite(occ))[0])
            raise CifError(Reason.MALFORMED_CIF, f"site {bad}: non-finite occupancy")
        bad_occ = np.flatnonzero(np.abs(occ - 1.0) > OCCUPANCY_TOL)
        if len(bad_occ):
            i = int(bad_occ[0])
            raise CifError(
                Reason.PARTIAL_OCCUPANCY,
                f"{len(bad_occ)} site(s) not fully occupied, e.g. site {i} ({symbols[i]}) "
                f"occupancy {occ[i]:g}",
            )
    return numbers, frac


def _parse_with_pymatgen(text: str, why: str) -> CrystalArrays:
    """Fallback: pymatgen ``CifParser`` (first structure), warnings captured into the detail."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser = CifParser.from_str(text)
            structures = parser.parse_structures(primitive=False, on_error="ignore")
        except Exception as exc:  # pymatgen raises anything on garbage input
            notes = "; ".join(str(w.message) for w in caught)
            raise _classify_pymatgen_error(exc, notes, why) from exc
    if not structures:
        raise CifError(Reason.MALFORMED_CIF, f"pymatgen parsed no structure ({why})")
    structure = structures[0]
    if len(structure) == 0:
        raise CifError(Reason.NO_SITES, "pymatgen parsed a structure with no sites")
    if not structure.is_ordered:
        mixed = next(site for site in structure if not site.is_ordered)
        raise CifError(
            Reason.PARTIAL_OCCUPANCY,
            f"disordered site {mixed.species.formula!r} at "
            f"{np.round(mixed.frac_coords, 4).tolist()}",
        )
    numbers = []
    for site in structure:
        z = element_z(getattr(site.specie, "symbol", ""))
        if z is None:
            raise CifError(Reason.UNKNOWN_ELEMENT, f"species {site.specie!s} is not an element")
        numbers.append(z)
    return CrystalArrays(structure.lattice.matrix.copy(), numbers, structure.frac_coords.copy())


def _classify_pymatgen_error(exc: Exception, notes: str, why: str) -> CifError:
    msg = f"{type(exc).__name__}: {exc}".strip()
    detail = f"pymatgen fallback ({why}) failed: {msg}" + (f" [warnings: {notes}]" if notes else "")
    low = msg.lower()
    if "thickness" in low or isinstance(exc, np.linalg.LinAlgError):
        return CifError(Reason.NONPOSITIVE_VOLUME, detail)
    if "occupanc" in low:
        return CifError(Reason.PARTIAL_OCCUPANCY, detail)
    return CifError(Reason.MALFORMED_CIF, detail)


def parse_cif(text: str) -> CrystalArrays:
    """Parse CIF text into an ordered crystal.

    Args:
        text: CIF file contents. The first data block with a structure is used.

    Returns:
        The crystal; lattice rows in Å (pymatgen ``Lattice.from_parameters`` orientation),
        fractional coordinates wrapped into [0, 1), sites in file order.

    Raises:
        CifError: ``malformed_cif`` (unreadable text, missing/non-numeric cell or coordinates),
            ``no_sites``, ``unknown_element``, ``partial_occupancy`` (occupancy != 1 or a mixed
            site), or ``nonpositive_volume`` (pymatgen rejects a degenerate cell).
    """
    if not isinstance(text, str) or not text.strip():
        raise CifError(Reason.MALFORMED_CIF, "empty CIF text")
    try:
        doc = gemmi.cif.read_string(text)
    except (RuntimeError, ValueError) as exc:
        return _parse_with_pymatgen(text, why=f"gemmi could not read it: {exc}")
    if len(doc) != 1:
        return _parse_with_pymatgen(text, why=f"{len(doc)} data blocks")
    block = doc.sole_block()
    cell = _cell_parameters(block)
    numbers, frac = _read_atoms(block)
    if _is_magnetic(block) or not _has_only_identity(block):
        return _parse_with_pymatgen(text, why="symmetry operations other than x,y,z")
    return CrystalArrays(lattice_from_parameters(*cell), numbers, _snap_and_wrap(frac))


def parse_structure_file(path: str | Path) -> CrystalArrays:
    """Read a CIF or a VASP POSCAR/CONTCAR file into an ordered crystal.

    CIFs (``*.cif``, ``*.mcif``) go through :func:`parse_cif`; POSCAR-style files (``POSCAR*``,
    ``CONTCAR*``, ``*.vasp``, ``*.poscar``) through pymatgen ``Poscar``. Any other name is tried
    as a CIF first, then as a POSCAR.

    Args:
        path: file path.

    Returns:
        The crystal (lattice rows in Å).

    Raises:
        StructureFileError: the file is missing or unreadable, or is neither a CIF nor a POSCAR.
        CifError: the file is a CIF whose content is invalid (see :func:`parse_cif`).
    """
    p = Path(path)
    if not p.is_file():
        raise StructureFileError(f"{p}: no such file")
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise StructureFileError(f"{p}: cannot read ({exc})") from exc
    name = p.name.lower()
    is_poscar = name.startswith(("poscar", "contcar")) or name.endswith((".vasp", ".poscar"))
    if name.endswith((".cif", ".mcif")):
        return parse_cif(text)
    if is_poscar:
        return _parse_poscar(text, p)
    try:
        return parse_cif(text)
    except CifError as cif_exc:
        try:
            return _parse_poscar(text, p)
        except StructureFileError as pos_exc:
            raise StructureFileError(
                f"{p}: not a readable CIF ({cif_exc}) nor POSCAR ({pos_exc})"
            ) from pos_exc


def _parse_poscar(text: str, path: Path) -> CrystalArrays:
    from pymatgen.io.vasp import Poscar

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            structure = Poscar.from_str(text).structure
        except Exception as exc:  # pymatgen raises anything on garbage input
            raise StructureFileError(
                f"{path}: not a valid POSCAR ({type(exc).__name__}: {exc})"
            ) from exc
    if len(structure) == 0:
        raise StructureFileError(f"{path}: POSCAR has no atoms")
    try:
        return CrystalArrays.from_structure(structure)
    except (ValueError, AttributeError) as exc:
        raise StructureFileError(f"{path}: {exc}") from exc
