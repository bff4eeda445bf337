"""Crystal graphs: graph building, edge expansion and the on-disk graph cache.

Neighbour search and element features live in :mod:`kappaflow.structure`. Submodules are
imported lazily, so importing the package does not pull in torch_geometric.
"""

from __future__ import annotations

from kappaflow._lazy import lazy_exports

_EXPORTS = {
    "crystal_to_graph": "kappaflow.graphs.build",
    "crystal_to_atom_graph": "kappaflow.graphs.atoms",
    "build_graph_cache": "kappaflow.graphs.cache",
    "load_graph_cache": "kappaflow.graphs.cache",
    "GraphDataset": "kappaflow.graphs.cache",
    "GaussianExpansion": "kappaflow.graphs.expansion",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
