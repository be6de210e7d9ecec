"""Pure: the rollout state machine. Facts about the fleet in, what each track runs out.

One LLMDeployment runs at most two worker Deployments: the *stable* track (always) and, during
a canary, the *canary* track. A revision is the hash of everything that shapes a worker pod;
the last revision that was fully Ready is the *stable revision* (the stable Deployment
remembers it, with the spec that built it, so a rollback can rebuild its pods).

RollingUpdate (a new revision R replaces the stable revision S in the stable Deployment):

- *Surge* when a pod of R fits on free GPUs next to the old ones (``maxSurge: 1,
  maxUnavailable: 0``); *InPlace* when it does not (``maxSurge: 0, maxUnavailable: 1``: one pod
  at a time, never fewer than N-1 Ready). A surge pod the scheduler refuses for GPUs switches
  the rollout to InPlace, so it never blocks the fleet.
- N = 1 without a free GPU takes the only pod down only with ``allowDowntime``; otherwise the
  stable Deployment keeps S and the resource is Stalled/InsufficientGPU until a GPU frees.

Canary (R runs in the canary Deployment next to S; the Service spans both, so traffic splits
by Ready replicas): each step's weight is R's share of the fleet's N replicas (at least one
pod). The stable track shrinks only as the canary's pods become Ready. A step is *reached* when
both tracks stand at their sizes; analysis verdicts count from then; after ``pauseSeconds``
and at least one passed analysis (never without data) the next step starts, and after the
last one the candidate is promoted: the stable Deployment takes R while the canary shrinks
as the stable's new pods become Ready, and then goes away.

Either strategy rolls R back to S when it makes no progress for ``progressDeadlineSeconds``,
when the canary's analysis fails ``failureLimit`` times in a row, or on an abort request; a
rolled-back revision is recorded and is not tried again until the spec asks for another.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

from llmfleet_operator.api import (
    CANARY_TRACK,
    MAX_REVISIONS,
    STABLE_TRACK,
    Reason,
    RolloutStrategy,
)
from llmfleet_operator.conditions import rfc3339

# status.rollout.phase values
STABLE: Final = "Stable"
PROGRESSING: Final = "Progressing"
WAITING_FOR_GPU: Final = "WaitingForGPU"
CANARY: Final = "Canary"
PAUSED: Final = "Paused"
PROMOTING: Final = "Promoting"
ROLLED_BACK: Final = "RolledBack"
#: Phases in which a candidate is being rolled out (the operator metric's label values too).
PHASES: Final = (STABLE, PROGRESSING, WAITING_FOR_GPU, CANARY, PAUSED, PROMOTING, ROLLED_BACK)

#: How often a rollout waiting for a free GPU looks again.
GPU_RECHECK_SECONDS: Final = 10.0

# RollingUpdate modes
SURGE: Final = "Surge"
IN_PLACE: Final = "InPlace"

# status.revisions[].phase values
ACTIVE: Final = "Active"
CANDIDATE: Final = "Candidate"
REVISION_ROLLED_BACK: Final = "RolledBack"
SUPERSEDED: Final = "Superseded"

# analysis verdicts
PASSED: Final = "Passed"
FAILED: Final = "Failed"
INCONCLUSIVE: Final = "Inconclusive"

#: The Stalled reason of each rollback cause (a deadline or an abort reads "RolledBack").
ABORTED: Final = "Aborted"


@dataclass(frozen=True)
class Facts:
    """Everything the rollout decision depends on, computed once per reconcile."""

    strategy: RolloutStrategy
    #: R: the revision the spec asks for.
    desired: str
    #: S: the last revision that was fully Ready (None: nothing ever was).
    stable: str | None
    #: The revision the stable Deployment's template runs now (None: no Deployment yet).
    stable_template: str | None
    #: N: the fleet's size (autoscaler or spec).
    replicas: int
    now: datetime
    progress_deadline_seconds: float = 900.0
    allow_downtime: bool = False
    paused: bool = False
    #: Canary steps as (weight percent, pause seconds).
    steps: Sequence[tuple[int, int]] = ()
    failure_limit: int = 2
    #: Revision -> (reason, message) of revisions rolled back before.
    rolled_back: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: status.rollout as last written.
    previous: Mapping[str, Any] = field(default_factory=dict)
    #: The newest analysis of the candidate (status.rollout.lastAnalysis shape), if any.
    analysis: Mapping[str, Any] | None = None
    promote_requested: bool = False
    abort_requested: bool = False
    #: Ready, non-terminating pods by (track, revision).
    ready: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: Non-terminating pods the scheduler refused for lack of GPUs, by track.
    waiting_for_gpu: Mapping[str, int] = field(default_factory=dict)
    #: More pods of this size that fit on free GPUs now (None: unknown).
    gpu_headroom: int | None = None
    #: What one pod asks and what is free, for messages ("asks for 8 nvidia.com/gpu; ...").
    gpu_summary: str = ""
    #: The stable Deployment has acted on its latest spec and its pods all run its template.
    stable_settled: bool = False
    #: spec.replicas of the stable and canary Deployments as observed (None: absent).
    stable_observed_replicas: int | None = None
    canary_observed_replicas: int | None = None

    def ready_of(self, track: str, revision: str | None) -> int:
        return self.ready.get((track, revision or ""), 0)


@dataclass(frozen=True)
class TrackPlan:
    """What one worker Deployment should run."""

    revision: str
    replicas: int
    #: Build the pods from the stored spec of the stable revision, not the current spec.
    from_stable_spec: bool = False
    surge: bool = True


@dataclass(frozen=True)
class Verdict:
    """What the rollout says about Reconciling/Stalled (None in a plan: nothing to say)."""

    reason: str
    message: str
    stalled: bool = False


@dataclass
class RolloutPlan:
    stable: TrackPlan
    #: None: no canary Deployment (delete it when it exists).
    canary: TrackPlan | None
    #: The revision the stable Deployment records as last good (S, or R once it is).
    good: str | None
    status: dict[str, Any]
    #: (revision, phase, reason, message) to record in status.revisions.
    records: list[tuple[str, str, str, str]] = field(default_factory=list)
    #: (reason, message, type) Events.
    events: list[tuple[str, str, str]] = field(default_factory=list)
    verdict: Verdict | None = None
    requeue_after: float | None = None
    #: Set when this plan rolls back (the Stalled reason), for the rollbacks metric.
    rolled_back: str | None = None


def canary_replicas(replicas: int, weight: int) -> int:
    """The candidate's share of ``replicas`` at ``weight`` percent: at least one pod."""
    if replicas <= 0:
        return 0
    return max(1, min(replicas, math.ceil(replicas * weight / 100 - 1e-9)))


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _after(a: Any, b: Any) -> bool:
    """Whether timestamp ``a`` is later than ``b`` (None is earliest)."""
    ta, tb = _parse_time(a), _parse_time(b)
    return ta is not None and (tb is None or ta > tb)


