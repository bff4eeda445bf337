from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kappaflow.data.splits import (
    EXCLUDED,
    ROLES,
    SPLIT_COLUMNS,
    Fold,
    LeakageError,
    assert_no_leakage,
    folds_from_table,
    grouped_kfold,
    inner_validation_split,
    labels_from_table,
    load_splits,
    save_splits,
    splits_table,
    train_val_test_split,
)

# random datasets: 1..40 distinct group labels with repeats, 3..120 rows
group_lists = st.lists(st.integers(0, 39).map(lambda i: f"g{i:02d}"), min_size=3, max_size=120)


def sides(labels: np.ndarray, groups: np.ndarray) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for g, lab in zip(groups, labels, strict=True):
        out.setdefault(g, set()).add(lab)
    return out


@settings(max_examples=60, deadline=None)
@given(groups=group_lists, seed=st.integers(0, 2**31 - 1))
def test_train_val_test_properties(groups: list[str], seed: int) -> None:
    arr = np.asarray(groups)
    assume(len(set(groups)) >= 3)
    labels = train_val_test_split(arr, (0.7, 0.15, 0.15), seed)
    assert labels.shape == arr.shape
    assert set(labels) == {"train", "val", "test"}  # every non-zero part is filled
    assert all(len(s) == 1 for s in sides(labels, arr).values())
    np.testing.assert_array_equal(labels, train_val_test_split(arr, (0.7, 0.15, 0.15), seed))
    # row order does not matter: the group -> label mapping is the same
    perm = np.random.default_rng(0).permutation(len(arr))
    shuffled = train_val_test_split(arr[perm], (0.7, 0.15, 0.15), seed)
    np.testing.assert_array_equal(shuffled, labels[perm])


@settings(max_examples=60, deadline=None)
@given(
    groups=group_lists,
    seed=st.integers(0, 2**31 - 1),
    n_splits=st.integers(2, 5),
    n_repeats=st.integers(1, 3),
)
def test_grouped_kfold_properties(
    groups: list[str], seed: int, n_splits: int, n_repeats: int
) -> None:
    arr = np.asarray(groups)
    assume(len(set(groups)) >= n_splits)
    folds = grouped_kfold(arr, n_splits, n_repeats, seed)
    assert [(f.repeat, f.fold) for f in folds] == [
        (r, k) for r in range(n_repeats) for k in range(n_splits)
    ]
    rows = np.arange(len(arr))
    for r in range(n_repeats):
        rep = [f for f in folds if f.repeat == r]
        tests = np.concatenate([f.test_idx for f in rep])
        np.testing.assert_array_equal(np.sort(tests), rows)  # test folds partition the rows
        for f in rep:
            assert len(f.test_idx) > 0
            assert not set(arr[f.train_idx]) & set(arr[f.test_idx])
            np.testing.assert_array_equal(np.union1d(f.train_idx, f.test_idx), rows)
    again = grouped_kfold(arr, n_splits, n_repeats, seed)
    for f, g in zip(folds, again, strict=True):
        np.testing.assert_array_equal(f.test_idx, g.test_idx)
        np.testing.assert_array_equal(f.train_idx, g.train_idx)


def test_different_seeds_usually_differ() -> None:
    groups = np.asarray([f"g{i % 50}" for i in range(200)])
    a = train_val_test_split(groups, seed=1)
    distinct = sum(
        not np.array_equal(a, train_val_test_split(groups, seed=s)) for s in range(2, 12)
    )
    assert distinct >= 9
    f1 = grouped_kfold(groups, 5, 1, seed=1)
    f2 = grouped_kfold(groups, 5, 1, seed=2)
    assert any(not np.array_equal(x.test_idx, y.test_idx) for x, y in zip(f1, f2, strict=True))
    # repeats reshuffle
    f = grouped_kfold(groups, 5, 2, seed=1)
    assert any(not np.array_equal(f[k].test_idx, f[5 + k].test_idx) for k in range(5))


def test_kfold_row_order_invariant() -> None:
    groups = np.asarray([f"g{i % 17}" for i in range(60)])
    perm = np.random.default_rng(3).permutation(len(groups))
    for f, g in zip(
        grouped_kfold(groups, 4, 2, 5), grouped_kfold(groups[perm], 4, 2, 5), strict=True
    ):
        assert set(groups[f.test_idx]) == set(groups[perm][g.test_idx])


def test_fractions_realized_on_rows() -> None:
    groups = np.asarray([f"g{i}" for i in range(1000)])
    labels = train_val_test_split(groups, (0.8, 0.1, 0.1), seed=0)
    counts = pd.Series(labels).value_counts()
    assert counts["train"] == 800 and counts["val"] == 100 and counts["test"] == 100
    labels = train_val_test_split(groups, (0.9, 0.0, 0.1), seed=0)
    assert set(labels) == {"train", "test"}


