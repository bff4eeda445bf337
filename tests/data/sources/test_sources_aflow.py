"""aflow source against a fake AFLUX server + AFLOWDATA file tree on 127.0.0.1.

Two pages of two entries (page 3 is empty), realistic ``aurl``s redirected to the fake server
through ``files_base_url``; one VASP4-style CONTCAR (element names from ``species``), one
missing structure file (404: row kept with an empty CIF), one transient 503 (retried).
"""

from __future__ import annotations

import gzip
import io
import json
import re
from urllib.parse import unquote

import pandas as pd
import pytest
from pymatgen.core import Structure
from pymatgen.io.vasp import Poscar

from kappaflow.data.sources import FETCH_ERROR_COL, SourceError, fetch
from kappaflow.data.sources.aflow import (
    aflux_url,
    parse_aflux_page,
    parse_structure,
    structure_url,
)

HOST = "aflowlib.duke.edu"


def _vasp4(s: Structure) -> str:
    """POSCAR without the element line and without per-site labels, as in old AFLOW files."""
    lines = Poscar(s).get_str().splitlines()
    coords = [" ".join(line.split()[:3]) for line in lines[8 : 8 + len(s)]]
    return "\n".join(["AFLOW relaxed (VASP4)", *lines[1:5], *lines[6:8], *coords]) + "\n"


@pytest.fixture()
def aflow_server(serve, structs):
    entries = [
        ("aflow:0004", "ICSD_WEB/FCC/Na1Cl1_ICSD_1", "Na1Cl1", ["Na", "Cl"], 7.1),
        ("aflow:0001", "ICSD_WEB/FCC/Si1_ICSD_2", "Si2", ["Si"], 120.0),
        ("aflow:0003", "ICSD_WEB/FCC/As1Ga1_ICSD_3", "As1Ga1", ["As", "Ga"], 40.5),
        ("aflow:0002", "ICSD_WEB/CUB/Pb1Te1_ICSD_4", "Pb1Te1", ["Pb", "Te"], 2.0),
    ]
    files = {
        "ICSD_WEB/FCC/Na1Cl1_ICSD_1": Poscar(structs["NaCl"]).get_str(),
        "ICSD_WEB/FCC/Si1_ICSD_2": _vasp4(structs["Si"]),
        "ICSD_WEB/FCC/As1Ga1_ICSD_3": _vasp4(
            Structure(structs["GaAs"].lattice, ["As", "Ga"], structs["GaAs"].frac_coords)
        ),
        # Pb1Te1: no file -> 404
    }
    state = {"failed_once": False}

    def handler(path: str, headers: dict[str, str]):
        path = unquote(path)
        if path.startswith("/API/aflux/?"):
            m = re.search(r"\$paging\((\d+),(\d+)\)", path)
            assert m and "format(json)" in path
            page, size = int(m.group(1)), int(m.group(2))
            if page == 2 and not state["failed_once"]:
                state["failed_once"] = True
                return 503, "text/plain", "busy"
            rows = [
                {
                    "auid": a,
                    "aurl": f"{HOST}:AFLOWDATA/{rel}",
                    "compound": c,
                    "species": sp,
                    "agl_thermal_conductivity_300K": k,
                }
                for a, rel, c, sp, k in entries[(page - 1) * size : page * size]
            ]
            return 200, "application/json", json.dumps(rows)
        m = re.fullmatch(r"/AFLOWDATA/(.+)/CONTCAR\.relax\.vasp", path)
        if m and m.group(1) in files:
            return 200, "text/plain", files[m.group(1)]
        return 404, "text/plain", "no such file"

    return serve(handler)


def _opts(server, **extra):
    return {
        "base_url": f"{server.url}/API/aflux/",
        "files_base_url": server.url,
        "page_size": 2,
        "backoff": 0.0,
        "workers": 2,
        **extra,
    }