def plan(f: Facts) -> RolloutPlan:
    """The decision for one reconcile."""
    plan_ = _decide(f)
    # The spec asks for another revision: an earlier rollback no longer holds that one back
    # (asking for it again later retries it).
    for revision in f.rolled_back:
        if revision != f.desired:
            plan_.records.append((revision, SUPERSEDED, "", ""))
    return plan_


def _decide(f: Facts) -> RolloutPlan:
    r, s = f.desired, f.stable
    if s is None or s == r:
        return _steady(f)
    if r in f.rolled_back:
        reason, message = f.rolled_back[r]
        return _held_back(f, reason, message)
    if f.abort_requested:
        return _rollback(f, ABORTED, f"revision {r} aborted by the {ABORT_HINT} annotation")
    if f.strategy is RolloutStrategy.CANARY:
        return _canary(f)
    return _rolling(f)


ABORT_HINT: Final = "llmfleet.io/abort"


def _base_status(f: Facts, phase: str, **extra: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "strategy": str(f.strategy),
        "stableRevision": f.stable if f.stable is not None else f.desired,
    }
    if f.stable is not None and f.stable != f.desired:
        status["candidateRevision"] = f.desired
    status.update({k: v for k, v in extra.items() if v is not None})
    return status


def _steady(f: Facts) -> RolloutPlan:
    """No candidate: the stable Deployment runs the requested revision at full size."""
    r, n = f.desired, f.replicas
    done = f.stable_template == r and f.stable_settled and f.ready_of(STABLE_TRACK, r) >= n
    good = r if done else f.stable
    plan_ = RolloutPlan(
        stable=TrackPlan(r, n),
        canary=None,
        good=good,
        status=_base_status(
            f,
            STABLE if done or f.stable == r else PROGRESSING,
            lastAnalysis=_last_analysis(f.previous, r),
        ),
    )
    if done:
        plan_.records.append((r, ACTIVE, "", ""))
    return plan_


