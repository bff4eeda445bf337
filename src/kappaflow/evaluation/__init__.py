"""Evaluation: κ and generic regression metrics, baseline models and report figures.

Submodules: :mod:`~kappaflow.evaluation.metrics`, :mod:`~kappaflow.evaluation.baselines`,
:mod:`~kappaflow.evaluation.plots` (import the latter two explicitly; they pull in sklearn
ensembles and matplotlib).
"""

from kappaflow.evaluation.metrics import aggregate_folds, basic_metrics, regression_metrics

__all__ = ["aggregate_folds", "basic_metrics", "regression_metrics"]
