"""Promotion rule: better -> promoted, worse/tie -> kept, not comparable -> promoted with reason."""

from __future__ import annotations

import json
import math

import pytest

from kappaflow.evaluation.paired import paired_comparison
from kappaflow.registry.promotion import baseline_gate, decide, fold_record, incomparable_reason


def test_first_candidate_is_promoted():
    d = decide(0.3, None)
    assert d.promote and "no champion" in d.reason and d.champion_metric is None


def test_better_candidate_moves_the_champion():
    d = decide(0.20, 0.25)
    assert d.promote and "beats champion" in d.reason
    assert (d.candidate_metric, d.champion_metric) == (0.20, 0.25)


@pytest.mark.parametrize("candidate", [0.30, 0.25])  # worse, and a tie
def test_worse_or_equal_candidate_keeps_the_champion(candidate):
    d = decide(candidate, 0.25)
    assert not d.promote and d.reason.startswith("kept champion")


def test_min_delta_and_direction():
    assert not decide(0.249, 0.25, min_delta=0.01).promote
    assert decide(0.239, 0.25, min_delta=0.01).promote
    assert decide(0.9, 0.8, lower_is_better=False).promote  # e.g. a correlation
    assert not decide(0.7, 0.8, lower_is_better=False).promote


def test_incomparable_champion_is_replaced_and_the_reason_says_why():
    reason = incomparable_reason(
        {"dataset": "paraisite_mix", "protocol_digest": "a", "metric": "log10_mae"},
        {"dataset": "paraisite_d1", "protocol_digest": "a", "metric": "log10_mae"},
    )
    assert reason == "dataset paraisite_d1 vs paraisite_mix"
    d = decide(0.5, 0.1, incomparable=reason)  # worse number, but on another dataset
    assert d.promote and "not comparable" in d.reason and "paraisite_d1" in d.reason


def test_same_tags_are_comparable():
    tags = {"dataset": "x", "protocol_digest": "d", "metric": "log10_mae"}
    assert incomparable_reason(tags, dict(tags)) is None
    assert "protocol_digest" in incomparable_reason(tags, {**tags, "protocol_digest": "e"})


def test_nonfinite_candidate_is_an_error():
    with pytest.raises(ValueError, match="not finite"):
        decide(math.nan, 0.2)
    assert decide(0.3, math.nan).promote  # a broken champion metric never blocks promotion


# ----------------------------------------------------------------------------- baseline gate


def _cv(values: list[float]) -> dict:
    folds = [
        {"repeat": 0, "fold": k, "n_train": 80, "n_val": 10, "n_test": 30}
        | {"metrics": {"log10_mae": v}}
        for k, v in enumerate(values)
    ]
    return {"folds": folds}


GOOD = _cv([0.10, 0.12, 0.11, 0.09, 0.10])
RF = _cv([0.20, 0.22, 0.19, 0.21, 0.20])
MEDIAN = _cv([0.40, 0.42, 0.39, 0.41, 0.40])


def test_gate_passes_only_a_candidate_that_beats_every_baseline():
    gate = baseline_gate(GOOD, {"median": MEDIAN, "magpie_rf": RF}, alpha=0.05)
    assert gate.passed and gate.tag == "true" and set(gate.comparisons) == {"median", "magpie_rf"}
    lose = baseline_gate(RF, {"median": MEDIAN, "magpie_rf": GOOD}, alpha=0.05)
    assert not lose.passed and lose.blocks
    assert "does not beat magpie_rf" in lose.reason and "Δ log10_mae +" in lose.reason


def test_gate_never_promotes_a_candidate_that_loses_to_a_baseline():
    gate = baseline_gate(RF, {"median": MEDIAN, "magpie_rf": GOOD}, alpha=0.05)
    first = decide(0.204, None, gate=gate)  # no champion yet: still not promoted
    assert not first.promote and first.reason.startswith("no champion:")
    assert "does not beat magpie_rf" in first.reason
    kept = decide(0.204, 0.5, gate=gate)  # better than the champion, worse than the RF
    assert not kept.promote and kept.reason.startswith("kept champion:")


def test_missing_baseline_results_fail_the_gate_with_the_command_to_run():
    gate = baseline_gate(GOOD, {"magpie_rf": None}, alpha=0.05)
    assert not gate.passed and "dvc repro evaluate" in gate.reason


def test_relaxed_gate_is_explicit_and_tagged():
    gate = baseline_gate(RF, {"magpie_rf": GOOD}, alpha=0.05, enforce=False)
    assert not gate.blocks and gate.tag.startswith("false")
    d = decide(0.204, None, gate=gate)
    assert d.promote and "baseline gate NOT enforced" in d.reason


def test_champion_is_compared_on_the_same_folds():
    champion = paired_comparison(GOOD, RF)  # candidate GOOD vs champion RF folds
    d = decide(0.104, 0.204, gate=baseline_gate(GOOD, {"m": MEDIAN}, alpha=0.05),
               versus_champion=champion)  # fmt: skip
    assert d.promote and "beats champion" in d.reason and "folds" in d.reason
    noisy = paired_comparison(_cv([0.19, 0.23, 0.18, 0.22, 0.20]), RF)  # mean lower, not sig.
    kept = decide(0.204, 0.204, versus_champion=noisy)
    assert not kept.promote and "needs p <" in kept.reason


def test_fold_record_round_trips_through_a_tag():
    tag = fold_record(GOOD)
    assert len(tag) < 5000  # MLflow tag limit
    assert paired_comparison(json.loads(tag), GOOD).mean_diff == 0.0
