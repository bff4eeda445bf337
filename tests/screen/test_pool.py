"""Screening pool: dedup by formula + space group, sampling, user files, streaming order."""

from __future__ import annotations

import pytest
import registry_testkit as kit

DS = "paraisite_d1"


@pytest.fixture()
def pool_project(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    root.mkdir()
    cfg = kit.make_project(root, DS)  # 6 distinct materials
    rows = kit.training_structures()
    other = [("s-nacl", rows[0][1], 1.0), ("s-mgo", rows[2][1], 1.0), ("s-si", kit.silicon(), 1.0)]
    kit.write_prepared(root, "scan_pool", kit.prepared_table(other))
    cfg.screen.datasets = [DS, "scan_pool"]
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "nacl.cif").write_text(kit.cif(kit.nacl()))
    kit.silicon().to(filename=str(user / "sub" / "POSCAR"))
    (user / "broken.cif").write_text("data_x\n_cell_length_a 4.0\n")
    (user / "notes.txt").write_text("not a structure")
    monkeypatch.chdir(root)
    return root, cfg, user


def test_dedup_keeps_first_occurrence_and_counts(pool_project):
    from kappaflow.screen.pool import load_pool

    _, cfg, _ = pool_project
    pool = load_pool(cfg)
    assert pool.n_input == 9 and pool.n_duplicates == 2 and pool.n_total == 7
    idx = pool.index.set_index("id")
    assert "s-nacl" not in idx.index and "s-mgo" not in idx.index  # same formula + space group
    assert idx.loc["t-nacl", "n_duplicates"] == 1 and idx.loc["s-si", "dataset"] == "scan_pool"
    assert pool.per_dataset == {DS: {"read": 6, "kept": 6}, "scan_pool": {"read": 3, "kept": 1}}


def test_user_files_are_never_dropped_and_bad_ones_become_errors(pool_project):
    from kappaflow.screen.pool import iter_items, load_pool

    _, cfg, user = pool_project
    pool = load_pool(cfg, [str(user)])
    assert pool.n_total == 7 + 3  # notes.txt is not a structure file
    items = list(iter_items(pool, kit.CUTOFF))
    assert [it.id for it in items] == pool.index["id"].tolist()  # streaming order = index order
    by_id = {it.id: it for it in items}
    assert by_id["mine/nacl.cif"].formula == "NaCl" and not by_id["mine/nacl.cif"].error
    assert by_id["mine/nacl.cif"].spacegroup == 225 and by_id["t-mgo"].spacegroup == 225
    assert by_id["mine/sub/POSCAR"].formula == "Si"
    assert by_id["mine/broken.cif"].crystal is None
    assert by_id["mine/broken.cif"].error.startswith("malformed_cif")


def test_max_structures_samples_the_prepared_rows_only(pool_project):
    from kappaflow.screen.pool import load_pool

    _, cfg, user = pool_project
    cfg.screen.max_structures = 3
    pool = load_pool(cfg, [str(user)])
    assert pool.n_not_sampled == 4 and pool.n_total == 3 + 3
    assert pool.n_input == pool.n_duplicates + pool.n_not_sampled + pool.n_total
    again = load_pool(cfg, [str(user)])
    assert again.index["id"].tolist() == pool.index["id"].tolist()  # seeded


def test_missing_directory_is_a_clear_error(pool_project):
    from kappaflow.screen.pool import load_pool

    _, cfg, user = pool_project
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_pool(cfg, [str(user / "nope")])
