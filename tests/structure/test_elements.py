from __future__ import annotations

import pytest
import torch

from kappaflow.structure.elements import MAX_Z, SUPPORTED_Z, element_feature_table

N_BLOCKS = 10  # one-hot blocks in the "cgcnn" table


def test_shape_and_finite() -> None:
    table = element_feature_table("cgcnn")
    assert table.dtype == torch.float32
    assert table.shape[0] == MAX_Z + 1 and table.shape[1] > 50
    assert torch.isfinite(table).all()
    assert torch.all(table[0] == 0)
    assert list(SUPPORTED_Z) == list(range(1, MAX_Z + 1))


def test_one_hot_per_block() -> None:
    table = element_feature_table("cgcnn")
    assert set(table[1:].unique().tolist()) == {0.0, 1.0}
    assert torch.all(table[1:].sum(dim=1) == N_BLOCKS)


def test_distinct_rows() -> None:
    table = element_feature_table("cgcnn")
    rows = {tuple(table[z].tolist()) for z in SUPPORTED_Z}
    assert len(rows) == MAX_Z


def test_chemically_similar_share_blocks() -> None:
    table = element_feature_table("cgcnn")
    na, k, cl = table[11], table[19], table[17]
    # alkali metals overlap more with each other than with a halogen
    assert (na * k).sum() > (na * cl).sum()


def test_returns_copy() -> None:
    a = element_feature_table()
    a[1].fill_(123.0)
    assert element_feature_table()[1].max() == 1.0


def test_onehot_kind_and_unknown_kind() -> None:
    oh = element_feature_table("onehot")
    assert oh.shape == (MAX_Z + 1, MAX_Z)
    assert torch.equal(oh[1:], torch.eye(MAX_Z))
    with pytest.raises(ValueError):
        element_feature_table("magpie")
