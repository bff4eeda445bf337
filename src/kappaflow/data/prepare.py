"""Validate a raw dataset table and write the prepared dataset (valid rows + quarantine + report).

``prepare_dataset`` reads the raw ``.csv.gz`` with every column as text (so a formula ``NaN``,
sodium nitride, or ``NA`` stays a string), validates the rows in parallel with
:func:`kappaflow.data.validation.validate_row`, and writes atomically into ``out_dir``:

* ``valid.parquet``: ``id, formula, spacegroup, n_sites, lattice (9 floats, Å, row-major),
  numbers, frac_coords (3n floats, row-major)`` plus one float64 column per target, in raw
  units (κ in W/m/K, not log10). Composition-only datasets have null structure columns and
  ``spacegroup = -1``.
* ``quarantine.csv``: ``row, id, reason, detail``; ``row`` is the 0-based data-row index in the
  raw table (header excluded).
* ``report.json``: ``{dataset, n_input, n_valid, n_quarantined, reasons, seconds}`` (+
  ``n_raw``, ``max_rows`` for a sampled dataset).

Every input row ends up in exactly one of the two tables (checked: ``n_input == n_valid +
n_quarantined``). A repeated id quarantines the later rows as ``duplicate_id``.

A card with ``max_rows`` (the smoke experiment) is prepared from a seeded sample of that many raw
rows, kept in raw order (:func:`sample_rows`); ``n_input`` counts the sample, ``n_raw`` the raw
table, and quarantine ``row`` numbers still index the raw table.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from kappaflow.cards import DatasetSpec
from kappaflow.data.validation import Reason, ValidationOptions, ValidRecord, validate_row
from kappaflow.io_utils import atomic_write
from kappaflow.layout import QUARANTINE_FILE, REPORT_FILE, VALID_FILE
from kappaflow.structure.crystal import CrystalArrays

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ("row", "id", "reason", "detail")
STRUCTURE_COLUMNS = ("lattice", "numbers", "frac_coords")


@dataclass(frozen=True)
class PrepareReport:
    """Outcome of :func:`prepare_dataset` (the content of ``report.json`` plus file paths).

    Attributes:
        dataset: dataset name.
        n_input: rows in the raw table.
        n_valid: rows written to ``valid.parquet``.
        n_quarantined: rows written to ``quarantine.csv``.
        reasons: reason code -> number of quarantined rows.
        seconds: wall time of the whole preparation, s.
        out_dir: folder holding the three files.
    """

    dataset: str
    n_input: int
    n_valid: int
    n_quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    out_dir: Path = Path()
    n_raw: int | None = None
    max_rows: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the ``report.json`` content (``n_raw``/``max_rows`` only when sampled)."""
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "n_input": self.n_input,
            "n_valid": self.n_valid,
            "n_quarantined": self.n_quarantined,
            "reasons": dict(self.reasons),
            "seconds": round(self.seconds, 3),
        }
        if self.max_rows is not None:
            out |= {"n_raw": self.n_raw, "max_rows": self.max_rows}
        return out


#: Seed of the ``max_rows`` sample (fixed: the sample depends on the card alone).
SAMPLE_SEED = 0


def sample_rows(n_rows: int, max_rows: int | None) -> np.ndarray:
    """Return the raw-row indices to prepare: all, or a seeded sample of ``max_rows``, sorted.

    Args:
        n_rows: rows of the raw table.
        max_rows: sample size (``None``, or not below ``n_rows``: every row).
    """
    if max_rows is None or max_rows >= n_rows:
        return np.arange(n_rows)
    rng = np.random.default_rng(SAMPLE_SEED)
    return np.sort(rng.choice(n_rows, size=max_rows, replace=False))


# ----------------------------------------------------------------------------- reading


def required_columns(spec: DatasetSpec) -> list[str]:
    """Raw-table columns that validation reads (id, formula, CIF, target columns)."""
    cols = [spec.id_col, spec.formula_col]
    if spec.cif_col:
        cols.append(spec.cif_col)
    cols += [t.column for t in spec.targets]
    return list(dict.fromkeys(cols))


