"""Batch computation: per-structure content-keyed cache, reasons kept, order kept."""

from __future__ import annotations

import json

import numpy as np

from crystal_fixtures import diamond_si, rocksalt_nacl
from kappaflow.phonons.batch import cache_key, compute_descriptors
from kappaflow.phonons.descriptors import DESCRIPTOR_COLUMNS, PhononSettings
from kappaflow.structure.crystal import CrystalArrays

SETTINGS = PhononSettings(mesh=4, relax=False, max_supercell_atoms=64)


def _crystals() -> list[CrystalArrays]:
    big = rocksalt_nacl() * (3, 1, 1)  # 24 atoms, 16.9 x 5.6 x 5.6 Å -> 1x2x2 supercell: 96 atoms
    return [CrystalArrays.from_structure(s) for s in (diamond_si(), big, rocksalt_nacl())]


def test_reasons_cache_and_order(tmp_path):
    crystals = _crystals()
    # The middle one: 96 supercell atoms > 64 -> refused with a reason, row kept.
    settings = SETTINGS
    first = compute_descriptors(
        ["si", "big", "nacl"], crystals, settings, "sevennet-0", tmp_path, workers=1, progress=False
    )
    assert first.id.tolist() == ["si", "big", "nacl"]
    assert not first.cached.any()
    assert first.loc[1, "reason"].startswith("supercell of")
    assert first.loc[1, list(DESCRIPTOR_COLUMNS)].isna().all()
    assert (first.loc[[0, 2], "reason"] == "").all()
    assert np.isfinite(first.loc[[0, 2], list(DESCRIPTOR_COLUMNS)].to_numpy()).all()
    assert len(list(tmp_path.glob("*.json"))) == 3  # the refusal is deterministic: cached too

    again = compute_descriptors(
        ["si", "big", "nacl"], crystals, settings, "sevennet-0", tmp_path, workers=1, progress=False
    )
    assert again.cached.all()
    cols = list(DESCRIPTOR_COLUMNS)
    np.testing.assert_array_equal(again[cols].to_numpy(), first[cols].to_numpy())
    assert again.reason.tolist() == first.reason.tolist()


def test_key_changes_with_structure_and_settings():
    si = CrystalArrays.from_structure(diamond_si())
    strained = CrystalArrays.from_structure(diamond_si().copy().scale_lattice(161.0))
    k = cache_key(si, SETTINGS, "sevennet-0")
    assert k == cache_key(si, SETTINGS, "sevennet-0")
    assert k != cache_key(strained, SETTINGS, "sevennet-0")
    assert k != cache_key(si, PhononSettings(mesh=5, relax=False), "sevennet-0")
    assert k != cache_key(si, SETTINGS, "sevennet-l3i5")


def test_unexpected_error_is_a_reason_and_not_cached(tmp_path, monkeypatch):
    import kappaflow.phonons.batch as batch

    def boom(*_a, **_k):
        raise MemoryError("simulated")

    monkeypatch.setattr(batch, "phonon_descriptors", boom)
    out = compute_descriptors(
        ["si"],
        [CrystalArrays.from_structure(diamond_si())],
        SETTINGS,
        "sevennet-0",
        tmp_path,
        workers=1,
        progress=False,
    )
    assert out.loc[0, "reason"] == "unexpected MemoryError: simulated"
    assert not list(tmp_path.glob("*.json"))  # retried next time


def test_cached_record_is_plain_json(tmp_path):
    compute_descriptors(
        ["nacl"],
        [CrystalArrays.from_structure(rocksalt_nacl())],
        SETTINGS,
        "sevennet-0",
        tmp_path,
        workers=1,
        progress=False,
    )
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert set(record) == {"values", "flags", "reason", "n_primitive", "seconds"}
    assert set(record["values"]) == set(DESCRIPTOR_COLUMNS)
