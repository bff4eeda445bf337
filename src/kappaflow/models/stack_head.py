"""Stacked κ head: a structure regressor and a composition forest, blended (stored as arrays).

The ``stack`` strategy (``conf/transfer/stack.yaml``; fitted by
:class:`kappaflow.transfer.stacking.StackedRegressor`) combines two routes to log10 κ (κ in
W/m/K) with weights learned on inner folds of the training part only:

* the **structure route**: a ridge or forest head (:mod:`kappaflow.models.sklearn_head`) on the
  frozen pretrained encoder's embedding of the crystal graph (transfer, Ju et al. 2021 style);
* the **composition route**: extremely randomized trees on the 132 Magpie statistics of the
  crystal's composition (Ward et al. 2016; the features of the Magpie baseline), computed here
  from the graph's atoms with matminer's element table stored in the head
  (:func:`magpie_from_counts` equals :func:`kappaflow.features.composition.magpie_features` of
  the formula to round-off; tested).

``z = w_structure * z_structure + w_composition * z_composition + bias`` (``w >= 0``), clipped to
the training range ± a margin. Like every :class:`~kappaflow.models.sklearn_head.SklearnHead` the
whole state is plain arrays (no pickle), so the fold export is one ``weights_only`` file and the
served model needs neither scikit-learn nor matminer. :class:`~kappaflow.models.base.KappaModel`
passes the element counts to a head whose ``reads_composition`` is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from kappaflow.features.composition import magpie_element_table, magpie_statistics
from kappaflow.models.base import N_ELEMENT_ROWS
from kappaflow.models.sklearn_head import (
    HEAD_FORMAT,
    ArrayLike,
    ForestHead,
    SklearnHead,
    UnsupportedHeadError,
    _array,
)

#: Magpie statistics per elemental property, in matminer's column order.
MAGPIE_STATS = ("minimum", "maximum", "range", "mean", "avg_dev", "mode")


def magpie_from_counts(counts: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Magpie ``ElementProperty`` features from per-crystal element counts.

    The statistics are :func:`kappaflow.features.composition.magpie_statistics` (the formula
    featurizer's own), so they equal :func:`~kappaflow.features.composition.magpie_features` of
    the crystal's formula; a NaN statistic becomes 0, as there.

    Args:
        counts: ``[B, 119]`` atoms per element (column = atomic number), any scale.
        table: ``[119, P]`` elemental properties (:func:`magpie_table_tensor`).

    Returns:
        ``[B, 6 P]`` float64, property-major and statistic-minor (matminer's label order).
    """
    w_all = counts.to(torch.float64)
    width = max(int((w_all > 0).sum(dim=1).max()), 1) if len(w_all) else 1
    w, z = torch.sort(w_all, dim=1, descending=True)  # present elements first, then padding
    stats = magpie_statistics(z[:, :width], w[:, :width], table.to(torch.float64))
    return torch.nan_to_num(stats.reshape(w_all.shape[0], -1), nan=0.0)


def magpie_table_tensor() -> torch.Tensor:
    """Matminer's Magpie element table as a ``[119, 22]`` float64 tensor."""
    table = magpie_element_table()
    if table.shape[0] != N_ELEMENT_ROWS:
        raise RuntimeError(f"Magpie table has {table.shape[0]} rows, expected {N_ELEMENT_ROWS}")
    return torch.from_numpy(table)


