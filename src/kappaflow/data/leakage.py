"""Material identity across datasets, so that splits can keep one material on one side.

Two rows of different datasets are treated as *the same material* when their material keys match:

* ``"formula"`` (default, strictest): same pymatgen reduced formula. Every polymorph of a
  composition counts as the same material, so nothing that shares a composition with a test
  material can reach training.
* ``"formula+spacegroup"``: same reduced formula *and* same space-group number. A row with an
  unknown space group (``-1``, e.g. composition-only datasets) is a wildcard: it matches every row
  of the same formula, because it cannot be told apart from any of them.

Optionally (``structure_matcher=True``), at the ``formula+spacegroup`` level, rows with the same
formula but *different* known space-group numbers are compared with pymatgen's
``StructureMatcher`` (default tolerances, on the prepared ``lattice``/``numbers``/``frac_coords``
columns), so that the same crystal classified differently (symprec, setting) still matches.
This only ever *adds* matches; the ``formula`` level already contains all of them.

Input tables are prepared tables (``valid.parquet``) or raw tables with at least the columns
``id`` and ``formula``; ``spacegroup`` (int, ``-1`` unknown) is optional (missing means unknown).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, get_args

import numpy as np
import pandas as pd

from kappaflow.data.validation import reduced_formula

Level = Literal["formula", "formula+spacegroup"]
LEVELS: tuple[str, ...] = get_args(Level)
UNKNOWN_SPACEGROUP = -1

#: Columns of :func:`leakage_map`.
LEAKAGE_COLUMNS = ["key", "formula", "spacegroup", "dataset", "id", "n_datasets", "datasets"]


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown leakage level {level!r}; expected one of {LEVELS}")


def normalize_formula(formula: object) -> str:
    """Return the pymatgen reduced formula of ``formula`` (e.g. ``"Pb2Te2"`` -> ``"TePb"``).

    Args:
        formula: a chemical formula string.

    Returns:
        :func:`kappaflow.data.validation.reduced_formula` of it (cached).

    Raises:
        ValueError: for a missing value or an unparsable formula. A float NaN usually means the
            table was read with pandas' default NA parsing, which turns sodium nitride ``"NaN"``
            into a missing value: read formulas with ``keep_default_na=False``.
    """
    if not isinstance(formula, str):
        if formula is None or (isinstance(formula, float) and math.isnan(formula)):
            raise ValueError(
                "missing formula (NaN/None); if the raw table holds sodium nitride 'NaN', read it "
                "with pandas.read_csv(..., keep_default_na=False)"
            )
        raise ValueError(f"formula must be a string, got {type(formula).__name__}: {formula!r}")
    return reduced_formula(formula)


def _normalize_spacegroup(spacegroup: object) -> int:
    if spacegroup is None:
        return UNKNOWN_SPACEGROUP
    try:
        if pd.isna(spacegroup):  # type: ignore[call-overload]
            return UNKNOWN_SPACEGROUP
    except (TypeError, ValueError):
        pass
    try:
        sg = int(spacegroup)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(
            f"space group must be an international number 1..230 or -1 (unknown), got "
            f"{spacegroup!r} (raw tables hold the number in 'spacegroup_number')"
        ) from None
    if sg == UNKNOWN_SPACEGROUP:
        return sg
    if not 1 <= sg <= 230:
        raise ValueError(f"space-group number must be 1..230 or -1 (unknown), got {spacegroup!r}")
    return sg


def material_key(
    formula: str, spacegroup: int | None = UNKNOWN_SPACEGROUP, level: Level = "formula"
) -> str:
    """Return the material key of one row.

    Args:
        formula: chemical formula (normalized to the pymatgen reduced formula).
        spacegroup: international space-group number 1..230; ``-1`` or ``None`` if unknown.
        level: ``"formula"`` -> ``"TiSnPt"``; ``"formula+spacegroup"`` -> ``"TiSnPt@216"``, or
            ``"TiSnPt@?"`` when the space group is unknown.

    Returns:
        The key. Equal keys mean the same material; at the ``formula+spacegroup`` level an
        ``@?`` key additionally matches every key of the same formula (see
        :func:`leakage_map`), which plain string equality does not capture.
    """
    _check_level(level)
    reduced = normalize_formula(formula)
    if level == "formula":
        return reduced
    sg = _normalize_spacegroup(spacegroup)
    return f"{reduced}@{'?' if sg == UNKNOWN_SPACEGROUP else sg}"


def material_keys(df: pd.DataFrame, level: Level = "formula") -> pd.Series:
    """Return the material key of every row of a table (index aligned with ``df``).

    Args:
        df: table with a ``formula`` column and optionally ``spacegroup``.
        level: see :func:`material_key`.

    Returns:
        String series of keys, usable as ``groups`` for :mod:`kappaflow.data.splits`.
    """
    _check_level(level)
    table = _canonical(df, "table")
    if level == "formula" or table.empty:
        return pd.Series(table["formula"].to_numpy(), index=df.index, name="key", dtype=object)
    sg = table["spacegroup"].map(lambda s: "?" if s == UNKNOWN_SPACEGROUP else str(s))
    return pd.Series((table["formula"] + "@" + sg).to_numpy(), index=df.index, name="key")


def _canonical(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Return ``id, formula (reduced), spacegroup (int)`` with a fresh RangeIndex."""
    missing = {"id", "formula"} - set(df.columns)
    if missing:
        raise ValueError(f"dataset {name!r} lacks column(s) {sorted(missing)}")
    formulas = df["formula"].to_numpy()
    try:
        reduced = [normalize_formula(f) for f in formulas]
    except ValueError as exc:
        raise ValueError(f"dataset {name!r}: {exc}") from exc
    if "spacegroup" in df.columns:
        sg = [_normalize_spacegroup(s) for s in df["spacegroup"].to_numpy()]
    else:
        sg = [UNKNOWN_SPACEGROUP] * len(df)
    return pd.DataFrame(
        {
            "id": df["id"].astype(str).to_numpy(),
            "formula": pd.Series(reduced, dtype=object),
            "spacegroup": np.asarray(sg, dtype=np.int64),
        }
    )


