"""The screening pool: prepared structure datasets (deduplicated) + user structure files.

* Prepared datasets: ``data/interim/<name>/valid.parquet`` of every structure dataset card
  (``screen.datasets``; null = all with ``kind: structure``, in config order). Their rows
  already passed validation (parsed CIF, checked geometry), so they are not re-parsed.
* Deduplication key: reduced formula + space-group number (``formula`` and ``spacegroup`` of the
  prepared table; ``-1``, symmetry search failed, is its own value). The first occurrence in
  dataset order is kept; the kept row's ``n_duplicates`` counts the dropped rows that share its
  key (the same material under another id or in another dataset).
* ``screen.max_structures`` (null by default: everything) draws a seeded random sample (seed
  ``seed``) of the deduplicated prepared rows, e.g. for the CI smoke run.
* User files: every ``*.cif``, ``*.mcif``, ``POSCAR*``, ``CONTCAR*``, ``*.vasp`` and ``*.poscar``
  under ``screen.extra_dirs`` (recursive). They are never deduplicated and never sampled: each
  file is one row, parsed and checked while streaming; a bad file becomes an error row (and a
  line of the stage's quarantine.csv), never a crash.

Counts: ``n_input`` (prepared rows + user files) = ``n_duplicates`` + ``n_not_sampled`` +
``n_total`` (rows streamed to the model).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from kappaflow.registry.predictor import Item
from kappaflow.structure.cif import escape_control

if TYPE_CHECKING:
    from kappaflow.data.validation import ValidationOptions

log = logging.getLogger(__name__)

USER_PATTERNS = ("*.cif", "*.mcif", "POSCAR*", "CONTCAR*", "*.vasp", "*.poscar")
INDEX_COLUMNS = ("id", "dataset", "formula", "spacegroup", "n_duplicates", "source")
USER_DATASET = "user"


@dataclass
class Pool:
    """What will be scored, in streaming order.

    Attributes:
        index: one row per structure to score: ``id, dataset, formula, spacegroup,
            n_duplicates, source`` (``source``: the parquet file or the user file) plus ``row``
            (row number in its parquet; -1 for user files).
        n_input: prepared rows read + user files found.
        n_duplicates: prepared rows dropped as duplicates.
        n_not_sampled: deduplicated rows left out by ``max_structures``.
        per_dataset: rows read / kept per dataset.
    """

    index: pd.DataFrame
    n_input: int
    n_duplicates: int
    n_not_sampled: int
    per_dataset: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def n_total(self) -> int:
        """Structures streamed to the model (after dedup and sampling)."""
        return len(self.index)


def structure_datasets(cfg: DictConfig) -> list[str]:
    """``screen.datasets``, or every dataset card with ``kind: structure`` in config order."""
    chosen = cfg.screen.get("datasets")
    if chosen:
        unknown = [d for d in chosen if d not in cfg.datasets]
        if unknown:
            raise KeyError(f"screen.datasets: unknown datasets {unknown}")
        return [str(d) for d in chosen]
    return [str(k) for k, v in cfg.datasets.items() if v.get("kind") == "structure"]


def find_structure_files(directory: str | Path) -> list[Path]:
    """Structure files under ``directory`` (recursive, sorted), see :data:`USER_PATTERNS`.

    Raises:
        FileNotFoundError: ``directory`` is not a directory.
    """
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"screen: {d} is not a directory")
    # Every match but a real folder: a FIFO, a device, a symlink loop or an unreadable file
    # named like a structure becomes a quarantine row with its reason (never opened here).
    found = {p for pattern in USER_PATTERNS for p in d.rglob(pattern) if not _is_plain_dir(p)}
    return sorted(found)


def _is_plain_dir(path: Path) -> bool:
    """Return True for a directory that is not a symlink (rglob descends into it itself)."""
    try:
        return path.is_dir() and not path.is_symlink()
    except OSError:
        return False


def _prepared_index(cfg: DictConfig, names: Sequence[str]) -> tuple[pd.DataFrame, dict]:
    import pyarrow.parquet as pq

    from kappaflow.layout import interim_dir

    frames, per = [], {}
    for name in names:
        path = interim_dir(cfg, name) / "valid.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"screen: {path} missing; run `dvc repro prepare@{name}`")
        t = pq.read_table(path, columns=["id", "formula", "spacegroup", "n_sites"]).to_pandas()
        report = path.parent / "report.json"
        if report.is_file() and json.loads(report.read_text())["n_valid"] != len(t):
            raise RuntimeError(f"screen: {path} does not hold the n_valid rows of {report}")
        structured = t["n_sites"].notna()
        if not structured.all():
            raise ValueError(f"screen: dataset {name!r} has rows without a structure")
        frames.append(
            pd.DataFrame(
                {
                    "id": t["id"].astype(str),
                    "dataset": name,
                    "formula": t["formula"].astype(str),
                    "spacegroup": t["spacegroup"].astype(int),
                    "source": str(path),
                    "row": np.arange(len(t)),
                }
            )
        )
        per[name] = {"read": len(t)}
    cols = ["id", "dataset", "formula", "spacegroup", "source", "row"]
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)), per


def load_pool(
    cfg: DictConfig, extra_dirs: Sequence[str | Path] = (), *, include_datasets: bool = True
) -> Pool:
    """Build the pool (see the module docstring).

    Args:
        cfg: full config (``screen``, ``datasets``, ``paths``, ``seed``).
        extra_dirs: user directories, added to ``screen.extra_dirs``.
        include_datasets: False scores only the user files (``kappaflow screen --only-dirs``).
    """
    names = structure_datasets(cfg) if include_datasets else []
    table, per = _prepared_index(cfg, names)
    n_read = len(table)
    key = table["formula"] + "@" + table["spacegroup"].astype(str)
    counts = key.map(key.value_counts())
    first = ~key.duplicated(keep="first")
    kept = table.loc[first].assign(n_duplicates=(counts[first] - 1).astype(int))
    n_dup = n_read - len(kept)
    n_not_sampled = 0
    cap = cfg.screen.get("max_structures")
    if cap is not None and len(kept) > int(cap):
        rng = np.random.default_rng(int(cfg.seed))
        pick = np.sort(rng.choice(len(kept), size=int(cap), replace=False))
        n_not_sampled = len(kept) - int(cap)
        kept = kept.iloc[pick]
    for name in names:
        per[name]["kept"] = int((kept["dataset"] == name).sum())
    dirs = [*(cfg.screen.get("extra_dirs") or []), *extra_dirs]
    files = [p for d in dirs for p in find_structure_files(d)]
    user = pd.DataFrame(
        {
            "id": [_user_id(p, dirs) for p in files],
            "dataset": USER_DATASET,
            "formula": "",
            "spacegroup": -1,
            "n_duplicates": 0,
            "source": [str(p) for p in files],
            "row": -1,
        }
    )
    if files:
        per[USER_DATASET] = {"read": len(files), "kept": len(files)}
    index = pd.concat([kept, user], ignore_index=True)[[*INDEX_COLUMNS, "row"]]
    log.info(
        "screen pool: %d prepared rows (%d duplicates by formula+spacegroup, %d not sampled) "
        "+ %d user files -> %d structures",
        n_read, n_dup, n_not_sampled, len(files), len(index),
    )  # fmt: skip
    return Pool(index, n_read + len(files), n_dup, n_not_sampled, per)


def _user_id(path: Path, dirs: Sequence[str | Path]) -> str:
    """``<dir name>/<relative path>``, control characters escaped (ids go into CSVs, logs)."""
    for d in dirs:
        try:
            return escape_control(f"{Path(d).name}/{path.relative_to(Path(d).expanduser())}")
        except ValueError:
            continue
    return escape_control(str(path))


def iter_items(
    pool: Pool,
    cutoff: float,
    symprec: float = 0.1,
    symmetry_backend: str = "spglib",
    opts: ValidationOptions | None = None,
) -> Iterator[Item]:
    """Yield the pool's structures as :class:`Item` in ``pool.index`` order (streaming).

    Prepared rows are rebuilt from their arrays one dataset at a time (only that dataset's
    structure columns are in memory); user files are stat-ed, parsed within the limits of
    ``opts`` (default :func:`~kappaflow.registry.predictor.default_options` of ``cutoff``) and
    checked here, and get their space-group number (``symprec`` in Å, backend
    ``spglib``/``moyopy``, as in ``prepare``). A file that fails anything is an error item
    ``<reason>: <detail>``, never an exception.
    """
    from kappaflow.data.validation import spacegroup_number
    from kappaflow.registry.predictor import checked_item, default_options
    from kappaflow.structure.cif import CifError, StructureFileError, parse_structure_file
    from kappaflow.structure.crystal import CrystalArrays

    opts = opts or default_options(cutoff)
    index = pool.index
    prepared = index[index["row"] >= 0]
    for source, group in prepared.groupby("source", sort=False):
        import pyarrow.parquet as pq

        table = pq.read_table(str(source), columns=["lattice", "numbers", "frac_coords"])
        rows = group["row"].to_numpy()
        for lo in range(0, len(rows), 4096):
            sub = table.take(rows[lo : lo + 4096]).to_pydict()
            ids = group["id"].iloc[lo : lo + 4096].tolist()
            forms = group["formula"].iloc[lo : lo + 4096].tolist()
            sgs = group["spacegroup"].iloc[lo : lo + 4096].tolist()
            for k, mid in enumerate(ids):
                crystal = CrystalArrays.from_row(
                    sub["lattice"][k], sub["numbers"][k], sub["frac_coords"][k]
                )
                yield Item(mid, crystal, forms[k], spacegroup=int(sgs[k]))
        del table
    for mid, source in zip(
        index.loc[index["row"] < 0, "id"], index.loc[index["row"] < 0, "source"], strict=True
    ):
        try:
            crystal = parse_structure_file(source, opts.parse_limits())
            item = checked_item(crystal, mid, cutoff, opts)
            if item.crystal is not None:
                sg = spacegroup_number(item.crystal, symprec, symmetry_backend)  # type: ignore[arg-type]
                item = replace(item, spacegroup=sg)
        except (CifError, StructureFileError) as exc:
            item = Item(mid, None, "", f"{exc.reason.value}: {exc.detail}")
        except Exception as exc:  # one hostile file never stops the screen
            item = Item(mid, None, "", f"check_failed: {type(exc).__name__}: {exc}")
        yield item
