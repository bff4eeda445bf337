"""Gated promotion in the MLflow model registry (aliases ``champion`` / ``challenger``).

Rule (:func:`decide`), with the held-out metric of the evaluation protocol (the k-fold CV
``log10_mae`` of the candidate's own fold models, lower is better):

0. Baseline gate (:func:`baseline_gate`): the candidate must beat every baseline (median, Magpie
   random forest) on the registry dataset's folds, judged by a paired comparison over the same
   folds (:mod:`kappaflow.evaluation.paired`: mean difference below ``-min_delta`` and one-sided
   p < ``alpha``). A candidate that loses to a baseline is never promoted (the decision says
   which baseline and by how much) unless the config relaxes the gate explicitly
   (``registry.gate.enforce: false``, smoke runs); such a version is tagged ``gated=false``.
1. No champion yet: the candidate is promoted.
2. The champion was scored on another dataset or with other protocol settings (tags
   ``dataset`` and ``protocol_digest`` differ): the two numbers are not comparable, so the
   candidate, which reflects the current configuration, is promoted; the decision tag says why.
3. Otherwise the candidate is promoted only if it beats the champion: by the same paired
   comparison when both carry their per-fold metrics (tag ``folds_<metric>``), else (older
   versions) by a mean better by more than ``min_delta``; a tie keeps the champion.

``challenger`` marks the runner-up: after a promotion the previous champion; after a rejection
the candidate, if it beats the current challenger (or the challenger is missing or not
comparable), otherwise the challenger stays.

Each registered version carries tags (``strategy``, ``dataset``, ``metric``, ``log10_mae``,
``protocol_digest``, ``ensemble_sha256``, ``git_commit``, ``finetune_run_id``, ...) and, once
decided, ``decision``, ``candidate_log10_mae`` and ``champion_log10_mae`` (the champion's metric
at decision time; ``none`` when there was none). MLflow 3 aliases, no deprecated stages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kappaflow.evaluation.paired import PairedComparison, paired_comparison

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CHALLENGER = "challenger"
#: Version tags compared to decide whether two metrics are comparable.
COMPARABILITY_TAGS = ("dataset", "protocol_digest", "metric")


@dataclass(frozen=True)
class Decision:
    """Outcome of :func:`decide`.

    Attributes:
        promote: the candidate becomes champion.
        reason: one human-readable line (stored as the ``decision`` tag).
        candidate_metric: the candidate's metric.
        champion_metric: the champion's metric at decision time (None: no comparable champion).
    """

    promote: bool
    reason: str
    candidate_metric: float
    champion_metric: float | None


@dataclass(frozen=True)
class Gate:
    """Outcome of :func:`baseline_gate`.

    Attributes:
        passed: the candidate beats every baseline (paired, same folds).
        enforced: a failed gate blocks promotion (False only in explicitly relaxed configs).
        reason: one line naming each baseline with the paired difference and its spread.
        comparisons: the paired comparison against each baseline.
    """

    passed: bool
    enforced: bool
    reason: str
    comparisons: dict[str, PairedComparison]

    @property
    def blocks(self) -> bool:
        """Whether the gate stops the candidate from becoming champion."""
        return self.enforced and not self.passed

    @property
    def tag(self) -> str:
        """Value of the version tag ``gated``: ``true``, or why the gate did not hold."""
        if self.passed:
            return "true"
        return "false: gate not enforced by the config" if not self.enforced else "false"


def baseline_gate(
    candidate_cv: Mapping[str, Any],
    baseline_cvs: Mapping[str, Mapping[str, Any] | None],
    *,
    alpha: float,
    min_delta: float = 0.0,
    metric: str = "log10_mae",
    enforce: bool = True,
) -> Gate:
    """Check that the candidate beats every baseline on the same folds (pure; lower is better).

    Args:
        candidate_cv: the candidate's ``cv.json`` record (per-fold metrics).
        baseline_cvs: baseline name -> its ``cv.json`` record on the same dataset and protocol
            (None: missing, which fails the gate).
        alpha: significance of the one-sided paired test.
        min_delta: the candidate must be better by more than this (metric units, decades).
        metric: per-fold metric compared.
        enforce: whether a failed gate blocks promotion.
    """
    if not baseline_cvs:
        return Gate(False, enforce, "no baseline configured to compare with", {})
    comparisons: dict[str, PairedComparison] = {}
    problems: list[str] = []
    for name, cv in baseline_cvs.items():
        if cv is None:
            problems.append(f"no {name} result on these folds (run `dvc repro evaluate`)")
            continue
        try:
            cmp = paired_comparison(candidate_cv, cv, metric)
        except (KeyError, ValueError) as err:
            problems.append(f"{name} not comparable ({err})")
            continue
        comparisons[name] = cmp
        if not cmp.beats(alpha, min_delta):
            problems.append(
                f"does not beat {name} ({cmp.candidate_mean:.4f} vs {cmp.reference_mean:.4f}: "
                f"{cmp.text()}, needs Δ < {-min_delta:+.3f} with p < {alpha})"
            )
    if problems:
        return Gate(False, enforce, "candidate " + "; ".join(problems), comparisons)
    beaten = ", ".join(f"{n} ({c.text()})" for n, c in comparisons.items())
    return Gate(True, enforce, f"candidate beats every baseline: {beaten}", comparisons)


def fold_record(cv: Mapping[str, Any], metric: str = "log10_mae") -> str:
    """Return the per-fold part of a cv record as compact JSON (tag ``folds_<metric>``)."""
    keep = ("repeat", "fold", "n_train", "n_val", "n_test")
    folds = [
        {**{k: f[k] for k in keep if k in f}, "metrics": {metric: f["metrics"][metric]}}
        for f in cv.get("folds", [])
        if metric in f.get("metrics", {})
    ]
    return json.dumps({"folds": folds}, separators=(",", ":"))


def champion_comparison(
    candidate_cv: Mapping[str, Any], champion: ModelVersion | None, metric: str = "log10_mae"
) -> PairedComparison | None:
    """Paired comparison with the champion's per-fold metrics (None if it has none stored)."""
    if champion is None or f"folds_{metric}" not in champion.tags:
        return None
    try:
        return paired_comparison(candidate_cv, json.loads(champion.tags[f"folds_{metric}"]), metric)
    except (KeyError, ValueError):
        return None


