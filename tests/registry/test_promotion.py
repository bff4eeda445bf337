"""Promotion rule: better -> promoted, worse/tie -> kept, not comparable -> promoted with reason."""

from __future__ import annotations

import math

import pytest

from kappaflow.registry.promotion import decide, incomparable_reason


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