def test_split_input_errors() -> None:
    with pytest.raises(ValueError, match="fractions"):
        train_val_test_split(["a", "b", "c"], (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="group"):
        train_val_test_split(["a", "a", "b"], (0.8, 0.1, 0.1))
    with pytest.raises(ValueError, match="empty"):
        train_val_test_split([])
    with pytest.raises(ValueError, match="missing"):
        train_val_test_split(["a", None, "b"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="exceeds"):
        grouped_kfold(["a", "a", "b"], n_splits=3)
    with pytest.raises(ValueError, match="forbidden"):
        train_val_test_split(["a", "b"], forbidden_groups=["a", "b"])


def test_forbidden_groups() -> None:
    groups = np.asarray([f"g{i % 30}" for i in range(90)])
    forbidden = {"g3", "g7", "g11"}
    labels = train_val_test_split(groups, seed=4, forbidden_groups=forbidden)
    is_forbidden = np.isin(groups, list(forbidden))
    assert set(labels[is_forbidden]) == {EXCLUDED}
    assert EXCLUDED not in set(labels[~is_forbidden])
    folds = grouped_kfold(groups, 5, 2, seed=4, forbidden_groups=forbidden)
    for f in folds:
        assert not set(groups[f.train_idx]) & forbidden
    for r in range(2):  # forbidden rows still get tested
        tested = np.concatenate([f.test_idx for f in folds if f.repeat == r])
        assert set(groups[tested]) >= forbidden


def test_inner_validation_split() -> None:
    groups = np.asarray([f"g{i % 40}" for i in range(120)])
    fold = grouped_kfold(groups, 5, 1, seed=0)[0]
    inner, val = inner_validation_split(fold.train_idx, groups, 0.2, seed=1)
    np.testing.assert_array_equal(np.union1d(inner, val), fold.train_idx)
    assert not set(groups[inner]) & set(groups[val])
    assert 0.1 < len(val) / len(fold.train_idx) < 0.3
    with pytest.raises(ValueError):
        inner_validation_split(fold.train_idx, groups, 1.0)
    with pytest.raises(IndexError):
        inner_validation_split([0, 500], groups, 0.2)
    folds = grouped_kfold(groups, 5, 2, seed=0, val_fraction=0.2)
    for f in folds:
        assert f.val_idx is not None and len(f.val_idx)
        parts = [set(groups[f.train_idx]), set(groups[f.val_idx]), set(groups[f.test_idx])]
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
        all_rows = np.concatenate([f.train_idx, f.val_idx, f.test_idx])
        np.testing.assert_array_equal(np.sort(all_rows), np.arange(len(groups)))


def test_assert_no_leakage() -> None:
    assert_no_leakage(["a", "b"], ["c"])
    with pytest.raises(LeakageError, match="2 material key.*'a', 'b'") as info:
        assert_no_leakage(["b", "a", "x"], ["a", "b", "c"], context="pretrain vs test")
    assert info.value.keys == ["a", "b"]
    assert "pretrain vs test" in str(info.value)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".csv.gz"])
def test_save_load_roundtrip_folds(tmp_path: Path, suffix: str) -> None:
    groups = np.asarray([f"g{i % 12}" for i in range(40)])
    ids = np.asarray([f"mp-{i}" for i in range(40)])
    ids[5] = "NaN"  # must survive CSV NA parsing
    folds = grouped_kfold(groups, 4, 2, seed=9, forbidden_groups=["g1"], val_fraction=0.2)
    path = save_splits(tmp_path / "sub" / f"splits{suffix}", ids, folds=folds)
    table = load_splits(path)
    assert list(table.columns) == SPLIT_COLUMNS
    assert set(table["role"]) <= set(ROLES)
    assert len(table) == 40 * 8
    # the caller's row order may differ: indices follow the given ids
    perm = np.random.default_rng(0).permutation(40)
    back = folds_from_table(table, ids[perm])
    for f, b in zip(folds, back, strict=True):
        assert (f.repeat, f.fold) == (b.repeat, b.fold)
        assert set(ids[f.test_idx]) == set(ids[perm][b.test_idx])
        assert set(ids[f.train_idx]) == set(ids[perm][b.train_idx])
        assert set(ids[f.val_idx]) == set(ids[perm][b.val_idx])


def test_save_load_labels(tmp_path: Path) -> None:
    groups = [f"g{i % 7}" for i in range(21)]
    ids = [f"id{i}" for i in range(21)]
    labels = train_val_test_split(groups, seed=2)
    path = save_splits(tmp_path / "split.parquet", ids, labels=labels)
    table = load_splits(path)
    np.testing.assert_array_equal(labels_from_table(table, ids), labels)
    np.testing.assert_array_equal(labels_from_table(table, ids[::-1]), labels[::-1])
    with pytest.raises(KeyError, match="absent"):
        labels_from_table(table, ["nope"])
    with pytest.raises(KeyError, match="repeat"):
        labels_from_table(table, ids, repeat=3)


def test_save_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicated"):
        splits_table(["a", "a"], labels=["train", "test"])
    with pytest.raises(ValueError, match="exactly one"):
        splits_table(["a"])
    with pytest.raises(ValueError, match="unknown role"):
        splits_table(["a", "b"], labels=["train", "holdout"])
    with pytest.raises(ValueError, match="unsupported"):
        save_splits(tmp_path / "x.json", ["a"], labels=["train"])
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"id": ["a"], "repeat": [0], "fold": [0], "role": ["bogus"]}).to_csv(
        bad, index=False
    )
    with pytest.raises(ValueError, match="unknown role"):
        load_splits(bad)
    assert not list(tmp_path.glob(".*tmp"))


def test_fold_roles() -> None:
    f = Fold(0, 1, np.array([0, 2]), np.array([3]), np.array([1]))
    assert f.roles(5).tolist() == ["train", "val", "train", "test", "excluded"]
