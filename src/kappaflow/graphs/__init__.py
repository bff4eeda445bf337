"""Crystal graphs: neighbour lists, element features, graph building and the on-disk graph cache.

Submodules are imported lazily, so ``from kappaflow.graphs.neighbors import periodic_neighbors``
does not pull in torch_geometric.
"""

from __future__ import annotations

from kappaflow._lazy import lazy_exports

_EXPORTS = {
    "periodic_neighbors": "kappaflow.graphs.neighbors",
    "element_feature_table": "kappaflow.graphs.elements",
    "MAX_Z": "kappaflow.graphs.elements",
    "SUPPORTED_Z": "kappaflow.graphs.elements",
    "crystal_to_graph": "kappaflow.graphs.build",
    "build_graph_cache": "kappaflow.graphs.cache",
    "load_graph_cache": "kappaflow.graphs.cache",
    "GraphDataset": "kappaflow.graphs.cache",
    "GaussianExpansion": "kappaflow.graphs.expansion",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
