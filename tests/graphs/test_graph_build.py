from __future__ import annotations

import math

import numpy as np
import torch
from pymatgen.core import Structure

from kappaflow.graphs.build import crystal_to_graph
from kappaflow.structure.crystal import CrystalArrays
from kappaflow.structure.neighbors import periodic_neighbors


def test_fields_and_dtypes(structure: Structure) -> None:
    crystal = CrystalArrays.from_structure(structure)
    g = crystal_to_graph(crystal, cutoff=8.0, max_neighbors=12, y=[1.5, math.nan], material_id="x")
    assert set(g.keys()) == {"z", "edge_index", "edge_dist", "y", "material_id", "num_nodes"}
    assert g.z.dtype == torch.int64 and g.z.tolist() == list(structure.atomic_numbers)
    assert g.edge_index.dtype == torch.int64 and g.edge_index.shape == (2, 12 * len(structure))
    assert g.edge_dist.dtype == torch.float32 and g.edge_dist.shape == (12 * len(structure),)
    assert g.y.dtype == torch.float32 and g.y.shape == (1, 2)
    assert g.y[0, 0] == 1.5 and torch.isnan(g.y[0, 1])
    assert g.material_id == "x" and g.num_nodes == len(structure)
    g.validate(raise_on_error=True)


def test_edge_direction_neighbour_to_centre(triclinic: Structure) -> None:
    s = triclinic
    g = crystal_to_graph(CrystalArrays.from_structure(s), cutoff=8.0, max_neighbors=2)
    in_degree = torch.bincount(g.edge_index[1], minlength=len(s))
    out_degree = torch.bincount(g.edge_index[0], minlength=len(s))
    assert torch.all(in_degree == 2)  # row 1 = centre: each centre keeps exactly k neighbours
    assert not torch.all(out_degree == 2)
    # distances agree with the neighbour list, centre-major
    c, n, d = periodic_neighbors(s.lattice.matrix, s.frac_coords, 8.0, 2)
    assert np.array_equal(g.edge_index[1].numpy(), c)
    assert np.array_equal(g.edge_index[0].numpy(), n)
    np.testing.assert_allclose(g.edge_dist.numpy(), d, rtol=1e-6)


def test_no_targets_and_all_neighbours(structure: Structure) -> None:
    g = crystal_to_graph(CrystalArrays.from_structure(structure), cutoff=4.0, max_neighbors=None)
    assert g.y.shape == (1, 0)
    assert g.edge_dist.max() <= 4.0 + 1e-6
    c, _, _ = periodic_neighbors(structure.lattice.matrix, structure.frac_coords, 4.0)
    assert g.edge_index.shape[1] == len(c)
