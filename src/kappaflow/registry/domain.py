"""Applicability domain of a κ ensemble: how far a crystal is from its training set.

Two checks, both fitted on the training set of the registered model (every material of its
κ dataset, e.g. ``paraisite_mix``):

* **elements**: a crystal with an element that no training material contains is out of domain
  (``ood_reason`` ``unseen elements: Xe, Kr``);
* **embedding distance**: embeddings (member 0's encoder output) are standardized with the
  training mean/std per dimension; a crystal whose Euclidean distance to its nearest training
  embedding exceeds ``threshold`` is out of domain. ``threshold`` is the ``quantile`` (default
  0.95) of the training materials' own nearest-neighbour distances (each to the *other*
  training materials), i.e. a crystal is flagged when it is farther from the training set than
  95 % of the training materials are from each other.

A crystal is in domain when it passes both. The distance is in standardized-embedding units
(dimensionless).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from kappaflow.evaluation.domain import nearest_distance

DOMAIN_FILE = "domain.json"
EMBEDDINGS_FILE = "train_embeddings.npy"


@cache
def _symbols() -> dict[int, str]:
    from pymatgen.core.periodic_table import Element

    return {z: Element.from_Z(z).symbol for z in range(1, 119)}


def element_symbols(numbers: Sequence[int] | np.ndarray) -> list[str]:
    """Element symbols of atomic numbers, sorted by Z (unknown Z shown as ``Z<n>``)."""
    table = _symbols()
    return [table.get(int(z), f"Z{int(z)}") for z in sorted({int(z) for z in numbers})]


@dataclass(frozen=True)
class DomainInfo:
    """The training set as seen by the out-of-domain checks (see the module docstring).

    Attributes:
        elements: atomic numbers present in the training materials.
        center: [D] training mean of each embedding dimension.
        scale: [D] training std of each embedding dimension (> 0).
        train_embeddings: [N, D] standardized training embeddings.
        threshold: nearest-neighbour distance above which a crystal is out of domain
            (standardized-embedding units).
        quantile: the quantile of the training NN distances that gave ``threshold``.
    """

    elements: frozenset[int]
    center: np.ndarray
    scale: np.ndarray
    train_embeddings: np.ndarray
    threshold: float
    quantile: float

    def to_json(self) -> dict[str, Any]:
        """Everything but the embedding matrix, as plain JSON."""
        return {
            "elements": sorted(self.elements),
            "element_symbols": element_symbols(sorted(self.elements)),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "threshold": float(self.threshold),
            "quantile": float(self.quantile),
            "n_train": int(len(self.train_embeddings)),
            "distance": "Euclidean, standardized member-0 embeddings, to the nearest training one",
        }

    def save(self, directory: str | Path) -> None:
        """Write ``domain.json`` and ``train_embeddings.npy`` into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / DOMAIN_FILE).write_text(json.dumps(self.to_json(), indent=1) + "\n")
        np.save(d / EMBEDDINGS_FILE, self.train_embeddings.astype(np.float32), allow_pickle=False)

    @classmethod
    def load(cls, directory: str | Path) -> DomainInfo:
        """Read what :meth:`save` wrote (``np.load(allow_pickle=False)``)."""
        d = Path(directory)
        meta = json.loads((d / DOMAIN_FILE).read_text())
        emb = np.load(d / EMBEDDINGS_FILE, allow_pickle=False)
        return cls(
            elements=frozenset(int(z) for z in meta["elements"]),
            center=np.asarray(meta["center"], dtype=np.float64),
            scale=np.asarray(meta["scale"], dtype=np.float64),
            train_embeddings=np.asarray(emb, dtype=np.float64),
            threshold=float(meta["threshold"]),
            quantile=float(meta["quantile"]),
        )

    def standardize(self, embeddings: np.ndarray) -> np.ndarray:
        """Raw [B, D] embeddings -> standardized with the training statistics."""
        return (np.asarray(embeddings, dtype=np.float64) - self.center) / self.scale


def fit_domain(
    embeddings: np.ndarray,
    numbers: Sequence[Sequence[int] | np.ndarray],
    quantile: float = 0.95,
) -> DomainInfo:
    """Fit the domain on the training materials.

    Args:
        embeddings: [N, D] member-0 embeddings of the training materials (N >= 2).
        numbers: atomic numbers of each training crystal.
        quantile: quantile of the training nearest-neighbour distances used as threshold.

    Raises:
        ValueError: fewer than two training embeddings, or quantile outside (0, 1].
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or len(emb) < 2:
        raise ValueError(f"need [N >= 2, D] training embeddings, got shape {emb.shape}")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    center = emb.mean(axis=0)
    scale = emb.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    std = (emb - center) / scale
    nn_dist = nearest_distance(std, std, exclude_self=True)
    elements = frozenset(int(z) for nums in numbers for z in np.asarray(nums).tolist())
    return DomainInfo(
        elements=elements,
        center=center,
        scale=scale,
        train_embeddings=std,
        threshold=float(np.quantile(nn_dist, quantile)),
        quantile=float(quantile),
    )


def ood_flags(
    domain: DomainInfo,
    numbers: Sequence[Sequence[int] | np.ndarray],
    embeddings: np.ndarray,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Out-of-domain checks for a batch of B crystals.

    Args:
        domain: the fitted domain.
        numbers: atomic numbers of each crystal.
        embeddings: [B, D] member-0 embeddings (raw, as the ensemble returns them).

    Returns:
        ``(in_domain [B] bool, reasons [B] ("" when in domain; otherwise every failed check,
        joined by "; "), distance [B] to the nearest training embedding)``.
    """
    dist = nearest_distance(domain.standardize(embeddings), domain.train_embeddings)
    in_domain = np.ones(len(dist), dtype=bool)
    reasons: list[str] = []
    for i, nums in enumerate(numbers):
        why = []
        unseen = sorted({int(z) for z in np.asarray(nums).tolist()} - domain.elements)
        if unseen:
            why.append(f"unseen elements: {', '.join(element_symbols(unseen))}")
        if dist[i] > domain.threshold:
            why.append(
                f"embedding distance {dist[i]:.3g} > {domain.threshold:.3g} "
                f"(q{domain.quantile:g} of training NN distances)"
            )
        in_domain[i] = not why
        reasons.append("; ".join(why))
    return in_domain, reasons, dist
