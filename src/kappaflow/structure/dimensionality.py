"""Dimensionality of the linked atom network of a periodic crystal (3D bulk vs slabs, wires).

Two atoms are linked when they (or periodic images) are closer than ``radius`` Å. The network
is followed through periodic images: each connected component gets the rank of the lattice
translations along which it repeats (Larsen et al., Phys. Rev. Materials 3, 034003 (2019),
rank-determination idea, with a distance criterion instead of bonds). A bulk crystal has a
component of rank 3; a slab (2D), a wire (1D) or a molecule (0D) in a box with more than
``radius`` Å of vacuum does not.

The criterion is a distance, not a bond, on purpose: van der Waals gaps of layered bulk
crystals (graphite 3.35 Å, Bi2Te3 ~3.7 Å) and molecular crystals are bridged, vacuum layers
of model slabs (>= ~8 Å) are not.
"""

from __future__ import annotations

import numpy as np
from pymatgen.optimization.neighbors import find_points_in_spheres
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components

_PBC = np.ones(3, dtype=np.int64)


def network_dimension(
    lattice: np.ndarray, frac_coords: np.ndarray, radius: float
) -> tuple[int, list[int]]:
    """Periodic dimension of the network of atoms linked within ``radius``.

    Args:
        lattice: [3, 3] lattice vectors as rows, Å.
        frac_coords: [n, 3] fractional coordinates.
        radius: link distance, Å.

    Returns:
        ``(dimension, per_component)``: the largest rank (0..3) over connected components and
        the rank of each component (in component-label order).
    """
    lattice = np.ascontiguousarray(lattice, dtype=np.float64).reshape(3, 3)
    frac = np.asarray(frac_coords, dtype=np.float64).reshape(-1, 3)
    n = len(frac)
    if n == 0:
        return 0, []
    cart = np.ascontiguousarray(frac @ lattice)
    centers, neighbors, images, _ = find_points_in_spheres(
        cart, cart, r=float(radius), pbc=_PBC, lattice=lattice, tol=1e-8
    )
    i = np.asarray(centers, dtype=np.int64)
    j = np.asarray(neighbors, dtype=np.int64)
    img = np.rint(np.asarray(images, dtype=np.float64)).astype(np.int64).reshape(-1, 3)
    keep = (i != j) | (np.abs(img).sum(axis=1) > 0)
    i, j, img = i[keep], j[keep], img[keep]
    if not len(i):
        return 0, [0] * n
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
    n_comp, labels = connected_components(graph, directed=False)
    # Image offset of every atom along a spanning tree of its component: an edge i -> j with
    # image t places atom j at offset[i] + t. Edge order: by centre, for CSR-like slicing.
    order = np.argsort(i, kind="stable")
    i, j, img = i[order], j[order], img[order]
    starts = np.searchsorted(i, np.arange(n + 1))
    offset = np.zeros((n, 3), dtype=np.int64)
    for root in np.unique(labels, return_index=True)[1]:
        bfs, _ = breadth_first_order(graph, int(root), directed=False)
        seen = np.zeros(n, dtype=bool)
        seen[bfs[0]] = True
        for a in bfs:
            lo, hi = starts[a], starts[a + 1]
            nb = j[lo:hi]
            new = ~seen[nb]
            if new.any():
                nb_new, first = np.unique(nb[new], return_index=True)
                offset[nb_new] = offset[a] + img[lo:hi][new][first]
                seen[nb_new] = True
    cycles = offset[i] + img - offset[j]
    ranks = []
    for c in range(n_comp):
        vec = cycles[labels[i] == c]
        vec = vec[np.abs(vec).sum(axis=1) > 0]
        ranks.append(int(np.linalg.matrix_rank(vec.astype(np.float64))) if len(vec) else 0)
    return max(ranks), ranks
