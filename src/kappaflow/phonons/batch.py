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
    phonon_descriptors,
)
from kappaflow.phonons.potential import checkpoint_path, load_calculator
from kappaflow.processes import die_with_parent
from kappaflow.structure.crystal import CrystalArrays

log = logging.getLogger(__name__)

#: Columns of :func:`compute_descriptors`' table besides ``id`` and the descriptors.
STATUS_COLUMNS: tuple[str, ...] = ("flags", "reason", "n_primitive", "seconds", "cached")


#: What can be computed per structure: kind -> (value columns, flags).
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "descriptors": (DESCRIPTOR_COLUMNS, FLAGS),
    "kappa": (
        ("ph3_kappa_w_mk",),
        ("imaginary", "relax_unconverged", "symmetry_changed", "nonfinite"),
    ),
}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {sorted(KINDS)}")


@cache
def _code_key(potential: str, kind: str = "descriptors") -> str:
    parts: dict[str, Any] = {
        "potential": potential,
        "checkpoint": file_sha256(checkpoint_path(potential)),
        "code": file_sha256(Path(_descriptors.__file__)),
        "versions": {p: version(p) for p in ("sevenn", "phonopy", "phono3py", "ase")},
    }
    if kind != "descriptors":  # (descriptor keys stay as they were: their caches stay valid)
        from kappaflow.phonons import conductivity

        parts["kind"] = kind
        parts["code"] = [parts["code"], file_sha256(Path(conductivity.__file__))]
    return json.dumps(parts, sort_keys=True)


def cache_key(
    crystal: CrystalArrays, settings: Any, potential: str, kind: str = "descriptors"
) -> str:
    """Content key of one structure's result (hex SHA-256).

    Args:
        crystal: the structure.
        settings: :class:`PhononSettings` (``descriptors``) or
            :class:`~kappaflow.phonons.conductivity.KappaSettings` (``kappa``).
        potential: key of the potential.
        kind: ``descriptors`` or ``kappa`` (:data:`KINDS`).
    """
    _check_kind(kind)
    h = hashlib.sha256(_code_key(potential, kind).encode())
    h.update(json.dumps(settings.to_dict(), sort_keys=True).encode())
    for arr in (crystal.lattice, crystal.frac_coords):
        h.update(np.ascontiguousarray(np.asarray(arr, dtype=np.float64)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(crystal.numbers, dtype=np.int64)).tobytes())
    return h.hexdigest()


_WORKER: dict[str, Any] = {}


def _init_worker(potential: str, device: str, threads: int, worker: bool = True) -> None:
    import warnings

    import torch

    if worker:  # a killed stage must not leave minutes-long calculations running
        die_with_parent()

    # phonopy 3 -> 4 changed the default primitive matrix and says so on every call; kappaflow
    # passes primitive_matrix="auto" on purpose.
    warnings.filterwarnings("ignore", message="primitive_matrix defaulted to 'auto'")

    torch.set_num_threads(threads)
    # phono3py's OpenMP / Rust thread pools: one thread per worker process.
    for var in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    _WORKER["calculator"] = load_calculator(potential, device)


def _compute_one(
    crystal: CrystalArrays, settings: Any, kind: str = "descriptors"
) -> dict[str, Any]:
    """Worker body: a record that is cacheable unless ``retry`` is set."""
    try:
        if kind == "kappa":
            from kappaflow.phonons.conductivity import phono3py_kappa

            k = phono3py_kappa(crystal, _WORKER["calculator"], settings)
            values, flags = {"ph3_kappa_w_mk": k.kappa}, k.flags
            n_prim, seconds = k.n_primitive, k.seconds
        else:
            result = phonon_descriptors(crystal, _WORKER["calculator"], settings)
            values, flags = result.values, result.flags
            n_prim, seconds = result.n_primitive, result.seconds
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
        "values": values,
        "flags": flags,
        "reason": None,
        "n_primitive": n_prim,
        "seconds": seconds,
    }


def _row(
    material_id: str, record: dict[str, Any], cached: bool, kind: str = "descriptors"
) -> dict[str, Any]:
    columns, flags = KINDS[kind]
    values = record.get("values") or {}
    row: dict[str, Any] = {"id": material_id}
    # Strict JSON stores NaN as null.
    row.update({c: np.nan if values.get(c) is None else float(values[c]) for c in columns})
    row["flags"] = ",".join(f for f in record.get("flags", []) if f in flags)
    row["reason"] = record.get("reason") or ""
    row["n_primitive"] = int(record.get("n_primitive", 0))
    row["seconds"] = float(record.get("seconds", 0.0))
    row["cached"] = cached
    return row


def compute_descriptors(
    ids: Sequence[str],
    crystals: Sequence[CrystalArrays],
    settings: Any,
    potential: str,
    cache_dir: str | os.PathLike[str],
    *,
    kind: str = "descriptors",
    workers: int = 2,
    device: str = "cpu",
    progress: bool = True,
    desc: str = "phonons",
) -> pd.DataFrame:
    """Descriptors (or phono3py κ) of every structure, from the cache where possible.

    Args:
        ids: material ids, one per crystal (the table's key).
        crystals: structures.
        settings: how phonons are computed: :class:`PhononSettings` for ``descriptors``,
            :class:`~kappaflow.phonons.conductivity.KappaSettings` for ``kappa``.
        potential: key of :data:`kappaflow.phonons.potential.POTENTIALS`.
        cache_dir: per-structure result cache (created).
        workers: worker processes (each loads the potential once and uses one torch thread);
            ``1`` computes in this process.
        device: ``cpu`` / ``cuda`` / ``auto`` for the potential.
        progress: tqdm bar with ETA over the structures to compute.
        kind: ``descriptors`` (:data:`DESCRIPTOR_COLUMNS`) or ``kappa`` (``ph3_kappa_w_mk``,
            W/m/K: phono3py κ (RTA or LBTE) at the settings' temperature).
        desc: the bar's label.

    Returns:
        One row per input in input order: ``id``, the kind's value columns (NaN where not
        computed), ``flags`` (comma-separated), ``reason`` (empty when computed),
        ``n_primitive``, ``seconds``, ``cached``.
    """
    from tqdm.auto import tqdm

    _check_kind(kind)
    if len(ids) != len(crystals):
        raise ValueError(f"{len(ids)} ids but {len(crystals)} crystals")
    cache_path = Path(cache_dir)
    cache_path.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any] | None] = [None] * len(ids)
    todo: list[tuple[int, str]] = []
    for i, crystal in enumerate(crystals):
        key = cache_key(crystal, settings, potential, kind)
        file = cache_path / f"{key}.json"
        if file.is_file():
            rows[i] = _row(str(ids[i]), json.loads(file.read_text()), True, kind)
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
        rows[i] = _row(str(ids[i]), record, False, kind)

    bar = tqdm(total=len(todo), desc=desc, unit="structure", disable=not progress or not todo)
    if todo and workers <= 1:
        threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
        _init_worker(potential, device, threads, False)
        for i, key in todo:
            store(i, key, _compute_one(crystals[i], settings, kind))
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
                pool.submit(_compute_one, crystals[i], settings, kind): (i, key) for i, key in todo
            }
            for fut in as_completed(futures):
                i, key = futures[fut]
                store(i, key, fut.result())
                bar.update()
    bar.close()
    return pd.DataFrame([r for r in rows if r is not None])
