from __future__ import annotations

from datetime import UTC, datetime, timedelta

from llmfleet_operator.conditions import Condition, find, merge

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_new_condition_gets_now_and_generation() -> None:
    [c] = merge([], [Condition("Ready", "False", "Progressing", "1/2 ready")], 3, T0)
    assert c == {
        "type": "Ready",
        "status": "False",
        "reason": "Progressing",
        "message": "1/2 ready",
        "lastTransitionTime": "2026-01-02T03:04:05Z",
        "observedGeneration": 3,
    }


def test_transition_time_moves_only_when_status_flips() -> None:
    first = merge([], [Condition("Ready", "False", "Progressing", "0/2")], 1, T0)
    same_status = merge(first, [Condition("Ready", "False", "Progressing", "1/2")], 2, T1)
    assert same_status[0]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    assert same_status[0]["message"] == "1/2"
    assert same_status[0]["observedGeneration"] == 2
    flipped = merge(same_status, [Condition("Ready", "True", "Ready", "2/2")], 2, T1)
    assert flipped[0]["lastTransitionTime"] == "2026-01-02T03:09:05Z"


def test_re_evaluating_the_same_state_is_identical() -> None:
    evaluated = [Condition("Ready", "True", "Ready"), Condition("Stalled", "False", "AsExpected")]
    once = merge([], evaluated, 4, T0)
    assert merge(once, evaluated, 4, T1) == once


def test_dropped_types_disappear_and_lookup_helpers() -> None:
    both = merge([], [Condition("Ready", "True", "R"), Condition("Stalled", "True", "S")], 1, T0)
    assert (find(both, "Stalled") or {}).get("status") == "True"
    only = merge(both, [Condition("Ready", "True", "R")], 1, T1)
    assert find(only, "Stalled") is None
