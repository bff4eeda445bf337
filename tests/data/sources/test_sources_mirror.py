from __future__ import annotations

import gzip
import hashlib
import json

import pandas as pd
import pytest
from omegaconf import OmegaConf
from pymatgen.io.cif import CifWriter

from kappaflow.cards import DatasetSpec, TargetSpec, spec_from_cfg
from kappaflow.data.sources import ChecksumMismatchError, fetch
from kappaflow.layout import DATA_ENV_VAR, project_root

REL = "ltc/tiny.csv.gz"


@pytest.fixture()
def root(tmp_path, structs):
    """A data root with one gzip CSV (multi-line CIF cells, extra column) and a MANIFEST."""
    root = tmp_path / "data"
    (root / "ltc").mkdir(parents=True)
    df = pd.DataFrame(
        {
            "id": ["m-1", "m-2", "m-3"],
            "formula": list(structs),
            "cif": [str(CifWriter(s)) for s in structs.values()],
            "kappa_wmk": [7.1, 153.0, 45.0],
            "source": ["x", "y", "z"],
        }
    )
    # gzip with a non-zero mtime: the mirror must copy bytes, not re-encode
    payload = gzip.compress(df.to_csv(index=False).encode(), mtime=123456)
    (root / REL).write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    manifest = {REL: {"bytes": len(payload), "rows": 3, "sha256": sha}}
    (root / "MANIFEST.json").write_text(json.dumps(manifest))
    return root


def _sha(root) -> str:
    return json.loads((root / "MANIFEST.json").read_text())[REL]["sha256"]


def test_mirror_copies_bytes_and_verifies(root, tmp_path, make_spec) -> None:
    spec = make_spec(sha256=_sha(root))
    dest = tmp_path / "raw" / "tiny.csv.gz"
    res = fetch(spec, dest, root)
    assert dest.read_bytes() == (root / REL).read_bytes()
    assert res.sha256 == _sha(root) and res.n_rows == 3 and res.path == dest
    assert res.source == f"mirror:{root / REL}"
    assert [p.name for p in dest.parent.iterdir()] == ["tiny.csv.gz"]


def test_mirror_counts_rows_without_manifest(root, tmp_path, make_spec) -> None:
    (root / "MANIFEST.json").unlink()
    res = fetch(make_spec(), tmp_path / "o.csv.gz", root)
    assert res.n_rows == 3  # multi-line CIF cells are not counted as rows


def test_mirror_card_hash_mismatch_names_both_hashes(root, tmp_path, make_spec) -> None:
    wrong = "0" * 64
    dest = tmp_path / "o.csv.gz"
    with pytest.raises(ChecksumMismatchError) as err:
        fetch(make_spec(sha256=wrong), dest, root)
    assert wrong in str(err.value) and _sha(root) in str(err.value)
    assert "dataset card" in str(err.value)
    assert not dest.exists() and list(tmp_path.glob(".o.csv.gz*")) == []


def test_mirror_manifest_hash_mismatch(root, tmp_path, make_spec) -> None:
    good = _sha(root)
    (root / "MANIFEST.json").write_text(json.dumps({REL: {"sha256": "f" * 64, "rows": 3}}))
    with pytest.raises(ChecksumMismatchError) as err:
        fetch(make_spec(), tmp_path / "o.csv.gz", root)
    assert "f" * 64 in str(err.value) and good in str(err.value)
    assert "MANIFEST.json" in str(err.value)


def test_mirror_missing_file_says_how_to_configure(tmp_path, make_spec) -> None:
    with pytest.raises(FileNotFoundError) as err:
        fetch(make_spec(), tmp_path / "o.csv.gz", tmp_path / "nowhere")
    msg = str(err.value)
    assert DATA_ENV_VAR in msg and "paths.data_root" in msg and REL in msg


def test_mirror_missing_column_is_an_error(root, tmp_path, make_spec) -> None:
    spec = make_spec(targets=(("kappa", "kappa_other"),))
    dest = tmp_path / "o.csv.gz"
    with pytest.raises(ValueError, match="kappa_other"):
        fetch(spec, dest, root)
    assert not dest.exists()


def test_mirror_rejects_options(root, tmp_path, make_spec) -> None:
    with pytest.raises(ValueError, match="does not accept"):
        fetch(make_spec(options={"url": "x"}), tmp_path / "o.csv.gz", root)


@pytest.mark.data
def test_mirror_real_paraisite_dataset1(real_data_root, tmp_path) -> None:
    rel = "ltc/paraisite_dataset1.csv.gz"
    entry = json.loads((real_data_root / "MANIFEST.json").read_text())[rel]
    spec = DatasetSpec(
        name="paraisite_d1",
        path=rel,
        kind="structure",
        id_col="id",
        formula_col="formula",
        cif_col="cif",
        targets=(TargetSpec("kappa", "kappa_wmk", "W/m/K", "log10", positive=True),),
        sha256=entry["sha256"],
    )
    res = fetch(spec, tmp_path / "d1.csv.gz", real_data_root)
    assert res.n_rows == entry["rows"] == 95
    assert res.sha256 == entry["sha256"]


CARDS = sorted((project_root() / "conf" / "data").glob("*.yaml"))


@pytest.mark.data
@pytest.mark.parametrize("card", CARDS, ids=[c.stem for c in CARDS])
def test_every_repo_card_ingests_from_the_mirror(card, real_data_root, tmp_path) -> None:
    """Each dataset card (mirror or downloader kind) is served offline by the curated mirror."""
    spec = spec_from_cfg(OmegaConf.load(card), card.stem)
    entry = json.loads((real_data_root / "MANIFEST.json").read_text())[spec.path]
    res = fetch(spec, tmp_path / f"{spec.name}.csv.gz", real_data_root, progress=False)
    assert res.source.startswith("mirror:")
    assert res.sha256 == entry["sha256"] and res.n_rows == entry["rows"]
