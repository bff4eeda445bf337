"""Scikit-learn heads of the ``features`` strategy as plain tensors: no pickle, no scikit-learn.

The ``features`` strategy (Ju et al. 2021) fits a scikit-learn regressor on frozen encoder
embeddings (:class:`kappaflow.transfer.strategies.EmbeddingRegressor`, fitted on log10 κ, κ in
W/m/K). A fold model is exported as the frozen encoder plus that regressor converted to one of
the ``nn.Module`` heads below (:func:`kappaflow.training.export.save_model`), whose whole state is
a few arrays:

* ``ridge`` (:class:`RidgeHead`): ``StandardScaler`` + ``RidgeCV`` as
  ``z = ((x - mean) / scale) @ coef.T + intercept``;
* ``random_forest`` (:class:`ForestHead`): scikit-learn's ``tree_`` arrays of every tree
  (``children_left``/``children_right``, ``feature``, ``threshold``, ``value``), traversed on
  tensors; ``z`` is the mean over trees.

Both clip ``z`` to ``[clip_lo, clip_hi]`` (the training targets' range ± the strategy's
``clip_margin``; ±inf: no clipping) exactly as ``EmbeddingRegressor.predict`` does. ``z`` is on the
regressor's fitted scale, ``transform``: log10 κ for ``log10``, raw for ``none``. With the
identity-standardized target transform the export stores (mean 0, std 1), ``KappaModel.forward``
then yields log10 κ like any other κ model.

Why arrays and not ``skops`` (or pickle): the member stays ONE file read with
``torch.load(weights_only=True)``, so the registry's member layout, digests and trust checks
(:mod:`kappaflow.registry.trust`) apply unchanged; nothing in the file can become a Python
object, whereas a skops file still rebuilds objects and needs a trusted-type list kept in step
with scikit-learn's internals, plus scikit-learn and skops pinned in the served model's
requirements. Prediction from the arrays is a few lines, matches scikit-learn to float64 round-off
(same float32 cast of the features and ``<=`` split rule as its trees), and runs on the ensemble's
device. A tampered file can at worst hold wrong numbers: :func:`head_from_state` checks names,
dtypes, shapes, finiteness and the tree structure (children after their parent, so every path ends
at a leaf) and refuses anything else with :class:`UnsupportedHeadError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

#: ``format`` of a head's plain state (:meth:`SklearnHead.to_state`).
HEAD_FORMAT = "kappaflow-sklearn-head/1"
#: Target transforms a head may be fitted on (as ``EmbeddingRegressor``).
HEAD_TRANSFORMS = ("log10", "none")
#: scikit-learn's marker of a leaf in ``tree_.children_left``/``children_right``.
TREE_LEAF = -1

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any] | float


class UnsupportedHeadError(ValueError):
    """A stored head is not one this kappaflow can rebuild (unknown kind, tampered arrays)."""


def _array(value: ArrayLike, dtype: np.dtype[Any] | type, name: str) -> np.ndarray:
    """``value`` as a numpy array of ``dtype`` (a tensor is read on the CPU)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise UnsupportedHeadError(f"head array {name!r} has non-numeric dtype {arr.dtype}")
    return arr.astype(dtype, copy=True)


def _clip_range(
    clip_lo: ArrayLike, clip_hi: ArrayLike, n_targets: int
) -> tuple[np.ndarray, np.ndarray]:
    lo = _array(clip_lo, np.float64, "clip_lo").reshape(-1)
    hi = _array(clip_hi, np.float64, "clip_hi").reshape(-1)
    if lo.shape != (n_targets,) or hi.shape != (n_targets,):
        raise UnsupportedHeadError(
            f"clip range has shapes {lo.shape}/{hi.shape}, expected ({n_targets},)"
        )
    if np.isnan(lo).any() or np.isnan(hi).any() or (lo > hi).any():
        raise UnsupportedHeadError(f"clip range [{lo}, {hi}] is not an interval")
    return lo, hi