def _held_back(f: Facts, reason: str, message: str) -> RolloutPlan:
    """The spec still asks for a revision that was rolled back: keep serving the stable one."""
    return _on_stable(
        f,
        reason,
        f"revision {f.desired} was rolled back to {f.stable}: {message}; "
        "change the spec to roll out again",
    )


def _rollback(f: Facts, reason: str, message: str) -> RolloutPlan:
    """Return every pod to the stable revision at full size; record why."""
    stalled_reason = Reason.CANARY_ANALYSIS_FAILED if reason == FAILED else Reason.ROLLED_BACK
    record_reason = {
        FAILED: str(Reason.CANARY_ANALYSIS_FAILED),
        ABORTED: ABORTED,
    }.get(reason, str(Reason.PROGRESS_DEADLINE_EXCEEDED))
    plan_ = _on_stable(
        f, stalled_reason, f"revision {f.desired} was rolled back to {f.stable}: {message}"
    )
    plan_.rolled_back = str(stalled_reason)
    # The Stalled condition's Warning Event announces it (reconciler), once.
    plan_.records.append((f.desired, REVISION_ROLLED_BACK, record_reason, message))
    return plan_


def _on_stable(f: Facts, reason: str, text: str) -> RolloutPlan:
    """Every pod on the stable revision at full size, no canary, Stalled with ``text``."""
    s = f.stable
    assert s is not None
    return RolloutPlan(
        stable=TrackPlan(s, f.replicas, from_stable_spec=True),
        canary=None,
        good=s,
        status=_base_status(
            f, ROLLED_BACK, message=text, lastAnalysis=_last_analysis(f.previous, f.desired)
        ),
        verdict=Verdict(reason, text, stalled=True),
    )


def _last_analysis(previous: Mapping[str, Any], candidate: str) -> Any:
    """The last analysis of ``candidate``, kept once it was promoted (or rolled back)."""
    if previous.get("candidateRevision") == candidate or (
        previous.get("stableRevision") == candidate and not previous.get("candidateRevision")
    ):
        return previous.get("lastAnalysis")
    return None


def _progress(f: Facts, marker: str, holding: bool) -> tuple[dict[str, Any], float | None, bool]:
    """(lastProgressTime and progress marker to write, seconds left, deadline exceeded).

    The deadline counts from the last time ``marker`` changed; while ``holding`` (paused,
    waiting for a GPU with allowDowntime false) it does not run.
    """
    prev = f.previous if f.previous.get("candidateRevision") == f.desired else {}
    now = rfc3339(f.now)
    if prev.get("progress") != marker or not prev.get("lastProgressTime"):
        return {"progress": marker, "lastProgressTime": now}, f.progress_deadline_seconds, False
    since = _parse_time(prev["lastProgressTime"])
    assert since is not None
    fields = {"progress": marker, "lastProgressTime": prev["lastProgressTime"]}
    if holding:
        return fields, None, False
    left = f.progress_deadline_seconds - (f.now - since).total_seconds()
    return fields, max(0.0, left), left <= 0


def _deadline_message(f: Facts) -> str:
    return f"no progress for {f.progress_deadline_seconds:g}s (progressDeadlineSeconds)"