def _better(a: float, b: float, lower_is_better: bool, min_delta: float) -> bool:
    return a < b - min_delta if lower_is_better else a > b + min_delta


def decide(
    candidate_metric: float,
    champion_metric: float | None,
    lower_is_better: bool = True,
    *,
    incomparable: str | None = None,
    min_delta: float = 0.0,
    metric_name: str = "log10_mae",
    gate: Gate | None = None,
    versus_champion: PairedComparison | None = None,
    alpha: float = 0.05,
) -> Decision:
    """Decide whether a candidate replaces the champion (pure; see the module docstring).

    Args:
        candidate_metric: the candidate's held-out metric.
        champion_metric: the champion's, or None when there is no champion.
        lower_is_better: direction of the metric (True for errors such as log10 MAE).
        incomparable: why the champion's metric cannot be compared (other dataset/protocol);
            None when it can.
        min_delta: the candidate must beat the champion by more than this.
        metric_name: for the reason text.
        gate: the baseline gate (:func:`baseline_gate`); None: no gate.
        versus_champion: paired comparison with the champion on the same folds, when both
            carry per-fold metrics; None: compare the means.
        alpha: significance of the paired comparison with the champion.

    Raises:
        ValueError: the candidate metric is not finite.
    """
    if not math.isfinite(candidate_metric):
        raise ValueError(f"candidate {metric_name} is not finite: {candidate_metric}")
    c = f"{metric_name} {candidate_metric:.4f}"
    if gate is not None and gate.blocks:
        kept = "kept champion" if champion_metric is not None else "no champion"
        return Decision(False, f"{kept}: {gate.reason}", candidate_metric, champion_metric)
    if gate is not None and not gate.passed:
        c += f" [baseline gate NOT enforced: {gate.reason}]"
    if versus_champion is not None and incomparable is None and champion_metric is not None:
        if versus_champion.beats(alpha, min_delta):
            return Decision(
                True,
                f"promoted: candidate {c} beats champion {champion_metric:.4f} "
                f"({versus_champion.text()})",
                candidate_metric,
                champion_metric,
            )
        return Decision(
            False,
            f"kept champion: candidate {c} does not beat champion {champion_metric:.4f} "
            f"({versus_champion.text()}, needs p < {alpha})",
            candidate_metric,
            champion_metric,
        )
    if champion_metric is None and incomparable is None:
        return Decision(True, f"promoted: no champion yet ({c})", candidate_metric, None)
    if incomparable is not None:
        return Decision(
            True,
            f"promoted: champion not comparable ({incomparable}); candidate {c}",
            candidate_metric,
            champion_metric,
        )
    assert champion_metric is not None
    if not math.isfinite(champion_metric) or _better(
        candidate_metric, champion_metric, lower_is_better, min_delta
    ):
        return Decision(
            True,
            f"promoted: candidate {c} beats champion {champion_metric:.4f}",
            candidate_metric,
            champion_metric,
        )
    return Decision(
        False,
        f"kept champion: candidate {c} does not beat champion {champion_metric:.4f}",
        candidate_metric,
        champion_metric,
    )