def read_raw_table(spec: DatasetSpec, raw_path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the columns validation needs from a raw ``.csv(.gz)``, every value as text.

    No value is turned into NaN (``keep_default_na=False``): ``"NaN"`` and ``"NA"`` stay
    strings, so formulas like NaN (sodium nitride) survive; targets are converted later.

    Raises:
        FileNotFoundError: the file does not exist.
        KeyError: a column named by the dataset card is absent (a config error, not bad data).
    """
    path = Path(raw_path)
    if not path.is_file():
        raise FileNotFoundError(f"raw table for dataset {spec.name!r} not found: {path}")
    header = pd.read_csv(path, nrows=0).columns.tolist()
    cols = required_columns(spec)
    missing = [c for c in cols if c not in header]
    if missing:
        raise KeyError(f"dataset {spec.name!r}: columns {missing} not in {path.name} ({header})")
    return pd.read_csv(
        path, usecols=cols, dtype=str, keep_default_na=False, na_filter=False, engine="c"
    )[cols]


# ----------------------------------------------------------------------------- workers

# A valid row as shipped back from a worker: (row, id, formula, spacegroup, crystal | None,
# targets in spec order). A rejected row: (row, id, reason, detail).
_Valid = tuple[int, str, str, int, CrystalArrays | None, tuple[float, ...]]
_Bad = tuple[int, str, str, str]


def _validate_chunk(
    spec: DatasetSpec,
    opts: ValidationOptions,
    start: int,
    rows: Sequence[int],
    columns: dict[str, list[str]],
) -> tuple[int, list[_Valid], list[_Bad]]:
    """Validate rows ``rows`` (0-based raw indices); ``columns`` hold their values in order."""
    names = list(columns)
    good: list[_Valid] = []
    bad: list[_Bad] = []
    for k, row_idx in enumerate(rows):
        row = {name: columns[name][k] for name in names}
        out = validate_row(row, spec, opts)
        if isinstance(out, ValidRecord):
            targets = tuple(out.targets[t.name] for t in spec.targets)
            good.append((row_idx, out.id, out.formula, out.spacegroup, out.crystal, targets))
        else:
            bad.append((row_idx, out.id, out.reason.value, out.detail))
    return start, good, bad


def _chunks(
    indices: np.ndarray, frame: pd.DataFrame, size: int
) -> Iterator[tuple[int, list[int], dict[str, list[str]]]]:
    for start in range(0, len(indices), size):
        idx = indices[start : start + size]
        sub = frame.iloc[idx]
        yield start, idx.tolist(), {c: sub[c].tolist() for c in frame.columns}


def _start_method() -> str:
    # fork: workers inherit the imported modules (pymatgen, torch via graphs.elements), so a pool
    # starts in milliseconds; the workers only run numpy/gemmi/spglib, never torch ops.
    return "fork" if "fork" in mp.get_all_start_methods() else "spawn"


# ----------------------------------------------------------------------------- writing


def _list_array(flat: list[np.ndarray], dtype: pa.DataType, valid: np.ndarray) -> pa.Array:
    lengths = np.array([len(a) for a in flat], dtype=np.int64)
    offsets = np.zeros(len(flat) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(flat) if flat else np.zeros(0)
    mask = pa.array(~valid) if not valid.all() else None
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(values, dtype), mask=mask
    )


def _valid_table(spec: DatasetSpec, good: list[_Valid], opts: ValidationOptions) -> pa.Table:
    structures = [g[4] for g in good]
    has = np.array([c is not None for c in structures], dtype=bool)
    empty_f, empty_i = np.zeros(0, np.float64), np.zeros(0, np.int64)
    lattice = [c.lattice.reshape(-1) if c is not None else empty_f for c in structures]
    numbers = [c.numbers if c is not None else empty_i for c in structures]
    frac = [c.frac_coords.reshape(-1) if c is not None else empty_f for c in structures]
    n_sites = pa.array([c.n_sites if c is not None else None for c in structures], type=pa.int64())
    arrays: dict[str, pa.Array] = {
        "id": pa.array([g[1] for g in good], pa.string()),
        "formula": pa.array([g[2] for g in good], pa.string()),
        "spacegroup": pa.array([g[3] for g in good], pa.int64()),
        "n_sites": n_sites,
        "lattice": _list_array(lattice, pa.float64(), has),
        "numbers": _list_array(numbers, pa.int64(), has),
        "frac_coords": _list_array(frac, pa.float64(), has),
    }
    for k, target in enumerate(spec.targets):
        arrays[target.name] = pa.array([g[5][k] for g in good], pa.float64())
    meta = {
        "kappaflow.dataset": spec.name,
        "kappaflow.validation": json.dumps(asdict(opts), sort_keys=True),
        "kappaflow.targets": json.dumps(
            {t.name: {"column": t.column, "unit": t.unit} for t in spec.targets}
        ),
    }
    return pa.table(arrays).replace_schema_metadata(meta)


# ----------------------------------------------------------------------------- main entry


def prepare_dataset(
    spec: DatasetSpec,
    raw_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    opts: ValidationOptions | None = None,
    n_jobs: int = 2,
    progress: bool = True,
    chunk_size: int | None = None,
) -> PrepareReport:
    """Validate every row of a raw table; write valid.parquet, quarantine.csv and report.json.

    Args:
        spec: dataset card.
        raw_path: the raw ``.csv`` / ``.csv.gz``.
        out_dir: output folder (created); files are replaced atomically.
        opts: validation thresholds; defaults to :class:`ValidationOptions`.
        n_jobs: worker processes; 1 validates in this process (no pool).
        progress: show a tqdm progress bar (rows).
        chunk_size: rows per task; default: about 8 tasks per worker, 50..1000 rows each.

    Returns:
        The report (also written to ``report.json``).

    Raises:
        FileNotFoundError, KeyError: missing file or column (see :func:`read_raw_table`).
        RuntimeError: if ``n_input != n_valid + n_quarantined`` (a bug, never bad data).
    """
    t0 = time.perf_counter()
    opts = opts or ValidationOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = read_raw_table(spec, raw_path)
    n_raw = len(frame)
    raw_rows = sample_rows(n_raw, spec.max_rows)
    if len(raw_rows) < n_raw:
        frame = frame.iloc[raw_rows].reset_index(drop=True)
        log.info("prepare %s: a seeded sample of %d of %d rows (max_rows)", spec.name,
                 len(raw_rows), n_raw)  # fmt: skip
    n_input = len(frame)

    ids = frame[spec.id_col].str.strip()
    duplicated = (ids != "") & ids.duplicated(keep="first")
    bad: list[_Bad] = []
    first_row = {rid: int(raw_rows[i]) for i, rid in reversed(list(enumerate(ids))) if rid}
    for i in np.flatnonzero(duplicated.to_numpy()):
        rid = ids.iat[i]
        bad.append(
            (int(i), rid, Reason.DUPLICATE_ID.value, f"id {rid!r} already at row {first_row[rid]}")
        )
    todo = np.flatnonzero(~duplicated.to_numpy())

    n_jobs = max(1, int(n_jobs))
    if chunk_size is None:
        chunk_size = int(min(1000, max(50, math.ceil(len(todo) / (8 * n_jobs)))))
    good: list[_Valid] = []
    with tqdm(total=n_input, desc=f"prepare {spec.name}", unit="row", disable=not progress) as bar:
        bar.update(len(bad))
        if n_jobs == 1 or len(todo) <= chunk_size:
            for start, rows, cols in _chunks(todo, frame, chunk_size):
                _, g, b = _validate_chunk(spec, opts, start, rows, cols)
                good += g
                bad += b
                bar.update(len(rows))
        else:
            ctx = mp.get_context(_start_method())
            with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
                futures = {
                    pool.submit(_validate_chunk, spec, opts, start, rows, cols): len(rows)
                    for start, rows, cols in _chunks(todo, frame, chunk_size)
                }
                for fut in as_completed(futures):
                    _, g, b = fut.result()
                    good += g
                    bad += b
                    bar.update(futures[fut])
    del frame

    good.sort(key=lambda g: g[0])
    bad.sort(key=lambda b: b[0])
    n_valid, n_quarantined = len(good), len(bad)
    seen = np.array([g[0] for g in good] + [b[0] for b in bad], dtype=np.int64)
    if n_input != n_valid + n_quarantined or not np.array_equal(np.sort(seen), np.arange(n_input)):
        raise RuntimeError(
            f"prepare {spec.name}: {n_input} input rows != {n_valid} valid + "
            f"{n_quarantined} quarantined (or a row was counted twice)"
        )
    counts = Counter(b[2] for b in bad)
    reasons = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    if len(raw_rows) < n_raw:  # quarantine rows index the raw table, not the sample
        bad = [(int(raw_rows[b[0]]), *b[1:]) for b in bad]

    table = _valid_table(spec, good, opts)
    atomic_write(out / VALID_FILE, lambda p: pq.write_table(table, p))
    quarantine = pd.DataFrame(bad, columns=list(QUARANTINE_COLUMNS))
    atomic_write(out / QUARANTINE_FILE, lambda p: quarantine.to_csv(p, index=False))
    report = PrepareReport(
        dataset=spec.name,
        n_input=n_input,
        n_valid=n_valid,
        n_quarantined=n_quarantined,
        reasons=reasons,
        seconds=time.perf_counter() - t0,
        out_dir=out,
        n_raw=n_raw,
        max_rows=spec.max_rows,
    )
    atomic_write(
        out / REPORT_FILE,
        lambda p: p.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8"),
    )
    log.info(
        "prepare %s: %d rows -> %d valid, %d quarantined %s in %.1f s",
        spec.name,
        n_input,
        n_valid,
        n_quarantined,
        reasons or "{}",
        report.seconds,
    )
    return report


# ----------------------------------------------------------------------------- reading back


def crystals_from_frame(df: pd.DataFrame) -> list[CrystalArrays]:
    """Rebuild one :class:`CrystalArrays` per row of a prepared table.

    Raises:
        ValueError: a row has no structure (composition-only dataset).
    """
    out = []
    for rid, lat, num, frac in zip(
        df["id"], df["lattice"], df["numbers"], df["frac_coords"], strict=True
    ):
        if lat is None or num is None or frac is None:
            raise ValueError(f"row {rid!r} has no structure (composition-only dataset?)")
        out.append(CrystalArrays.from_row(lat, num, frac))
    return out