def _rolling(f: Facts) -> RolloutPlan:
    r, n = f.desired, f.replicas
    prev = f.previous if f.previous.get("candidateRevision") == r else {}
    mode = prev.get("mode")
    if mode not in (SURGE, IN_PLACE):
        mode = SURGE if f.gpu_headroom is None or f.gpu_headroom >= 1 else IN_PLACE
    waiting = f.waiting_for_gpu.get(STABLE_TRACK, 0)
    if mode == SURGE and waiting > 0 and f.stable_template == r:
        mode = IN_PLACE  # the surge pod cannot be placed: replace instead of waiting forever
    ready_r = f.ready_of(STABLE_TRACK, r)
    if mode == IN_PLACE and n == 1 and not f.allow_downtime and ready_r == 0:
        # Taking the only pod down would stop the service: keep S and wait for a GPU.
        return _wait_for_gpu(f)
    done = f.stable_template == r and f.stable_settled and ready_r >= n
    if done:
        return _complete(f, STABLE, "RolloutComplete", f"revision {r} rolled out to {n} replicas")
    fields, left, exceeded = _progress(f, f"{mode}:{ready_r}", holding=False)
    if exceeded:
        return _rollback(f, "Deadline", _deadline_message(f))
    if mode == SURGE:
        reason: str = Reason.ROLLING_OUT
        how = "surging: one extra pod at a time next to the old ones"
    else:
        reason = Reason.WAITING_FOR_GPU if waiting else Reason.REPLACING_IN_PLACE
        how = "replacing in place, one pod at a time (no free GPU for an extra pod)"
    message = f"rolling out revision {r}: {ready_r}/{n} ready; {how}"
    plan_ = RolloutPlan(
        stable=TrackPlan(r, n, surge=mode == SURGE),
        canary=None,
        good=f.stable,
        status=_base_status(f, PROGRESSING, mode=mode, message=message, **fields),
        verdict=Verdict(reason, message),
        requeue_after=left,
    )
    plan_.records.append((r, CANDIDATE, "", ""))
    if not prev:
        plan_.events.append(("RolloutStarted", f"rolling out revision {r} ({mode})", "Normal"))
    return plan_


def _wait_for_gpu(f: Facts) -> RolloutPlan:
    r = f.desired
    message = (
        f"revision {r} waits for a free GPU: the only replica is not replaced in place "
        "(spec.rollout.allowDowntime is false)"
    )
    if f.gpu_summary:
        message += f"; {f.gpu_summary}"
    plan_ = RolloutPlan(
        stable=TrackPlan(str(f.stable), f.replicas, from_stable_spec=True),
        canary=None,
        good=f.stable,
        status=_base_status(f, WAITING_FOR_GPU, message=message),
        verdict=Verdict(Reason.INSUFFICIENT_GPU, message, stalled=True),
        # Freed GPUs send no event to this LLMDeployment: look again.
        requeue_after=GPU_RECHECK_SECONDS,
    )
    plan_.records.append((r, CANDIDATE, "", ""))
    return plan_


def _complete(f: Facts, phase: str, event: str, message: str) -> RolloutPlan:
    r = f.desired
    plan_ = RolloutPlan(
        stable=TrackPlan(r, f.replicas),
        canary=None,
        good=r,
        status=_base_status(f, phase, lastAnalysis=_last_analysis(f.previous, r)),
    )
    plan_.records.append((r, ACTIVE, "", ""))
    if f.stable is not None and f.stable != r:
        plan_.records.append((f.stable, SUPERSEDED, "", f"replaced by {r}"))
    plan_.events.append((event, message, "Normal"))
    return plan_