def test_aflow_pages_structures_and_failures(tmp_path, aflow_server, make_spec) -> None:
    spec = make_spec(
        targets=(("kappa", "kappa_agl_300k_wmk"),), source="aflow", options=_opts(aflow_server)
    )
    res = fetch(spec, tmp_path / "aflow.csv.gz", tmp_path, progress=False)
    df = pd.read_csv(io.BytesIO(gzip.decompress(res.path.read_bytes())))
    assert list(df.columns)[:4] == ["id", "formula", "cif", "kappa_agl_300k_wmk"]
    assert FETCH_ERROR_COL in df.columns and "aurl" in df.columns
    assert res.n_rows == 4
    assert df["id"].tolist() == ["aflow:0001", "aflow:0002", "aflow:0003", "aflow:0004"]
    assert df["kappa_agl_300k_wmk"].tolist() == [120.0, 2.0, 40.5, 7.1]
    assert df["formula"].tolist() == ["Si", "TePb", "GaAs", "NaCl"]
    for i, formula in ((0, "Si"), (2, "GaAs"), (3, "NaCl")):
        s = Structure.from_str(df.loc[i, "cif"], fmt="cif")
        assert s.composition.reduced_formula == formula and len(s) == 2
    # missing file: row kept, empty CIF, formula from `compound`, reason recorded
    assert pd.isna(df.loc[1, "cif"])
    assert "HTTP 404" in df.loc[1, FETCH_ERROR_COL]
    assert df[FETCH_ERROR_COL].isna().sum() == 3

    queries = [unquote(p) for p in aflow_server.paths() if p.startswith("/API/aflux/")]
    assert len(queries) == 4  # page 1, page 2 (503 then retry), page 3 (empty)
    assert [re.search(r"\$paging\((\d+),2\)", q).group(1) for q in queries] == ["1", "2", "2", "3"]
    assert (
        "$catalog(ICSD),agl_thermal_conductivity_300K(*),auid,aurl,compound,species" in queries[0]
    )
    assert queries[0].count("agl_thermal_conductivity_300K") == 1

    # deterministic bytes for the same upstream answers
    res2 = fetch(spec, tmp_path / "aflow2.csv.gz", tmp_path, progress=False)
    assert res2.sha256 == res.sha256


def test_aflow_query_failure_is_an_error(tmp_path, serve, make_spec) -> None:
    server = serve(lambda path, headers: (500, "text/plain", "internal error"))
    spec = make_spec(source="aflow", options=_opts(server, retries=1))
    with pytest.raises(SourceError, match="HTTP 500"):
        fetch(spec, tmp_path / "a.csv.gz", tmp_path, progress=False)
    assert len(server.requests) == 2  # first try + 1 retry
    assert not (tmp_path / "a.csv.gz").exists()


def test_aflow_all_structures_failing_is_an_error(tmp_path, aflow_server, make_spec) -> None:
    opts = _opts(aflow_server, files_base_url=f"{aflow_server.url}/wrong")
    spec = make_spec(source="aflow", options=opts)
    with pytest.raises(SourceError, match="none of 4 structure files"):
        fetch(spec, tmp_path / "a.csv.gz", tmp_path, progress=False)


def test_aflow_helpers() -> None:
    aurl = "aflowlib.duke.edu:AFLOWDATA/ICSD_WEB/FCC/Ag1Br1_ICSD_56546"
    assert structure_url(aurl, "CONTCAR.relax.vasp") == (
        "http://aflowlib.duke.edu/AFLOWDATA/ICSD_WEB/FCC/Ag1Br1_ICSD_56546/CONTCAR.relax.vasp"
    )
    assert structure_url(aurl, "{entry}.cif", "http://mirror/") == (
        "http://mirror/AFLOWDATA/ICSD_WEB/FCC/Ag1Br1_ICSD_56546/Ag1Br1_ICSD_56546.cif"
    )
    with pytest.raises(ValueError, match="aurl"):
        structure_url("no-aflowdata-here", "x")
    url = aflux_url("https://aflow.org/API/aflux/", "species(Na),Egap(*)", ["auid", "Egap"], 3, 50)
    assert url == "https://aflow.org/API/aflux/?species(Na),Egap(*),auid,$paging(3,50),format(json)"
    assert parse_aflux_page('{"2 of 2": {"auid": "b"}, "1 of 2": {"auid": "a"}}', "u") == [
        {"auid": "a"},
        {"auid": "b"},
    ]
    with pytest.raises(SourceError, match="non-JSON"):
        parse_aflux_page("<html>down</html>", "u")
    with pytest.raises(SourceError, match="unexpected"):
        parse_aflux_page('{"error": "bad query"}', "u")


def test_parse_structure_cif_and_vasp4(structs) -> None:
    from pymatgen.io.cif import CifWriter

    cif = str(CifWriter(structs["NaCl"]))
    assert parse_structure(cif, "x.cif", []).composition.reduced_formula == "NaCl"
    s = parse_structure(_vasp4(structs["NaCl"]), "CONTCAR.relax.vasp", ["Na", "Cl"])
    assert s.composition.reduced_formula == "NaCl"
