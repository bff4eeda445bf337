"""Crystal graphs: neighbour lists, element features, graph building and the on-disk graph cache.

Submodules are imported lazily, so ``from kappaflow.graphs.neighbors import periodic_neighbors``
does not pull in torch_geometric.
"""

from __future__ import annotations

import importlib
from typing import Any

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

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
