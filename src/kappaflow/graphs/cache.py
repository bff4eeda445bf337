"""Build, save and load a whole dataset's crystal graphs as one file of concatenated tensors.

File format (``format_version`` 1), a plain dict readable with ``torch.load(weights_only=True)``:

- ``z``: int64 [total_nodes] atomic numbers of all graphs, concatenated;
- ``edge_index``: int32 [2, total_edges] *local* (per-graph) node indices, row 0 neighbour
  (source), row 1 centre (target), as in :func:`kappaflow.graphs.build.crystal_to_graph`;
- ``edge_dist``: float32 [total_edges] distances, Å;
- ``y``: float32 [N, T] raw targets (NaN where missing);
- ``node_ptr`` / ``edge_ptr``: int64 [N + 1] offsets of graph g's nodes / edges;
- ``ids``: list[str] of length N;
- ``meta``: dict with ``format_version``, ``cutoff`` (Å), ``max_neighbors``, ``target_names``,
  ``n_graphs``, ``n_nodes``, ``n_edges``, ``n_isolated_atoms``.

For the 75k-structure MP set (~18 M edges) the file is ~250 MB; :class:`GraphDataset` slices it
lazily, so loading costs about the file size in memory.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data
from tqdm.auto import tqdm

from kappaflow.io_utils import CorruptFileError, atomic_write, verify_zip
from kappaflow.structure.neighbors import periodic_neighbors

FORMAT_VERSION = 1
# What torch.load raises on a damaged archive (zip / pickle errors surface as these).
_LOAD_ERRORS = (CorruptFileError, OSError, RuntimeError, EOFError, TypeError, pickle.PickleError)
_REQUIRED_KEYS = ("z", "edge_index", "edge_dist", "y", "node_ptr", "edge_ptr", "ids", "meta")

# A chunk of crystals in flat-array form: lattices [m, 3, 3], frac [n, 3], node offsets [m + 1]
# (starting at 0). Atomic numbers are not needed for the edges.
_Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]
_ChunkResult = tuple[np.ndarray, np.ndarray, np.ndarray, int]


def _ptr(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def _list_column(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a list column: (values, per-row lengths). Raises if any row is null."""
    col = table.column(name).combine_chunks()
    n_null = col.null_count
    if n_null:
        raise ValueError(
            f"{n_null} rows have a null {name!r} (composition-only rows cannot become graphs)"
        )
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    return values, lengths


