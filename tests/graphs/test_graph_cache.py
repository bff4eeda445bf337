from __future__ import annotations

import math
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Structure
from torch_geometric.loader import DataLoader

from kappaflow.graphs.build import crystal_to_graph
from kappaflow.graphs.cache import build_graph_cache, load_graph_cache
from kappaflow.structure.crystal import CrystalArrays

TARGETS = ["kappa_wmk", "band_gap_ev"]


Row = tuple[str, CrystalArrays, list[float]]


@pytest.fixture(scope="module")
def rows(structure_builders: dict[str, Callable[[], Structure]]) -> list[Row]:
    out = []
    for i, name in enumerate(sorted(structure_builders)):
        s = structure_builders[name]()
        out.append((f"{name}-a", CrystalArrays.from_structure(s), [float(i + 1), math.nan]))
        sup = CrystalArrays.from_structure(s * (1, 1, 2))
        out.append((f"{name}-b", sup, [10.0 * (i + 1), 0.5]))
    return out


@pytest.fixture(scope="module")
def parquet(tmp_path_factory: pytest.TempPathFactory, rows: list[Row]) -> Path:
    records = []
    for mid, crystal, y in rows:
        rec = {"id": mid, "formula": "X", "spacegroup": 1, "n_sites": crystal.n_sites}
        rec.update(crystal.to_row())
        rec.update(dict(zip(TARGETS, y, strict=True)))
        records.append(rec)
    path = tmp_path_factory.mktemp("prep") / "valid.parquet"
    pd.DataFrame(records).to_parquet(path, index=False)
    return path


def _build(parquet: Path, out: Path, **kw: object) -> dict:
    return build_graph_cache(parquet, out, 8.0, 12, TARGETS, progress=False, **kw)


def test_round_trip_matches_crystal_to_graph(
    parquet: Path, tmp_path: Path, rows: list[Row]
) -> None:
    out = tmp_path / "graphs" / "toy.pt"
    summary = _build(parquet, out, n_jobs=1)
    assert out.is_file() and list(out.parent.iterdir()) == [out]  # no temp file left behind
    assert summary["n_graphs"] == len(rows) and summary["n_isolated_atoms"] == 0
    raw = torch.load(out, weights_only=True)
    assert set(raw) == {"z", "edge_index", "edge_dist", "y", "node_ptr", "edge_ptr", "ids", "meta"}
    ds = load_graph_cache(out)
    assert len(ds) == len(rows) and ds.ids == [r[0] for r in rows]
    assert ds.meta["cutoff"] == 8.0 and ds.meta["max_neighbors"] == 12
    assert ds.meta["target_names"] == TARGETS
    assert ds.y.shape == (len(rows), 2)
    for (mid, crystal, y), got in zip(rows, ds, strict=True):
        ref = crystal_to_graph(crystal, 8.0, 12, y=y, material_id=mid)
        assert got.material_id == mid and got.num_nodes == ref.num_nodes
        for key in ("z", "edge_index", "edge_dist", "y"):
            a, b = getattr(got, key), getattr(ref, key)
            assert a.dtype == b.dtype, key
            assert torch.equal(a, b) or (key == "y" and torch.allclose(a, b, equal_nan=True)), key


def test_subset_and_dataloader(parquet: Path, tmp_path: Path) -> None:
    out = tmp_path / "toy.pt"
    _build(parquet, out, n_jobs=1)
    ds = load_graph_cache(out)
    sub = ds.subset([5, 1, 3])
    assert sub.ids == [ds.ids[5], ds.ids[1], ds.ids[3]]
    assert torch.allclose(sub.y, ds.y[[5, 1, 3]], equal_nan=True)
    assert sub.subset([0]).ids == [ds.ids[5]]
    batches = list(DataLoader(ds, batch_size=4, shuffle=False))
    assert [b.num_graphs for b in batches] == [4, 2]
    b = batches[0]
    assert b.y.shape == (4, 2) and b.edge_index.max() < b.num_nodes
    assert b.material_id == ds.ids[:4]
    # batch-global edge indices point at the right atoms: first edge of graph 1
    first = int(b.ptr[1])
    g1 = ds[1]
    mask = b.batch[b.edge_index[1]] == 1
    assert torch.equal(b.edge_index[:, mask] - first, g1.edge_index)


def test_parallel_equals_serial(parquet: Path, tmp_path: Path) -> None:
    _build(parquet, tmp_path / "serial.pt", n_jobs=1)
    _build(parquet, tmp_path / "parallel.pt", n_jobs=2, chunk_size=2)
    a = torch.load(tmp_path / "serial.pt", weights_only=True)
    b = torch.load(tmp_path / "parallel.pt", weights_only=True)
    assert a["ids"] == b["ids"] and a["meta"] == b["meta"]
    for key in ("z", "edge_index", "edge_dist", "node_ptr", "edge_ptr"):
        assert torch.equal(a[key], b[key]), key
    assert torch.allclose(a["y"], b["y"], equal_nan=True)


def test_bad_inputs(parquet: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        build_graph_cache(parquet, tmp_path / "x.pt", 8.0, 12, ["nope"], progress=False)
    df = pd.read_parquet(parquet)
    df.loc[0, "lattice"] = None
    bad = tmp_path / "bad.parquet"
    df.to_parquet(bad, index=False)
    with pytest.raises(ValueError, match="null"):
        build_graph_cache(bad, tmp_path / "x.pt", 8.0, 12, TARGETS, progress=False)
    assert not (tmp_path / "x.pt").exists()


def test_format_version_checked(parquet: Path, tmp_path: Path) -> None:
    out = tmp_path / "toy.pt"
    _build(parquet, out, n_jobs=1)
    raw = torch.load(out, weights_only=True)
    raw["meta"]["format_version"] = 99
    torch.save(raw, out)
    with pytest.raises(ValueError, match="format"):
        load_graph_cache(out)


def test_empty_isolated_count(tmp_path: Path) -> None:
    crystal = CrystalArrays(np.eye(3) * 20.0, [1, 8], [[0, 0, 0], [0.05, 0, 0]])
    rec = {"id": "far", **crystal.to_row(), "t": 1.0}
    path = tmp_path / "v.parquet"
    pd.DataFrame([rec]).to_parquet(path, index=False)
    summary = build_graph_cache(path, tmp_path / "g.pt", 0.5, 12, ["t"], progress=False)
    assert summary["n_isolated_atoms"] == 2 and summary["n_edges"] == 0


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_cache_is_reported_with_the_rebuild_command(
    parquet: Path, tmp_path: Path, damage: str
) -> None:
    from kappaflow.io_utils import CorruptFileError

    out = tmp_path / "toy.pt"
    _build(parquet, out, n_jobs=1)
    data = out.read_bytes()
    if damage == "truncate":  # torch.load alone: OSError [Errno 22] Invalid argument
        out.write_bytes(data[: len(data) // 2])
        reason = "not a complete zip archive"
    else:  # a flipped byte inside a tensor: torch.load alone loads it silently
        with zipfile.ZipFile(out) as z:
            info = max(z.infolist(), key=lambda m: m.file_size)  # the biggest tensor
        name_len, extra_len = struct.unpack(
            "<HH", data[info.header_offset + 26 : info.header_offset + 30]
        )
        i = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        out.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
        reason = "CRC-32"
    with pytest.raises(CorruptFileError, match=reason) as err:
        load_graph_cache(out)
    assert str(out) in str(err.value) and "dvc repro featurize@toy" in str(err.value)
