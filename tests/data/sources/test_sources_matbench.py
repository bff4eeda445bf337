"""matbench source against a tiny matbench-format ``json.gz`` served from 127.0.0.1.

matminer's dataset metadata (``matminer.datasets.dataset_retrieval._dataset_dict``) is patched so
that ``matbench_mp_e_form`` points at the local server with the local file's sha256: the source
takes its URL and checksum from that metadata exactly as for the real download.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io

import pandas as pd
import pytest
from matminer.datasets import dataset_retrieval
from matminer.datasets.utils import _load_dataset_dict
from matminer.utils.io import store_dataframe_as_json
from pymatgen.core import Structure

from kappaflow.data.sources import FETCH_ERROR_COL, ChecksumMismatchError, SourceError, fetch
from kappaflow.data.sources.matbench import ids_for

NAME = "matbench_mp_e_form"


@pytest.fixture()
def payload(tmp_path, structs) -> bytes:
    """matbench-format json.gz: 3 good structures + 1 malformed structure dict."""
    bad = {"@module": "pymatgen.core.structure", "@class": "Structure", "lattice": "garbage"}
    df = pd.DataFrame(
        {"structure": [*structs.values(), bad], "e_form": [-2.1, 0.0, -0.4, 1.5]},
    )
    path = tmp_path / "src.json.gz"
    store_dataframe_as_json(df, str(path), compression="gz", pbar=False)
    return path.read_bytes()


@pytest.fixture()
def server(serve, payload):
    def handler(path: str, headers: dict[str, str]):
        if path == f"/projects/{NAME}.json.gz":
            return 200, "application/gzip", payload
        return 404, "text/plain", "not found"

    return serve(handler)


@pytest.fixture()
def metadata(monkeypatch, server, payload):
    """Point matminer's metadata entry for NAME at the local server."""
    meta = copy.deepcopy(_load_dataset_dict())
    meta[NAME]["url"] = f"{server.url}/projects/{NAME}.json.gz"
    meta[NAME]["hash"] = hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(dataset_retrieval, "_dataset_dict", meta)
    return meta[NAME]


def _read(path) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(gzip.decompress(path.read_bytes())), keep_default_na=True)


def test_matbench_structure_card(tmp_path, server, metadata, make_spec) -> None:
    spec = make_spec(
        targets=(("e_form", "e_form_ev_per_atom"),),
        source="matbench",
        options={"dataset": NAME, "target": "e_form"},
    )
    cache = tmp_path / "cache"
    res = fetch(spec, tmp_path / "raw.csv.gz", tmp_path, cache_dir=cache, progress=False)
    df = _read(res.path)
    assert list(df.columns) == ["id", "formula", "cif", "e_form_ev_per_atom", FETCH_ERROR_COL]
    assert res.n_rows == len(df) == 4
    assert df["id"].tolist() == ids_for(NAME, 4) == [f"{NAME}-{i:04d}" for i in range(4)]
    assert df["formula"].tolist()[:3] == ["NaCl", "Si", "GaAs"]
    assert df["e_form_ev_per_atom"].tolist() == [-2.1, 0.0, -0.4, 1.5]
    s = Structure.from_str(df.loc[2, "cif"], fmt="cif")
    assert s.composition.reduced_formula == "GaAs" and len(s) == 2
    # malformed row kept, empty CIF, reason recorded
    assert pd.isna(df.loc[3, "cif"]) and "structure_conversion_failed" in df.loc[3, FETCH_ERROR_COL]
    assert df[FETCH_ERROR_COL].isna().sum() == 3
    assert res.source.startswith(f"matbench:{NAME}")
    # second run reuses the verified cache: no new request, identical bytes
    n_req = len(server.requests)
    res2 = fetch(spec, tmp_path / "raw2.csv.gz", tmp_path, cache_dir=cache, progress=False)
    assert len(server.requests) == n_req == 1
    assert res2.sha256 == res.sha256


def test_matbench_composition_card_from_structures(tmp_path, server, metadata, make_spec) -> None:
    spec = make_spec(
        kind="composition",
        targets=(("e_form", "e_form_ev_per_atom"),),
        source="matbench",
        options={"dataset": NAME},  # the only non-structure column is picked
    )
    res = fetch(spec, tmp_path / "raw.csv.gz", tmp_path, cache_dir=tmp_path / "c", progress=False)
    df = _read(res.path)
    assert list(df.columns) == ["id", "formula", "e_form_ev_per_atom", FETCH_ERROR_COL]
    assert df["formula"].tolist()[:3] == ["NaCl", "Si", "GaAs"] and pd.isna(df.loc[3, "formula"])


def test_matbench_checksum_mismatch(tmp_path, server, metadata, make_spec) -> None:
    metadata["hash"] = "0" * 64
    spec = make_spec(source="matbench", options={"dataset": NAME, "target": "e_form"})
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatchError, match="0" * 64):
        fetch(spec, tmp_path / "raw.csv.gz", tmp_path, cache_dir=cache, progress=False)
    assert not (tmp_path / "raw.csv.gz").exists()
    assert list(cache.iterdir()) == []


def test_matbench_http_error(tmp_path, server, make_spec) -> None:
    spec = make_spec(
        source="matbench",
        options={"dataset": NAME, "target": "e_form", "url": f"{server.url}/missing.json.gz"},
    )
    with pytest.raises(SourceError, match="HTTP 404"):
        fetch(spec, tmp_path / "raw.csv.gz", tmp_path, cache_dir=tmp_path / "c", retries=0)


def test_matbench_composition_dataset(tmp_path, serve, make_spec) -> None:
    df = pd.DataFrame({"composition": ["Fe2O3", "NaCl", "??"], "gap expt": [2.1, 8.5, 0.0]})
    src = tmp_path / "expt.json.gz"
    store_dataframe_as_json(df, str(src), compression="gz", pbar=False)
    body = src.read_bytes()
    server = serve(lambda path, headers: (200, "application/gzip", body))
    opts = {"dataset": "my_expt_gap", "url": f"{server.url}/x.json.gz", "sha256": None}
    spec = make_spec(
        kind="composition", targets=(("band_gap", "gap_ev"),), source="matbench", options=opts
    )
    res = fetch(spec, tmp_path / "raw.csv.gz", tmp_path, cache_dir=tmp_path / "c", progress=False)
    out = _read(res.path)
    assert out["formula"].tolist()[:2] == ["Fe2O3", "NaCl"] and pd.isna(out.loc[2, "formula"])
    assert out["gap_ev"].tolist() == [2.1, 8.5, 0.0]
    assert "unparsable composition" in out.loc[2, FETCH_ERROR_COL]
    # a structure card cannot be served by a composition-only set
    with pytest.raises(ValueError, match="compositions only"):
        fetch(
            make_spec(source="matbench", options=opts),
            tmp_path / "s.csv.gz",
            tmp_path,
            cache_dir=tmp_path / "c",
        )


def test_matbench_unknown_dataset(tmp_path, make_spec) -> None:
    spec = make_spec(source="matbench", options={"dataset": "no_such_set"})
    with pytest.raises(ValueError, match="does not know dataset"):
        fetch(spec, tmp_path / "raw.csv.gz", tmp_path)
