"""Pure: observed children -> the LLMDeployment's status, kstatus style.

``Ready`` summarises; ``Reconciling=True`` while converging; ``Stalled=True`` with a reason
when the fleet cannot progress by itself (and then ``Reconciling=False``, so that kstatus,
Flux and Argo CD report a failure rather than progress). The same observation always yields
the same status, so an idle fleet causes no writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from llmfleet_operator.api import ConditionType, Reason
from llmfleet_operator.capacity import CapacityUnknown, GpuCapacity, PodInfo, free_gpus_text
from llmfleet_operator.conditions import Condition, merge
from llmfleet_operator.rollout import Verdict as RolloutVerdict


@dataclass(frozen=True)
class Observation:
    """Everything the status is computed from."""

    generation: int
    desired_replicas: int
    revision: str
    selector: str
    endpoint: str
    suspended: bool
    gpus_per_pod: int
    gpu_resource: str
    deployment: Mapping[str, Any] | None
    pods: Sequence[PodInfo]
    #: Free GPUs for the pod template (unknown: the message says why; None: not looked).
    capacity: GpuCapacity | CapacityUnknown | None = None
    #: What the rollout machine says (None: no rollout in progress or held back).
    rollout: RolloutVerdict | None = None
    #: The canary Deployment, when one exists (its pods count in the replica totals).
    canary_deployment: Mapping[str, Any] | None = None
    #: The last revision that was fully Ready, as the rollout machine knows it.
    current_revision: str | None = None
    #: status.rollout and status.revisions, as the rollout machine built them.
    rollout_status: Mapping[str, Any] | None = None
    revisions: Sequence[Mapping[str, Any]] | None = None
    #: The API server refused a write of this reconcile: "Deployment x: <its message>".
    rejected: str | None = None
    #: Children the operator would create that exist already and are not this
    #: LLMDeployment's (no ownerReference to it): "Service x", left untouched.
    foreign: tuple[str, ...] = ()


def _deployment_condition(dep: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for c in dep.get("status", {}).get("conditions", []):
        if c.get("type") == type_:
            return dict(c)
    return {}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def gpu_shortage_message(obs: Observation, waiting: Sequence[PodInfo]) -> str:
    """Says what was asked and what is free, e.g. for ``kubectl describe``."""
    asked = (
        f"{_plural(len(waiting), 'pod')} Pending: each asks for {obs.gpus_per_pod} "
        f"{obs.gpu_resource}"
    )
    return f"{asked}; {free_gpus_text(obs.capacity)}"


def invalid_spec_conditions(message: str) -> list[Condition]:
    """The conditions when the spec cannot be read: stalled until a human fixes it."""
    return conditions_for(Verdict(Reason.INVALID_SPEC, message, STALLED))


# --- facts, checks, verdicts -------------------------------------------------------------------

READY: Final = "Ready"
RECONCILING: Final = "Reconciling"
STALLED: Final = "Stalled"


@dataclass(frozen=True)
class Verdict:
    """The outcome of the first check that has something to say."""

    reason: str
    message: str
    #: Ready (rolled out), Reconciling (converging by itself) or Stalled (needs a human).
    state: str
    #: The Ready condition's status; a stalled fleet can still serve (e.g. a scale-up that
    #: waits for GPUs while every asked-for replica before it is Ready).
    ready: bool = False
    #: The Ready condition's message when it differs from ``message``.
    ready_message: str | None = None
    #: Reconciling's message when the fleet is Ready.
    settled_message: str = ""


@dataclass(frozen=True)
class Facts:
    """Everything the checks look at, computed once from the observation."""

    want: int
    revision: str
    ready: int
    waiting: tuple[PodInfo, ...]
    blocked: tuple[PodInfo, ...]
    deployment_seen: bool
    total: int
    updated: int
    rolled_out: bool
    deadline_message: str | None
    suspended: bool
    gpu_message: str
    rollout: RolloutVerdict | None
    #: Live, not-ready pods whose containers the kubelet cannot keep running.
    failing: tuple[PodInfo, ...] = ()
    rejected: str | None = None
    foreign: tuple[str, ...] = ()


def facts_of(obs: Observation) -> Facts:
    dep = obs.deployment or {}
    dstat = dep.get("status", {})
    want = obs.desired_replicas
    live = [p for p in obs.pods if not p.terminating]
    ready = sum(1 for p in live if p.ready and p.revision == obs.revision)
    waiting = tuple(p for p in live if p.waiting_for_gpu)
    seen = bool(dep) and dstat.get("observedGeneration", 0) >= dep.get("metadata", {}).get(
        "generation", 0
    )
    total = int(dstat.get("replicas", 0))
    updated = int(dstat.get("updatedReplicas", 0))
    available = int(dstat.get("availableReplicas", 0))
    rolled_out = (
        seen
        and int(dep.get("spec", {}).get("replicas", -1)) == want
        and updated == want
        and total == want
        and available == want
        and ready >= want
    )
    progressing = _deployment_condition(dep, "Progressing")
    deadline = None
    if (
        progressing.get("status") == "False"
        and progressing.get("reason") == "ProgressDeadlineExceeded"
    ):
        deadline = (
            f"rollout of revision {obs.revision} made no progress: "
            f"{progressing.get('message', '')}".strip()
        )
    return Facts(
        want=want,
        revision=obs.revision,
        ready=ready,
        waiting=waiting,
        blocked=tuple(p for p in live if p.unschedulable_message),
        deployment_seen=seen,
        total=total,
        updated=updated,
        rolled_out=rolled_out,
        deadline_message=deadline,
        suspended=obs.suspended,
        gpu_message=gpu_shortage_message(obs, waiting) if waiting else "",
        rollout=obs.rollout,
        failing=tuple(p for p in live if p.failure is not None and not p.ready),
        rejected=obs.rejected,
        foreign=tuple(obs.foreign),
    )


def _ready_count(f: Facts) -> str:
    # Capped: at the end of a promotion the canary's pods run the revision too, for a moment.
    return f"{min(f.ready, f.want)}/{f.want} replicas ready"


def foreign_object_message(foreign: Sequence[str]) -> str:
    """What ``ForeignObject`` says: which objects are in the way, and what to do."""
    verb, pronoun = ("exists and is", "it") if len(foreign) == 1 else ("exist and are", "them")
    return (
        f"{', '.join(foreign)} {verb} not this LLMDeployment's (no ownerReference to it): "
        f"left untouched; delete or rename {pronoun}, or rename the LLMDeployment"
    )


def check_foreign_object(f: Facts) -> Verdict | None:
    """A child's name is taken by an object we do not control: never adopted, never changed."""
    if not f.foreign:
        return None
    message = foreign_object_message(f.foreign)
    return Verdict(
        Reason.FOREIGN_OBJECT,
        message,
        STALLED,
        ready_message=f"{_ready_count(f)}; {message}",
    )