class StackHead(SklearnHead):
    """Blend of a structure head (on embeddings) and a composition forest (on Magpie features).

    Args:
        structure: ridge or forest head on the encoder embedding ``[B, in_dim]`` (one target).
        composition: forest head on the ``6 P`` Magpie statistics (one target).
        weights: ``[2]`` non-negative blend weights (structure, composition).
        bias: ``[1]`` intercept of the blend (log10 κ for ``log10``).
        magpie_table: ``[119, P]`` elemental properties the composition features are built from.
        clip_lo, clip_hi, transform: see :class:`~kappaflow.models.sklearn_head.SklearnHead`.

    Raises:
        UnsupportedHeadError: sub-heads of another kind, target count or scale, a table that does
            not fit the composition forest, non-finite or negative weights.
    """

    kind: ClassVar[str] = "stack"
    TENSORS: ClassVar[tuple[str, ...]] = ("weights", "bias", "magpie_table", "clip_lo", "clip_hi")
    #: :class:`~kappaflow.models.base.KappaModel` passes element counts to this head.
    reads_composition: ClassVar[bool] = True
    weights: torch.Tensor
    bias: torch.Tensor
    magpie_table: torch.Tensor

    def __init__(
        self,
        structure: SklearnHead,
        composition: ForestHead,
        weights: ArrayLike,
        bias: ArrayLike,
        magpie_table: ArrayLike,
        clip_lo: ArrayLike,
        clip_hi: ArrayLike,
        transform: str = "log10",
    ) -> None:
        if isinstance(structure, StackHead) or not isinstance(structure, SklearnHead):
            raise UnsupportedHeadError("a stack's structure route must be a ridge or forest head")
        if not isinstance(composition, ForestHead):
            raise UnsupportedHeadError("a stack's composition route must be a forest head")
        if {structure.transform, composition.transform} != {transform}:
            raise UnsupportedHeadError(
                f"stack routes fitted on {structure.transform!r}/{composition.transform!r}, "
                f"the stack on {transform!r}"
            )
        if structure.n_targets != 1 or composition.n_targets != 1:
            raise UnsupportedHeadError("a stack head predicts one target (log10 κ)")
        w = _array(weights, np.float64, "weights").reshape(-1)
        b = _array(bias, np.float64, "bias").reshape(-1)
        table = _array(magpie_table, np.float64, "magpie_table")
        if (
            w.shape != (2,)
            or b.shape != (1,)
            or not np.isfinite(np.r_[w, b]).all()
            or (w < 0).any()
        ):
            raise UnsupportedHeadError(
                f"stack weights {w} / bias {b}: need 2 finite weights >= 0 and 1 finite bias"
            )
        if table.ndim != 2 or table.shape[0] != N_ELEMENT_ROWS:
            raise UnsupportedHeadError(f"magpie_table shape {table.shape}, expected (119, P)")
        if composition.in_dim != len(MAGPIE_STATS) * table.shape[1]:
            raise UnsupportedHeadError(
                f"composition forest reads {composition.in_dim} features, the table gives "
                f"{len(MAGPIE_STATS) * table.shape[1]}"
            )
        super().__init__(structure.in_dim, 1, transform, clip_lo, clip_hi)
        self.structure = structure
        self.composition = composition
        for name, arr in (("weights", w), ("bias", b), ("magpie_table", table)):
            self.register_buffer(name, torch.from_numpy(arr))

    def composition_features(self, counts: torch.Tensor) -> torch.Tensor:
        """Magpie features ``[B, 6 P]`` of element counts ``[B, 119]`` (see module doc)."""
        return magpie_from_counts(counts, self.magpie_table)

    def routes(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Both routes' ``z`` before blending, ``[B, 2]`` (structure, composition)."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected embeddings [B, {self.in_dim}], got {list(x.shape)}")
        if counts.ndim != 2 or counts.shape != (x.shape[0], N_ELEMENT_ROWS):
            raise ValueError(f"expected element counts [{x.shape[0]}, 119], got {counts.shape}")
        zs = self.structure(x)
        zc = self.composition(self.composition_features(counts))
        return torch.cat([zs, zc], dim=1)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, counts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``z`` ``[B, 1]`` (float64, clipped): log10 κ for a ``log10`` head.

        Args:
            x: embeddings ``[B, in_dim]``.
            counts: element counts ``[B, 119]`` of the same crystals
                (:func:`kappaflow.models.base.element_counts`).

        Raises:
            ValueError: no counts (the head was called without the batch), or wrong shapes.
        """
        if counts is None:
            raise ValueError(
                "a stack head needs the crystals' element counts: call KappaModel.forward or "
                "head_forward(embedding, batch), not the head alone"
            )
        z = self.routes(x.to(torch.float64), counts) @ self.weights[:, None] + self.bias
        return torch.minimum(torch.maximum(z, self.clip_lo), self.clip_hi)

    def to_state(self) -> dict[str, Any]:
        """Plain state: the stack's arrays plus both routes' own states."""
        return super().to_state() | {
            "structure": self.structure.to_state(),
            "composition": self.composition.to_state(),
        }

    def extra_repr(self) -> str:
        """Add the blend weights to the base ``repr``."""
        w = self.weights.tolist()
        return f"{super().extra_repr()}, weights={w}, bias={float(self.bias[0]):.3f}"


def stack_head_from_state(state: Mapping[str, Any], sub_head: Any) -> StackHead:
    """Rebuild a :class:`StackHead` from :meth:`StackHead.to_state` (as ``torch.load`` read it).

    Args:
        state: the stored state (``format`` already checked by the caller).
        sub_head: the function that rebuilds a ridge / forest state
            (:func:`kappaflow.models.sklearn_head.head_from_state`).

    Raises:
        UnsupportedHeadError: missing / extra / non-float64 arrays, a nested stack, or any check
            of :class:`StackHead` or its routes.
    """
    tensors = state.get("tensors")
    if not isinstance(tensors, Mapping) or set(tensors) != set(StackHead.TENSORS):
        got = sorted(tensors) if isinstance(tensors, Mapping) else type(tensors).__name__
        raise UnsupportedHeadError(f"stack head arrays {got}, expected {list(StackHead.TENSORS)}")
    bad = sorted(
        k for k, v in tensors.items() if not isinstance(v, torch.Tensor) or v.dtype != torch.float64
    )
    if bad:
        raise UnsupportedHeadError(f"stack head arrays {bad} are not float64 tensors")
    routes = []
    for key in ("structure", "composition"):
        sub = state.get(key)
        if not isinstance(sub, Mapping) or sub.get("format") != HEAD_FORMAT:
            raise UnsupportedHeadError(f"stack head: its {key} route is not a {HEAD_FORMAT} state")
        if sub.get("kind") == StackHead.kind:
            raise UnsupportedHeadError("stack head: a route may not be a stack itself")
        routes.append(sub_head(sub))
    structure, composition = routes
    if not isinstance(composition, ForestHead):
        raise UnsupportedHeadError("stack head: the composition route must be a forest")
    head = StackHead(structure, composition, **dict(tensors), transform=str(state.get("transform")))
    if head.in_dim != state.get("in_dim") or head.n_targets != state.get("n_targets"):
        raise UnsupportedHeadError(
            f"stack head: routes give in_dim {head.in_dim}, n_targets {head.n_targets}; state says "
            f"{state.get('in_dim')}, {state.get('n_targets')}"
        )
    return head.eval()
