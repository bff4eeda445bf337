"""Get a dataset's raw table into the repository's data folder, whatever its origin.

``fetch(spec, dest, data_root)`` dispatches on ``spec.source.kind`` through :data:`SOURCES`:

* ``mirror``: copy ``data_root / spec.path`` byte for byte, verifying sha256 (card + MANIFEST).
* ``matbench``: a matminer/matbench dataset (download verified against matminer's metadata).
* ``mp_api``: Materials Project summary documents (optional ``mp-api``; ``MP_API_KEY``).
* ``aflow``: AFLOW AGL κ via the AFLUX API plus each entry's structure file.

All write a deterministic gzip CSV with the card's columns; downloaders keep unconvertible rows
with an empty CIF and the reason in ``fetch_error`` (see :mod:`kappaflow.data.sources.base`).
"""

from kappaflow.data.sources.base import (
    FETCH_ERROR_COL,
    SOURCES,
    ChecksumMismatchError,
    FetchResult,
    MissingDependencyError,
    Source,
    SourceError,
    fetch,
    output_columns,
    register_source,
    sha256_file,
)

# Importing the modules registers their sources in SOURCES.
from kappaflow.data.sources.mirror import MirrorSource  # isort: skip
from kappaflow.data.sources.matbench import MatbenchSource  # isort: skip
from kappaflow.data.sources.mp_api import MPApiSource  # isort: skip
from kappaflow.data.sources.aflow import AflowSource  # isort: skip

__all__ = [
    "FETCH_ERROR_COL",
    "SOURCES",
    "AflowSource",
    "ChecksumMismatchError",
    "FetchResult",
    "MPApiSource",
    "MatbenchSource",
    "MirrorSource",
    "MissingDependencyError",
    "Source",
    "SourceError",
    "fetch",
    "output_columns",
    "register_source",
    "sha256_file",
]
