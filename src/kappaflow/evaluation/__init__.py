"""Evaluation: the honest protocol, metrics, baselines, report and figures.

Submodules: :mod:`~kappaflow.evaluation.metrics` (log10-MAE, Spearman, MAPE…),
:mod:`~kappaflow.evaluation.protocol` (repeated grouped k-fold, baselines on the same folds),
:mod:`~kappaflow.evaluation.extrapolation` (Ju et al.: ranking of held-out high-κ compounds),
:mod:`~kappaflow.evaluation.baselines`, :mod:`~kappaflow.evaluation.report` (transfer table),
:mod:`~kappaflow.evaluation.plots`, :mod:`~kappaflow.evaluation.stage` (the ``evaluate`` stage).
Import those explicitly; only the metrics are re-exported here (the rest pull in sklearn,
matplotlib or torch).
"""

from kappaflow.evaluation.metrics import aggregate_folds, basic_metrics, regression_metrics

__all__ = ["aggregate_folds", "basic_metrics", "regression_metrics"]