def _canary(f: Facts) -> RolloutPlan:
    r, s, n = f.desired, f.stable, f.replicas
    steps = list(f.steps) or [(100, 0)]
    prev = dict(f.previous) if f.previous.get("candidateRevision") == r else {}
    fresh = not prev
    phase = prev.get("phase", CANARY)
    if phase not in (CANARY, PAUSED, PROMOTING):
        phase = CANARY
    index = max(0, min(len(steps) - 1, int(prev.get("step", 1) or 1) - 1))
    failed = int(prev.get("failedChecks", 0) or 0)
    passed = int(prev.get("passedChecks", 0) or 0)
    events: list[tuple[str, str, str]] = []
    if fresh:
        events.append(
            ("RolloutStarted", f"canary of revision {r} started ({len(steps)} steps)", "Normal")
        )

    # Analysis verdicts newer than the last one counted.
    last = prev.get("lastAnalysis")
    analysis = f.analysis
    if (
        analysis is not None
        and phase != PROMOTING
        and prev.get("stepStartedTime")
        and _after(analysis.get("time"), (last or {}).get("time"))
        and _after(analysis.get("time"), prev.get("stepStartedTime"))
    ):
        last = dict(analysis)
        verdict = analysis.get("verdict")
        if verdict == PASSED:
            # A pass while paused resets the failures but does not count toward the next
            # step: after a resume, the step needs a pass that was measured since. The first
            # reconcile after a resume may find one measured while paused (Prometheus may be
            # gone by now): it does not count either.
            resuming = prev.get("phase") == PAUSED
            failed, passed = 0, passed + (0 if f.paused or resuming else 1)
        elif verdict == FAILED:
            failed += 1
            events.append(
                (
                    "CanaryAnalysisFailed",
                    f"check {failed}/{f.failure_limit} failed: {analysis.get('message', '')}",
                    "Warning",
                )
            )
            if failed >= f.failure_limit:
                return _rollback(
                    replace(f, previous={**prev, "lastAnalysis": last}),
                    FAILED,
                    f"canary analysis failed {failed} times in a row: {analysis.get('message')}",
                )

    if f.promote_requested and phase != PROMOTING:
        phase = PROMOTING
        events.append(("PromotionRequested", f"promoting revision {r} now (annotation)", "Normal"))

    if phase == PROMOTING:
        return _promoting(f, steps, index, last, failed, events)

    weight = steps[index][0]
    c = canary_replicas(n, weight)
    canary_ready = f.ready_of(CANARY_TRACK, r)
    no_room = f.gpu_headroom is not None and f.gpu_headroom < 1 and not f.canary_observed_replicas
    in_place = f.waiting_for_gpu.get(CANARY_TRACK, 0) > 0 or no_room
    if in_place and n == 1 and not f.allow_downtime and canary_ready == 0:
        waiting = _wait_for_gpu(f)
        waiting.events[:0] = events
        return waiting
    stable_target = max(n - c, n - canary_ready - (1 if in_place else 0), 0)
    reached = (
        canary_ready >= c
        and f.stable_observed_replicas == n - c
        and f.ready_of(STABLE_TRACK, s) >= n - c
    )
    step_started = prev.get("stepStartedTime") if prev.get("step") == index + 1 else None
    if reached and not step_started:
        step_started = rfc3339(f.now)
        passed = 0
        events.append(
            (
                "CanaryStep",
                f"step {index + 1}/{len(steps)}: revision {r} at {weight}% ({c} of {n} replicas)",
                "Normal",
            )
        )
    requeue: list[float] = []
    if reached and step_started and not f.paused:
        pause = steps[index][1]
        started = _parse_time(step_started)
        assert started is not None
        waited = (f.now - started).total_seconds()
        if passed >= 1 and waited >= pause:
            if index + 1 < len(steps):
                index += 1
                step_started, passed = None, 0
                weight = steps[index][0]
                c = canary_replicas(n, weight)
                stable_target = max(n - c, n - canary_ready, 0)
            else:
                events.append(("Promoting", f"all steps passed; promoting revision {r}", "Normal"))
                return _promoting(f, steps, index, last, failed, events)
        elif waited < pause:
            requeue.append(pause - waited)
    phase = PAUSED if f.paused else CANARY
    marker = f"{phase}:{index}:{bool(step_started)}:{canary_ready}:{passed}"
    # Paused, or suspended (no pod, nothing to analyse): the deadline waits too.
    fields, left, exceeded = _progress(f, marker, holding=f.paused or n == 0)
    if exceeded:
        return _rollback(f, "Deadline", _deadline_message(f))
    if left is not None:
        requeue.append(left)
    if phase == PAUSED:
        reason: str = Reason.CANARY_PAUSED
        message = f"canary of revision {r} paused at step {index + 1}/{len(steps)} (spec)"
    else:
        reason = Reason.WAITING_FOR_GPU if in_place else Reason.CANARY_IN_PROGRESS
        wait = "waiting for its pods" if not reached else "analysing"
        message = (
            f"canary of revision {r}: step {index + 1}/{len(steps)} at {weight}% "
            f"({canary_ready}/{c} candidate replicas ready), {wait}"
        )
    plan_ = RolloutPlan(
        stable=TrackPlan(str(s), stable_target, from_stable_spec=True),
        canary=TrackPlan(r, c),
        good=s,
        status=_base_status(
            f,
            phase,
            step=index + 1,
            steps=len(steps),
            canaryWeight=weight,
            canaryReplicas=c,
            stepStartedTime=step_started,
            failedChecks=failed,
            passedChecks=passed,
            lastAnalysis=last,
            message=message,
            **fields,
        ),
        events=events,
        verdict=Verdict(reason, message),
        requeue_after=min(requeue) if requeue else None,
    )
    plan_.records.append((r, CANDIDATE, "", ""))
    return plan_


