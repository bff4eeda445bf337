"""Deterministic, seeded, grouped-by-material data splits, stored as data.

Rows are grouped by a material key (see :mod:`kappaflow.data.leakage`); a group is never on two
sides of a split. All assignments are made on the *sorted* unique group keys, so a given seed maps
each group to the same side regardless of the row order of the input.

Groups listed as ``forbidden_groups`` (e.g. materials in another dataset's test fold) never reach a
training (or validation) role: in :func:`train_val_test_split` they get the role ``"excluded"``; in
:func:`grouped_kfold` they are removed from every fold's training part but stay in their test fold.

On disk a split is a long table ``id, repeat, fold, role`` (parquet or CSV), one row per
(repeat, fold, id); a single train/val/test split is stored as repeat 0, fold 0.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

from kappaflow.io_utils import atomic_write

TRAIN, VAL, TEST, EXCLUDED = "train", "val", "test", "excluded"
ROLES: tuple[str, ...] = (TRAIN, VAL, TEST, EXCLUDED)
SPLIT_COLUMNS = ["id", "repeat", "fold", "role"]


class LeakageError(ValueError):
    """A material key is on both sides of a split.

    Attributes:
        keys: the offending material keys, sorted.
    """

    def __init__(self, keys: Sequence[str], context: str = "") -> None:
        self.keys = list(keys)
        shown = ", ".join(repr(k) for k in self.keys[:20])
        more = f" (+{len(self.keys) - 20} more)" if len(self.keys) > 20 else ""
        where = f" {context}" if context else ""
        super().__init__(
            f"{len(self.keys)} material key(s) on both sides of the split{where}: {shown}{more}"
        )


@dataclass(frozen=True, eq=False)
class Fold:
    """One fold of a (repeated) grouped k-fold split; indices are sorted row positions.

    Attributes:
        repeat: repeat number, 0-based.
        fold: fold number within the repeat, 0-based.
        train_idx: training rows (without ``val_idx`` and without forbidden groups).
        test_idx: held-out rows of this fold.
        val_idx: inner validation rows (early stopping) taken from the training part, or None.
    """

    repeat: int
    fold: int
    train_idx: np.ndarray
    test_idx: np.ndarray
    val_idx: np.ndarray | None = None

    def roles(self, n_rows: int) -> np.ndarray:
        """Return the role of every row: ``train``/``val``/``test``, ``excluded`` for the rest."""
        out = np.full(n_rows, EXCLUDED, dtype=object)
        out[self.train_idx] = TRAIN
        if self.val_idx is not None:
            out[self.val_idx] = VAL
        out[self.test_idx] = TEST
        return out


def _as_groups(groups: Sequence[str] | np.ndarray | pd.Series) -> np.ndarray:
    arr = np.asarray(groups, dtype=object)
    if arr.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {arr.shape}")
    if len(arr) == 0:
        raise ValueError("groups is empty")
    bad = [i for i, g in enumerate(arr) if g is None or (isinstance(g, float) and np.isnan(g))]
    if bad:
        raise ValueError(f"{len(bad)} missing group key(s), first rows {bad[:5]}")
    return arr.astype(str)


def _forbidden_mask(groups: np.ndarray, forbidden_groups: Iterable[str] | None) -> np.ndarray:
    if forbidden_groups is None:
        return np.zeros(len(groups), dtype=bool)
    return np.isin(groups, np.asarray(list(forbidden_groups), dtype=str))


def _derive_seed(seed: int, *path: int) -> int:
    """Derive a 32-bit seed from ``seed`` and a path (repeat, fold, ...) via ``SeedSequence``."""
    return int(np.random.SeedSequence([int(seed), *path]).generate_state(1)[0])


def _assign_parts(groups: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Assign every row to part 0..len(fractions)-1 by permuting the sorted unique groups.

    Groups are laid out in permuted order and cut where the cumulative row count crosses the
    fraction boundaries (a group goes to the part containing its midpoint). Every part with a
    positive fraction gets at least one group.
    """
    unique, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    fr = np.asarray(fractions, dtype=float)
    need = (fr > 0).astype(int)
    if len(unique) < need.sum():
        raise ValueError(
            f"{len(unique)} group(s) cannot fill {int(need.sum())} non-empty parts {tuple(fr)}"
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    sizes = counts[order]
    mid = (np.cumsum(sizes) - sizes / 2.0) / sizes.sum()
    bounds = np.cumsum(fr)[:-1]
    part_of_slot = np.searchsorted(bounds, mid, side="right")
    n_per_part = np.bincount(part_of_slot, minlength=len(fr))
    while np.any(n_per_part < need):  # move one group from the largest part to an empty one
        empty = int(np.flatnonzero(n_per_part < need)[0])
        n_per_part[int(np.argmax(n_per_part))] -= 1
        n_per_part[empty] += 1
    part_of_slot = np.repeat(np.arange(len(fr)), n_per_part)
    part_of_group = np.empty(len(unique), dtype=int)
    part_of_group[order] = part_of_slot
    return part_of_group[inverse]


def train_val_test_split(
    groups: Sequence[str] | np.ndarray | pd.Series,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    *,
    forbidden_groups: Collection[str] | None = None,
) -> np.ndarray:
    """Label every row ``train``/``val``/``test`` so that no group is on two sides.

    Args:
        groups: material key per row (e.g. reduced formula).
        fractions: target (train, val, test) fractions of the rows (not of groups); must be
            >= 0 and sum to 1. Realized fractions differ by at most about one group's size.
            Every part with a positive fraction receives at least one group.
        seed: random seed; the same seed gives the same group -> label mapping whatever the row
            order.
        forbidden_groups: groups that must not be trained or validated on; their rows get the
            label ``excluded`` and are left out of the fractions.

    Returns:
        Array of labels (``str``), one per row.
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0) or fr[0] <= 0:
        raise ValueError(
            f"fractions must be 3 non-negative numbers summing to 1 with train > 0, got {fractions}"
        )
    arr = _as_groups(groups)
    labels = np.full(len(arr), EXCLUDED, dtype=object)
    allowed = ~_forbidden_mask(arr, forbidden_groups)
    if not allowed.any():
        raise ValueError("every row belongs to a forbidden group")
    parts = _assign_parts(arr[allowed], fr, seed)
    labels[allowed] = np.asarray([TRAIN, VAL, TEST], dtype=object)[parts]
    return labels.astype(str)


def inner_validation_split(
    train_idx: np.ndarray | Sequence[int],
    groups: Sequence[str] | np.ndarray | pd.Series,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into an inner training part and a validation part (early stopping).

    Args:
        train_idx: row positions of the training part (into ``groups``).
        groups: material key of *every* row of the dataset.
        val_fraction: target fraction of the training rows to use for validation, in (0, 1).
        seed: random seed.

    Returns:
        ``(inner_train_idx, val_idx)``: sorted row positions, disjoint by group, whose union is
        ``train_idx``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    idx = np.unique(np.asarray(train_idx, dtype=np.int64))
    arr = _as_groups(groups)
    if len(idx) == 0:
        raise ValueError("train_idx is empty")
    if idx[0] < 0 or idx[-1] >= len(arr):
        raise IndexError(f"train_idx out of range for {len(arr)} rows")
    parts = _assign_parts(arr[idx], (1.0 - val_fraction, val_fraction), seed)
    return idx[parts == 0], idx[parts == 1]


def grouped_kfold(
    groups: Sequence[str] | np.ndarray | pd.Series,
    n_splits: int = 5,
    n_repeats: int = 3,
    seed: int = 0,
    *,
    forbidden_groups: Collection[str] | None = None,
    val_fraction: float | None = None,
) -> list[Fold]:
    """Repeated grouped k-fold: every row is in exactly one test fold per repeat.

    Uses scikit-learn ``GroupKFold(shuffle=True)`` (sklearn >= 1.6), which permutes the sorted
    unique groups and splits them into ``n_splits`` near-equal *group* counts; each repeat uses a
    seed derived from ``seed`` and the repeat number.

    Args:
        groups: material key per row.
        n_splits: folds per repeat (<= number of groups).
        n_repeats: independent reshuffles.
        seed: base random seed.
        forbidden_groups: groups never used for training/validation (kept in their test fold).
        val_fraction: if given, an inner validation part (grouped, see
            :func:`inner_validation_split`) is carved out of each fold's training rows into
            ``Fold.val_idx``; ``train_idx`` then excludes it.

    Returns:
        ``n_repeats * n_splits`` folds ordered by (repeat, fold).
    """
    if n_splits < 2 or n_repeats < 1:
        raise ValueError(f"need n_splits >= 2 and n_repeats >= 1, got {n_splits}, {n_repeats}")
    arr = _as_groups(groups)
    n_groups = len(np.unique(arr))
    if n_splits > n_groups:
        raise ValueError(f"n_splits={n_splits} exceeds the number of groups ({n_groups})")
    forbidden = _forbidden_mask(arr, forbidden_groups)
    rows = np.arange(len(arr))
    folds: list[Fold] = []
    for repeat in range(n_repeats):
        splitter = GroupKFold(n_splits, shuffle=True, random_state=_derive_seed(seed, repeat))
        for k, (_, test_idx) in enumerate(splitter.split(rows, groups=arr)):
            test_idx = np.sort(test_idx)
            train_idx = np.setdiff1d(rows, test_idx)
            train_idx = train_idx[~forbidden[train_idx]]
            val_idx = None
            if val_fraction is not None:
                train_idx, val_idx = inner_validation_split(
                    train_idx, arr, val_fraction, _derive_seed(seed, repeat, k)
                )
            folds.append(Fold(repeat, k, train_idx, test_idx, val_idx))
    return folds


def assert_no_leakage(
    train_groups: Iterable[str], test_groups: Iterable[str], context: str = ""
) -> None:
    """Raise :class:`LeakageError` if any material key occurs in both collections.

    Args:
        train_groups: keys of everything used for training (any stage).
        test_groups: keys of the held-out materials.
        context: optional text for the error message (e.g. ``"pretrain vs D2 fold 3"``).

    Raises:
        LeakageError: listing the shared keys (sorted).
    """
    shared = set(map(str, train_groups)) & set(map(str, test_groups))
    if shared:
        raise LeakageError(sorted(shared), context)


def _check_ids(ids: Sequence[str] | np.ndarray | pd.Series) -> np.ndarray:
    arr = np.asarray(ids, dtype=object).astype(str)
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
    dup = pd.Index(arr)[pd.Index(arr).duplicated()].unique()
    if len(dup):
        raise ValueError(f"{len(dup)} duplicated id(s), e.g. {list(dup[:5])}")
    return arr


def splits_table(
    ids: Sequence[str] | np.ndarray | pd.Series,
    labels: Sequence[str] | np.ndarray | None = None,
    folds: Sequence[Fold] | None = None,
) -> pd.DataFrame:
    """Build the long split table ``id, repeat, fold, role`` from labels or folds.

    Args:
        ids: unique row ids, aligned with the labels / fold indices.
        labels: per-row roles of a single split (stored as repeat 0, fold 0).
        folds: k-fold folds; rows in neither part of a fold get ``excluded``.

    Returns:
        DataFrame with :data:`SPLIT_COLUMNS`.
    """
    if (labels is None) == (folds is None):
        raise ValueError("give exactly one of labels or folds")
    arr = _check_ids(ids)
    if labels is not None:
        lab = np.asarray(labels, dtype=object).astype(str)
        if lab.shape != arr.shape:
            raise ValueError(f"{len(lab)} labels for {len(arr)} ids")
        parts = [(0, 0, lab)]
    else:
        assert folds is not None
        parts = [(f.repeat, f.fold, f.roles(len(arr))) for f in folds]
    unknown = set().union(*(set(p[2]) for p in parts)) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)}; allowed {ROLES}")
    return pd.DataFrame(
        {
            "id": np.concatenate([arr] * len(parts)),
            "repeat": np.concatenate([np.full(len(arr), r, dtype=np.int64) for r, _, _ in parts]),
            "fold": np.concatenate([np.full(len(arr), k, dtype=np.int64) for _, k, _ in parts]),
            "role": np.concatenate([p[2] for p in parts]).astype(str),
        }
    )


def save_splits(
    path: str | os.PathLike[str],
    ids: Sequence[str] | np.ndarray | pd.Series,
    labels: Sequence[str] | np.ndarray | None = None,
    folds: Sequence[Fold] | None = None,
) -> Path:
    """Write a split as a long table (``.parquet``, ``.csv`` or ``.csv.gz``), atomically.

    Args:
        path: output file; the format follows the suffix.
        ids: unique row ids.
        labels: per-row roles of a single train/val/test split, or
        folds: k-fold folds (exactly one of ``labels``/``folds``).

    Returns:
        The written path.
    """
    table = splits_table(ids, labels, folds)
    name = Path(path).name
    if not (name.endswith(".parquet") or name.endswith(".csv") or name.endswith(".csv.gz")):
        raise ValueError(f"unsupported split file type {name!r}; use .parquet, .csv or .csv.gz")

    def write(tmp: Path) -> None:
        if name.endswith(".parquet"):
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False, compression="gzip" if name.endswith(".gz") else None)

    return atomic_write(path, write)


def load_splits(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and validate a split table written by :func:`save_splits`.

    Args:
        path: ``.parquet``, ``.csv`` or ``.csv.gz`` file.

    Returns:
        DataFrame with :data:`SPLIT_COLUMNS` (``id`` and ``role`` str, ``repeat``/``fold`` int64).

    Raises:
        ValueError: missing columns, unknown roles or a duplicated (repeat, fold, id).
    """
    p = Path(path)
    if p.name.endswith(".parquet"):
        table = pd.read_parquet(p)
    else:
        table = pd.read_csv(p, dtype={"id": str, "role": str}, keep_default_na=False)
    missing = set(SPLIT_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{p}: missing column(s) {sorted(missing)}")
    table = table[SPLIT_COLUMNS].astype({"id": str, "repeat": np.int64, "fold": np.int64})
    table["role"] = table["role"].astype(str)
    unknown = set(table["role"]) - set(ROLES)
    if unknown:
        raise ValueError(f"{p}: unknown role(s) {sorted(unknown)}")
    if table.duplicated(["repeat", "fold", "id"]).any():
        raise ValueError(f"{p}: duplicated (repeat, fold, id) rows")
    return table.reset_index(drop=True)


def _roles_for(table: pd.DataFrame, ids: np.ndarray) -> np.ndarray:
    by_id = table.set_index("id")["role"]
    missing = pd.Index(ids).difference(by_id.index)
    if len(missing):
        raise KeyError(
            f"{len(missing)} id(s) absent from the split table, e.g. {list(missing[:5])}"
        )
    return by_id.reindex(ids).to_numpy().astype(str)


def labels_from_table(
    table: pd.DataFrame,
    ids: Sequence[str] | np.ndarray | pd.Series,
    repeat: int = 0,
    fold: int = 0,
) -> np.ndarray:
    """Return the roles of ``ids`` (in that order) for one (repeat, fold) of a split table.

    Args:
        table: from :func:`load_splits`.
        ids: row ids of the dataset in the caller's row order.
        repeat: repeat number.
        fold: fold number.

    Returns:
        Array of roles (``str``), aligned with ``ids``.
    """
    sub = table[(table["repeat"] == repeat) & (table["fold"] == fold)]
    if sub.empty:
        raise KeyError(f"no rows for repeat={repeat}, fold={fold}")
    return _roles_for(sub, _check_ids(ids))


def folds_from_table(
    table: pd.DataFrame, ids: Sequence[str] | np.ndarray | pd.Series
) -> list[Fold]:
    """Rebuild :class:`Fold` objects with row positions into ``ids``.

    Args:
        table: from :func:`load_splits`.
        ids: row ids of the dataset in the caller's row order.

    Returns:
        Folds ordered by (repeat, fold); ``val_idx`` is None if no row has role ``val``.
    """
    arr = _check_ids(ids)
    folds = []
    for (repeat, fold), sub in table.groupby(["repeat", "fold"], sort=True):
        roles = _roles_for(sub, arr)
        val = np.flatnonzero(roles == VAL)
        folds.append(
            Fold(
                int(repeat),
                int(fold),
                np.flatnonzero(roles == TRAIN),
                np.flatnonzero(roles == TEST),
                val if len(val) else None,
            )
        )
    return folds