def check_apply_rejected(f: Facts) -> Verdict | None:
    """The API server (an admission policy, a webhook, validation) refused our write."""
    if f.rejected is None:
        return None
    message = f"the API server refused {f.rejected}"
    return Verdict(
        Reason.APPLY_REJECTED,
        message,
        STALLED,
        ready_message=f"{_ready_count(f)}; {message}",
    )


#: What a human must fix first, when pods fail for different reasons at once.
_FAILURE_ORDER: Final = (
    Reason.CONFIG_ERROR,
    Reason.IMAGE_PULL_BACK_OFF,
    Reason.OOM_KILLED,
    Reason.VOLUME_ATTACH_FAILED,
    Reason.CRASH_LOOP_BACK_OFF,
)


def check_pod_failures(f: Facts) -> Verdict | None:
    """Containers that cannot run (image, config, memory, crashes): the kubelet's words."""
    if not f.failing:
        return None
    failures = [p.failure for p in f.failing if p.failure is not None]
    reason = min(
        (x.reason for x in failures),
        key=lambda r: _FAILURE_ORDER.index(r) if r in _FAILURE_ORDER else len(_FAILURE_ORDER),
    )
    pods = [p for p in f.failing if p.failure is not None and p.failure.reason == reason]
    first = pods[0].failure
    assert first is not None
    message = f"{_plural(len(pods), 'pod')} {reason}: {pods[0].name}: {first.message}"
    return Verdict(
        reason,
        message,
        STALLED,
        ready=f.ready >= f.want,
        ready_message=f"{_ready_count(f)}; {message}",
    )


def check_rollout_stalled(f: Facts) -> Verdict | None:
    """A rolled-back candidate, or a single replica that waits for a GPU to be replaced."""
    r = f.rollout
    if r is None or not r.stalled:
        return None
    return Verdict(r.reason, r.message, STALLED)


def check_insufficient_gpu(f: Facts) -> Verdict | None:
    """Pods the scheduler refuses for GPUs, outside a rollout that expects to wait for one."""
    if not f.waiting or (f.rollout is not None and not f.rollout.stalled):
        return None
    return Verdict(
        Reason.INSUFFICIENT_GPU,
        f.gpu_message,
        STALLED,
        ready=f.ready >= f.want,
        ready_message=f"{_ready_count(f)}; {f.gpu_message}",
    )


def check_progress_deadline(f: Facts) -> Verdict | None:
    """The Deployment gave up, with no earlier revision to roll back to."""
    if f.deadline_message is None or f.rolled_out or f.rollout is not None:
        return None
    return Verdict(
        Reason.PROGRESS_DEADLINE_EXCEEDED,
        f.deadline_message,
        STALLED,
        ready_message=f"{_ready_count(f)}; {f.deadline_message}",
    )


def check_rolling_out(f: Facts) -> Verdict | None:
    """A rollout in progress says how it goes (surge, in place, canary step, promotion)."""
    if f.rollout is None:
        return None
    return Verdict(f.rollout.reason, f.rollout.message, RECONCILING)


