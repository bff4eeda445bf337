"""Phonon descriptors of many structures: per-structure content-keyed cache, worker processes.

Each structure's result (descriptors + flags, or the reason it could not be computed) is cached
as ``<cache_dir>/<key>.json``; the key hashes everything the result depends on: the structure's
arrays, :class:`~kappaflow.phonons.descriptors.PhononSettings`, the potential's checkpoint file,
the versions of ``sevenn`` / ``phonopy`` / ``phono3py`` / ``ase`` and the source of
:mod:`kappaflow.phonons.descriptors` itself. An unexpected error is recorded as the structure's
reason but not cached (the next run retries it); it never stops the batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kappaflow.io_utils import file_sha256, write_json
from kappaflow.phonons import descriptors as _descriptors
from kappaflow.phonons.descriptors import (
    DESCRIPTOR_COLUMNS,
    FLAGS,
    PhononError,
    PhononSettings,
    phonon_descriptors,
)
from kappaflow.phonons.potential import checkpoint_path, load_calculator
from kappaflow.structure.crystal import CrystalArrays

log = logging.getLogger(__name__)

#: Columns of :func:`compute_descriptors`' table besides ``id`` and the descriptors.
STATUS_COLUMNS: tuple[str, ...] = ("flags", "reason", "n_primitive", "seconds", "cached")


@cache
def _code_key(potential: str) -> str:
    parts = {
        "potential": potential,
        "checkpoint": file_sha256(checkpoint_path(potential)),
        "code": file_sha256(Path(_descriptors.__file__)),
        "versions": {p: version(p) for p in ("sevenn", "phonopy", "phono3py", "ase")},
    }
    return json.dumps(parts, sort_keys=True)


def cache_key(crystal: CrystalArrays, settings: PhononSettings, potential: str) -> str:
    """Content key of one structure's result (hex SHA-256)."""
    h = hashlib.sha256(_code_key(potential).encode())
    h.update(json.dumps(settings.to_dict(), sort_keys=True).encode())
    for arr in (crystal.lattice, crystal.frac_coords):
        h.update(np.ascontiguousarray(np.asarray(arr, dtype=np.float64)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(crystal.numbers, dtype=np.int64)).tobytes())
    return h.hexdigest()


_WORKER: dict[str, Any] = {}


def _init_worker(potential: str, device: str, threads: int) -> None:
    import warnings

    import torch

    # phonopy 3 -> 4 changed the default primitive matrix and says so on every call; kappaflow
    # passes primitive_matrix="auto" on purpose.
    warnings.filterwarnings("ignore", message="primitive_matrix defaulted to 'auto'")

    torch.set_num_threads(threads)
    _WORKER["calculator"] = load_calculator(potential, device)


def _compute_one(crystal: CrystalArrays, settings: PhononSettings) -> dict[str, Any]:
    """Worker body: a record that is cacheable unless ``retry`` is set."""
    try:
        result = phonon_descriptors(crystal, _WORKER["calculator"], settings)
    except PhononError as err:
        return {"values": {}, "flags": [], "reason": str(err), "n_primitive": 0, "seconds": 0.0}
    except Exception as err:  # noqa: BLE001 - one structure never stops the batch
        return {
            "values": {},
            "flags": [],
            "reason": f"unexpected {type(err).__name__}: {err}",
            "n_primitive": 0,
            "seconds": 0.0,
            "retry": True,
        }
    return {
        "values": result.values,
        "flags": result.flags,
        "reason": None,
        "n_primitive": result.n_primitive,
        "seconds": result.seconds,
    }


def _row(material_id: str, record: dict[str, Any], cached: bool) -> dict[str, Any]:
    values = record.get("values") or {}
    row: dict[str, Any] = {"id": material_id}
    # Strict JSON stores NaN as null.
    row.update(
        {c: np.nan if values.get(c) is None else float(values[c]) for c in DESCRIPTOR_COLUMNS}
    )
    row["flags"] = ",".join(f for f in record.get("flags", []) if f in FLAGS)
    row["reason"] = record.get("reason") or ""
    row["n_primitive"] = int(record.get("n_primitive", 0))
    row["seconds"] = float(record.get("seconds", 0.0))
    row["cached"] = cached
    return row


def compute_descriptors(
    ids: Sequence[str],
    crystals: Sequence[CrystalArrays],
    settings: PhononSettings,
    potential: str,
    cache_dir: str | os.PathLike[str],
    *,
    workers: int = 2,
    device: str = "cpu",
    progress: bool = True,
    desc: str = "phonons",
) -> pd.DataFrame:
    """Descriptors of every structure, from the cache where possible.

    Args:
        ids: material ids, one per crystal (the table's key).
        crystals: structures.
        settings: how phonons are computed.
        potential: key of :data:`kappaflow.phonons.potential.POTENTIALS`.
        cache_dir: per-structure result cache (created).
        workers: worker processes (each loads the potential once and uses one torch thread);
            ``1`` computes in this process.
        device: ``cpu`` / ``cuda`` / ``auto`` for the potential.
        progress: tqdm bar with ETA over the structures to compute.
        desc: the bar's label.

    Returns:
        One row per input in input order: ``id``, :data:`DESCRIPTOR_COLUMNS` (NaN where not
        computed), ``flags`` (comma-separated), ``reason`` (empty when computed),
        ``n_primitive``, ``seconds``, ``cached``.
    """
    from tqdm.auto import tqdm

    if len(ids) != len(crystals):
        raise ValueError(f"{len(ids)} ids but {len(crystals)} crystals")
    cache_path = Path(cache_dir)
    cache_path.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any] | None] = [None] * len(ids)
    todo: list[tuple[int, str]] = []
    for i, crystal in enumerate(crystals):
        key = cache_key(crystal, settings, potential)
        file = cache_path / f"{key}.json"
        if file.is_file():
            rows[i] = _row(str(ids[i]), json.loads(file.read_text()), cached=True)
        else:
            todo.append((i, key))
    log.info(
        "%s: %d structures, %d cached, %d to compute on %d worker(s)",
        desc,
        len(ids),
        len(ids) - len(todo),
        len(todo),
        workers,
    )

    def store(i: int, key: str, record: dict[str, Any]) -> None:
        if not record.pop("retry", False):
            write_json(cache_path / f"{key}.json", record)
        rows[i] = _row(str(ids[i]), record, cached=False)

    bar = tqdm(total=len(todo), desc=desc, unit="structure", disable=not progress or not todo)
    if todo and workers <= 1:
        _init_worker(potential, device, max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        for i, key in todo:
            store(i, key, _compute_one(crystals[i], settings))
            bar.update()
    elif todo:
        import multiprocessing as mp

        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(potential, device, 1),
        ) as pool:
            futures = {
                pool.submit(_compute_one, crystals[i], settings): (i, key) for i, key in todo
            }
            for fut in as_completed(futures):
                i, key = futures[fut]
                store(i, key, fut.result())
                bar.update()
    bar.close()
    return pd.DataFrame([r for r in rows if r is not None])
