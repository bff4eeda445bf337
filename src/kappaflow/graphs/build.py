"""Crystal -> PyG graph conversion (one graph per crystal, periodic images as multi-edges)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch_geometric.data import Data

from kappaflow.structure.crystal import CrystalArrays
from kappaflow.structure.neighbors import periodic_neighbors

#: CGCNN defaults: 8 Å radius, 12 nearest neighbours per atom.
DEFAULT_CUTOFF = 8.0
DEFAULT_MAX_NEIGHBORS = 12


def crystal_arrays_to_edges(
    crystal: CrystalArrays, cutoff: float, max_neighbors: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Edge arrays of one crystal in the graph convention (without building a ``Data``).

    Args:
        crystal: the crystal.
        cutoff: neighbour radius, Å.
        max_neighbors: keep at most this many nearest neighbours per atom (None: all).

    Returns:
        ``(edge_index, edge_dist)``: int64 [2, E] with row 0 = neighbour j (source) and
        row 1 = centre i (target), and float32 [E] distances in Å.
    """
    centers, neighbors, dists = periodic_neighbors(
        crystal.lattice, crystal.frac_coords, cutoff, max_neighbors
    )
    return np.stack([neighbors, centers]), dists.astype(np.float32)


def targets_to_tensor(y: Sequence[float] | np.ndarray | None) -> torch.Tensor:
    """Targets as float32 [1, T] (T = 0 when ``y`` is None); missing values stay NaN."""
    if y is None:
        return torch.zeros((1, 0), dtype=torch.float32)
    arr = np.asarray(y, dtype=np.float32).reshape(1, -1)
    return torch.from_numpy(arr.copy())


def crystal_to_graph(
    crystal: CrystalArrays,
    cutoff: float = DEFAULT_CUTOFF,
    max_neighbors: int | None = DEFAULT_MAX_NEIGHBORS,
    y: Sequence[float] | np.ndarray | None = None,
    material_id: str = "",
) -> Data:
    """Build the PyG graph of one crystal.

    Nodes are the atoms of the cell; each atom i receives an edge from each of its (up to
    ``max_neighbors``) nearest periodic images j within ``cutoff``, so small cells get several
    edges i <- j from different images.

    Args:
        crystal: the crystal (lattice in Å, fractional coordinates, atomic numbers).
        cutoff: neighbour radius, Å (CGCNN: 8).
        max_neighbors: neighbours kept per atom, nearest first (CGCNN: 12); None keeps all.
        y: raw target values (NaN where missing), length T; None gives ``y`` of shape [1, 0].
        material_id: identifier stored as ``data.material_id``.

    Returns:
        ``Data(z [n] int64, edge_index [2, E] int64 (row 0 neighbour/source, row 1
        centre/target), edge_dist [E] float32 Å, y [1, T] float32, material_id str,
        num_nodes n)``.
    """
    edge_index, edge_dist = crystal_arrays_to_edges(crystal, cutoff, max_neighbors)
    return Data(
        z=torch.from_numpy(crystal.numbers.astype(np.int64, copy=True)),
        edge_index=torch.from_numpy(edge_index),
        edge_dist=torch.from_numpy(edge_dist),
        y=targets_to_tensor(y),
        material_id=str(material_id),
        num_nodes=crystal.n_sites,
    )
