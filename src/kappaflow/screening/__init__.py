"""Screening: score a pool of crystals with the champion κ ensemble, with σ and domain flags.

Submodules are imported lazily (``kappaflow.screening.cli`` is imported by ``kappaflow --help``).
"""

from __future__ import annotations

from kappaflow._lazy import lazy_exports

_EXPORTS = {
    "DomainInfo": "kappaflow.screening.domain",
    "fit_domain": "kappaflow.screening.domain",
    "ood_flags": "kappaflow.screening.domain",
    "predict_cifs": "kappaflow.screening.predictor",
    "predict_items": "kappaflow.screening.predictor",
    "load_pool": "kappaflow.screening.pool",
    "screen_stage": "kappaflow.screening.stage",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
