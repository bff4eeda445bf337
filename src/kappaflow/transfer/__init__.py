"""Transfer learning: strategies that reuse a pretrained encoder for κ (W/m/K).

See :mod:`kappaflow.transfer.strategies`. Exports are lazy (importing the package does not
import torch / scikit-learn).
"""

from __future__ import annotations

from kappaflow._lazy import lazy_exports

_S = "kappaflow.transfer.strategies"
_EXPORTS = {
    name: _S
    for name in (
        "STRATEGIES",
        "REGRESSORS",
        "EmbeddingRegressor",
        "PreparedModel",
        "StageSpec",
        "apply_stage",
        "card_differences",
        "copy_encoder",
        "extract_embeddings",
        "load_pretrained",
        "merge_trainer_cfg",
        "needs_input_scaler",
        "prepare_model",
        "pretrained_model_path",
        "stage_plan",
        "strategy_name",
        "uses_sklearn_regressor",
    )
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
