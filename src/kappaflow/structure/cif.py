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

import errno
import math
import multiprocessing as mp
import os
import re
import stat
import time
import warnings
from dataclasses import dataclass
from enum import StrEnum
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

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
    # hostile input: files
    MISSING_FILE = "missing_file"
    IS_DIRECTORY = "is_directory"
    NOT_REGULAR_FILE = "not_regular_file"
    SYMLINK_LOOP = "symlink_loop"
    UNREADABLE_FILE = "unreadable_file"
    FILE_TOO_LARGE = "file_too_large"
    UNKNOWN_FORMAT = "unknown_format"
    MALFORMED_POSCAR = "malformed_poscar"
    POSCAR_TOO_SHORT = "poscar_too_short"
    POSCAR_COUNT_MISMATCH = "poscar_count_mismatch"
    MULTIPLE_BLOCKS = "multiple_blocks"
    PARSE_TIMEOUT = "parse_timeout"
    # hostile input: geometry
    COORDINATES_OUT_OF_RANGE = "coordinates_out_of_range"
    CELL_TOO_LARGE = "cell_too_large"
    CELL_TOO_SMALL = "cell_too_small"
    DEGENERATE_CELL = "degenerate_cell"
    VOLUME_PER_ATOM_TOO_SMALL = "volume_per_atom_too_small"
    VOLUME_PER_ATOM_TOO_LARGE = "volume_per_atom_too_large"
    LOW_DIMENSIONAL = "low_dimensional"
    #: An unexpected exception while checking one input (a bug or an unforeseen input); the
    #: batch goes on.
    CHECK_FAILED = "check_failed"


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

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with reason and detail (the error crosses process boundaries)."""
        return (type(self), (self.reason.value, self.detail))


class StructureFileError(ValueError):
    """A structure file that cannot be read (missing, unknown format, unparseable POSCAR).

    Attributes:
        reason: machine-readable :class:`Reason` code (``missing_file``, ``is_directory``,
            ``not_regular_file``, ``symlink_loop``, ``unreadable_file``, ``file_too_large``,
            ``unknown_format``, ``malformed_poscar``, ``poscar_too_short``,
            ``poscar_count_mismatch``, ``parse_timeout``).
        detail: the full message (with the file name).
    """

    def __init__(self, message: str, reason: Reason | str = Reason.UNREADABLE_FILE) -> None:
        self.reason = Reason(reason)
        self.detail = message
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the reason (the error crosses process boundaries)."""
        return (type(self), (self.detail, self.reason.value))


@dataclass(frozen=True)
class ParseLimits:
    """Limits applied while reading a structure, before any expensive work.

    Attributes:
        max_file_bytes: largest file (or CIF text) size in bytes (``file_too_large``); None: no
            limit.
        max_sites: largest number of ``_atom_site`` rows / sites (``too_many_sites``); None: no
            limit.
        max_abs_frac: largest |fractional coordinate| accepted before wrapping into [0, 1)
            (``coordinates_out_of_range``); beyond ~1e15 wrapping loses every digit.
        parse_timeout: seconds one slow-path parse (pymatgen ``CifParser`` for symmetrised
            CIFs, POSCARs) may take in a killable child process (``parse_timeout``); None: no
            budget, parse in this process.
    """

    max_file_bytes: int | None = 10_000_000
    max_sites: int | None = 1000
    max_abs_frac: float | None = 100.0
    parse_timeout: float | None = 10.0


#: No limits at all (the behaviour before limits existed; for trusted, already-checked text).
NO_LIMITS = ParseLimits(None, None, None, None)

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_control(text: str) -> str:
    """Escape control characters (newline, tab, ESC, ...) for one-line printed output and CSVs.

    A newline becomes the two characters backslash and ``n`` (``repr`` style), so a file name
    cannot start a new line of a table or a CSV, nor move the cursor. Other text is unchanged.
    """
    if not _CONTROL_RE.search(text):
        return text
    return _CONTROL_RE.sub(lambda m: repr(m.group(0))[1:-1], text)


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


def _read_atoms(
    block: gemmi.cif.Block, limits: ParseLimits = NO_LIMITS
) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers [n] and raw fractional coordinates [n, 3] of a block's atom_site loop.

    Raises:
        CifError: ``no_sites``, ``too_many_sites`` (more rows than ``limits.max_sites``, checked
            before any number is parsed), ``unknown_element``, ``partial_occupancy``,
            ``coordinates_out_of_range`` or ``malformed_cif``.
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
    if limits.max_sites is not None and n > limits.max_sites:
        raise CifError(
            Reason.TOO_MANY_SITES, f"{n} sites (_atom_site_ rows) > max_sites {limits.max_sites}"
        )
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
    _check_frac_range(frac, limits)
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


