from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bad_inputs import CASES, COLUMNS, COMPOSITION_SPEC, OPTS, SPEC, good_cases, row
from pymatgen.core import Structure

from kappaflow.cards import DatasetSpec, TargetSpec
from kappaflow.data.prepare import PrepareReport, crystals_from_frame, prepare_dataset
from kappaflow.data.validation import Reason
from kappaflow.layout import load_prepared, load_quarantine
from kappaflow.structure.cif import parse_cif


def write_table(path: Path, rows: list[dict[str, str]]) -> Path:
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(path, index=False, compression="gzip")
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str | None]]:
    """A raw table mixing good rows, every corpus case and duplicates; row -> expected reason."""
    goods = good_cases()
    rows: list[dict[str, str]] = []
    expected: dict[int, str | None] = {}
    for i, g in enumerate(goods):
        rows.append(g.row)
        expected[len(rows) - 1] = None
        if i < 3:  # interleave bad rows
            c = CASES[i]
            rows.append(c.row)
            expected[len(rows) - 1] = c.reason.value
    for c in CASES[3:]:
        rows.append(c.row)
        expected[len(rows) - 1] = c.reason.value
    # Later occurrences of an id are duplicates, whatever their content; the first is kept.
    rows.append(row("good-nacl", kappa="9.9"))
    expected[len(rows) - 1] = Reason.DUPLICATE_ID.value
    rows.append({**CASES[-1].row})  # duplicate of a bad row: still a duplicate
    expected[len(rows) - 1] = Reason.DUPLICATE_ID.value
    path = write_table(tmp_path_factory.mktemp("raw") / "toy.csv.gz", rows)
    return path, expected


@pytest.fixture(scope="module")
def prepared_serial(synthetic, tmp_path_factory) -> tuple[PrepareReport, Path]:
    out = tmp_path_factory.mktemp("serial")
    report = prepare_dataset(SPEC, synthetic[0], out, OPTS, n_jobs=1, progress=False)
    return report, out


def test_invariant_and_report_json(synthetic, prepared_serial) -> None:
    _, expected = synthetic
    report, out = prepared_serial
    n_bad = sum(v is not None for v in expected.values())
    assert report.n_input == len(expected)
    assert (report.n_valid, report.n_quarantined) == (len(expected) - n_bad, n_bad)
    assert report.n_input == report.n_valid + report.n_quarantined
    on_disk = json.loads((out / "report.json").read_text())
    assert set(on_disk) == {"dataset", "n_input", "n_valid", "n_quarantined", "reasons", "seconds"}
    assert on_disk["dataset"] == "toy" and on_disk["n_input"] == report.n_input
    assert sum(on_disk["reasons"].values()) == report.n_quarantined
    assert on_disk["reasons"][Reason.DUPLICATE_ID.value] == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "quarantine.csv",
        "report.json",
        "valid.parquet",
    ]  # no temp files left behind


def test_quarantine_has_the_right_reason_per_row(synthetic, prepared_serial) -> None:
    _, expected = synthetic
    _, out = prepared_serial
    q = load_quarantine(out)
    assert list(q.columns) == ["row", "id", "reason", "detail"]
    got = dict(zip(q["row"].tolist(), q["reason"].tolist(), strict=True))
    assert got == {r: reason for r, reason in expected.items() if reason is not None}
    assert (q["detail"].str.len() > 0).all()
    dup = q[q["reason"] == Reason.DUPLICATE_ID.value].iloc[0]
    assert dup["id"] == "good-nacl" and "row 0" in dup["detail"]


def test_valid_parquet_schema_and_round_trip(prepared_serial) -> None:
    _, out = prepared_serial
    schema = pq.read_schema(out / "valid.parquet")
    assert schema.names == [
        "id",
        "formula",
        "spacegroup",
        "n_sites",
        "lattice",
        "numbers",
        "frac_coords",
        "kappa",
        "e_form",
    ]
    for name, value_type in [("lattice", pa.float64()), ("numbers", pa.int64())]:
        assert pa.types.is_list(schema.field(name).type)
        assert schema.field(name).type.value_type == value_type
    df = load_prepared(out)
    goods = {g.row["id"]: g for g in good_cases()}
    assert df["id"].tolist() == list(goods)  # input order, first of the duplicate ids kept
    assert df["kappa"].tolist() == [float(g.row["kappa_wmk"]) for g in goods.values()]
    assert df["formula"].tolist() == [g.formula for g in goods.values()]
    assert df["spacegroup"].tolist() == [g.spacegroup for g in goods.values()]
    assert math.isnan(df.set_index("id").loc["good-zno", "e_form"])
    for crystal, g, n in zip(crystals_from_frame(df), goods.values(), df["n_sites"], strict=True):
        ref = parse_cif(g.row["cif"])
        np.testing.assert_array_equal(crystal.lattice, ref.lattice)
        np.testing.assert_array_equal(crystal.numbers, ref.numbers)
        np.testing.assert_array_equal(crystal.frac_coords, ref.frac_coords)
        assert n == ref.n_sites
        assert isinstance(crystal.to_structure(), Structure)


