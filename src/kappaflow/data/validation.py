"""Row-level validation of raw dataset tables: every row becomes a ValidRecord or a Rejection.

:func:`validate_row` never raises for bad *data*: each problem is returned as a
:class:`Rejection` carrying a :class:`Reason` code and a specific, human-readable detail (which
element, which distance, which value). Checks, cheapest first:

1. id present (``missing_id``); duplicates need state and are handled by
   :func:`kappaflow.data.prepare.prepare_dataset` (``duplicate_id``, first occurrence kept).
2. formula parses with pymatgen (``formula_unparseable``).
3. each target: present if required, numeric, finite, > 0 if ``positive``, within
   ``[min, max]`` (``target_*``). Values stay in raw units (κ in W/m/K, not log10).
4. structure datasets only: CIF present and parseable (``missing_cif``, ``malformed_cif``,
   ``no_sites``, ``partial_occupancy``, ``unknown_element``; see :mod:`kappaflow.structure.cif`),
   elements in :data:`kappaflow.structure.elements.SUPPORTED_Z` (``unsupported_element``), site
   count (``too_many_sites``), cell volume (``nonpositive_volume``), cell lengths
   (``cell_too_large``, ``cell_too_small``), nearly coplanar cell vectors (``degenerate_cell``),
   volume per atom (``volume_per_atom_too_small`` / ``_too_large``), reduced formula of the
   structure equals that of the formula column (``formula_mismatch``), no two atoms closer
   than ``min_distance`` (``overlapping_atoms``), every atom has a neighbour within ``cutoff``
   (``isolated_atom``: it would have no edge in the crystal graph), and (always in
   :func:`check_crystal`, in ``prepare`` only with ``dimensionality_in_prepare``) the atoms
   linked within ``dimensionality_radius`` form a 3D network (``low_dimensional``: slabs,
   wires, molecules in vacuum get no κ).

Limits on the input itself (CIF text size, ``_atom_site`` rows, |fractional coordinates|,
parse time) are applied by the parser, before any expensive work
(:meth:`ValidationOptions.parse_limits`). An unexpected exception while checking one row
becomes a ``check_failed`` rejection: one row never stops a batch.

The space group (spglib, or moyopy if chosen) is metadata: a failure gives -1, not a rejection.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from kappaflow.cards import DatasetSpec, TargetSpec
from kappaflow.structure.cif import CifError, ParseLimits, Reason, parse_cif
from kappaflow.structure.crystal import CrystalArrays
from kappaflow.structure.dimensionality import network_dimension
from kappaflow.structure.elements import MAX_Z, SUPPORTED_Z
from kappaflow.structure.neighbors import periodic_neighbors

__all__ = [
    "CifError",
    "Reason",
    "Rejection",
    "ValidRecord",
    "ValidationOptions",
    "check_crystal",
    "reduced_formula",
    "spacegroup_number",
    "structure_formula",
    "validate_row",
]

# spglib prints C-level warnings ("spglib: ssm_get_exact_positions failed.") to stderr for
# structures it cannot symmetrise; they are expected here (-> spacegroup -1) and would garble
# progress bars. Set SPGLIB_WARNING=ON to see them.
os.environ.setdefault("SPGLIB_WARNING", "OFF")

#: Strings that mean "no value" in a target column (compared case-insensitively).
MISSING_TOKENS = frozenset({"", "nan", "na", "n/a", "none", "null", "?"})
#: A cell whose volume is below this fraction of |a||b||c| counts as degenerate.
DEGENERATE_VOLUME_FRACTION = 1e-6
#: First-pass neighbour radius (Å) for the overlap/isolation checks; atoms without a neighbour
#: within it (rare) trigger one search at the full cutoff.
FIRST_PASS_RADIUS = 4.0

_SUPPORTED = frozenset(SUPPORTED_Z)


@dataclass(frozen=True)
class ValidationOptions:
    """Thresholds of the structure checks.

    Attributes:
        cutoff: graph cutoff radius, Å. An atom with no neighbour (any atom or periodic image)
            within it is quarantined as ``isolated_atom``. Use the graph builder's cutoff.
        min_distance: two atoms closer than this (Å) are ``overlapping_atoms``.
        max_sites: largest allowed number of sites per cell (``too_many_sites``); None: no limit.
            1000 by default: the largest valid cell of the project's datasets has 624 sites.
        symprec: symmetry tolerance for the space-group number, Å.
        symmetry_backend: ``spglib`` (``spglib.get_symmetry_dataset``) or ``moyopy`` (same
            numbers on the MP data, about 7x faster; needs the ``moyopy`` package).
        max_file_bytes: largest CIF text / structure file, bytes (``file_too_large``).
        max_abs_frac: largest |fractional coordinate| before wrapping
            (``coordinates_out_of_range``).
        parse_timeout: seconds per slow-path parse in a killable child process
            (``parse_timeout``); None: no budget.
        min_cell_length: shortest allowed lattice vector, Å, as given (``cell_too_small``) or
            of the LLL-reduced cell (``degenerate_cell``: nearly coplanar vectors).
        max_cell_length: longest allowed lattice vector, Å (``cell_too_large``); bounds the
            neighbour search's cell grid.
        min_volume_per_atom: Å^3 (``volume_per_atom_too_small``).
        max_volume_per_atom: Å^3 (``volume_per_atom_too_large``).
        dimensionality_radius: atoms closer than this (Å) are linked; a crystal whose linked
            network is not periodic in 3 directions is ``low_dimensional``. None: ``cutoff``
            (no graph edge crosses the vacuum).
        dimensionality_in_prepare: also apply the dimensionality check in ``prepare``
            (:func:`validate_row`). Off by default: MP and matbench_dielectric hold ~2% 2D/0D
            entries (monolayers, molecules in a box) that are valid for their targets; κ is
            never predicted for them (:func:`check_crystal`, used by predict and screen,
            always checks).
    """

    cutoff: float = 8.0
    min_distance: float = 0.5
    max_sites: int | None = 1000
    symprec: float = 0.1
    symmetry_backend: Literal["spglib", "moyopy"] = "spglib"
    max_file_bytes: int | None = 10_000_000
    max_abs_frac: float | None = 100.0
    parse_timeout: float | None = 10.0
    min_cell_length: float = 1.0
    max_cell_length: float = 500.0
    min_volume_per_atom: float = 1.0
    max_volume_per_atom: float = 2500.0
    dimensionality_radius: float | None = None
    dimensionality_in_prepare: bool = False

    def __post_init__(self) -> None:
        if not self.cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Å, got {self.cutoff}")
        if not 0 < self.min_distance < self.cutoff:
            raise ValueError(f"need 0 < min_distance < cutoff, got {self.min_distance}")
        if self.max_sites is not None and self.max_sites < 1:
            raise ValueError(f"max_sites must be >= 1 or None, got {self.max_sites}")
        if not self.symprec > 0:
            raise ValueError(f"symprec must be > 0 Å, got {self.symprec}")
        if self.symmetry_backend not in ("spglib", "moyopy"):
            raise ValueError(f"unknown symmetry_backend {self.symmetry_backend!r}")
        if not 0 < self.min_cell_length < self.max_cell_length:
            raise ValueError(
                f"need 0 < min_cell_length < max_cell_length, got {self.min_cell_length}, "
                f"{self.max_cell_length}"
            )
        if not 0 < self.min_volume_per_atom < self.max_volume_per_atom:
            raise ValueError(
                f"need 0 < min_volume_per_atom < max_volume_per_atom, got "
                f"{self.min_volume_per_atom}, {self.max_volume_per_atom}"
            )
        for name in ("max_file_bytes", "max_abs_frac", "parse_timeout", "dimensionality_radius"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")

    def parse_limits(self) -> ParseLimits:
        """Return the parser limits (a :class:`~kappaflow.structure.cif.ParseLimits`)."""
        return ParseLimits(
            max_file_bytes=self.max_file_bytes,
            max_sites=self.max_sites,
            max_abs_frac=self.max_abs_frac,
            parse_timeout=self.parse_timeout,
        )

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> ValidationOptions:
        """Build from a config node (e.g. ``cfg.validation``); unknown keys raise ``KeyError``."""
        raw = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise KeyError(f"unknown validation option(s) {unknown}; known: {sorted(known)}")
        return cls(**raw)

    @classmethod
    def for_structures(cls, node: Any, cutoff: float | None = None) -> ValidationOptions:
        """Build from a config's ``validation`` node, for checking structures one by one.

        ``n_jobs`` (``prepare``'s worker count, not a limit) is left out; None gives the
        defaults.

        Args:
            node: ``cfg.validation`` (an OmegaConf node or mapping), or None.
            cutoff: overrides ``cutoff`` (Å), e.g. with a model's graph cutoff.
        """
        raw: dict[str, Any] = {}
        if node is not None:
            from omegaconf import OmegaConf

            if OmegaConf.is_config(node):
                node = OmegaConf.to_container(node, resolve=True)
            raw = {str(k): v for k, v in dict(node).items() if k != "n_jobs"}
        if cutoff is not None:
            raw["cutoff"] = cutoff
        return cls.from_mapping(raw)


@dataclass(frozen=True)
class ValidRecord:
    """A row that passed every check.

    Attributes:
        id: material id (stripped).
        formula: pymatgen reduced formula (of the structure for structure datasets).
        spacegroup: international space-group number at ``symprec``; -1 if the symmetry search
            failed or the dataset is composition-only.
        crystal: the ordered crystal, or None for composition-only datasets.
        targets: target name -> raw value (dataset units, e.g. κ in W/m/K); NaN only for
            targets that are not required.
    """

    id: str
    formula: str
    spacegroup: int
    crystal: CrystalArrays | None
    targets: dict[str, float] = field(default_factory=dict)

    @property
    def n_sites(self) -> int | None:
        """Number of sites, None for composition-only records."""
        return None if self.crystal is None else self.crystal.n_sites


@dataclass(frozen=True)
class Rejection:
    """A row that failed a check.

    Attributes:
        reason: the first failed check.
        detail: what exactly is wrong (element, distance in Å, offending value).
        id: material id if one was present, else ``""``.
    """

    reason: Reason
    detail: str
    id: str = ""


# ----------------------------------------------------------------------------- helpers


def _is_blank(value: object) -> bool:
    """None, NaN or a whitespace-only string (for ids and CIF text)."""
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _is_missing(value: object) -> bool:
    """Blank, or a missing-value token such as ``NaN``/``NA`` (for target values)."""
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in MISSING_TOKENS


def _reduce_composition(formula: str | Mapping[str, Any]) -> tuple[bool, str]:
    """Parse and reduce ``formula``: ``(True, reduced)`` or ``(False, why)``; never raise."""
    from pymatgen.core import Composition, Element

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            comp = Composition(formula)
            if comp.num_atoms <= 0 or not all(v > 0 for v in comp.values()):
                return False, "composition has no atoms or non-positive amounts"
            # pymatgen accepts dummy species ("NA" -> N + "A", "Xx2"): not chemical elements.
            dummies = [
                getattr(el, "symbol", str(el))
                for el in comp.elements
                if not isinstance(el, Element)
            ]
            if dummies:
                return False, f"{', '.join(dummies)} not chemical element(s)"
            return True, comp.reduced_formula
    except Exception as exc:  # pymatgen raises several types on garbage
        return False, f"{type(exc).__name__}: {exc}"


@lru_cache(maxsize=500_000)
def _reduced_formula_cached(formula: str) -> tuple[bool, str]:
    return _reduce_composition(formula)


def reduced_formula(formula: str | Mapping[str, Any]) -> str:
    """Return the pymatgen reduced formula of a formula (e.g. ``"Pb2Te2"`` -> ``"TePb"``).

    The one formula parser of the project (validation, leakage keys, downloaders).

    Args:
        formula: a formula string (surrounding blanks ignored; cached) or a composition mapping
            ``{element: amount}`` (keys starting with ``@``, monty metadata, are ignored).

    Returns:
        The reduced formula.

    Raises:
        ValueError: on any failure: not a string or mapping, unparsable, no atoms, a
            non-positive amount or a species that is not a chemical element. Callers that want
            a fallback instead (downloaders: ``""``) catch it where they call.
    """
    if isinstance(formula, str):
        ok, value = _reduced_formula_cached(formula.strip())
    elif isinstance(formula, Mapping):
        ok, value = _reduce_composition(
            {k: v for k, v in formula.items() if not str(k).startswith("@")}
        )
    else:
        ok, value = False, f"expected a formula string or mapping, got {type(formula).__name__}"
    if not ok:
        raise ValueError(f"cannot parse formula {formula!r}: {value}")
    return value


@lru_cache(maxsize=1 << 16)
def conventional_formula(formula: str) -> str:
    """Return a reduced formula in the conventional order chemists write (``TePb`` -> ``PbTe``).

    pymatgen's reduced formula (the project's key for materials, :func:`reduced_formula`)
    orders elements by electronegativity, which gives ``TePb`` for lead telluride; this is for
    display only: pymatgen's IUPAC ordering (``Composition.iupac_formula``), amounts of 1
    dropped (``NaCl``, ``SiO2``, ``CsPbI3``, ``Bi2Te3``, ``Mg2Si``). A formula with pymatgen's
    polyanion groups (``Na(ClO4)2``) is kept as it is.

    Args:
        formula: a formula string, e.g. pymatgen's reduced formula.

    Returns:
        The conventional formula; ``formula`` unchanged if it cannot be parsed or is empty.
    """
    from pymatgen.core import Composition

    if not formula.strip() or "(" in formula:  # pymatgen's polyanion groups: Na(ClO4)2
        return formula
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokens = Composition(formula).reduced_composition.iupac_formula.split()
    except Exception:  # pymatgen raises several types on garbage; display only
        return formula
    parts = []
    for token in tokens:
        m = re.fullmatch(r"([A-Z][a-z]*)(.*)", token)
        if m is None:
            return formula
        parts.append(m[1] if m[2] in ("1", "") else token)
    return "".join(parts)


@lru_cache(maxsize=1 << 16)
def _formula_from_counts(counts: tuple[tuple[int, int], ...]) -> str:
    from pymatgen.core import Composition
    from pymatgen.core.periodic_table import Element

    return Composition({Element.from_Z(z).symbol: n for z, n in counts}).reduced_formula


def structure_formula(crystal: CrystalArrays) -> str:
    """Return the pymatgen reduced formula of a crystal (e.g. ``NaCl``, ``TePb``)."""
    z, n = np.unique(crystal.numbers, return_counts=True)
    return _formula_from_counts(tuple(zip(z.tolist(), n.tolist(), strict=True)))


def spacegroup_number(
    crystal: CrystalArrays,
    symprec: float = 0.1,
    backend: Literal["spglib", "moyopy"] = "spglib",
) -> int:
    """International space-group number (1-230), or -1 if the symmetry search fails.

    Args:
        crystal: the crystal.
        symprec: distance tolerance, Å.
        backend: ``spglib`` (``get_symmetry_dataset``) or ``moyopy`` (``MoyoDataset``).
    """
    if backend == "moyopy":
        moyopy = _moyopy()
        try:
            cell = moyopy.Cell(
                crystal.lattice.tolist(), crystal.frac_coords.tolist(), crystal.numbers.tolist()
            )
            return int(moyopy.MoyoDataset(cell, symprec=symprec).number)
        except Exception:  # moyopy raises ValueError/RuntimeError when the search fails
            return -1
    import spglib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # spglib 2.x DeprecationWarning on error handling
            dataset = spglib.get_symmetry_dataset(
                (crystal.lattice, crystal.frac_coords, crystal.numbers), symprec=symprec
            )
    except Exception:  # SpglibError (new error handling) or a failed search
        return -1
    return -1 if dataset is None else int(dataset.number)


@lru_cache(maxsize=1)
def _moyopy() -> Any:
    """Import moyopy once and silence its per-structure 'Omitted ... operations' warnings."""
    import moyopy

    # These warnings concern orbits/operations in the input basis, not the space-group number.
    logging.getLogger("moyo").setLevel(logging.ERROR)
    return moyopy


def _symbol(z: int) -> str:
    from pymatgen.core.periodic_table import Element

    return Element.from_Z(int(z)).symbol if 1 <= z <= 118 else f"Z={z}"


# ----------------------------------------------------------------------------- checks


def _check_elements_and_cell(crystal: CrystalArrays, opts: ValidationOptions) -> Rejection | None:
    if crystal.n_sites == 0:
        return Rejection(Reason.NO_SITES, "structure has no sites")
    bad = sorted({int(z) for z in crystal.numbers if int(z) not in _SUPPORTED})
    if bad:
        names = ", ".join(f"{_symbol(z)} (Z={z})" for z in bad)
        return Rejection(
            Reason.UNSUPPORTED_ELEMENT, f"element(s) {names} outside supported Z 1..{MAX_Z}"
        )
    if opts.max_sites is not None and crystal.n_sites > opts.max_sites:
        return Rejection(
            Reason.TOO_MANY_SITES, f"{crystal.n_sites} sites > max_sites {opts.max_sites}"
        )
    lat = crystal.lattice
    if not np.isfinite(lat).all() or not np.isfinite(crystal.frac_coords).all():
        return Rejection(Reason.NONPOSITIVE_VOLUME, "lattice or coordinates are not finite")
    if np.abs(crystal.frac_coords).max() > 1e15:  # wrapping would lose every digit
        return Rejection(Reason.COORDINATES_OUT_OF_RANGE, "|fractional coordinate| > 1e15")
    lengths = np.linalg.norm(lat, axis=1)
    if lengths.max() > opts.max_cell_length:
        k = int(np.argmax(lengths))
        return Rejection(
            Reason.CELL_TOO_LARGE,
            f"lattice vector {'abc'[k]} is {lengths[k]:.6g} Å > max_cell_length "
            f"{opts.max_cell_length} Å",
        )
    volume = float(np.linalg.det(lat))
    scale = float(np.prod(lengths))
    if volume <= DEGENERATE_VOLUME_FRACTION * scale:
        return Rejection(
            Reason.NONPOSITIVE_VOLUME,
            f"cell volume {volume:.6g} Å^3 (|a||b||c| = {scale:.6g} Å^3): degenerate or "
            "left-handed cell",
        )
    if lengths.min() < opts.min_cell_length:
        k = int(np.argmin(lengths))
        return Rejection(
            Reason.CELL_TOO_SMALL,
            f"lattice vector {'abc'[k]} is {lengths[k]:.4g} Å < min_cell_length "
            f"{opts.min_cell_length} Å",
        )
    shortest = _shortest_lattice_vector(lat)
    if shortest < opts.min_cell_length:
        return Rejection(
            Reason.DEGENERATE_CELL,
            f"nearly coplanar cell vectors: a lattice translation of {shortest:.4g} Å "
            f"(< min_cell_length {opts.min_cell_length} Å) although a, b, c are "
            f"{', '.join(f'{x:.4g}' for x in lengths)} Å; volume / (|a||b||c|) = "
            f"{volume / scale:.3g}",
        )
    per_atom = volume / crystal.n_sites
    if per_atom < opts.min_volume_per_atom:
        return Rejection(
            Reason.VOLUME_PER_ATOM_TOO_SMALL,
            f"{per_atom:.4g} Å^3 per atom < min_volume_per_atom {opts.min_volume_per_atom} Å^3",
        )
    if per_atom > opts.max_volume_per_atom:
        return Rejection(
            Reason.VOLUME_PER_ATOM_TOO_LARGE,
            f"{per_atom:.4g} Å^3 per atom > max_volume_per_atom {opts.max_volume_per_atom} Å^3",
        )
    # Densest sphere packing: n points with all pairwise (incl. periodic) distances >= d need
    # at least n * d^3 / sqrt(2) of volume. Denser cells must overlap; this also keeps the
    # neighbour search below bounded.
    min_volume = crystal.n_sites * opts.min_distance**3 / math.sqrt(2.0)
    if volume < min_volume:
        return Rejection(
            Reason.OVERLAPPING_ATOMS,
            f"cell volume {volume:.4g} Å^3 for {crystal.n_sites} atoms is below the "
            f"{min_volume:.4g} Å^3 needed to keep all atoms {opts.min_distance} Å apart",
        )
    return None


def _shortest_lattice_vector(lattice: np.ndarray) -> float:
    """Length (Å) of the shortest LLL-reduced basis vector (<= 2x the shortest translation)."""
    from pymatgen.core import Lattice

    reduced = Lattice(lattice).get_lll_reduced_lattice().matrix
    return float(np.linalg.norm(reduced, axis=1).min())


def _check_dimension(crystal: CrystalArrays, opts: ValidationOptions) -> Rejection | None:
    """``low_dimensional`` unless the atoms linked within the radius form a 3D network."""
    radius = opts.cutoff if opts.dimensionality_radius is None else opts.dimensionality_radius
    dim, ranks = network_dimension(crystal.lattice, crystal.frac_coords, radius)
    if dim == 3:
        return None
    shape = {0: "molecule / cluster", 1: "wire / chain", 2: "slab / layer"}[dim]
    return Rejection(
        Reason.LOW_DIMENSIONAL,
        f"{dim}D ({shape}): atoms linked within {radius} Å repeat in only "
        f"{dim} direction(s) ({len(ranks)} component(s)); vacuum separates the periodic images",
    )


def _check_geometry(crystal: CrystalArrays, opts: ValidationOptions) -> Rejection | None:
    """Overlap and isolation from one neighbour search (a second one only if needed)."""
    n = crystal.n_sites
    radius = max(min(opts.cutoff, FIRST_PASS_RADIUS), opts.min_distance)
    centers, neighbors, dists = periodic_neighbors(crystal.lattice, crystal.frac_coords, radius)
    close = np.flatnonzero(dists < opts.min_distance)
    if len(close):
        k = close[np.argmin(dists[close])]
        i, j = int(centers[k]), int(neighbors[k])
        zi, zj = _symbol(crystal.numbers[i]), _symbol(crystal.numbers[j])
        what = "a periodic image of itself" if i == j else f"atom {j} ({zj})"
        return Rejection(
            Reason.OVERLAPPING_ATOMS,
            f"atom {i} ({zi}) is {dists[k]:.4f} Å from {what} (min_distance {opts.min_distance} Å)",
        )
    has_nbr = np.bincount(centers, minlength=n) > 0
    if has_nbr.all():
        return None
    if radius < opts.cutoff:
        centers, _, _ = periodic_neighbors(crystal.lattice, crystal.frac_coords, opts.cutoff)
        has_nbr = np.bincount(centers, minlength=n) > 0
        if has_nbr.all():
            return None
    lonely = np.flatnonzero(~has_nbr)
    i = int(lonely[0])
    return Rejection(
        Reason.ISOLATED_ATOM,
        f"{len(lonely)} atom(s) without any neighbour within the {opts.cutoff} Å cutoff, "
        f"e.g. atom {i} ({_symbol(crystal.numbers[i])}); smallest cell length "
        f"{float(np.linalg.norm(crystal.lattice, axis=1).min()):.3f} Å",
    )


def check_crystal(
    crystal: CrystalArrays, opts: ValidationOptions | None = None
) -> Rejection | None:
    """Structure-only checks (no id, formula or targets), e.g. for screening user files.

    Args:
        crystal: the crystal.
        opts: thresholds; defaults to :class:`ValidationOptions`.

    Returns:
        The first failed check (``no_sites``, ``unsupported_element``, ``too_many_sites``,
        ``nonpositive_volume``, ``cell_too_large``, ``cell_too_small``, ``degenerate_cell``,
        ``volume_per_atom_too_*``, ``overlapping_atoms``, ``isolated_atom``,
        ``low_dimensional``; ``check_failed`` for an unexpected error), or None if it passes.
    """
    opts = opts or ValidationOptions()
    try:
        return (
            _check_elements_and_cell(crystal, opts)
            or _check_geometry(crystal, opts)
            or _check_dimension(crystal, opts)
        )
    except Exception as exc:  # one hostile structure must never stop a batch
        return Rejection(Reason.CHECK_FAILED, f"{type(exc).__name__}: {exc}")


def _parse_target(raw: object, target: TargetSpec) -> float | Rejection:
    col = target.column
    if _is_missing(raw):
        if target.required:
            return Rejection(Reason.TARGET_MISSING, f"{col}: no value ({raw!r})")
        return math.nan
    if isinstance(raw, bool | np.bool_):
        return Rejection(Reason.TARGET_NOT_NUMERIC, f"{col}: boolean {raw!r} is not a number")
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return Rejection(Reason.TARGET_NOT_NUMERIC, f"{col}: {raw!r} is not a number")
    if math.isnan(value):
        if target.required:
            return Rejection(Reason.TARGET_MISSING, f"{col}: NaN")
        return math.nan
    if math.isinf(value):
        return Rejection(Reason.TARGET_NONFINITE, f"{col}: {raw!r} is not finite")
    if target.positive and value <= 0:
        why = f" ({target.transform} transform)" if target.transform != "none" else ""
        return Rejection(
            Reason.TARGET_NONPOSITIVE, f"{col}: {value:g} {target.unit} must be > 0{why}"
        )
    if target.min is not None and value < target.min:
        return Rejection(
            Reason.TARGET_OUT_OF_RANGE,
            f"{col}: {value:g} {target.unit} < min {target.min:g}",
        )
    if target.max is not None and value > target.max:
        return Rejection(
            Reason.TARGET_OUT_OF_RANGE,
            f"{col}: {value:g} {target.unit} > max {target.max:g}",
        )
    return value


def validate_row(
    row: Mapping[str, Any],
    spec: DatasetSpec,
    opts: ValidationOptions | None = None,
) -> ValidRecord | Rejection:
    """Validate one raw table row against a dataset card.

    Args:
        row: column name -> raw value (strings as read with ``dtype=str``, or numbers/None).
            A column absent from ``row`` counts as an empty value.
        spec: the dataset card (id/formula/CIF columns, targets with bounds).
        opts: structure-check thresholds; defaults to :class:`ValidationOptions`.

    Returns:
        A :class:`ValidRecord`, or a :class:`Rejection` for the first failed check. Bad data
        never raises.
    """
    opts = opts or ValidationOptions()
    raw_id = row.get(spec.id_col)
    if _is_blank(raw_id):
        return Rejection(Reason.MISSING_ID, f"{spec.id_col}: no value ({raw_id!r})")
    rid = str(raw_id).strip()

    raw_formula = row.get(spec.formula_col)
    if raw_formula is None or not str(raw_formula).strip():
        return Rejection(Reason.FORMULA_UNPARSEABLE, f"{spec.formula_col}: empty formula", rid)
    ok, formula = _reduced_formula_cached(str(raw_formula).strip())
    if not ok:
        return Rejection(
            Reason.FORMULA_UNPARSEABLE,
            f"{spec.formula_col}: cannot parse {raw_formula!r} ({formula})",
            rid,
        )

    targets: dict[str, float] = {}
    for target in spec.targets:
        parsed = _parse_target(row.get(target.column), target)
        if isinstance(parsed, Rejection):
            return Rejection(parsed.reason, parsed.detail, rid)
        targets[target.name] = parsed

    if spec.kind == "composition" or spec.cif_col is None:
        return ValidRecord(rid, formula, -1, None, targets)

    raw_cif = row.get(spec.cif_col)
    if _is_blank(raw_cif) or not isinstance(raw_cif, str):
        return Rejection(Reason.MISSING_CIF, f"{spec.cif_col}: no CIF text", rid)
    try:
        return _validate_structure(raw_cif, rid, formula, raw_formula, targets, spec, opts)
    except Exception as exc:  # one hostile row must never stop the batch
        return Rejection(Reason.CHECK_FAILED, f"{type(exc).__name__}: {exc}", rid)


def _validate_structure(
    raw_cif: str,
    rid: str,
    formula: str,
    raw_formula: object,
    targets: dict[str, float],
    spec: DatasetSpec,
    opts: ValidationOptions,
) -> ValidRecord | Rejection:
    """Parse (within the limits) and check the structure of a row whose other fields passed."""
    try:
        crystal = parse_cif(raw_cif, opts.parse_limits())
    except CifError as exc:
        return Rejection(exc.reason, exc.detail, rid)

    rejection = _check_elements_and_cell(crystal, opts)
    if rejection is None:
        struct_formula = structure_formula(crystal)
        if struct_formula != formula:
            rejection = Rejection(
                Reason.FORMULA_MISMATCH,
                f"structure is {struct_formula} but {spec.formula_col} {raw_formula!r} "
                f"reduces to {formula}",
            )
    rejection = rejection or _check_geometry(crystal, opts)
    if rejection is None and opts.dimensionality_in_prepare:
        rejection = _check_dimension(crystal, opts)
    if rejection is not None:
        return Rejection(rejection.reason, rejection.detail, rid)
    sg = spacegroup_number(crystal, opts.symprec, opts.symmetry_backend)
    return ValidRecord(rid, struct_formula, sg, crystal, targets)
