"""Paired comparison of two models on the same cross-validation folds.

A claim "A beats B" is a difference on the same folds, with its spread — not two means side by
side. For every fold both models were scored on (same repeat and fold number, same test size),
the difference ``d = metric(A) - metric(B)`` is taken (log10-MAE in decades of κ, κ in W/m/K;
for an error metric a negative ``d`` means A is better). Folds of a repeated k-fold overlap in
their training sets, so the plain standard error of the mean difference is too small; the
corrected resampled t-test of Nadeau & Bengio (Machine Learning 52, 239, 2003) inflates the
variance by ``1/n + n_test/n_train``. The one-sided p-value tests "A is better than B".

Hand-written rather than taken from a library: it is a dozen lines on top of ``scipy.stats.t``,
and the libraries that offer it (e.g. mlxtend's ``paired_ttest_5x2cv``) refit the models
themselves, while here the fold results already exist (``cv.json`` of the CV protocol).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

FoldKey = tuple[int, int]


def fold_metrics(cv: Mapping[str, Any], metric: str = "log10_mae") -> dict[FoldKey, float]:
    """Return ``{(repeat, fold): metric}`` from a ``cv.json`` record (its ``folds`` list).

    Raises:
        KeyError: the record has no per-fold results.
    """
    if "folds" not in cv:
        raise KeyError("cv record has no 'folds' (per-fold results)")
    return {
        (int(f["repeat"]), int(f["fold"])): float(f["metrics"][metric])
        for f in cv["folds"]
        if metric in f.get("metrics", {})
    }


def _test_train_ratio(cv: Mapping[str, Any]) -> float:
    ratios = [
        float(f["n_test"]) / max(1.0, float(f["n_train"]) + float(f.get("n_val", 0)))
        for f in cv.get("folds", [])
        if "n_test" in f and "n_train" in f
    ]
    return float(np.mean(ratios)) if ratios else 0.0


@dataclass(frozen=True)
class PairedComparison:
    """Candidate minus reference on the same folds.

    Attributes:
        metric: the metric compared (e.g. ``log10_mae``, decades).
        n_folds: folds both were scored on.
        candidate_mean: the candidate's mean over those folds.
        reference_mean: the reference's mean over those folds.
        mean_diff: mean of candidate - reference (negative: candidate better for an error).
        std_diff: standard deviation of the per-fold differences (ddof=1; 0 for one fold).
        se: corrected standard error of ``mean_diff`` (Nadeau & Bengio).
        p_value: one-sided p-value of "the candidate is better" (1.0 with fewer than 2 folds).
        lower_is_better: direction of the metric.
    """

    metric: str
    n_folds: int
    candidate_mean: float
    reference_mean: float
    mean_diff: float
    std_diff: float
    se: float
    p_value: float
    lower_is_better: bool = True

    def beats(self, alpha: float, min_delta: float = 0.0) -> bool:
        """Whether the candidate is better by more than ``min_delta`` at significance ``alpha``."""
        gain = -self.mean_diff if self.lower_is_better else self.mean_diff
        return gain > min_delta and self.p_value < alpha

    def text(self) -> str:
        """One line: ``Δ log10_mae -0.031 ± 0.012 (SE, 15 folds, p = 0.021)``."""
        return (
            f"Δ {self.metric} {self.mean_diff:+.3f} ± {self.se:.3f} "
            f"(SE, {self.n_folds} folds, p = {self.p_value:.3g})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        return asdict(self)


def paired_comparison(
    candidate: Mapping[str, Any],
    reference: Mapping[str, Any],
    metric: str = "log10_mae",
    lower_is_better: bool = True,
) -> PairedComparison:
    """Compare two ``cv.json`` records fold by fold (see the module docstring).

    Args:
        candidate: cv record of the model under test.
        reference: cv record of the model it is compared with (a baseline, the champion).
        metric: per-fold metric name.
        lower_is_better: direction of ``metric``.

    Raises:
        ValueError: no fold in common, or the common folds differ in test size (not the same
            folds: another dataset or protocol).
    """
    a, b = fold_metrics(candidate, metric), fold_metrics(reference, metric)
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"no common folds to compare ({metric})")
    sizes_a = {(int(f["repeat"]), int(f["fold"])): f.get("n_test") for f in candidate["folds"]}
    sizes_b = {(int(f["repeat"]), int(f["fold"])): f.get("n_test") for f in reference["folds"]}
    if any(sizes_a.get(k) != sizes_b.get(k) for k in common):
        raise ValueError("the folds differ in test size: not the same folds (dataset/protocol)")
    d = np.array([a[k] - b[k] for k in common], dtype=np.float64)
    n = len(d)
    mean = float(d.mean())
    std = float(d.std(ddof=1)) if n > 1 else 0.0
    if n < 2:
        se, p = math.inf, 1.0
    else:
        se = std * math.sqrt(1.0 / n + _test_train_ratio(candidate))
        signed = mean if lower_is_better else -mean  # negative: candidate better
        exact = 0.0 if signed < 0 else 1.0  # every fold moved the same way
        p = exact if se == 0.0 else float(stats.t.cdf(signed / se, df=n - 1))
    return PairedComparison(
        metric=metric,
        n_folds=n,
        candidate_mean=float(np.mean([a[k] for k in common])),
        reference_mean=float(np.mean([b[k] for k in common])),
        mean_diff=mean,
        std_diff=std,
        se=se,
        p_value=p,
        lower_is_better=lower_is_better,
    )
