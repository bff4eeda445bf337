"""Model registry: the κ ensemble as an MLflow pyfunc, registration and gated promotion.

Submodules are imported lazily (``import kappaflow.registry`` does not import MLflow or torch).
"""

from __future__ import annotations

from kappaflow._lazy import lazy_exports

_EXPORTS = {
    "KappaEnsemble": "kappaflow.registry.ensemble",
    "GraphSettings": "kappaflow.registry.ensemble",
    "KappaEnsembleModel": "kappaflow.registry.pyfunc",
    "log_ensemble_model": "kappaflow.registry.pyfunc",
    "write_ensemble_dir": "kappaflow.registry.pyfunc",
    "load_ensemble_dir": "kappaflow.registry.pyfunc",
    "decide": "kappaflow.registry.promotion",
    "Decision": "kappaflow.registry.promotion",
    "register_stage": "kappaflow.registry.stage",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