def _promoting(
    f: Facts,
    steps: Sequence[tuple[int, int]],
    index: int,
    last: Any,
    failed: int,
    events: list[tuple[str, str, str]],
) -> RolloutPlan:
    """The stable Deployment takes R at its current size, then grows to N; the canary shrinks
    as the stable's pods of R become Ready.

    Two writes, not one: a Deployment whose template and replicas change together adds the
    extra replicas to the old ReplicaSet first (a proportional scale), starting pods of the
    revision being replaced.
    """
    r, n = f.desired, f.replicas
    ready_r = f.ready_of(STABLE_TRACK, r)
    waiting = f.waiting_for_gpu.get(STABLE_TRACK, 0) > 0
    c_last = canary_replicas(n, steps[index][0])
    canary_target = max(0, min(c_last, n - ready_r - (1 if waiting else 0)))
    size = f.stable_observed_replicas or 0
    switched = f.stable_template == r and f.stable_settled and ready_r >= min(size, n)
    stable_size = n if switched or size >= n else size
    done = (
        f.stable_template == r
        and f.stable_settled
        and ready_r >= n
        and f.stable_observed_replicas == n
    )
    if done:
        plan_ = _complete(f, STABLE, "Promoted", f"revision {r} promoted to {n} replicas")
        plan_.events[:0] = events
        return plan_
    fields, left, exceeded = _progress(f, f"{PROMOTING}:{ready_r}", holding=False)
    if exceeded:
        return _rollback(f, "Deadline", _deadline_message(f))
    message = f"promoting revision {r}: {ready_r}/{n} stable replicas run it"
    plan_ = RolloutPlan(
        stable=TrackPlan(r, stable_size, surge=not waiting),
        canary=TrackPlan(r, canary_target) if canary_target > 0 or ready_r < n else None,
        good=f.stable,
        status=_base_status(
            f,
            PROMOTING,
            # The step promoted from: its weight sizes the canary until it is gone.
            step=index + 1,
            steps=len(steps),
            canaryWeight=steps[index][0],
            canaryReplicas=canary_target,
            failedChecks=failed,
            lastAnalysis=last,
            message=message,
            **fields,
        ),
        events=events,
        verdict=Verdict(Reason.PROMOTING, message),
        requeue_after=left,
    )
    plan_.records.append((r, CANDIDATE, "", ""))
    return plan_


# --- status.revisions ------------------------------------------------------------------------


def rolled_back_revisions(revisions: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    """Revision -> (Stalled reason, message) of the rolled-back entries of status.revisions."""
    out: dict[str, tuple[str, str]] = {}
    for entry in revisions:
        if entry.get("phase") == REVISION_ROLLED_BACK:
            cause = str(entry.get("reason") or "")
            reason = (
                Reason.CANARY_ANALYSIS_FAILED
                if cause == Reason.CANARY_ANALYSIS_FAILED
                else Reason.ROLLED_BACK
            )
            out[str(entry["revision"])] = (str(reason), str(entry.get("message") or cause))
    return out


def record_revisions(
    revisions: Sequence[Mapping[str, Any]],
    records: Sequence[tuple[str, str, str, str]],
    now: datetime,
) -> list[dict[str, Any]]:
    """status.revisions after ``records``: an entry whose phase changes moves to the front
    with a new ``since``; an unchanged one stays as it is (no write for a steady fleet)."""
    out = [dict(e) for e in revisions]
    for revision, phase, reason, message in records:
        current = next((e for e in out if e.get("revision") == revision), None)
        if current is not None and current.get("phase") == phase:
            continue
        if current is not None and phase == SUPERSEDED and not reason and not message:
            # A rolled-back revision the spec moved away from: keep why it failed, in place.
            current.update(phase=SUPERSEDED, since=rfc3339(now))
            continue
        if phase == ACTIVE:
            # One Active revision: the one before it is superseded.
            for e in out:
                if e.get("phase") == ACTIVE and e.get("revision") != revision:
                    e.update(
                        phase=SUPERSEDED, since=rfc3339(now), message=f"replaced by {revision}"
                    )
                    e.pop("reason", None)
        out = [e for e in out if e.get("revision") != revision]
        entry: dict[str, Any] = {"revision": revision, "phase": phase, "since": rfc3339(now)}
        if reason:
            entry["reason"] = reason
        if message:
            entry["message"] = message
        out.insert(0, entry)
    return out[:MAX_REVISIONS]