def _check_frac_range(frac: np.ndarray, limits: ParseLimits) -> None:
    """Reject |fractional coordinates| above ``limits.max_abs_frac`` instead of wrapping them.

    Raises:
        CifError: ``coordinates_out_of_range``.
    """
    if limits.max_abs_frac is None or not len(frac):
        return
    big = np.abs(frac) > limits.max_abs_frac
    if big.any():
        i, k = (int(x) for x in np.argwhere(big)[0])
        raise CifError(
            Reason.COORDINATES_OUT_OF_RANGE,
            f"site {i}: fractional coordinate {'xyz'[k]} = {frac[i, k]:.6g}, |value| > "
            f"max_abs_frac {limits.max_abs_frac:g} (would wrap to a meaningless position)",
        )


def _run_with_budget(fn: Any, args: tuple[Any, ...], seconds: float | None, what: str) -> Any:
    """Run ``fn(*args)`` in a forked child process killed after ``seconds``.

    A CIF/POSCAR parse is pure Python/C: only a separate process can be stopped reliably (and
    its memory is returned when it ends). Without a budget, or where ``fork`` is not available,
    ``fn`` runs in this process. Exceptions raised by ``fn`` are re-raised here.

    Raises:
        CifError: ``parse_timeout`` when the budget is exceeded (or the child dies).
    """
    if seconds is None or "fork" not in mp.get_all_start_methods():
        return fn(*args)
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    send.close()
    try:
        if not recv.poll(seconds):
            raise CifError(
                Reason.PARSE_TIMEOUT,
                f"{what} took more than the {seconds:g} s parse budget (stopped)",
            )
        try:
            ok, value = recv.recv()
        except EOFError:
            raise CifError(
                Reason.PARSE_TIMEOUT,
                f"{what}: parser process died after {time.perf_counter() - t0:.1f} s "
                f"(exit code {proc.exitcode})",
            ) from None
    finally:
        recv.close()
        if proc.is_alive():
            proc.kill()
        proc.join()
    if ok:
        return value
    raise value