def _other_index(others: Sequence[pd.DataFrame]) -> tuple[set[str], set[tuple[str, int]], set[str]]:
    """Formulas, (formula, spacegroup) pairs and wildcard formulas (unknown sg) of ``others``."""
    formulas: set[str] = set()
    pairs: set[tuple[str, int]] = set()
    wildcard: set[str] = set()
    for other in others:
        formulas.update(other["formula"])
        pairs.update(zip(other["formula"], other["spacegroup"].tolist(), strict=True))
        wildcard.update(other.loc[other["spacegroup"] == UNKNOWN_SPACEGROUP, "formula"])
    return formulas, pairs, wildcard


def _match_mask(table: pd.DataFrame, others: Sequence[pd.DataFrame], level: Level) -> np.ndarray:
    """Boolean mask: rows of canonical ``table`` that match any row of canonical ``others``."""
    formulas, pairs, wildcard = _other_index(others)
    in_formulas = table["formula"].isin(formulas).to_numpy()
    if level == "formula":
        return in_formulas
    sg = table["spacegroup"].to_numpy()
    exact = np.fromiter(
        ((f, s) in pairs for f, s in zip(table["formula"], sg.tolist(), strict=True)),
        dtype=bool,
        count=len(table),
    )
    return (
        exact
        | table["formula"].isin(wildcard).to_numpy()
        | ((sg == UNKNOWN_SPACEGROUP) & in_formulas)
    )


def _structure_of(row: pd.Series) -> object | None:
    """Build a Structure from prepared-table columns; None if the row has no structure."""
    from kappaflow.structure.crystal import CrystalArrays

    values = [row.get(c) for c in ("lattice", "numbers", "frac_coords")]
    if any(v is None or (np.ndim(v) == 0 and pd.isna(v)) for v in values):
        return None
    return CrystalArrays.from_row(*values).to_structure()


