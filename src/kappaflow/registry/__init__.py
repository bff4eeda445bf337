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
    "DomainInfo": "kappaflow.registry.domain",
    "fit_domain": "kappaflow.registry.domain",
    "ood_flags": "kappaflow.registry.domain",
    "predict_cifs": "kappaflow.registry.predictor",
    "predict_items": "kappaflow.registry.predictor",
    "resolve_model": "kappaflow.registry.champion",
    "load_champion": "kappaflow.registry.champion",
    "LoadedModel": "kappaflow.registry.champion",
    "UntrustedModelError": "kappaflow.registry.trust",
    "verify_ensemble_dir": "kappaflow.registry.trust",
    "ensemble_sha256": "kappaflow.registry.trust",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