def test_parallel_equals_serial(synthetic, prepared_serial, tmp_path: Path) -> None:
    _, out1 = prepared_serial
    report = prepare_dataset(
        SPEC, synthetic[0], tmp_path, OPTS, n_jobs=2, progress=False, chunk_size=4
    )
    assert report.n_quarantined == prepared_serial[0].n_quarantined
    pd.testing.assert_frame_equal(load_prepared(tmp_path), load_prepared(out1))
    pd.testing.assert_frame_equal(load_quarantine(tmp_path), load_quarantine(out1))


def test_composition_dataset_keeps_na_strings(tmp_path: Path) -> None:
    raw = tmp_path / "comp.csv.gz"
    pd.DataFrame(
        {
            "id": ["c1", "c2", "c3", "c4", "NA"],
            "formula": ["NaN", "NA", "Fe2O3", "Fe2O3", "Si"],
            "e_form": ["-0.5", "1.0", "NA", "-1.2", "0"],
        }
    ).to_csv(raw, index=False)
    report = prepare_dataset(COMPOSITION_SPEC, raw, tmp_path / "out", n_jobs=1, progress=False)
    assert (report.n_valid, report.n_quarantined) == (3, 2)
    assert report.reasons == {"formula_unparseable": 1, "target_missing": 1}
    df = load_prepared(tmp_path / "out")
    assert df["id"].tolist() == ["c1", "c4", "NA"]  # the id "NA" is an id, not a missing value
    assert df["formula"].tolist() == ["NaN", "Fe2O3", "Si"]  # sodium nitride survives
    assert df["spacegroup"].tolist() == [-1, -1, -1]
    assert df["lattice"].isna().all() and df["n_sites"].isna().all()
    with pytest.raises(ValueError, match="no structure"):
        crystals_from_frame(df)


def test_missing_column_and_file_are_config_errors(tmp_path: Path) -> None:
    raw = write_table(tmp_path / "t.csv.gz", [row()])
    spec = DatasetSpec(
        "bad",
        "t.csv.gz",
        "structure",
        "id",
        "formula",
        "cif",
        targets=(TargetSpec("k", "kappa_300k", "W/m/K"),),
    )
    with pytest.raises(KeyError, match="kappa_300k"):
        prepare_dataset(spec, raw, tmp_path / "o", n_jobs=1, progress=False)
    with pytest.raises(FileNotFoundError):
        prepare_dataset(SPEC, tmp_path / "nope.csv.gz", tmp_path / "o", n_jobs=1, progress=False)