def _read_structures(
    parquet_path: str | os.PathLike[str], target_names: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ids, lattices [N,3,3], numbers [n], frac [n,3], node_ptr [N+1] and y [N,T]."""
    schema_names = set(pq.read_schema(parquet_path).names)
    missing = [c for c in ("id", "lattice", "numbers", "frac_coords", *target_names)
               if c not in schema_names]  # fmt: skip
    if missing:
        raise KeyError(f"{parquet_path}: missing columns {missing}")
    table = pq.read_table(
        parquet_path, columns=["id", "lattice", "numbers", "frac_coords", *target_names]
    )
    ids = [str(x) for x in table.column("id").to_pylist()]
    lat, lat_len = _list_column(table, "lattice")
    if not np.all(lat_len == 9):
        raise ValueError("every 'lattice' entry must hold 9 numbers (3x3 row-major, Å)")
    numbers, n_sites = _list_column(table, "numbers")
    frac, frac_len = _list_column(table, "frac_coords")
    if not np.array_equal(frac_len, 3 * n_sites):
        raise ValueError("'frac_coords' must hold 3 * len(numbers) values per row")
    y = np.empty((table.num_rows, len(target_names)), dtype=np.float32)
    for t, name in enumerate(target_names):
        col = table.column(name).cast(pa.float64()).fill_null(np.nan)
        y[:, t] = col.to_numpy()
    return (
        ids,
        np.asarray(lat, dtype=np.float64).reshape(-1, 3, 3),
        np.array(numbers, dtype=np.int64),  # writable copy: becomes a tensor
        np.asarray(frac, dtype=np.float64).reshape(-1, 3),
        _ptr(n_sites),
        y,
    )


def _edges_of_chunk(chunk: _Chunk, cutoff: float, max_neighbors: int | None) -> _ChunkResult:
    """Edges of a chunk of crystals: local edge_index int32 [2,E], dist float32 [E], counts [m]."""
    lattices, frac, node_ptr = chunk
    parts_idx: list[np.ndarray] = []
    parts_dist: list[np.ndarray] = []
    counts = np.zeros(len(lattices), dtype=np.int64)
    n_isolated = 0
    for g in range(len(lattices)):
        lo, hi = node_ptr[g], node_ptr[g + 1]
        centers, neighbors, dists = periodic_neighbors(
            lattices[g], frac[lo:hi], cutoff, max_neighbors
        )
        n_centers = 1 + np.count_nonzero(centers[1:] != centers[:-1]) if len(centers) else 0
        n_isolated += int(hi - lo) - int(n_centers)
        parts_idx.append(np.stack([neighbors, centers]).astype(np.int32))
        parts_dist.append(dists.astype(np.float32))
        counts[g] = len(centers)
    edge_index = np.concatenate(parts_idx, axis=1) if parts_idx else np.zeros((2, 0), np.int32)
    edge_dist = np.concatenate(parts_dist) if parts_dist else np.zeros(0, np.float32)
    return edge_index, edge_dist, counts, n_isolated


def _chunk_worker(args: tuple[_Chunk, float, int | None]) -> _ChunkResult:
    chunk, cutoff, max_neighbors = args
    return _edges_of_chunk(chunk, cutoff, max_neighbors)


def _iter_chunks(
    lattices: np.ndarray, frac: np.ndarray, node_ptr: np.ndarray, size: int
) -> Iterator[_Chunk]:
    for start in range(0, len(lattices), size):
        stop = min(start + size, len(lattices))
        lo, hi = node_ptr[start], node_ptr[stop]
        yield lattices[start:stop], frac[lo:hi], node_ptr[start : stop + 1] - lo


def _mp_context() -> mp.context.BaseContext:
    # fork is cheapest (no re-import); the workers only run numpy + pymatgen's Cython search.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(method)


def build_graph_cache(
    parquet_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    cutoff: float,
    max_neighbors: int | None,
    target_names: Sequence[str],
    n_jobs: int = 2,
    chunk_size: int = 512,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the graphs of every row of a prepared ``valid.parquet`` and save them as one file.

    Args:
        parquet_path: prepared dataset (``id``, ``lattice``, ``numbers``, ``frac_coords`` and the
            target columns; see CONTRACT.md).
        out_path: output ``.pt`` file; written atomically (:func:`kappaflow.io_utils.atomic_write`).
        cutoff: neighbour radius, Å.
        max_neighbors: neighbours kept per atom, nearest first (None: all within ``cutoff``).
        target_names: parquet columns stored, in this order, as ``y`` [N, T] (raw units).
        n_jobs: worker processes; 1 runs in this process without a pool.
        chunk_size: crystals per task sent to a worker (at most; smaller on small sets so
            that every worker gets several tasks).
        progress: show a tqdm progress bar (crystals).

    Returns:
        Summary dict: ``n_graphs``, ``n_nodes``, ``n_edges``, ``n_isolated_atoms`` (atoms without
        any neighbour within ``cutoff``; validation should have removed them), ``seconds``,
        ``out_path``, ``bytes``.
    """
    t0 = time.perf_counter()
    if chunk_size < 1 or n_jobs < 1:
        raise ValueError(f"need chunk_size >= 1 and n_jobs >= 1, got {chunk_size=}, {n_jobs=}")
    target_names = [str(t) for t in target_names]
    ids, lattices, numbers, frac, node_ptr, y = _read_structures(parquet_path, target_names)
    n = len(ids)
    if n_jobs > 1:  # at least ~4 tasks per worker, for load balance on small sets
        chunk_size = max(1, min(chunk_size, -(-n // (4 * n_jobs))))
    tasks = (
        (chunk, float(cutoff), max_neighbors)
        for chunk in _iter_chunks(lattices, frac, node_ptr, chunk_size)
    )
    results: list[_ChunkResult] = []
    with tqdm(total=n, disable=not progress, unit="crystal", desc="graphs") as bar:
        if n_jobs == 1 or n <= chunk_size:
            for task in tasks:
                results.append(_chunk_worker(task))
                bar.update(len(results[-1][2]))
        else:
            with ProcessPoolExecutor(max_workers=n_jobs, mp_context=_mp_context()) as pool:
                for res in pool.map(_chunk_worker, tasks):
                    results.append(res)
                    bar.update(len(res[2]))

    if not results:
        results = [(np.zeros((2, 0), np.int32), np.zeros(0, np.float32), np.zeros(0, np.int64), 0)]
    edge_counts = np.concatenate([r[2] for r in results])
    edge_index = np.concatenate([r[0] for r in results], axis=1)
    edge_dist = np.concatenate([r[1] for r in results])
    n_isolated = sum(r[3] for r in results)
    del results
    cache = {
        "z": torch.from_numpy(numbers),
        "edge_index": torch.from_numpy(edge_index),
        "edge_dist": torch.from_numpy(edge_dist),
        "y": torch.from_numpy(y),
        "node_ptr": torch.from_numpy(node_ptr),
        "edge_ptr": torch.from_numpy(_ptr(edge_counts)),
        "ids": ids,
        "meta": {
            "format_version": FORMAT_VERSION,
            "cutoff": float(cutoff),
            "max_neighbors": None if max_neighbors is None else int(max_neighbors),
            "target_names": target_names,
            "n_graphs": n,
            "n_nodes": int(node_ptr[-1]),
            "n_edges": int(edge_counts.sum()),
            "n_isolated_atoms": n_isolated,
        },
    }
    out = atomic_write(out_path, lambda tmp: torch.save(cache, tmp))
    return {
        "n_graphs": n,
        "n_nodes": int(node_ptr[-1]),
        "n_edges": int(edge_counts.sum()),
        "n_isolated_atoms": n_isolated,
        "seconds": time.perf_counter() - t0,
        "out_path": str(out),
        "bytes": out.stat().st_size,
    }


class GraphDataset(Dataset[Data]):
    """Crystal graphs backed by the concatenated tensors of a graph cache file.

    ``dataset[i]`` slices the big tensors (no copies of the whole set) and returns a
    ``torch_geometric.data.Data`` with the fields of
    :func:`kappaflow.graphs.build.crystal_to_graph`.
    Works with ``torch_geometric.loader.DataLoader``.

    Args:
        store: the dict loaded from a cache file (see the module docstring).
        indices: rows of the store this dataset exposes (default: all, in order).
    """

    def __init__(self, store: dict[str, Any], indices: Sequence[int] | np.ndarray | None = None):
        missing = [k for k in _REQUIRED_KEYS if k not in store]
        if missing:
            raise KeyError(f"graph cache is missing keys {missing}")
        self._store = store
        n_total = len(store["ids"])
        idx = np.arange(n_total) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or (len(idx) and (idx.min() < -n_total or idx.max() >= n_total)):
            raise IndexError(f"indices out of range for a cache of {n_total} graphs")
        self._indices = np.where(idx < 0, idx + n_total, idx)

    @property
    def meta(self) -> dict[str, Any]:
        """Cache metadata (``cutoff`` Å, ``max_neighbors``, ``target_names``, ...)."""
        return self._store["meta"]

    @property
    def indices(self) -> np.ndarray:
        """Rows of the underlying cache exposed by this dataset, int64 [len(self)]."""
        return self._indices.copy()

    @property
    def ids(self) -> list[str]:
        """Material ids, in dataset order."""
        all_ids = self._store["ids"]
        return [all_ids[i] for i in self._indices]

    @property
    def y(self) -> torch.Tensor:
        """Raw targets, float32 [len(self), T] (NaN where missing)."""
        return self._store["y"][torch.from_numpy(self._indices)]

    def subset(self, indices: Sequence[int] | np.ndarray) -> GraphDataset:
        """Dataset of the given positions *of this dataset* (shares the tensors)."""
        return GraphDataset(self._store, self._indices[np.asarray(indices, dtype=np.int64)])

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> Data:
        g = int(self._indices[i])
        s = self._store
        n0, n1 = int(s["node_ptr"][g]), int(s["node_ptr"][g + 1])
        e0, e1 = int(s["edge_ptr"][g]), int(s["edge_ptr"][g + 1])
        return Data(
            z=s["z"][n0:n1],
            edge_index=s["edge_index"][:, e0:e1].long(),
            edge_dist=s["edge_dist"][e0:e1],
            y=s["y"][g : g + 1],
            material_id=s["ids"][g],
            num_nodes=n1 - n0,
        )


def load_graph_cache(path: str | os.PathLike[str]) -> GraphDataset:
    """Load a file written by :func:`build_graph_cache` (``torch.load(weights_only=True)``).

    The file is checked first (:func:`kappaflow.io_utils.verify_zip`): ``torch.save`` archives
    carry a CRC-32 per member, which ``torch.load`` itself ignores, so a truncated file (an
    interrupted copy, a full disk) or flipped bytes are reported here, naming the file and the
    command that rebuilds it, instead of an ``OSError [Errno 22]`` or silently wrong graphs.
    The cache file's bytes (a DVC output) are unchanged by this check; a verified file version
    is memoised per process.

    Args:
        path: the ``.pt`` cache file.

    Returns:
        A :class:`GraphDataset` over all graphs.

    Raises:
        FileNotFoundError: no such file.
        CorruptFileError: (a ValueError) truncated or corrupt file, or one ``torch.load`` cannot
            read; the message says how to rebuild it (``dvc repro featurize``).
        ValueError: unsupported ``format_version``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"graph cache {p} missing: {_rebuild_hint(p)}")
    try:
        verify_zip(p)
        store = torch.load(p, map_location="cpu", weights_only=True)
        if not isinstance(store, dict):
            raise TypeError(f"holds a {type(store).__name__}, not a dict of tensors")
    except _LOAD_ERRORS as err:
        reason = str(err).removeprefix(f"{p}: ")
        raise CorruptFileError(
            f"graph cache {p} is truncated or corrupt ({type(err).__name__}: {reason}); "
            f"{_rebuild_hint(p)}"
        ) from err
    version = store.get("meta", {}).get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: graph cache format {version!r}, expected {FORMAT_VERSION}")
    return GraphDataset(store)


def _rebuild_hint(path: Path) -> str:
    """Return how to rebuild graph cache ``path`` (``data/graphs/<dataset>.pt``)."""
    return f"rebuild it: `dvc repro featurize` (this dataset: `dvc repro featurize@{path.stem}`)"
