"""Stacking: a transferred structure route blended with the composition model (issue 12.5).

The ``stack`` strategy (``conf/transfer/stack.yaml``) is a ``features`` strategy with a
``stack`` block. Per outer fold, on the fold's training rows only (the rows the baselines fit
on; neither the inner validation rows nor the outer test rows are used):

1. ``inner_folds`` grouped folds (no material on both sides) give out-of-fold log10 κ predictions
   of both routes: the structure route (an
   :class:`~kappaflow.transfer.strategies.EmbeddingRegressor` on the frozen pretrained encoder's
   embeddings) and the composition route (extremely randomized trees on the Magpie statistics of
   the composition, computed from the crystal graph's atoms);
2. non-negative blend weights and an intercept are fitted on those out-of-fold predictions
   (scikit-learn ``LinearRegression(positive=True)``, log10 κ);
3. both routes are refitted on all those training rows and exported with the weights as one
   array head (:class:`kappaflow.models.stack_head.StackHead`).

Extra trees, not the random forest of the Magpie baseline: on the κ sets they beat it by
0.02 decades on every set (``reports/phonons.md``), and the stack should combine the best
composition model, not the baseline itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from kappaflow.config import to_plain
from kappaflow.evaluation.baselines import EXTRA_TREES_DEFAULTS, FOREST_N_JOBS
from kappaflow.models.base import element_counts
from kappaflow.models.sklearn_head import ForestHead
from kappaflow.models.stack_head import StackHead, magpie_from_counts, magpie_table_tensor
from kappaflow.transfer.strategies import EmbeddingRegressor

log = logging.getLogger(__name__)

#: Keyword arguments of the composition route's ``ExtraTreesRegressor`` unless configured: the
#: ``magpie_et`` baseline's, so the stack's composition route is that baseline.
DEFAULT_COMPOSITION = EXTRA_TREES_DEFAULTS


def uses_stacking(strategy_cfg: Mapping[str, Any] | DictConfig) -> bool:
    """Whether a strategy node has a ``stack`` block (a ``features`` strategy that stacks)."""
    return strategy_cfg.get("name") == "features" and bool(strategy_cfg.get("stack"))


def element_count_matrix(dataset: Sequence[Any], batch_size: int = 512) -> np.ndarray:
    """Element counts ``[N, 119]`` (float64) of every crystal graph of ``dataset``, in order.

    Raises:
        ValueError: the items are not crystal graphs (no atomic numbers).
    """
    from torch_geometric.loader import DataLoader

    out = [
        element_counts(batch).numpy()
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False)  # type: ignore[arg-type]
    ]
    return np.concatenate(out) if out else np.zeros((0, 119))


class StackedRegressor:
    """Structure route + composition route, blended with weights from inner folds (log10 κ).

    Args:
        structure: an unfitted :class:`EmbeddingRegressor` (``log10``) for the embeddings.
        composition_params: ``ExtraTreesRegressor`` keyword arguments
            (default :data:`DEFAULT_COMPOSITION`; ``random_state`` = ``seed``).
        inner_folds: grouped folds of the training part for the blend weights (>= 2).
        seed: random state of the inner folds and the trees.
        clip_margin: the blend is clipped to the training log10 κ range ± this (decades).
    """

    def __init__(
        self,
        structure: EmbeddingRegressor,
        composition_params: Mapping[str, Any] | None = None,
        inner_folds: int = 5,
        seed: int = 0,
        clip_margin: float = 1.0,
    ) -> None:
        if structure.transform != "log10":
            raise ValueError("stacking fits log10 κ: the structure route must use log10")
        if int(inner_folds) < 2:
            raise ValueError(f"stacking needs inner_folds >= 2, got {inner_folds}")
        self.structure = structure
        self.composition_params = {**DEFAULT_COMPOSITION, **dict(composition_params or {})}
        self.inner_folds = int(inner_folds)
        self.seed = int(seed)
        self.clip_margin = float(clip_margin)
        self.table = magpie_table_tensor()
        self.composition: Any = None
        self.weights_: np.ndarray | None = None
        self.bias_: float | None = None
        self.inner_: dict[str, float] = {}
        self._range: tuple[float, float] | None = None

    @classmethod
    def from_cfg(
        cls, strategy_cfg: Mapping[str, Any] | DictConfig, seed: int = 0
    ) -> StackedRegressor:
        """Build from a ``features`` strategy with a ``stack`` block (inner_folds, composition)."""
        stack = to_plain(strategy_cfg.get("stack")) or {}
        unknown = sorted(set(stack) - {"inner_folds", "composition"})
        if unknown:
            raise ValueError(f"unknown stack keys {unknown}; known: inner_folds, composition")
        margin = strategy_cfg.get("clip_margin", 1.0)
        return cls(
            EmbeddingRegressor.from_cfg(strategy_cfg, seed),
            stack.get("composition"),
            int(stack.get("inner_folds", 5)),
            seed,
            1.0 if margin is None else float(margin),
        )

    def _features(self, counts: np.ndarray) -> np.ndarray:
        return magpie_from_counts(torch.as_tensor(counts, dtype=torch.float64), self.table).numpy()

    def _forest(self) -> Any:
        from sklearn.ensemble import ExtraTreesRegressor

        return ExtraTreesRegressor(
            **{"random_state": self.seed, "n_jobs": FOREST_N_JOBS} | self.composition_params
        )

    def _fresh_structure(self) -> EmbeddingRegressor:
        s = self.structure
        return EmbeddingRegressor(s.name, s.params, s.transform, s.seed, s.clip_margin)

    def fit(
        self, embeddings: np.ndarray, counts: np.ndarray, kappa: np.ndarray, groups: np.ndarray
    ) -> StackedRegressor:
        """Fit both routes and the blend on the training part only.

        Args:
            embeddings: ``[N, D]`` frozen encoder embeddings of the training rows.
            counts: ``[N, 119]`` element counts of the same rows.
            kappa: ``[N]`` κ (W/m/K, > 0).
            groups: ``[N]`` material keys (inner folds never split a material).

        Raises:
            ValueError: non-positive / non-finite κ, mismatched lengths, fewer materials than
                inner folds.
        """
        from sklearn.linear_model import LinearRegression
        from sklearn.model_selection import GroupKFold

        emb = np.asarray(embeddings, dtype=np.float64)
        y = np.asarray(kappa, dtype=np.float64).reshape(-1)
        groups = np.asarray(groups)
        if not len(emb) == len(counts) == len(y) == len(groups):
            raise ValueError(
                f"stacking rows differ: {len(emb)} embeddings, {len(counts)} counts, {len(y)} κ, "
                f"{len(groups)} groups"
            )
        if not np.isfinite(y).all() or (y <= 0).any():
            raise ValueError("stacking needs finite κ > 0 (W/m/K) on every training row")
        n_groups = len(np.unique(groups))
        if n_groups < self.inner_folds:
            raise ValueError(
                f"stacking: {n_groups} materials in the training part, fewer than inner_folds="
                f"{self.inner_folds}"
            )
        logy = np.log10(y)
        comp = self._features(counts)
        oof = np.zeros((len(y), 2))
        splitter = GroupKFold(self.inner_folds, shuffle=True, random_state=self.seed)
        for tr, va in splitter.split(emb, groups=groups):
            oof[va, 0] = np.log10(self._fresh_structure().fit(emb[tr], y[tr]).predict(emb[va]))
            oof[va, 1] = self._forest().fit(comp[tr], logy[tr]).predict(comp[va])
        blend = LinearRegression(positive=True).fit(oof, logy)
        self.weights_ = np.asarray(blend.coef_, dtype=np.float64).reshape(2)
        self.bias_ = float(blend.intercept_)
        mixed = oof @ self.weights_ + self.bias_
        self.inner_ = {
            "inner_log10_mae_structure": float(np.abs(oof[:, 0] - logy).mean()),
            "inner_log10_mae_composition": float(np.abs(oof[:, 1] - logy).mean()),
            "inner_log10_mae_stack": float(np.abs(mixed - logy).mean()),
        }
        self._range = (float(logy.min()), float(logy.max()))
        self.structure = self._fresh_structure().fit(emb, y)
        self.composition = self._forest().fit(comp, logy)
        log.info(
            "stack: weights structure %.3f, composition %.3f, bias %.3f; inner-fold log10-MAE "
            "structure %.3f, composition %.3f, stack %.3f",
            *self.weights_,
            self.bias_,
            *self.inner_.values(),
        )
        return self

    def _check_fitted(self) -> tuple[np.ndarray, float, tuple[float, float]]:
        if self.weights_ is None or self.bias_ is None or self._range is None:
            raise RuntimeError("StackedRegressor used before fit")
        return self.weights_, self.bias_, self._range

    def predict(self, embeddings: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """κ (W/m/K) ``[N]`` of the blend."""
        w, b, (lo, hi) = self._check_fitted()
        zs = np.log10(self.structure.predict(np.asarray(embeddings, dtype=np.float64)))
        zc = self.composition.predict(self._features(counts))
        z = np.clip(w[0] * zs + w[1] * zc + b, lo - self.clip_margin, hi + self.clip_margin)
        return np.power(10.0, z)

    def to_head(self) -> StackHead:
        """Return the fitted stack as a pickle-free ``StackHead`` (kappaflow.models.stack_head)."""
        w, b, (lo, hi) = self._check_fitted()
        forest = self.composition
        comp = ForestHead.from_trees(
            [t.tree_ for t in forest.estimators_],
            int(forest.n_features_in_),
            clip_lo=[-np.inf],
            clip_hi=[np.inf],
        )
        return StackHead(
            self.structure.to_head(),
            comp,
            weights=w,
            bias=[b],
            magpie_table=self.table,
            clip_lo=[lo - self.clip_margin],
            clip_hi=[hi + self.clip_margin],
        )

    def describe(self) -> dict[str, Any]:
        """Weights, bias and inner-fold errors (for the fold's metadata)."""
        w, b, _ = self._check_fitted()
        return {
            "structure_regressor": self.structure.name,
            "weight_structure": float(w[0]),
            "weight_composition": float(w[1]),
            "bias": b,
            **self.inner_,
        }


__all__ = ["StackedRegressor", "element_count_matrix", "uses_stacking"]
