"""mp_api source against a fake Materials Project server on 127.0.0.1.

The fake implements what ``MPRester`` (mp-api 0.46) requests for a summary search: ``GET
/heartbeat`` (db and emmet versions, at client start) and ``GET /materials/summary/`` with
``_fields``, ``_limit``, ``_skip`` and the search criteria, answering ``{"data", "meta"}``.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
from pymatgen.core import Structure

from kappaflow.data.sources import FETCH_ERROR_COL, MissingDependencyError, SourceError, fetch

KEY = "k" * 32  # the client insists on 32 characters


@pytest.fixture()
def mp_server(serve, structs):
    docs = [
        {
            "material_id": "mp-22862",
            "structure": structs["NaCl"].as_dict(),
            "formula_pretty": "NaCl",
            "formation_energy_per_atom": -2.1,
            "band_gap": 5.0,
            "volume": 1.0,
        },
        {
            "material_id": "mp-149",
            "structure": structs["Si"].as_dict(),
            "formula_pretty": "Si",
            "formation_energy_per_atom": 0.0,
            "band_gap": 0.6,
            "volume": 2.0,
        },
        {
            "material_id": "mp-2534",
            "structure": None,  # broken document: kept with an empty CIF
            "formula_pretty": "GaAs",
            "formation_energy_per_atom": -0.4,
            "band_gap": 0.2,
            "volume": 3.0,
        },
    ]

    def handler(path: str, headers: dict[str, str]):
        url = urlsplit(path)
        if url.path == "/heartbeat":
            body = {
                "db_version": "2025.09.25",
                "access_controlled_batch_ids": [],
                "version": "0.87.3",
            }
            return 200, "application/json", json.dumps(body)
        if url.path == "/materials/summary/":
            if headers.get("x-api-key") != KEY:
                return 401, "application/json", json.dumps({"detail": "bad key"})
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            fields = q["_fields"].split(",")
            skip, limit = int(q.get("_skip", 0)), int(q["_limit"])
            page = [{f: d[f] for f in fields if f in d} for d in docs[skip : skip + limit]]
            return 200, "application/json", json.dumps({"data": page, "meta": {"total_doc": 3}})
        return 404, "application/json", json.dumps({"detail": "no route"})

    return serve(handler)


def _spec(make_spec, **options):
    return make_spec(
        targets=(("e_form", "e_form_ev_per_atom"), ("band_gap", "band_gap_ev")),
        source="mp_api",
        options=options,
    )


def test_mp_api_summary_search(tmp_path, monkeypatch, mp_server, make_spec) -> None:
    pytest.importorskip("mp_api.client")
    monkeypatch.setenv("MP_API_KEY", KEY)
    spec = _spec(make_spec, endpoint=mp_server.url + "/", chunk_size=2, fields=["volume"])
    res = fetch(spec, tmp_path / "mp.csv.gz", tmp_path, progress=False)
    df = pd.read_csv(io.BytesIO(gzip.decompress(res.path.read_bytes())))
    assert list(df.columns) == [
        "id",
        "formula",
        "cif",
        "e_form_ev_per_atom",
        "band_gap_ev",
        "volume",
        FETCH_ERROR_COL,
    ]
    assert res.n_rows == 3
    assert df["id"].tolist() == ["mp-149", "mp-2534", "mp-22862"]  # natural id order
    assert df["formula"].tolist() == ["Si", "GaAs", "NaCl"]
    assert df["band_gap_ev"].tolist() == [0.6, 0.2, 5.0]
    assert Structure.from_str(df.loc[2, "cif"], fmt="cif").composition.reduced_formula == "NaCl"
    assert pd.isna(df.loc[1, "cif"]) and "no structure" in df.loc[1, FETCH_ERROR_COL]
    summary = [urlsplit(p) for p in mp_server.paths() if p.startswith("/materials/summary/")]
    assert len(summary) == 2  # chunked: 2 + 1 documents
    q = parse_qs(summary[0].query)
    assert q["deprecated"] == ["False"]  # default criterion: never the S3 bulk path
    assert set(q["_fields"][0].split(",")) >= {
        "material_id",
        "structure",
        "formation_energy_per_atom",
        "band_gap",
    }


def test_mp_api_error_status_is_reported(tmp_path, monkeypatch, mp_server, make_spec) -> None:
    pytest.importorskip("mp_api.client")
    monkeypatch.setenv("MP_API_KEY", "x" * 32)  # valid shape, rejected by the server
    spec = _spec(make_spec, endpoint=mp_server.url + "/")
    with pytest.raises(SourceError, match="401"):
        fetch(spec, tmp_path / "mp.csv.gz", tmp_path, progress=False)
    assert not (tmp_path / "mp.csv.gz").exists()


def test_mp_api_missing_key(tmp_path, monkeypatch, make_spec) -> None:
    monkeypatch.delenv("MP_API_KEY", raising=False)
    with pytest.raises(SourceError, match="MP_API_KEY"):
        fetch(_spec(make_spec), tmp_path / "mp.csv.gz", tmp_path)


def test_mp_api_missing_dependency(tmp_path, monkeypatch, make_spec) -> None:
    monkeypatch.setenv("MP_API_KEY", KEY)
    monkeypatch.setitem(sys.modules, "mp_api", None)
    monkeypatch.setitem(sys.modules, "mp_api.client", None)
    with pytest.raises(MissingDependencyError, match=r"pip install kappaflow\[mp\]"):
        fetch(_spec(make_spec), tmp_path / "mp.csv.gz", tmp_path)


def test_mp_api_refuses_empty_criteria(tmp_path, monkeypatch, make_spec) -> None:
    monkeypatch.setenv("MP_API_KEY", KEY)
    pytest.importorskip("mp_api.client")
    with pytest.raises(SourceError, match="S3"):
        fetch(_spec(make_spec, criteria={}), tmp_path / "mp.csv.gz", tmp_path)
