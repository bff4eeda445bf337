from __future__ import annotations

import gzip
import io
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure
from pymatgen.io.cif import CifWriter

from kappaflow.data.sources import FETCH_ERROR_COL, SOURCES, FetchResult, fetch
from kappaflow.data.sources.base import (
    convert_structure,
    natural_key,
    output_columns,
    resolve_targets,
    write_table,
)


def _table(structs: dict[str, Structure]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["a-1", "a-2", "a-3"],
            "formula": list(structs),
            "cif": [str(CifWriter(s)) for s in structs.values()],
            "kappa_wmk": [7.1, 153.0, np.nan],
            FETCH_ERROR_COL: ["", "", ""],
        }
    )


def test_registry_has_all_kinds() -> None:
    assert {"mirror", "matbench", "mp_api", "aflow"} <= set(SOURCES)


def test_network_guard_blocks_real_hosts() -> None:
    with pytest.raises(OSError, match="network guard"):
        socket.getaddrinfo("aflow.org", 443)


def test_write_table_is_deterministic_and_atomic(tmp_path, structs, make_spec) -> None:
    spec = make_spec()
    df = _table(structs)
    a, b = tmp_path / "a.csv.gz", tmp_path / "sub" / "b.csv.gz"
    ra = write_table(df, spec, a, "test")
    rb = write_table(df, spec, b, "test")
    raw = a.read_bytes()
    assert raw == b.read_bytes()
    assert ra.sha256 == rb.sha256 and ra.n_rows == 3 and isinstance(ra, FetchResult)
    # gzip header: no FNAME flag, mtime 0
    assert raw[:2] == b"\x1f\x8b" and raw[3] == 0 and raw[4:8] == b"\0\0\0\0"
    text = gzip.decompress(raw).decode()
    assert "\r\n" not in text
    back = pd.read_csv(io.StringIO(text))
    assert list(back.columns) == [*output_columns(spec), FETCH_ERROR_COL]
    assert Structure.from_str(back.loc[0, "cif"], fmt="cif").composition.reduced_formula == "NaCl"
    assert np.isnan(back.loc[2, "kappa_wmk"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.csv.gz", "b.csv.gz", "sub"]


def test_write_table_missing_column_leaves_dest_untouched(tmp_path, structs, make_spec) -> None:
    spec = make_spec()
    dest = tmp_path / "x.csv.gz"
    dest.write_bytes(b"old")
    with pytest.raises(ValueError, match="kappa_wmk"):
        write_table(_table(structs).drop(columns="kappa_wmk"), spec, dest, "t")
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv.gz"]


def test_convert_structure_records_failure_with_fallback_formula() -> None:
    def bad() -> Structure:
        raise ValueError("boom")

    conv = convert_structure(bad, fallback_formula="Te1Pb1")
    assert conv.cif == "" and conv.formula == "TePb"  # pymatgen order
    assert "boom" in conv.error and conv.error.startswith("structure_conversion_failed")


def test_resolve_targets(make_spec) -> None:
    spec = make_spec(targets=(("e_form", "e_form_ev"), ("band_gap", "gap_ev")))
    got = resolve_targets(spec, {"targets": {"gap_ev": "gap pbe"}}, {"e_form": "e_f"}, ())
    assert got == {"e_form_ev": "e_f", "gap_ev": "gap pbe"}
    with pytest.raises(ValueError, match="exactly one"):
        resolve_targets(spec, {"target": "x"}, {}, ())
    with pytest.raises(ValueError, match="no upstream field"):
        resolve_targets(spec, {}, {}, ("a", "b"))
    single = make_spec()
    assert resolve_targets(single, {}, {}, ["n"]) == {"kappa_wmk": "n"}
    with pytest.raises(ValueError, match="unknown field"):
        resolve_targets(single, {"target": "nope"}, {}, ["n"])


def test_natural_key_orders_ids_numerically() -> None:
    assert sorted(["mp-10", "mp-9", "mvc-1", "mp-100"], key=natural_key) == [
        "mp-9",
        "mp-10",
        "mp-100",
        "mvc-1",
    ]


def test_fetch_unknown_kind_and_bad_option(tmp_path, make_spec) -> None:
    with pytest.raises(KeyError, match="unknown source kind"):
        fetch(make_spec(source="ftp"), tmp_path / "o.csv.gz", tmp_path)
    with pytest.raises(ValueError, match="does not accept"):
        fetch(
            make_spec(source="aflow", options={"base_ulr": "x"}),
            tmp_path / "o.csv.gz",
            tmp_path,
        )


def test_prefer_mirror_copies_instead_of_downloading(tmp_path, structs, make_spec) -> None:
    root = tmp_path / "root"
    spec = make_spec(source="aflow", options={"base_url": "http://127.0.0.1:9/none/"})
    write_table(_table(structs), spec, root / spec.path, "t")
    res = fetch(spec, tmp_path / "out" / "o.csv.gz", root)
    assert res.source.startswith("mirror:") and res.n_rows == 3
    assert (tmp_path / "out" / "o.csv.gz").read_bytes() == (root / spec.path).read_bytes()


def test_fetch_result_as_dict(tmp_path) -> None:
    d = FetchResult(tmp_path / "a", "ab", 2, "s").as_dict()
    assert d == {"path": str(Path(tmp_path / "a")), "sha256": "ab", "n_rows": 2, "source": "s"}