class SklearnHead(nn.Module):
    """Base of the array heads: embeddings ``[B, in_dim]`` -> ``z`` ``[B, n_targets]`` (float64).

    Subclasses set :attr:`kind` and :attr:`TENSORS` (the names of their stored arrays, each a
    buffer) and implement :meth:`_raw`. Buffers are float64/int64 on purpose: do not cast the
    module with ``.float()`` (it would round thresholds and coefficients).

    Args:
        in_dim: embedding width (the encoder's ``embed_dim``).
        n_targets: number of targets ``T`` (1 for κ).
        transform: scale the regressor was fitted on: ``log10`` (log10 κ, κ in W/m/K) or
            ``none``.
        clip_lo: ``[T]`` lower clip of ``z`` (``-inf``: none).
        clip_hi: ``[T]`` upper clip of ``z`` (``+inf``: none).
    """

    kind: ClassVar[str] = ""
    TENSORS: ClassVar[tuple[str, ...]] = ()
    #: Stored arrays of dtype int64 (the others are float64).
    INT_TENSORS: ClassVar[frozenset[str]] = frozenset()
    clip_lo: torch.Tensor
    clip_hi: torch.Tensor

    def __init__(
        self, in_dim: int, n_targets: int, transform: str, clip_lo: ArrayLike, clip_hi: ArrayLike
    ) -> None:
        super().__init__()
        if transform not in HEAD_TRANSFORMS:
            raise UnsupportedHeadError(
                f"head transform {transform!r} not in {list(HEAD_TRANSFORMS)}"
            )
        if int(in_dim) < 1 or int(n_targets) < 1:
            raise UnsupportedHeadError(
                f"head needs in_dim, n_targets >= 1, got {in_dim}, {n_targets}"
            )
        self.in_dim = int(in_dim)
        self.n_targets = int(n_targets)
        self.transform = str(transform)
        lo, hi = _clip_range(clip_lo, clip_hi, self.n_targets)
        self.register_buffer("clip_lo", torch.from_numpy(lo))
        self.register_buffer("clip_hi", torch.from_numpy(hi))

    def _raw(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Unclipped ``z`` ``[B, T]`` (float64) of float64 embeddings ``x`` ``[B, in_dim]``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map embeddings ``[B, in_dim]`` to ``z`` ``[B, n_targets]`` (float64, clipped).

        ``z`` is log10 κ (κ in W/m/K) for a ``log10`` head, as ``EmbeddingRegressor.predict``
        before its ``10**``.
        """
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected embeddings [B, {self.in_dim}], got {list(x.shape)}")
        z = self._raw(x.to(torch.float64))
        return torch.minimum(torch.maximum(z, self.clip_lo), self.clip_hi)

    def to_state(self) -> dict[str, Any]:
        """Plain, ``weights_only``-safe state: format, kind, sizes and the stored arrays."""
        return {
            "format": HEAD_FORMAT,
            "kind": self.kind,
            "transform": self.transform,
            "in_dim": self.in_dim,
            "n_targets": self.n_targets,
            "tensors": {n: getattr(self, n).detach().cpu().clone() for n in self.TENSORS},
        }

    def extra_repr(self) -> str:
        """Show kind, sizes and transform in ``repr``."""
        return (
            f"kind={self.kind!r}, in_dim={self.in_dim}, n_targets={self.n_targets}, "
            f"transform={self.transform!r}"
        )


class RidgeHead(SklearnHead):
    """``StandardScaler`` + linear model: ``z = ((x - mean) / scale) @ coef.T + intercept``.

    Args:
        mean: ``[D]`` scaler mean of the training embeddings.
        scale: ``[D]`` scaler scale (> 0; scikit-learn stores 1 for constant features).
        coef: ``[T, D]`` (or ``[D]`` for one target) coefficients on the scaled embeddings.
        intercept: ``[T]`` intercepts (log10 κ for a ``log10`` head).
        clip_lo, clip_hi, transform: see :class:`SklearnHead`.
    """

    kind: ClassVar[str] = "ridge"
    TENSORS: ClassVar[tuple[str, ...]] = (
        "mean", "scale", "coef", "intercept", "clip_lo", "clip_hi"
    )  # fmt: skip
    mean: torch.Tensor
    scale: torch.Tensor
    coef: torch.Tensor
    intercept: torch.Tensor

    def __init__(
        self,
        mean: ArrayLike,
        scale: ArrayLike,
        coef: ArrayLike,
        intercept: ArrayLike,
        clip_lo: ArrayLike,
        clip_hi: ArrayLike,
        transform: str = "log10",
    ) -> None:
        mu = _array(mean, np.float64, "mean").reshape(-1)
        sc = _array(scale, np.float64, "scale").reshape(-1)
        w = _array(coef, np.float64, "coef")
        w = w.reshape(1, -1) if w.ndim == 1 else w
        b = _array(intercept, np.float64, "intercept").reshape(-1)
        d, t = mu.shape[0], b.shape[0]
        if sc.shape != (d,) or w.shape != (t, d):
            raise UnsupportedHeadError(
                f"ridge head shapes mean {mu.shape}, scale {sc.shape}, coef {w.shape}, "
                f"intercept {b.shape} do not fit together"
            )
        if not all(np.isfinite(a).all() for a in (mu, sc, w, b)) or (sc <= 0).any():
            raise UnsupportedHeadError("ridge head holds non-finite values or a scale <= 0")
        super().__init__(d, t, transform, clip_lo, clip_hi)
        for name, arr in (("mean", mu), ("scale", sc), ("coef", w), ("intercept", b)):
            self.register_buffer(name, torch.from_numpy(arr))

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.scale) @ self.coef.T + self.intercept


class ForestHead(SklearnHead):
    """A forest of regression trees (scikit-learn's ``tree_`` arrays), mean over trees.

    Each tree's nodes are stored consecutively; ``children_*`` are indices *within* the tree
    (``-1`` at leaves), as scikit-learn writes them. A sample goes left where
    ``float32(x[feature]) <= threshold`` (scikit-learn casts features to float32 and compares
    them with its float64 thresholds).

    Args:
        tree_nodes: ``[n_trees]`` node count of each tree.
        children_left: ``[n_nodes]`` left child (within its tree), ``-1`` at leaves.
        children_right: ``[n_nodes]`` right child (within its tree), ``-1`` at leaves.
        feature: ``[n_nodes]`` split feature (any value at leaves; scikit-learn writes -2).
        threshold: ``[n_nodes]`` split threshold (any finite value at leaves).
        value: ``[n_nodes, T]`` node prediction (mean training target of the node).
        in_dim: embedding width (scikit-learn's ``n_features_in_``).
        clip_lo, clip_hi, transform: see :class:`SklearnHead`.

    Raises:
        UnsupportedHeadError: inconsistent shapes, non-finite values, a split on a feature
            ``>= in_dim``, or a child that is not after its parent in its tree (a cycle).
    """

    kind: ClassVar[str] = "random_forest"
    TENSORS: ClassVar[tuple[str, ...]] = (
        "tree_nodes", "children_left", "children_right", "feature", "threshold", "value",
        "clip_lo", "clip_hi",
    )  # fmt: skip
    INT_TENSORS: ClassVar[frozenset[str]] = frozenset(
        {"tree_nodes", "children_left", "children_right", "feature"}
    )
    tree_nodes: torch.Tensor
    children_left: torch.Tensor
    children_right: torch.Tensor
    feature: torch.Tensor
    threshold: torch.Tensor
    value: torch.Tensor

    def __init__(
        self,
        tree_nodes: ArrayLike,
        children_left: ArrayLike,
        children_right: ArrayLike,
        feature: ArrayLike,
        threshold: ArrayLike,
        value: ArrayLike,
        in_dim: int,
        clip_lo: ArrayLike,
        clip_hi: ArrayLike,
        transform: str = "log10",
    ) -> None:
        sizes = _array(tree_nodes, np.int64, "tree_nodes").reshape(-1)
        left = _array(children_left, np.int64, "children_left").reshape(-1)
        right = _array(children_right, np.int64, "children_right").reshape(-1)
        feat = _array(feature, np.int64, "feature").reshape(-1)
        thr = _array(threshold, np.float64, "threshold").reshape(-1)
        val = _array(value, np.float64, "value")
        val = val.reshape(-1, 1) if val.ndim == 1 else val
        n = int(sizes.sum()) if sizes.size else 0
        if sizes.size == 0 or (sizes < 1).any():
            raise UnsupportedHeadError(f"forest head needs trees of >= 1 node, got {sizes[:5]}")
        if any(a.shape != (n,) for a in (left, right, feat, thr)) or val.ndim != 2:
            raise UnsupportedHeadError(
                f"forest head arrays do not have {n} nodes (sum of tree_nodes): left "
                f"{left.shape}, right {right.shape}, feature {feat.shape}, threshold {thr.shape}, "
                f"value {val.shape}"
            )
        if val.shape[0] != n or not np.isfinite(val).all() or not np.isfinite(thr).all():
            raise UnsupportedHeadError("forest head values/thresholds are non-finite or misshapen")
        super().__init__(int(in_dim), val.shape[1], transform, clip_lo, clip_hi)
        offset = np.repeat(np.cumsum(sizes) - sizes, sizes)  # first node of each node's tree
        local = np.arange(n) - offset
        size = np.repeat(sizes, sizes)
        leaf = left == TREE_LEAF
        split = ~leaf
        if (leaf & (right != TREE_LEAF)).any():
            raise UnsupportedHeadError("forest head: a node with only one child")
        for name, child in (("children_left", left), ("children_right", right)):
            if ((child[split] <= local[split]) | (child[split] >= size[split])).any():
                raise UnsupportedHeadError(
                    f"forest head: {name} must point after its node and inside its tree"
                )
        if ((feat[split] < 0) | (feat[split] >= self.in_dim)).any():
            raise UnsupportedHeadError(f"forest head: split feature outside [0, {self.in_dim})")
        for name, arr in (
            ("tree_nodes", sizes), ("children_left", left), ("children_right", right),
            ("feature", feat), ("threshold", thr), ("value", val),
        ):  # fmt: skip
            self.register_buffer(name, torch.from_numpy(arr))
        # traversal form: global indices, leaves point to themselves (a finished path stays)
        idx = np.arange(n)
        self.register_buffer("_left", torch.from_numpy(np.where(leaf, idx, left + offset)), False)
        self.register_buffer("_right", torch.from_numpy(np.where(leaf, idx, right + offset)), False)
        self.register_buffer("_feature", torch.from_numpy(np.where(leaf, 0, feat)), False)
        self.register_buffer("_roots", torch.from_numpy(np.cumsum(sizes) - sizes), False)
        self.n_trees = int(sizes.size)
        self.max_depth = _max_depth(self._roots.numpy(), self._left.numpy(), self._right.numpy())

    @classmethod
    def from_trees(
        cls,
        trees: Sequence[Any],
        in_dim: int,
        clip_lo: ArrayLike,
        clip_hi: ArrayLike,
        transform: str = "log10",
    ) -> ForestHead:
        """From fitted scikit-learn ``Tree`` objects (``estimator.tree_`` of each tree).

        Only their public arrays are read (``children_left``, ``children_right``, ``feature``,
        ``threshold``, ``value`` ``[n_nodes, n_outputs, 1]``).
        """
        if not trees:
            raise UnsupportedHeadError("a forest head needs at least one tree")
        return cls(
            tree_nodes=[t.node_count for t in trees],
            children_left=np.concatenate([t.children_left for t in trees]),
            children_right=np.concatenate([t.children_right for t in trees]),
            feature=np.concatenate([t.feature for t in trees]),
            threshold=np.concatenate([t.threshold for t in trees]),
            value=np.concatenate([t.value[:, :, 0] for t in trees]),
            in_dim=in_dim,
            clip_lo=clip_lo,
            clip_hi=clip_hi,
            transform=transform,
        )

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).to(torch.float64)  # scikit-learn's trees see float32 features
        n, width = x.shape
        flat = x.reshape(-1)
        offset = (torch.arange(n, device=x.device) * width)[:, None]  # row start in ``flat``
        node = self._roots.expand(n, -1).contiguous()  # [B, trees]: current node per tree
        # ``take`` on flat tensors: ~3x faster than advanced indexing on a CPU.
        threshold = self.threshold.reshape(-1)
        for _ in range(self.max_depth):
            go_left = flat.take(offset + self._feature.take(node)) <= threshold.take(node)
            step = torch.where(go_left, self._left.take(node), self._right.take(node))
            if torch.equal(step, node):  # every row in every tree sits on a leaf: done
                break
            node = step
        return self.value[node].sum(dim=1) / self.n_trees

    def extra_repr(self) -> str:
        """Add the number of trees and the depth to the base ``repr``."""
        return f"{super().extra_repr()}, n_trees={self.n_trees}, max_depth={self.max_depth}"


def _max_depth(roots: np.ndarray, left: np.ndarray, right: np.ndarray) -> int:
    """Longest root-to-leaf path (edges); finite because children come after parents."""
    frontier, depth = roots, 0
    while True:
        inner = frontier[left[frontier] != frontier]
        if inner.size == 0:
            return depth
        frontier = np.unique(np.concatenate([left[inner], right[inner]]))
        depth += 1


#: Head classes by ``kind``.
HEADS: dict[str, type[SklearnHead]] = {"ridge": RidgeHead, "random_forest": ForestHead}


def head_from_state(state: Mapping[str, Any] | Any) -> SklearnHead:
    """Rebuild a head from :meth:`SklearnHead.to_state` (as read by ``torch.load``).

    Args:
        state: ``{"format", "kind", "transform", "in_dim", "n_targets", "tensors"}``;
            ``tensors`` must hold exactly the arrays of the kind (:attr:`SklearnHead.TENSORS`),
            as tensors.

    Returns:
        The head (CPU, eval mode).

    Raises:
        UnsupportedHeadError: another format, an unknown kind, missing/extra/non-tensor arrays,
            inconsistent sizes or a malformed tree (see the classes).
    """
    if not isinstance(state, Mapping) or state.get("format") != HEAD_FORMAT:
        got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
        raise UnsupportedHeadError(f"not a {HEAD_FORMAT} head (format {got!r})")
    kind = state.get("kind")
    if kind == "stack":  # a blend of two of the heads below (kappaflow.models.stack_head)
        from kappaflow.models.stack_head import stack_head_from_state

        return stack_head_from_state(state, head_from_state)
    if kind not in HEADS:
        raise UnsupportedHeadError(
            f"unsupported scikit-learn head kind {kind!r}; this kappaflow rebuilds "
            f"{[*sorted(HEADS), 'stack']}"
        )
    cls = HEADS[str(kind)]
    tensors = state.get("tensors")
    if not isinstance(tensors, Mapping):
        raise UnsupportedHeadError(f"{kind} head has no 'tensors' mapping")
    if set(tensors) != set(cls.TENSORS):
        extra = sorted(set(tensors) - set(cls.TENSORS))
        missing = sorted(set(cls.TENSORS) - set(tensors))
        raise UnsupportedHeadError(f"{kind} head arrays: extra {extra}, missing {missing}")

    def dtype(name: str) -> torch.dtype:
        return torch.int64 if name in cls.INT_TENSORS else torch.float64

    bad = sorted(
        k for k, v in tensors.items() if not isinstance(v, torch.Tensor) or v.dtype != dtype(k)
    )
    if bad:
        want = {k: str(dtype(k)).removeprefix("torch.") for k in bad}
        raise UnsupportedHeadError(f"{kind} head arrays {bad} are not tensors of dtype {want}")
    kwargs: dict[str, Any] = dict(tensors)
    if cls is ForestHead:
        kwargs["in_dim"] = _int(state, "in_dim")
    head = cls(**kwargs, transform=str(state.get("transform")))
    if head.in_dim != _int(state, "in_dim") or head.n_targets != _int(state, "n_targets"):
        raise UnsupportedHeadError(
            f"{kind} head: arrays give in_dim {head.in_dim}, n_targets {head.n_targets}; state "
            f"says {state.get('in_dim')}, {state.get('n_targets')}"
        )
    return head.eval()


def _int(state: Mapping[str, Any], key: str) -> int:
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnsupportedHeadError(f"head {key} must be an int, got {value!r}")
    return value