def incomparable_reason(candidate: Mapping[str, str], champion: Mapping[str, str]) -> str | None:
    """Why two versions' metrics are not comparable (differing tags), or None if they are."""
    diffs = [
        f"{k} {champion.get(k, '?')} vs {candidate.get(k, '?')}"
        for k in COMPARABILITY_TAGS
        if champion.get(k) != candidate.get(k)
    ]
    return "; ".join(diffs) if diffs else None


def metric_of(version: ModelVersion | None, metric_name: str = "log10_mae") -> float | None:
    """Return the metric tag of a version as float (None if absent or not a number)."""
    if version is None:
        return None
    try:
        return float(version.tags[metric_name])
    except (KeyError, TypeError, ValueError):
        return None


def same_version(a: ModelVersion | None, b: ModelVersion | None) -> bool:
    """Whether two registry entries are the same version (MLflow mixes str and int numbers)."""
    return a is not None and b is not None and int(a.version) == int(b.version)


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """Return the version holding ``alias`` of ``name`` (None if unset or the model is new)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def find_version_by_tag(
    client: MlflowClient, name: str, key: str, value: str
) -> ModelVersion | None:
    """Return the newest version of ``name`` whose tag ``key`` equals ``value`` (None if none)."""
    versions = client.search_model_versions(f"name = '{name}'")
    hits = [v for v in versions if v.tags.get(key) == value]
    return max(hits, key=lambda v: int(v.version)) if hits else None


def register_version(
    client: MlflowClient,
    name: str,
    model_uri: str,
    run_id: str | None,
    tags: Mapping[str, Any],
    description: str | None = None,
) -> ModelVersion:
    """Create registered model ``name`` if needed and a new version of it with ``tags``."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            tags={"metric": "log10_mae", "lower_is_better": "true"},
            description="κ_L (W/m/K) ensemble: CIF -> κ, log10 κ, σ. Aliases champion/challenger.",
        )
    # MLflow 3 logged models are `models:/m-<id>`: a tracking server only accepts that source
    # with its model_id (SQLite stores do not check, so tests against a server cover this).
    model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/m-") else None
    return client.create_model_version(
        name,
        source=model_uri,
        run_id=run_id,
        tags={k: str(v) for k, v in tags.items()},
        description=description,
        model_id=model_id,
    )


def apply_decision(
    client: MlflowClient,
    name: str,
    candidate: ModelVersion,
    champion: ModelVersion | None,
    challenger: ModelVersion | None,
    decision: Decision,
    lower_is_better: bool = True,
    metric_name: str = "log10_mae",
) -> dict[str, int | None]:
    """Move the aliases as :func:`decide` said and tag the candidate with the decision.

    Returns:
        ``{"champion": version, "challenger": version or None}`` after the move.
    """
    tags = {
        "decision": decision.reason,
        f"candidate_{metric_name}": f"{decision.candidate_metric:.6g}",
        f"champion_{metric_name}": "none"
        if decision.champion_metric is None
        else f"{decision.champion_metric:.6g}",
        "promoted": str(decision.promote).lower(),
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, candidate.version, k, v)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, candidate.version)
        if champion is not None and not same_version(champion, candidate):
            client.set_registered_model_alias(name, CHALLENGER, champion.version)
        elif challenger is not None and same_version(challenger, candidate):
            client.delete_registered_model_alias(name, CHALLENGER)
    elif champion is not None and not same_version(champion, candidate):
        runner_up = challenger is None or same_version(challenger, candidate)
        if not runner_up:
            c_metric = metric_of(challenger, metric_name)
            runner_up = (
                c_metric is None
                or incomparable_reason(candidate.tags, challenger.tags) is not None
                or _better(decision.candidate_metric, c_metric, lower_is_better, 0.0)
            )
        if runner_up:
            client.set_registered_model_alias(name, CHALLENGER, candidate.version)
    client.set_registered_model_tag(
        name, "last_decision", f"v{candidate.version}: {decision.reason}"
    )
    champ = version_by_alias(client, name, CHAMPION)
    chall = version_by_alias(client, name, CHALLENGER)
    return {
        CHAMPION: int(champ.version) if champ else None,
        CHALLENGER: int(chall.version) if chall else None,
    }