def _child(conn: Any, fn: Any, args: tuple[Any, ...]) -> None:
    """Child side of :func:`_run_with_budget`: send ``(True, result)`` or ``(False, exc)``."""
    try:
        result: tuple[bool, Any] = (True, fn(*args))
    except BaseException as exc:  # noqa: BLE001 - shipped to the parent, re-raised there
        result = (False, exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
    try:
        conn.send(result)
    except Exception as exc:  # unpicklable exception: send its text
        conn.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        conn.close()


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


def parse_cif(text: str, limits: ParseLimits = NO_LIMITS) -> CrystalArrays:
    """Parse CIF text into an ordered crystal.

    Args:
        text: CIF file contents. The one data block with a structure is used; a block without
            cell or atom-site tags (e.g. a global header) is ignored.
        limits: size, site-count, coordinate and time limits (default: none), applied before
            the expensive steps.

    Returns:
        The crystal; lattice rows in Å (pymatgen ``Lattice.from_parameters`` orientation),
        fractional coordinates wrapped into [0, 1), sites in file order.

    Raises:
        CifError: ``malformed_cif`` (unreadable text, missing/non-numeric cell or coordinates),
            ``file_too_large``, ``multiple_blocks`` (several blocks with a structure: rejected,
            not guessed), ``no_sites``, ``too_many_sites``, ``coordinates_out_of_range``,
            ``unknown_element``, ``partial_occupancy`` (occupancy != 1 or a mixed site),
            ``parse_timeout`` (the pymatgen fallback ran over ``limits.parse_timeout``) or
            ``nonpositive_volume`` (pymatgen rejects a degenerate cell).
    """
    if not isinstance(text, str) or not text.strip():
        raise CifError(Reason.MALFORMED_CIF, "empty CIF text")
    if limits.max_file_bytes is not None and len(text) > limits.max_file_bytes:
        raise CifError(
            Reason.FILE_TOO_LARGE,
            f"CIF text of {len(text)} characters > max_file_bytes {limits.max_file_bytes}",
        )
    try:
        doc = gemmi.cif.read_string(text)
    except (RuntimeError, ValueError) as exc:
        return _fallback(text, f"gemmi could not read it: {exc}", limits)
    if len(doc) != 1:
        with_structure = [
            b.name
            for b in doc
            if b.find_value("_cell_length_a") is not None or b.find_values("_atom_site_fract_x")
        ]
        if len(with_structure) > 1:
            names = ", ".join(repr(n) for n in with_structure[:5])
            raise CifError(
                Reason.MULTIPLE_BLOCKS,
                f"{len(with_structure)} data blocks with a structure ({names}); one "
                "structure per file",
            )
        return _fallback(text, f"{len(doc)} data blocks", limits)
    block = doc.sole_block()
    cell = _cell_parameters(block)
    numbers, frac = _read_atoms(block, limits)
    if _is_magnetic(block) or not _has_only_identity(block):
        return _fallback(text, "symmetry operations other than x,y,z", limits)
    return CrystalArrays(lattice_from_parameters(*cell), numbers, _snap_and_wrap(frac))


def _fallback(text: str, why: str, limits: ParseLimits) -> CrystalArrays:
    """Run the pymatgen fallback under the time budget, then check its number of sites."""
    crystal = _run_with_budget(
        _parse_with_pymatgen, (text, why), limits.parse_timeout, f"pymatgen CIF parse ({why})"
    )
    if limits.max_sites is not None and crystal.n_sites > limits.max_sites:
        raise CifError(
            Reason.TOO_MANY_SITES,
            f"{crystal.n_sites} sites after symmetry expansion > max_sites {limits.max_sites}",
        )
    return crystal


def read_structure_text(path: str | Path, limits: ParseLimits = NO_LIMITS) -> str:
    """Return a structure file's text after checking what the path is, without blocking.

    ``os.stat`` runs before any ``open``: a directory, a FIFO (opening one blocks), a device, a
    socket or a symlink loop is rejected with its own reason, and so is a file larger than
    ``limits.max_file_bytes``.

    Args:
        path: file path.
        limits: ``max_file_bytes`` is used.

    Returns:
        The text (UTF-8, undecodable bytes replaced).

    Raises:
        StructureFileError: ``missing_file``, ``symlink_loop``, ``is_directory``,
            ``not_regular_file``, ``file_too_large`` or ``unreadable_file``.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise StructureFileError(
                f"{p}: dangling symbolic link (no such file)", Reason.MISSING_FILE
            ) from None
        raise StructureFileError(f"{p}: no such file", Reason.MISSING_FILE) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StructureFileError(
                f"{p}: symbolic link loop ({exc.strerror})", Reason.SYMLINK_LOOP
            ) from None
        raise StructureFileError(
            f"{p}: cannot stat ({exc.strerror or exc})", Reason.UNREADABLE_FILE
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise StructureFileError(f"{p}: is a directory, not a file", Reason.IS_DIRECTORY)
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "FIFO (named pipe)"
            if stat.S_ISFIFO(st.st_mode)
            else "socket"
            if stat.S_ISSOCK(st.st_mode)
            else "device"
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "special file"
        )
        raise StructureFileError(f"{p}: is a {kind}, not a regular file", Reason.NOT_REGULAR_FILE)
    if limits.max_file_bytes is not None and st.st_size > limits.max_file_bytes:
        raise StructureFileError(
            f"{p}: {st.st_size} bytes > max_file_bytes {limits.max_file_bytes}",
            Reason.FILE_TOO_LARGE,
        )
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO after the stat, open does not block.
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise StructureFileError(
                    f"{p}: changed into a non-regular file while being read",
                    Reason.NOT_REGULAR_FILE,
                )
            cap = None if limits.max_file_bytes is None else limits.max_file_bytes + 1
            data = fh.read() if cap is None else fh.read(cap)
    except OSError as exc:
        raise StructureFileError(
            f"{p}: cannot read ({exc.strerror or exc})", Reason.UNREADABLE_FILE
        ) from None
    if limits.max_file_bytes is not None and len(data) > limits.max_file_bytes:
        raise StructureFileError(
            f"{p}: more than max_file_bytes {limits.max_file_bytes} bytes", Reason.FILE_TOO_LARGE
        )
    return data.decode("utf-8", errors="replace")


def parse_structure_file(path: str | Path, limits: ParseLimits = NO_LIMITS) -> CrystalArrays:
    """Read a CIF or a VASP POSCAR/CONTCAR file into an ordered crystal.

    CIFs (``*.cif``, ``*.mcif``) go through :func:`parse_cif`; POSCAR-style files (``POSCAR*``,
    ``CONTCAR*``, ``*.vasp``, ``*.poscar``) through pymatgen ``Poscar`` after a line-count check.
    Any other name is tried as a CIF first, then as a POSCAR.

    Args:
        path: file path.
        limits: file size, site count, coordinate and time limits (default: none).

    Returns:
        The crystal (lattice rows in Å).

    Raises:
        StructureFileError: the path is not a readable regular file, or is neither a CIF nor a
            POSCAR (see :func:`read_structure_text`; ``reason`` says which).
        CifError: the file is a CIF whose content is invalid (see :func:`parse_cif`).
    """
    p = Path(path)
    text = read_structure_text(p, limits)
    name = p.name.lower()
    is_poscar = name.startswith(("poscar", "contcar")) or name.endswith((".vasp", ".poscar"))
    if name.endswith((".cif", ".mcif")):
        return parse_cif(text, limits)
    if is_poscar:
        return _parse_poscar(text, p, limits)
    try:
        return parse_cif(text, limits)
    except CifError as cif_exc:
        if cif_exc.reason not in (Reason.MALFORMED_CIF, Reason.NO_SITES):
            raise
        try:
            return _parse_poscar(text, p, limits)
        except StructureFileError as pos_exc:
            raise StructureFileError(
                f"{p}: not a readable CIF ({cif_exc}) nor POSCAR ({pos_exc})",
                Reason.UNKNOWN_FORMAT,
            ) from pos_exc


_POSCAR_MODE = re.compile(r"^\s*[dDcCkK]")


def _check_poscar_lines(text: str) -> None:
    """Check a POSCAR's layout: header, counts, and exactly sum(counts) coordinate lines.

    pymatgen reads only the first ``sum(counts)`` coordinate lines (extra lines are silently
    ignored, so counts ``1 1`` with four positions reads as a 2-atom cell) and fails with an
    ``IndexError`` when lines are missing.

    Raises:
        StructureFileError: ``poscar_too_short``, ``malformed_poscar`` or
            ``poscar_count_mismatch``.
    """
    lines = text.splitlines()
    if len(lines) < 7:
        raise StructureFileError(
            f"{len(lines)} lines; a POSCAR needs at least 8 (comment, scale, 3 lattice "
            "vectors, counts, coordinate mode, positions)",
            Reason.POSCAR_TOO_SHORT,
        )
    k = 5
    first = lines[k].split()
    if first and not all(tok.lstrip("+").isdigit() for tok in first):
        k += 1  # element symbols line (VASP 5)
    if k >= len(lines):
        raise StructureFileError("no atom-count line", Reason.POSCAR_TOO_SHORT)
    try:
        counts = [int(tok) for tok in lines[k].split()]
    except ValueError:
        raise StructureFileError(
            f"line {k + 1}: atom counts {lines[k].strip()[:60]!r} are not integers",
            Reason.MALFORMED_POSCAR,
        ) from None
    if not counts or min(counts) < 0:
        raise StructureFileError(
            f"line {k + 1}: bad atom counts {lines[k].strip()[:60]!r}", Reason.MALFORMED_POSCAR
        )
    k += 1
    if k < len(lines) and lines[k].strip()[:1] in ("s", "S"):
        k += 1  # Selective dynamics
    if k >= len(lines) or not _POSCAR_MODE.match(lines[k]):
        raise StructureFileError(
            f"line {k + 1}: expected the coordinate mode (Direct/Cartesian)",
            Reason.POSCAR_TOO_SHORT if k >= len(lines) else Reason.MALFORMED_POSCAR,
        )
    n_atoms = sum(counts)
    block = []
    for line in lines[k + 1 :]:
        if not line.strip():
            break  # a blank line ends the positions (velocities may follow in a CONTCAR)
        block.append(line)
    if len(block) != n_atoms:
        reason = Reason.POSCAR_TOO_SHORT if len(block) < n_atoms else Reason.POSCAR_COUNT_MISMATCH
        raise StructureFileError(
            f"atom counts {counts} sum to {n_atoms} but {len(block)} coordinate line(s) follow",
            reason,
        )


def _parse_poscar_text(text: str) -> CrystalArrays:
    from pymatgen.io.vasp import Poscar

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        structure = Poscar.from_str(text).structure
    if len(structure) == 0:
        raise StructureFileError("POSCAR has no atoms", Reason.MALFORMED_POSCAR)
    return CrystalArrays.from_structure(structure)


def _parse_poscar(text: str, path: Path, limits: ParseLimits = NO_LIMITS) -> CrystalArrays:
    try:
        _check_poscar_lines(text)
        crystal = _run_with_budget(
            _parse_poscar_text, (text,), limits.parse_timeout, "pymatgen POSCAR parse"
        )
    except StructureFileError as exc:
        raise StructureFileError(f"{path}: not a valid POSCAR ({exc})", exc.reason) from exc
    except CifError as exc:  # parse_timeout
        raise StructureFileError(f"{path}: {exc.detail}", exc.reason) from exc
    except Exception as exc:  # pymatgen raises anything on garbage input
        raise StructureFileError(
            f"{path}: not a valid POSCAR ({type(exc).__name__}: {exc})", Reason.MALFORMED_POSCAR
        ) from exc
    if limits.max_sites is not None and crystal.n_sites > limits.max_sites:
        raise StructureFileError(
            f"{path}: {crystal.n_sites} sites > max_sites {limits.max_sites}",
            Reason.TOO_MANY_SITES,
        )
    try:
        _check_frac_range(crystal.frac_coords, limits)
    except CifError as exc:
        raise StructureFileError(f"{path}: {exc.detail}", exc.reason) from exc
    return crystal