def test_load_prepared_without_prepare(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run prepare"):
        load_prepared(tmp_path)


@pytest.mark.data
def test_real_paraisite_dataset1(real_data_root: Path, tmp_path: Path) -> None:
    """The 95-row ParAIsite Dataset1: all rows valid; fast parser == pymatgen on every CIF."""
    raw = real_data_root / "ltc" / "paraisite_dataset1.csv.gz"
    spec = DatasetSpec(
        "paraisite_d1",
        "ltc/paraisite_dataset1.csv.gz",
        "structure",
        "id",
        "formula",
        "cif",
        targets=(TargetSpec("kappa", "kappa_wmk", "W/m/K", transform="log10", positive=True),),
    )
    report = prepare_dataset(spec, raw, tmp_path, n_jobs=2, progress=False)
    assert report.n_input == 95
    assert report.n_input == report.n_valid + report.n_quarantined
    assert report.n_valid == 95, report.reasons
    table = pd.read_csv(raw, dtype=str, keep_default_na=False)
    for text in table["cif"]:
        ours = parse_cif(text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = Structure.from_str(text, fmt="cif")
        np.testing.assert_array_equal(ours.lattice, ref.lattice.matrix)
        ref_z = np.array([site.specie.Z for site in ref])
        o1 = np.lexsort((*ours.frac_coords.T[::-1], ours.numbers))
        o2 = np.lexsort((*ref.frac_coords.T[::-1], ref_z))
        np.testing.assert_array_equal(ours.numbers[o1], ref_z[o2])
        np.testing.assert_array_equal(ours.frac_coords[o1], ref.frac_coords[o2])
    df = load_prepared(tmp_path)
    assert (df["kappa"] > 0).all() and df["id"].is_unique
    # rocksalt, zincblende (CuBr: I-4m2), wurtzite at symprec 0.1 Å
    assert set(df["spacegroup"]) == {119, 186, 216, 225}


def test_invariant_violation_raises(synthetic, tmp_path: Path, monkeypatch) -> None:
    import kappaflow.data.prepare as prep

    real = prep._validate_chunk

    def lossy(*args, **kwargs):
        start, good, bad = real(*args, **kwargs)
        return start, good[:-1], bad  # lose a valid row

    monkeypatch.setattr(prep, "_validate_chunk", lossy)
    with pytest.raises(RuntimeError, match="input rows"):
        prepare_dataset(SPEC, synthetic[0], tmp_path, OPTS, n_jobs=1, progress=False)
    assert not (tmp_path / "report.json").exists()


def test_summary_is_logged(synthetic, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="kappaflow.data.prepare"):
        report = prepare_dataset(SPEC, synthetic[0], tmp_path, OPTS, n_jobs=1, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "kappaflow.data.prepare"]
    assert len(lines) == 1
    assert f"{report.n_valid} valid, {report.n_quarantined} quarantined" in lines[0]


HOSTILE = [c for c in CASES if c.name in {
    "cell_length_1e30", "cell_length_1e8", "cif_text_too_large", "frac_1e30", "two_data_blocks",
    "coplanar_119p99", "1p2_angstrom_cube", "20_angstrom_cube_2_atoms", "slab_30A_vacuum",
}]  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.name)
def test_good_rows_plus_one_hostile_row_write_a_full_report(case, tmp_path: Path) -> None:
    goods = [g.row for g in good_cases()]
    raw = write_table(tmp_path / "toy.csv.gz", [*goods, case.row])
    report = prepare_dataset(SPEC, raw, tmp_path / "out", OPTS, n_jobs=1, progress=False)
    assert report.n_input == report.n_valid + report.n_quarantined == len(goods) + 1
    assert report.n_valid == len(goods) and report.reasons == {case.reason.value: 1}
    assert json.loads((tmp_path / "out/report.json").read_text())["n_input"] == len(goods) + 1


def test_parse_timeout_in_pool_workers(tmp_path: Path) -> None:
    """A slow symmetrised CIF is stopped in its worker (forked child) and quarantined."""
    from dataclasses import replace

    from hostile_inputs import fm3m_general_positions

    goods = [g.row for g in good_cases()]
    slow = row("slow-fm3m", formula="Na", cif=fm3m_general_positions(300))
    raw = write_table(tmp_path / "toy.csv.gz", [*goods, slow])
    opts = replace(OPTS, max_sites=None, parse_timeout=1.0)
    report = prepare_dataset(SPEC, raw, tmp_path / "out", opts, n_jobs=2, progress=False,
                             chunk_size=2)  # fmt: skip
    assert report.n_input == report.n_valid + report.n_quarantined
    assert report.reasons == {Reason.PARSE_TIMEOUT.value: 1}


def test_max_rows_prepares_a_seeded_sample_and_keeps_raw_row_numbers(synthetic, tmp_path):
    """`datasets.<name>.max_rows` (the smoke experiment): a sample, reported, raw rows kept."""
    import dataclasses

    from kappaflow.data.prepare import sample_rows

    path, expected = synthetic
    n = len(expected)
    spec = dataclasses.replace(SPEC, max_rows=n // 2)
    report = prepare_dataset(spec, path, tmp_path / "a", OPTS, n_jobs=1, progress=False)
    prepare_dataset(spec, path, tmp_path / "b", OPTS, n_jobs=1, progress=False)
    assert report.n_input == n // 2 == report.n_valid + report.n_quarantined
    picked = sample_rows(n, n // 2)
    assert len(picked) == n // 2 and (np.diff(picked) > 0).all()
    q = load_quarantine(tmp_path / "a")
    assert set(q["row"]) <= set(picked.tolist())  # raw-table row numbers, not sample positions
    for r, reason in zip(q["row"], q["reason"], strict=True):
        dup = Reason.DUPLICATE_ID.value  # the first copy of a duplicate may be unsampled
        if dup not in (reason, expected[int(r)]):
            assert expected[int(r)] == reason
    saved = json.loads((tmp_path / "a" / "report.json").read_text())
    assert saved["n_raw"] == n and saved["max_rows"] == n // 2
    assert (tmp_path / "a" / "valid.parquet").read_bytes() == (
        tmp_path / "b" / "valid.parquet"
    ).read_bytes()  # seeded: the same sample every time
    assert sample_rows(n, None).tolist() == list(range(n)) == sample_rows(n, n + 1).tolist()
    full = prepare_dataset(SPEC, path, tmp_path / "c", OPTS, n_jobs=1, progress=False)
    assert "n_raw" not in json.loads((tmp_path / "c" / "report.json").read_text())
    assert full.n_input == n