def check_rolled_out(f: Facts) -> Verdict | None:
    if not f.rolled_out:
        return None
    done = f"revision {f.revision} rolled out"
    if f.want == 0:
        if f.suspended:
            return Verdict(
                Reason.SUSPENDED,
                "suspended: scaled to zero, GPUs released",
                READY,
                ready=True,
                settled_message=done,
            )
        zero = (
            "scaled to zero: the Service has no endpoints until replicas are added "
            "(llmfleet does not scale up from zero by itself; raise minReplicas or replicas)"
        )
        return Verdict(Reason.AVAILABLE, zero, READY, ready=True, settled_message=done)
    return Verdict(Reason.AVAILABLE, _ready_count(f), READY, ready=True, settled_message=done)


def check_converging(f: Facts) -> Verdict:
    """Always has a verdict: the last check of the chain."""
    if f.updated < f.total or (f.deployment_seen and f.updated < f.want and f.total >= f.want):
        reason: str = Reason.ROLLING_OUT
        msg = (
            f"rolling out revision {f.revision}: {f.updated}/{f.want} updated, "
            f"{f.ready}/{f.want} ready"
        )
    elif f.total != f.want:
        reason = Reason.SCALING
        msg = f"scaling from {f.total} to {f.want} replicas; {f.ready} ready"
    else:
        reason, msg = Reason.PODS_NOT_READY, _ready_count(f)
    if f.blocked:
        # Not GPUs (handled above): e.g. a missing model PVC. Say what the scheduler said.
        msg += (
            f"; {_plural(len(f.blocked), 'pod')} unschedulable: "
            f"{f.blocked[0].unschedulable_message}"
        )
    return Verdict(reason, msg, RECONCILING)


#: The chain, first say wins (cert-manager's readiness policy chain).
CHECKS: Final[tuple[Callable[[Facts], Verdict | None], ...]] = (
    check_foreign_object,
    check_apply_rejected,
    check_rollout_stalled,
    check_pod_failures,
    check_insufficient_gpu,
    check_progress_deadline,
    check_rolling_out,
    check_rolled_out,
    check_converging,
)


def first_verdict(f: Facts) -> Verdict:
    for check in CHECKS:
        verdict = check(f)
        if verdict is not None:
            return verdict
    raise AssertionError("check_converging always answers")  # pragma: no cover


def conditions_for(v: Verdict) -> list[Condition]:
    """Ready, Reconciling and Stalled from one verdict."""
    ready_msg = v.ready_message or v.message
    not_stalled = Condition(ConditionType.STALLED, "False", Reason.RECONCILED, "")
    if v.state == READY:
        return [
            Condition(ConditionType.READY, "True", v.reason, v.message),
            Condition(ConditionType.RECONCILING, "False", Reason.RECONCILED, v.settled_message),
            not_stalled,
        ]
    if v.state == STALLED:
        return [
            Condition(ConditionType.READY, "True" if v.ready else "False", v.reason, ready_msg),
            Condition(ConditionType.RECONCILING, "False", v.reason, v.message),
            Condition(ConditionType.STALLED, "True", v.reason, v.message),
        ]
    return [
        Condition(ConditionType.READY, "False", v.reason, ready_msg),
        Condition(ConditionType.RECONCILING, "True", v.reason, v.message),
        not_stalled,
    ]


def evaluate(obs: Observation) -> list[Condition]:
    """The conditions for one observation."""
    return conditions_for(first_verdict(facts_of(obs)))


def build_status(
    obs: Observation,
    previous: Mapping[str, Any] | None,
    now: datetime,
    extra_conditions: Sequence[Condition] = (),
    autoscaler: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The full ``status`` to write.

    ``extra_conditions`` (the autoscaler's ``ScalingActive``) join the evaluated ones;
    ``autoscaler`` is ``status.autoscaler`` (carried over from ``previous`` when None, so a
    restarted operator keeps showing the last decision).
    """
    previous = previous or {}
    counts = {"replicas": 0, "readyReplicas": 0, "updatedReplicas": 0, "availableReplicas": 0}
    for dep in (obs.deployment, obs.canary_deployment):
        for name in counts:
            counts[name] += int((dep or {}).get("status", {}).get(name, 0))
    verdict = first_verdict(facts_of(obs))
    conditions = conditions_for(verdict) + list(extra_conditions)
    current: str | None
    if obs.current_revision is not None:
        current = obs.current_revision
    else:
        current = obs.revision if verdict.state == READY else previous.get("currentRevision")
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        **counts,
        "desiredReplicas": obs.desired_replicas,
        "selector": obs.selector,
        "endpoint": obs.endpoint,
        "updateRevision": obs.revision,
        "currentRevision": current,
        "conditions": merge(previous.get("conditions", []), conditions, obs.generation, now),
    }
    block = autoscaler if autoscaler is not None else previous.get("autoscaler")
    if block:
        status["autoscaler"] = dict(block)
    if obs.rollout_status is not None:
        status["rollout"] = dict(obs.rollout_status)
    if obs.revisions:
        status["revisions"] = [dict(r) for r in obs.revisions]
    return {k: v for k, v in status.items() if v is not None}
