"""The rollout state machine, table by table: facts in, what each track runs out."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfleet_operator import rollout
from llmfleet_operator.api import RolloutStrategy
from llmfleet_operator.conditions import rfc3339
from llmfleet_operator.rollout import Facts, TrackPlan, canary_replicas, plan, record_revisions

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
R, S = "new", "old"
STEPS = ((25, 60), (50, 60))


def rolling(**kw: Any) -> Facts:
    base: dict[str, Any] = dict(
        strategy=RolloutStrategy.ROLLING_UPDATE,
        desired=R,
        stable=S,
        stable_template=S,
        replicas=3,
        now=NOW,
        progress_deadline_seconds=600,
        ready={("stable", S): 3},
        stable_settled=True,
        stable_observed_replicas=3,
        gpu_headroom=4,
    )
    base.update(kw)
    return Facts(**base)


def canary(**kw: Any) -> Facts:
    base: dict[str, Any] = dict(
        strategy=RolloutStrategy.CANARY,
        steps=STEPS,
        replicas=4,
        ready={("stable", S): 4},
        stable_observed_replicas=4,
    )
    base.update(kw)
    return rolling(**base)


def ago(seconds: float) -> str:
    return rfc3339(NOW - timedelta(seconds=seconds))


def analysis(verdict: str, seconds_ago: float = 1, **values: Any) -> dict[str, Any]:
    return {
        "verdict": verdict,
        "message": f"{verdict.lower()} check",
        "time": ago(seconds_ago),
        **values,
    }


# --- no candidate ------------------------------------------------------------------------


def test_steady_fleet_runs_the_stable_revision() -> None:
    p = plan(rolling(desired=S, ready={("stable", S): 3}))
    assert p.stable == TrackPlan(S, 3)
    assert p.canary is None
    assert p.good == S
    assert p.status["phase"] == rollout.STABLE
    assert p.verdict is None
    assert p.events == []


def test_first_deploy_becomes_good_once_every_pod_is_ready() -> None:
    first = rolling(stable=None, stable_template=None, stable_settled=False, ready={})
    p = plan(first)
    assert (p.stable, p.good, p.status["phase"]) == (TrackPlan(R, 3), None, rollout.PROGRESSING)
    done = plan(replace(first, stable_template=R, stable_settled=True, ready={("stable", R): 3}))
    assert done.good == R
    assert done.records == [(R, rollout.ACTIVE, "", "")]


# --- RollingUpdate -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headroom", "replicas", "allow_downtime", "mode", "surge", "reason"),
    [
        (4, 3, False, rollout.SURGE, True, "RollingOut"),
        (None, 3, False, rollout.SURGE, True, "RollingOut"),  # capacity unknown: try a surge
        (0, 3, False, rollout.IN_PLACE, False, "ReplacingInPlace"),
        (0, 2, False, rollout.IN_PLACE, False, "ReplacingInPlace"),
        (0, 1, True, rollout.IN_PLACE, False, "ReplacingInPlace"),
    ],
)
def test_rolling_update_surges_when_a_gpu_is_free_else_replaces_in_place(
    headroom: int | None,
    replicas: int,
    allow_downtime: bool,
    mode: str,
    surge: bool,
    reason: str,
) -> None:
    p = plan(
        rolling(
            gpu_headroom=headroom,
            replicas=replicas,
            allow_downtime=allow_downtime,
            ready={("stable", S): replicas},
        )
    )
    assert p.stable == TrackPlan(R, replicas, surge=surge)
    assert p.status["mode"] == mode
    assert p.verdict is not None
    assert p.verdict.reason == reason
    assert not p.verdict.stalled
    assert p.events[0][0] == "RolloutStarted"
    assert p.records == [(R, rollout.CANDIDATE, "", "")]


def test_single_replica_without_a_free_gpu_keeps_its_pod_and_stalls() -> None:
    p = plan(rolling(replicas=1, gpu_headroom=0, ready={("stable", S): 1}))
    assert p.stable == TrackPlan(S, 1, from_stable_spec=True)
    assert p.status["phase"] == rollout.WAITING_FOR_GPU
    assert p.verdict is not None
    assert (p.verdict.reason, p.verdict.stalled) == ("InsufficientGPU", True)
    assert "allowDowntime" in p.verdict.message


def test_a_surge_pod_that_cannot_be_placed_switches_to_in_place() -> None:
    prev = {"candidateRevision": R, "mode": rollout.SURGE, "phase": rollout.PROGRESSING}
    p = plan(
        rolling(
            stable_template=R,
            stable_settled=False,
            previous=prev,
            waiting_for_gpu={"stable": 1},
            gpu_headroom=0,
        )
    )
    assert p.stable == TrackPlan(R, 3, surge=False)
    assert p.status["mode"] == rollout.IN_PLACE
    assert p.verdict is not None
    assert p.verdict.reason == "WaitingForGPU"


def test_the_mode_sticks_once_chosen() -> None:
    # The surge pod took the last free GPU: still a surge, not a switch to in-place.
    prev = {"candidateRevision": R, "mode": rollout.SURGE, "phase": rollout.PROGRESSING}
    p = plan(rolling(stable_template=R, stable_settled=False, previous=prev, gpu_headroom=0))
    assert p.stable.surge is True


def test_rolling_update_completes_when_every_pod_runs_the_candidate() -> None:
    prev = {"candidateRevision": R, "mode": rollout.SURGE, "phase": rollout.PROGRESSING}
    p = plan(rolling(stable_template=R, previous=prev, ready={("stable", R): 3}))
    assert p.good == R
    assert p.status == {
        "phase": rollout.STABLE,
        "strategy": "RollingUpdate",
        "stableRevision": S,
        "candidateRevision": R,
    }
    assert (R, rollout.ACTIVE, "", "") in p.records
    assert p.events[0][0] == "RolloutComplete"


def test_no_progress_for_the_deadline_rolls_back_to_the_stable_revision() -> None:
    prev = {
        "candidateRevision": R,
        "mode": rollout.SURGE,
        "phase": rollout.PROGRESSING,
        "progress": "Surge:0",
        "lastProgressTime": ago(601),
    }
    p = plan(rolling(stable_template=R, stable_settled=False, previous=prev))
    assert p.stable == TrackPlan(S, 3, from_stable_spec=True)
    assert p.status["phase"] == rollout.ROLLED_BACK
    assert p.verdict is not None
    assert (p.verdict.reason, p.verdict.stalled) == ("RolledBack", True)
    assert "no progress for 600s" in p.verdict.message
    assert p.records == [(R, "RolledBack", "ProgressDeadlineExceeded", p.records[0][3])]
    assert p.rolled_back == "RolledBack"
    assert p.events == []  # the Stalled condition's Warning Event announces it, once


def test_progress_resets_the_deadline() -> None:
    prev = {
        "candidateRevision": R,
        "mode": rollout.SURGE,
        "progress": "Surge:0",
        "lastProgressTime": ago(599),
    }
    p = plan(
        rolling(
            stable_template=R,
            stable_settled=False,
            previous=prev,
            ready={("stable", R): 1, ("stable", S): 3},
        )
    )
    assert p.status["lastProgressTime"] == rfc3339(NOW)
    assert p.status["progress"] == "Surge:1"
    same = plan(rolling(stable_template=R, stable_settled=False, previous=prev))
    assert same.status["lastProgressTime"] == ago(599)  # unchanged: nothing to write


def test_a_rolled_back_revision_is_not_retried() -> None:
    p = plan(rolling(rolled_back={R: ("RolledBack", "no progress for 600s")}))
    assert p.stable == TrackPlan(S, 3, from_stable_spec=True)
    assert p.verdict is not None
    assert p.verdict.stalled
    assert p.verdict.reason == "RolledBack"
    assert "change the spec" in p.verdict.message
    assert p.events == []
    assert p.records == []


def test_abort_rolls_back_a_rolling_update() -> None:
    p = plan(rolling(abort_requested=True, stable_template=R, stable_settled=False))
    assert p.stable.revision == S
    assert p.records[0][:3] == (R, "RolledBack", "Aborted")


# --- Canary ------------------------------------------------------------------------------


def test_canary_starts_with_one_candidate_pod_and_keeps_the_stable_at_full_size() -> None:
    p = plan(canary())
    assert p.canary == TrackPlan(R, 1)
    assert p.stable == TrackPlan(S, 4, from_stable_spec=True)  # shrinks only once R is Ready
    assert p.status["phase"] == rollout.CANARY
    assert (p.status["step"], p.status["steps"], p.status["canaryWeight"]) == (1, 2, 25)
    assert "stepStartedTime" not in p.status
    assert p.events[0][0] == "RolloutStarted"


def test_the_stable_shrinks_as_the_candidate_becomes_ready_and_the_step_starts() -> None:
    prev = plan(canary()).status
    ready = canary(previous=prev, ready={("stable", S): 4, ("canary", R): 1})
    p = plan(ready)
    assert p.stable.replicas == 3
    assert p.canary == TrackPlan(R, 1)
    assert "stepStartedTime" not in p.status  # the stable has not shrunk yet
    reached = plan(
        replace(ready, stable_observed_replicas=3, ready={("stable", S): 3, ("canary", R): 1})
    )
    assert reached.status["stepStartedTime"] == rfc3339(NOW)
    assert reached.events == [("CanaryStep", reached.events[0][1], "Normal")]
    assert "25% (1 of 4 replicas)" in reached.events[0][1]


def at_step(step: int = 1, started: float = 61, **prev: Any) -> Facts:
    weight = STEPS[step - 1][0]
    c = canary_replicas(4, weight)
    previous = {
        "phase": rollout.CANARY,
        "candidateRevision": R,
        "step": step,
        "stepStartedTime": ago(started),
        "progress": f"Canary:{step - 1}:True:{c}:0",
        "lastProgressTime": ago(started),
        **prev,
    }
    return canary(
        previous=previous,
        stable_observed_replicas=4 - c,
        ready={("stable", S): 4 - c, ("canary", R): c},
    )


def test_a_passed_analysis_after_the_pause_moves_to_the_next_step() -> None:
    p = plan(replace(at_step(1), analysis=analysis("Passed")))
    assert (p.status["step"], p.status["canaryWeight"]) == (2, 50)
    assert p.canary == TrackPlan(R, 2)
    assert p.stable.replicas == 3  # the stable waits for the second candidate pod
    assert p.status["passedChecks"] == 0
    assert p.status["lastAnalysis"]["verdict"] == "Passed"


def test_without_analysis_data_the_step_holds() -> None:
    held = plan(at_step(1))
    assert held.status["step"] == 1
    inconclusive = plan(replace(at_step(1), analysis=analysis("Inconclusive")))
    assert inconclusive.status["step"] == 1
    assert inconclusive.status["failedChecks"] == 0


def test_analysis_before_the_pause_is_over_waits_for_the_pause() -> None:
    p = plan(replace(at_step(1, started=30), analysis=analysis("Passed")))
    assert p.status["step"] == 1
    assert p.status["passedChecks"] == 1
    assert p.requeue_after == pytest.approx(30)


def test_an_analysis_from_before_the_step_started_does_not_count() -> None:
    p = plan(replace(at_step(1, started=10), analysis=analysis("Passed", seconds_ago=20)))
    assert p.status["passedChecks"] == 0


def test_failure_limit_consecutive_failures_roll_the_canary_back() -> None:
    first = plan(replace(at_step(1), failure_limit=2, analysis=analysis("Failed", errorRatio=0.4)))
    assert first.status["failedChecks"] == 1
    assert first.canary is not None
    assert first.events[0][0] == "CanaryAnalysisFailed"
    second = plan(
        replace(
            at_step(1, **{"failedChecks": 1, "lastAnalysis": analysis("Failed", 5)}),
            failure_limit=2,
            analysis=analysis("Failed", errorRatio=0.4),
        )
    )
    assert second.canary is None  # deleted
    assert second.stable == TrackPlan(S, 4, from_stable_spec=True)  # back to full size
    assert second.verdict is not None
    assert (second.verdict.reason, second.verdict.stalled) == ("CanaryAnalysisFailed", True)
    assert second.records[0][:3] == (R, "RolledBack", "CanaryAnalysisFailed")
    assert second.status["lastAnalysis"]["errorRatio"] == 0.4


def test_a_pass_resets_the_failure_count() -> None:
    p = plan(
        replace(
            at_step(1, started=30, failedChecks=1, lastAnalysis=analysis("Failed", 5)),
            analysis=analysis("Passed"),
        )
    )
    assert p.status["failedChecks"] == 0


def test_paused_holds_the_step_and_stops_the_deadline() -> None:
    p = plan(replace(at_step(1, started=5000), paused=True, analysis=analysis("Passed")))
    assert p.status["phase"] == rollout.PAUSED
    assert p.status["step"] == 1
    assert p.verdict is not None
    assert p.verdict.reason == "CanaryPaused"
    again = plan(replace(at_step(1, started=5000), paused=True, previous=p.status))
    assert again.status["phase"] == rollout.PAUSED  # 5000 s > the deadline, still no rollback


def test_the_deadline_rolls_a_canary_back_when_no_data_arrives() -> None:
    p = plan(replace(at_step(1, started=700)))
    assert p.canary is None
    assert p.stable.revision == S
    assert p.verdict is not None
    assert p.verdict.reason == "RolledBack"


def test_after_the_last_step_the_candidate_is_promoted() -> None:
    p = plan(replace(at_step(2), analysis=analysis("Passed")))
    assert p.status["phase"] == rollout.PROMOTING
    # The template first, at the stable's current size: one write that also grew it would
    # scale the old ReplicaSet up too.
    assert p.stable == TrackPlan(R, 2)
    assert p.canary == TrackPlan(R, 2)  # keeps serving until the stable's R pods are Ready
    assert [e[0] for e in p.events] == ["Promoting"]
    switched = plan(
        replace(
            at_step(2),
            previous=p.status,
            stable_template=R,
            ready={("stable", R): 2, ("canary", R): 2},
        )
    )
    assert switched.stable == TrackPlan(R, 4)  # then it grows
    assert switched.canary == TrackPlan(R, 2)


def test_promotion_shrinks_the_canary_as_the_stable_becomes_ready_then_completes() -> None:
    prev = {"phase": rollout.PROMOTING, "candidateRevision": R, "step": 2}
    half = canary(
        previous=prev,
        stable_template=R,
        stable_settled=False,
        ready={("stable", R): 3, ("stable", S): 1, ("canary", R): 2},
    )
    assert plan(half).canary == TrackPlan(R, 1)
    done = plan(
        replace(
            half,
            stable_settled=True,
            stable_observed_replicas=4,
            ready={("stable", R): 4, ("canary", R): 1},
        )
    )
    assert done.canary is None
    assert done.good == R
    assert done.events[-1][0] == "Promoted"
    assert (S, rollout.SUPERSEDED, "", f"replaced by {R}") in done.records


def test_promote_annotation_skips_the_remaining_steps() -> None:
    p = plan(replace(at_step(1, started=1), promote_requested=True))
    assert p.status["phase"] == rollout.PROMOTING
    assert p.events[0][0] == "PromotionRequested"


def test_abort_annotation_rolls_a_canary_back() -> None:
    p = plan(replace(at_step(1), abort_requested=True))
    assert p.canary is None
    assert p.records[0][:3] == (R, "RolledBack", "Aborted")


def test_canary_without_free_gpus_gives_up_one_stable_pod_at_a_time() -> None:
    p = plan(canary(waiting_for_gpu={"canary": 1}, previous=plan(canary()).status))
    assert p.stable.replicas == 3  # N-1 Ready at worst
    assert p.verdict is not None
    assert p.verdict.reason == "WaitingForGPU"


def test_single_replica_canary_without_a_gpu_waits_and_stalls() -> None:
    facts = canary(
        replicas=1,
        ready={("stable", S): 1},
        stable_observed_replicas=1,
        waiting_for_gpu={"canary": 1},
    )
    p = plan(facts)
    assert p.canary is None
    assert p.stable == TrackPlan(S, 1, from_stable_spec=True)
    assert p.verdict is not None
    assert p.verdict.stalled


def test_a_new_candidate_mid_canary_starts_over() -> None:
    p = plan(replace(at_step(2), desired="newer"))
    assert p.status["candidateRevision"] == "newer"
    assert p.status["step"] == 1
    assert p.canary == TrackPlan("newer", 1)


@given(st.integers(1, 200), st.integers(1, 100), st.integers(1, 100))
def test_canary_share_is_at_least_one_pod_and_grows_with_the_weight(
    n: int, w1: int, w2: int
) -> None:
    lo, hi = sorted((w1, w2))
    assert 1 <= canary_replicas(n, lo) <= canary_replicas(n, hi) <= n
    assert canary_replicas(n, 100) == n


# --- status.revisions --------------------------------------------------------------------


def test_revisions_move_to_the_front_on_change_and_stay_put_otherwise() -> None:
    first = record_revisions([], [(S, rollout.ACTIVE, "", "")], NOW)
    assert first == [{"revision": S, "phase": "Active", "since": rfc3339(NOW)}]
    later = NOW + timedelta(minutes=5)
    assert record_revisions(first, [(S, rollout.ACTIVE, "", "")], later) == first
    both = record_revisions(first, [(R, rollout.ACTIVE, "", "")], later)
    assert [(e["revision"], e["phase"]) for e in both] == [(R, "Active"), (S, "Superseded")]


def test_revisions_are_bounded() -> None:
    revs: list[dict[str, Any]] = []
    for i in range(25):
        revs = record_revisions(revs, [(f"r{i}", rollout.ACTIVE, "", "")], NOW)
    assert len(revs) == 10
    assert revs[0]["revision"] == "r24"


def test_rolled_back_entries_are_read_back_with_their_stalled_reason() -> None:
    revs = record_revisions(
        [], [(R, "RolledBack", "CanaryAnalysisFailed", "error ratio 0.4 > 0.05")], NOW
    )
    assert rollout.rolled_back_revisions(revs) == {
        R: ("CanaryAnalysisFailed", "error ratio 0.4 > 0.05")
    }


def test_a_pass_while_paused_does_not_count_toward_the_next_step() -> None:
    paused = plan(replace(at_step(1), paused=True, analysis=analysis("Passed")))
    assert paused.status["passedChecks"] == 0
    resumed = plan(replace(at_step(1), previous=paused.status))
    assert resumed.status["step"] == 1  # needs a pass measured since the resume


def test_a_pass_measured_while_paused_but_first_seen_after_the_resume_does_not_count() -> None:
    # The analysis loop measured a pass while the step was paused; the spec was resumed
    # before a reconcile took that verdict in (Prometheus may be gone since).
    paused = plan(replace(at_step(1), paused=True))
    assert paused.status["phase"] == rollout.PAUSED
    resumed = plan(replace(at_step(1), previous=paused.status, analysis=analysis("Passed")))
    assert resumed.status["passedChecks"] == 0
    assert resumed.status["phase"] == rollout.CANARY
    assert resumed.status["step"] == 1


def test_a_rolled_back_revision_is_retried_once_the_spec_asked_for_another() -> None:
    revs = record_revisions(
        [{"revision": S, "phase": "Active"}],
        [(R, "RolledBack", "ProgressDeadlineExceeded", "no progress")],
        NOW,
    )
    back_to_stable = plan(rolling(desired=S, rolled_back=rollout.rolled_back_revisions(revs)))
    assert (R, rollout.SUPERSEDED, "", "") in back_to_stable.records
    revs = record_revisions(revs, back_to_stable.records, NOW)
    entry = next(e for e in revs if e["revision"] == R)
    assert (entry["phase"], entry["reason"]) == ("Superseded", "ProgressDeadlineExceeded")
    assert rollout.rolled_back_revisions(revs) == {}
    again = plan(rolling(rolled_back=rollout.rolled_back_revisions(revs)))
    assert again.status["phase"] == rollout.PROGRESSING  # tried again


def test_single_replica_canary_without_a_free_gpu_does_not_create_a_pending_pod() -> None:
    facts = canary(replicas=1, ready={("stable", S): 1}, stable_observed_replicas=1, gpu_headroom=0)
    first = plan(facts)
    assert first.canary is None
    assert first.stable == TrackPlan(S, 1, from_stable_spec=True)
    second = plan(replace(facts, previous=first.status))
    assert second.canary is None  # no create/delete flapping while the pool is full
    room = plan(replace(facts, previous=first.status, gpu_headroom=1))
    assert room.canary == TrackPlan(R, 1)


def test_canary_on_a_full_pool_makes_room_by_shrinking_the_stable_first() -> None:
    p = plan(canary(gpu_headroom=0))
    assert p.canary == TrackPlan(R, 1)
    assert p.stable.replicas == 3


def test_a_promotion_keeps_the_canary_at_the_size_of_the_step_it_left() -> None:
    first = plan(replace(at_step(1, started=1), promote_requested=True))
    assert first.canary == TrackPlan(R, 1)
    again = plan(replace(at_step(1, started=1), previous=first.status, promote_requested=True))
    assert again.canary == TrackPlan(R, 1)  # not the next step's share
