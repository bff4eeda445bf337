"""Crystal -> the atom graph a universal interatomic potential reads (SevenNet's input format).

Universal potentials (:mod:`kappaflow.phonons.potential`) need edge *vectors* (with periodic
images), not the distances of the crystal-graph cache (:mod:`kappaflow.graphs.cache`), and own
their cutoff (SevenNet: 5 Å). :func:`crystal_to_atom_graph` builds that graph with the package's
own neighbour search (``sevenn.train.dataload.unlabeled_atoms_to_graph``, so the encoder sees
exactly what the potential was trained on) and adds kappaflow's fields: ``z`` (atomic numbers,
for the composition route of the stack), ``y`` and ``material_id``. Built on the fly: a 2-8 atom
cell takes ~1-3 ms, so no cache is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kappaflow.graphs.build import targets_to_tensor
from kappaflow.structure.crystal import CrystalArrays


def crystal_to_atom_graph(
    crystal: CrystalArrays,
    cutoff: float,
    y: Sequence[float] | np.ndarray | None = None,
    material_id: str = "",
) -> Any:
    """Build the potential's atom graph of one crystal.

    Args:
        crystal: the crystal (lattice in Å, fractional coordinates, atomic numbers).
        cutoff: neighbour radius, Å (the potential's own: SevenNet 5 Å).
        y: raw target values (NaN where missing); None gives ``y`` of shape [1, 0].
        material_id: identifier stored as ``material_id``.

    Returns:
        A ``sevenn.atom_graph_data.AtomGraphData`` (a PyG ``Data``: batches with
        ``torch_geometric.loader.DataLoader``) with SevenNet's keys (``atomic_numbers``,
        ``edge_index``, ``edge_vec`` Å, ``pos``, ``cell_volume`` Å³, ``num_atoms``) plus ``z``
        [n] int64, ``y`` [1, T] float32 and ``material_id``.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sevenn: no tensor-product accelerator installed
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

    data = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(crystal.to_ase(), float(cutoff)))
    data.z = torch.from_numpy(np.asarray(crystal.numbers, dtype=np.int64).copy())
    data.y = targets_to_tensor(y)
    data.material_id = str(material_id)
    return data
