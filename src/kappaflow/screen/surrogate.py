"""Tier 1 of the screening funnel: a fast surrogate distilled from the champion.

The champion (a CGCNN ensemble, a few hundred crystals/s on 2 CPU cores) cannot score a pool of
~85,000 crystals at the ≥ 1,000 crystals/s a re-screen after every promotion needs. The funnel
(:func:`kappaflow.stages.screen.screen_stage`, ``screen.funnel``) therefore:

1. scores a seeded random **teacher sample** of the pool (``teacher_size`` prepared rows, plus
   every user file) with the champion;
2. fits a **student** on the teacher's log10 κ — extremely randomized trees on features that
   need neither parsing nor a graph (:func:`pool_features`: the 132 Magpie statistics of the
   cell's composition and four cell scalars, read straight from the prepared arrays) — on
   ``1 - holdout_fraction`` of the teacher rows; the held-out teacher rows measure how well the
   student agrees with the champion (:func:`agreement`: log10-MAE, Spearman ρ, recall of the
   champion's top and bottom ``top_fraction``), so the numbers describe the very model used;
3. predicts every other prepared row with the student;
4. sends the student's ``shortlist`` highest- and lowest-κ rows to the champion, so every
   crystal of the final top lists carries the champion's κ ± σ, intervals and domain flags.

Rows scored by the champion and rows only the student saw are told apart by ``scored_by``.
Why extra trees and not a network: on these inputs the Magpie extra trees are the strongest
composition model of this project (``magpie_et`` in ``reports/transfer.md``), fit 3,000 rows in
seconds and need no training loop; scikit-learn is already a dependency.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: Cell scalars appended to the Magpie statistics (see :func:`cell_scalars`).
SCALAR_NAMES: tuple[str, ...] = (
    "spacegroup",
    "sites_per_cell",
    "volume_per_atom_A3",
    "density_g_cm3",
)

#: g/cm³ per (u/Å³).
_U_PER_A3_IN_G_CM3 = 1.66053906660


@dataclass(frozen=True)
class FunnelSettings:
    """``screen.funnel``: how the pool is split between the student and the champion.

    Attributes:
        enabled: False scores every crystal with the champion (exhaustive screen).
        teacher_size: prepared rows the champion scores to teach the student (seeded sample).
        shortlist: student's highest- and lowest-κ rows re-scored by the champion (each side).
        holdout_fraction: teacher rows kept out of the student's fit to measure agreement.
        top_fraction: fraction of the pool whose recall (champion's top and bottom) is
            reported from the held-out teacher rows.
        n_estimators: trees of the student.
        max_features: features tried per split (fraction).
        n_jobs: processes of the student's fit and prediction.
    """

    enabled: bool = True
    teacher_size: int = 3000
    shortlist: int = 750
    holdout_fraction: float = 0.2
    top_fraction: float = 0.05
    n_estimators: int = 200
    max_features: float = 0.5
    n_jobs: int = 2

    def __post_init__(self) -> None:
        if self.teacher_size < 10:
            raise ValueError(f"screen.funnel.teacher_size must be >= 10, got {self.teacher_size}")
        if self.shortlist < 1:
            raise ValueError(f"screen.funnel.shortlist must be >= 1, got {self.shortlist}")
        if not 0.0 < self.holdout_fraction < 0.5:
            raise ValueError(
                f"screen.funnel.holdout_fraction must be in (0, 0.5), got {self.holdout_fraction}"
            )
        if not 0.0 < self.top_fraction < 0.5:
            raise ValueError(
                f"screen.funnel.top_fraction must be in (0, 0.5), got {self.top_fraction}"
            )

    @classmethod
    def from_mapping(cls, raw: Any) -> FunnelSettings:
        """Build from ``screen.funnel`` (None / missing: the defaults)."""
        values = dict(raw or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise KeyError(f"screen.funnel: unknown keys {unknown}")
        return cls(**values)

    def applies(self, n_prepared: int) -> bool:
        """Whether the funnel saves work on a pool of ``n_prepared`` prepared rows.

        A pool no larger than the teacher sample plus both shortlists is scored exhaustively.
        """
        return self.enabled and n_prepared > self.teacher_size + 2 * self.shortlist


def cell_scalars(lattices: np.ndarray, numbers: Sequence[np.ndarray]) -> np.ndarray:
    """Sites per cell, volume per atom (Å³) and density (g/cm³) of many cells at once.

    Args:
        lattices: ``[N, 3, 3]`` lattice vectors (rows, Å).
        numbers: atomic numbers of each cell.

    Returns:
        ``[N, 3]`` float64.
    """
    from pymatgen.core.periodic_table import Element

    masses = np.zeros(119)
    masses[1:] = [float(Element.from_Z(z).atomic_mass) for z in range(1, 119)]
    sizes = np.array([len(n) for n in numbers], dtype=np.float64)
    flat = np.concatenate([np.asarray(n, dtype=np.int64) for n in numbers]) if len(numbers) else []
    row = np.repeat(np.arange(len(numbers)), sizes.astype(np.int64))
    mass = np.bincount(row, weights=masses[np.asarray(flat, dtype=np.int64)], minlength=len(sizes))
    volume = np.abs(np.linalg.det(np.asarray(lattices, dtype=np.float64).reshape(-1, 3, 3)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([sizes, volume / sizes, mass / volume * _U_PER_A3_IN_G_CM3], axis=1).astype(
            np.float64
        )


def element_count_matrix(numbers: Sequence[np.ndarray]) -> np.ndarray:
    """``[N, 119]`` atoms per element (column = atomic number) of each cell."""
    sizes = np.array([len(n) for n in numbers], dtype=np.int64)
    if not sizes.sum():
        return np.zeros((len(numbers), 119))
    flat = np.concatenate([np.asarray(n, dtype=np.int64) for n in numbers])
    cell = np.repeat(np.arange(len(numbers)), sizes)
    counts = np.bincount(cell * 119 + flat, minlength=len(numbers) * 119)
    return counts.reshape(len(numbers), 119).astype(np.float64)


def pool_features(
    spacegroups: np.ndarray,
    lattices: np.ndarray,
    numbers: Sequence[np.ndarray],
    counts: np.ndarray | None = None,
) -> np.ndarray:
    """Student inputs: 132 Magpie statistics of the cell's composition + the cell scalars.

    The Magpie statistics are the formula featurizer's own
    (:func:`kappaflow.models.stack_head.magpie_from_counts` over
    :func:`kappaflow.features.composition.magpie_statistics`), built from the atoms of the
    prepared cell rather than a parsed formula string: no parsing in the hot path.

    Args:
        spacegroups: ``[N]`` space-group numbers (-1: symmetry search failed).
        lattices: ``[N, 3, 3]`` (Å).
        numbers: atomic numbers per cell.
        counts: their :func:`element_count_matrix` when the caller has it already.

    Returns:
        ``[N, 132 + len(SCALAR_NAMES)]`` float64 (non-finite values possible for degenerate
        cells: the caller quarantines those rows).
    """
    import torch

    from kappaflow.models.stack_head import magpie_from_counts, magpie_table_tensor

    table = magpie_table_tensor()
    counts = element_count_matrix(numbers) if counts is None else counts
    blocks = []
    for lo in range(0, len(counts), 8192):  # bounded memory: [chunk, elements, 22] at a time
        blocks.append(magpie_from_counts(torch.from_numpy(counts[lo : lo + 8192]), table).numpy())
    magpie = np.concatenate(blocks) if blocks else np.zeros((0, 6 * table.shape[1]))
    scalars = cell_scalars(lattices, numbers)
    return np.concatenate(
        [magpie, np.asarray(spacegroups, dtype=np.float64)[:, None], scalars], axis=1
    )


def read_pool_arrays(index: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    """Lattices ``[N, 3, 3]`` and atomic numbers of prepared pool rows, in ``index`` order.

    Args:
        index: rows of :class:`kappaflow.screen.pool.Pool` ``.index`` with ``row >= 0``
            (``source``: the prepared parquet, ``row``: row number in it).
    """
    import pyarrow.parquet as pq

    lattices = np.zeros((len(index), 3, 3))
    numbers: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(index)
    sources = index["source"].to_numpy()
    for source, group in index.groupby("source", sort=False):
        table = pq.read_table(str(source), columns=["lattice", "numbers"])
        sub = table.take(group["row"].to_numpy())
        where = np.flatnonzero(sources == source)  # the group's rows, in index order
        lat = sub.column("lattice").combine_chunks()
        lattices[where] = lat.flatten().to_numpy().reshape(-1, 3, 3)
        nums = sub.column("numbers").combine_chunks()
        offsets = nums.offsets.to_numpy()
        values = nums.flatten().to_numpy()
        for k, at in enumerate(where):
            numbers[at] = values[offsets[k] : offsets[k + 1]]
        del table
    return lattices, numbers


def fit_student(x: np.ndarray, y: np.ndarray, settings: FunnelSettings, seed: int) -> Any:
    """Extremely randomized trees from the features ``x`` to the champion's log10 κ ``y``."""
    from sklearn.ensemble import ExtraTreesRegressor

    model = ExtraTreesRegressor(
        n_estimators=settings.n_estimators,
        max_features=settings.max_features,
        n_jobs=settings.n_jobs,
        random_state=seed,
    )
    return model.fit(x, y)


def agreement(student: np.ndarray, champion: np.ndarray, top_fraction: float) -> dict[str, float]:
    """How well the student reproduces the champion on rows it was not fitted on.

    Args:
        student: student log10 κ.
        champion: champion log10 κ of the same rows.
        top_fraction: the champion's top (and bottom) fraction whose recall is measured.

    Returns:
        ``n``, ``log10_mae`` (decades), ``spearman``, ``top_recall`` / ``bottom_recall``: the
        fraction of the champion's top (bottom) ``top_fraction`` of these rows that the student
        also puts in its top (bottom) ``top_fraction``.
    """
    from scipy.stats import spearmanr

    s, c = np.asarray(student, float), np.asarray(champion, float)
    n = len(s)
    k = max(1, int(round(top_fraction * n)))
    top_c, top_s = set(np.argsort(-c)[:k]), set(np.argsort(-s)[:k])
    bot_c, bot_s = set(np.argsort(c)[:k]), set(np.argsort(s)[:k])
    return {
        "n": float(n),
        "log10_mae": float(np.mean(np.abs(s - c))),
        "spearman": float(spearmanr(s, c).statistic) if n > 2 else float("nan"),
        "top_recall": len(top_c & top_s) / k,
        "bottom_recall": len(bot_c & bot_s) / k,
    }


def shortlist(log10_kappa: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` highest and ``n`` lowest values (sorted, no duplicates)."""
    order = np.argsort(log10_kappa, kind="stable")
    return np.unique(np.concatenate([order[:n], order[::-1][:n]]))