def _structure_matches(
    a: pd.DataFrame, a_raw: pd.DataFrame, b: pd.DataFrame, b_raw: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``a`` and ``b`` (same formula, different known sg) whose structures match."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    hit_a = np.zeros(len(a), dtype=bool)
    hit_b = np.zeros(len(b), dtype=bool)
    known_a = a[a["spacegroup"] != UNKNOWN_SPACEGROUP]
    known_b = b[b["spacegroup"] != UNKNOWN_SPACEGROUP]
    cand = known_a.reset_index().merge(known_b.reset_index(), on="formula", suffixes=("_a", "_b"))
    cand = cand[cand["spacegroup_a"] != cand["spacegroup_b"]]
    cache: dict[tuple[str, int], object | None] = {}

    def get(side: str, pos: int) -> object | None:
        if (side, pos) not in cache:
            raw = a_raw if side == "a" else b_raw
            cache[(side, pos)] = _structure_of(raw.iloc[pos])
        return cache[(side, pos)]

    for ia, ib in zip(cand["index_a"].tolist(), cand["index_b"].tolist(), strict=True):
        if hit_a[ia] and hit_b[ib]:
            continue
        sa, sb = get("a", ia), get("b", ib)
        if sa is not None and sb is not None and matcher.fit(sa, sb):
            hit_a[ia] = hit_b[ib] = True
    return hit_a, hit_b


def _pair_masks(
    canon: Mapping[str, pd.DataFrame],
    raw: Mapping[str, pd.DataFrame],
    level: Level,
    structure_matcher: bool,
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """For every ordered dataset pair (a before b): (rows of a matching b, rows of b matching a)."""
    names = list(canon)
    out: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            mask_a = _match_mask(canon[a], [canon[b]], level)
            mask_b = _match_mask(canon[b], [canon[a]], level)
            if structure_matcher and level == "formula+spacegroup":
                extra_a, extra_b = _structure_matches(canon[a], raw[a], canon[b], raw[b])
                mask_a, mask_b = mask_a | extra_a, mask_b | extra_b
            out[(a, b)] = (mask_a, mask_b)
    return out


def _canonical_frames(frames: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    if len(frames) < 2:
        raise ValueError(f"need at least two datasets to compare, got {list(frames)}")
    return {name: _canonical(df, name) for name, df in frames.items()}


def leakage_map(
    frames: Mapping[str, pd.DataFrame],
    level: Level = "formula",
    *,
    structure_matcher: bool = False,
) -> pd.DataFrame:
    """List every row that shares its material with a row of another dataset.

    Args:
        frames: dataset name -> table with ``id``, ``formula`` and optionally ``spacegroup``
            (and ``lattice``/``numbers``/``frac_coords`` for ``structure_matcher``).
        level: ``"formula"`` or ``"formula+spacegroup"`` (see module docstring).
        structure_matcher: at the ``formula+spacegroup`` level, also match rows with the same
            formula and different known space groups whose structures ``StructureMatcher``
            deems equal. Costs one ``fit`` per candidate pair.

    Returns:
        One row per (key, dataset, id) occurring in >= 2 datasets, columns :data:`LEAKAGE_COLUMNS`:
        ``key`` (:func:`material_key` of the row), ``formula`` (reduced), ``spacegroup``,
        ``dataset``, ``id``, ``n_datasets`` (datasets involved, including the row's own) and
        ``datasets`` (their names, sorted, comma-joined). Sorted by formula, dataset, id.
    """
    _check_level(level)
    canon = _canonical_frames(frames)
    matched: dict[str, list[set[str]]] = {
        n: [set() for _ in range(len(df))] for n, df in canon.items()
    }
    for (a, b), (mask_a, mask_b) in _pair_masks(canon, frames, level, structure_matcher).items():
        for pos in np.flatnonzero(mask_a):
            matched[a][pos].add(b)
        for pos in np.flatnonzero(mask_b):
            matched[b][pos].add(a)
    parts = []
    for name, df in canon.items():
        sets = matched[name]
        rows = [pos for pos, s in enumerate(sets) if s]
        if not rows:
            continue
        part = df.iloc[rows].copy()
        part["dataset"] = name
        involved = [sorted(sets[pos] | {name}) for pos in rows]
        part["n_datasets"] = [len(x) for x in involved]
        part["datasets"] = [",".join(x) for x in involved]
        parts.append(part)
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in LEAKAGE_COLUMNS})
    out = pd.concat(parts, ignore_index=True)
    out["key"] = material_keys(out, level).to_numpy()
    out = out.sort_values(["formula", "dataset", "id"], kind="stable", ignore_index=True)
    return out[LEAKAGE_COLUMNS]


def overlap_summary(
    frames: Mapping[str, pd.DataFrame],
    level: Level = "formula",
    *,
    structure_matcher: bool = False,
) -> dict[str, dict[str, int | list[str]]]:
    """Count shared materials for every pair of datasets.

    Args:
        frames: dataset name -> table (see :func:`leakage_map`).
        level: ``"formula"`` or ``"formula+spacegroup"``.
        structure_matcher: see :func:`leakage_map`.

    Returns:
        ``{"<a>|<b>": {"shared_formulas": int, "rows_<a>": int, "rows_<b>": int,
        "formulas": [sorted reduced formulas]}}`` for every pair in input order, where
        ``rows_<x>`` counts the rows of ``x`` that match some row of the other dataset.
        JSON-serializable.
    """
    _check_level(level)
    canon = _canonical_frames(frames)
    summary: dict[str, dict[str, int | list[str]]] = {}
    for (a, b), (mask_a, mask_b) in _pair_masks(canon, frames, level, structure_matcher).items():
        shared = sorted(set(canon[a].loc[mask_a, "formula"]) | set(canon[b].loc[mask_b, "formula"]))
        summary[f"{a}|{b}"] = {
            "shared_formulas": len(shared),
            f"rows_{a}": int(mask_a.sum()),
            f"rows_{b}": int(mask_b.sum()),
            "formulas": shared,
        }
    return summary


def overlapping_keys(
    df: pd.DataFrame, others: Iterable[pd.DataFrame], level: Level = "formula"
) -> list[str]:
    """Return the sorted material keys of ``df`` rows that match a row of any table in ``others``.

    Args:
        df: table with ``id``, ``formula`` and optionally ``spacegroup``.
        others: tables to compare against.
        level: ``"formula"`` or ``"formula+spacegroup"``.

    Returns:
        Sorted unique keys (as from :func:`material_keys`); useful as ``forbidden_groups``.
    """
    _, excluded = exclude_overlapping(df, list(others), level)
    return sorted(set(material_keys(excluded, level))) if len(excluded) else []


def exclude_overlapping(
    df: pd.DataFrame, others: Sequence[pd.DataFrame], level: Level = "formula"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``df`` into rows whose material does not / does occur in any of ``others``.

    Typical use: drop the κ-set materials (or only their test-fold materials) from a pretraining
    set so that pretraining is blind to them.

    Args:
        df: table to filter (``id``, ``formula``, optionally ``spacegroup``); all other columns are
            kept as they are.
        others: tables whose materials must not stay in ``df``.
        level: ``"formula"`` (default, strictest) or ``"formula+spacegroup"`` (unknown space
            groups on either side act as wildcards).

    Returns:
        ``(kept, excluded)``: row subsets of ``df`` in original order with the original index.
    """
    _check_level(level)
    if isinstance(others, pd.DataFrame):
        raise TypeError("others must be a list of DataFrames, not a single DataFrame")
    table = _canonical(df, "df")
    canon_others = [_canonical(o, f"others[{i}]") for i, o in enumerate(others)]
    if not canon_others:
        return df.copy(), df.iloc[0:0].copy()
    mask = _match_mask(table, canon_others, level)
    return df.iloc[np.flatnonzero(~mask)].copy(), df.iloc[np.flatnonzero(mask)].copy()
