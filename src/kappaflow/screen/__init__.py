"""Screening: score a pool of crystals with the champion κ ensemble, with σ and domain flags.

Submodules are imported lazily. The ``screen`` stage is :mod:`kappaflow.stages.screen`.
"""

from __future__ import annotations

from kappaflow._lazy import lazy_exports

_EXPORTS = {
    "load_pool": "kappaflow.screen.pool",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
