"""Pure: observed children -> the LLMDeployment's status, kstatus style.

``Ready`` summarises; ``Reconciling=True`` while converging; ``Stalled=True`` with a reason
when the fleet cannot progress by itself (and then ``Reconciling=False``, so that kstatus,
Flux and Argo CD report a failure rather than progress). The same observation always yields
the same status, so an idle fleet causes no writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from llmfleet_operator.api import ConditionType, Reason
from llmfleet_operator.capacity import GpuCapacity, PodInfo
from llmfleet_operator.conditions import Condition, merge


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
    capacity: GpuCapacity | None = None


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
    cap = obs.capacity
    if cap is None:
        return f"{asked}; the scheduler found no node with enough free GPUs"
    return (
        f"{asked}; {cap.free} free of {cap.total} on {_plural(cap.nodes, 'GPU node')} "
        f"(at most {cap.largest_free_block} free on one node)"
    )


def invalid_spec_conditions(message: str) -> list[Condition]:
    """The conditions when the spec cannot be read: stalled until a human fixes it."""
    return [
        Condition(ConditionType.READY, "False", Reason.INVALID_SPEC, message),
        Condition(ConditionType.RECONCILING, "False", Reason.INVALID_SPEC, message),
        Condition(ConditionType.STALLED, "True", Reason.INVALID_SPEC, message),
    ]


def evaluate(obs: Observation) -> list[Condition]:
    """The conditions for one observation."""
    ready_t, rec_t, stalled_t = (
        ConditionType.READY,
        ConditionType.RECONCILING,
        ConditionType.STALLED,
    )
    dep = obs.deployment or {}
    dstat = dep.get("status", {})
    want = obs.desired_replicas
    current_pods = [p for p in obs.pods if not p.terminating]
    ready = sum(1 for p in current_pods if p.ready and p.revision == obs.revision)
    waiting = [p for p in current_pods if p.waiting_for_gpu]
    dep_seen = bool(dep) and dstat.get("observedGeneration", 0) >= dep.get("metadata", {}).get(
        "generation", 0
    )
    total = int(dstat.get("replicas", 0))
    updated = int(dstat.get("updatedReplicas", 0))
    available = int(dstat.get("availableReplicas", 0))
    rolled_out = (
        dep_seen
        and int(dep.get("spec", {}).get("replicas", -1)) == want
        and updated == want
        and total == want
        and available == want
        and ready >= want
    )
    progressing = _deployment_condition(dep, "Progressing")
    deadline = (
        progressing.get("status") == "False"
        and progressing.get("reason") == "ProgressDeadlineExceeded"
    )

    if waiting:
        msg = gpu_shortage_message(obs, waiting)
        return [
            Condition(
                ready_t,
                "False" if ready < want else "True",
                Reason.INSUFFICIENT_GPU,
                f"{ready}/{want} replicas ready; {msg}",
            ),
            Condition(rec_t, "False", Reason.INSUFFICIENT_GPU, msg),
            Condition(stalled_t, "True", Reason.INSUFFICIENT_GPU, msg),
        ]
    if deadline and not rolled_out:
        msg = (
            f"rollout of revision {obs.revision} made no progress: "
            f"{progressing.get('message', '')}".strip()
        )
        return [
            Condition(
                ready_t,
                "False",
                Reason.PROGRESS_DEADLINE_EXCEEDED,
                f"{ready}/{want} replicas ready; {msg}",
            ),
            Condition(rec_t, "False", Reason.PROGRESS_DEADLINE_EXCEEDED, msg),
            Condition(stalled_t, "True", Reason.PROGRESS_DEADLINE_EXCEEDED, msg),
        ]
    not_stalled = Condition(stalled_t, "False", Reason.RECONCILED, "")
    if rolled_out:
        if want == 0:
            reason = Reason.SUSPENDED if obs.suspended else Reason.AVAILABLE
            msg = "suspended: scaled to zero, GPUs released" if obs.suspended else "scaled to zero"
        else:
            reason, msg = Reason.AVAILABLE, f"{ready}/{want} replicas ready"
        return [
            Condition(ready_t, "True", reason, msg),
            Condition(rec_t, "False", Reason.RECONCILED, f"revision {obs.revision} rolled out"),
            not_stalled,
        ]
    if updated < total or (dep_seen and updated < want and total >= want):
        reason = Reason.ROLLING_OUT
        msg = f"rolling out revision {obs.revision}: {updated}/{want} updated, {ready}/{want} ready"
    elif total != want:
        reason = Reason.SCALING
        msg = f"scaling from {total} to {want} replicas; {ready} ready"
    else:
        reason = Reason.PODS_NOT_READY
        msg = f"{ready}/{want} replicas ready"
    blocked = [p for p in current_pods if p.unschedulable_message]
    if blocked:
        # Not GPUs (handled above): e.g. a missing model PVC. Say what the scheduler said.
        msg += f"; {_plural(len(blocked), 'pod')} unschedulable: {blocked[0].unschedulable_message}"
    return [
        Condition(ready_t, "False", reason, msg),
        Condition(rec_t, "True", reason, msg),
        not_stalled,
    ]


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
    dstat = (obs.deployment or {}).get("status", {})
    conditions = evaluate(obs) + list(extra_conditions)
    rolled = any(
        c.type == ConditionType.READY and c.status == "True" and c.reason != Reason.INSUFFICIENT_GPU
        for c in conditions
    )
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "replicas": int(dstat.get("replicas", 0)),
        "readyReplicas": int(dstat.get("readyReplicas", 0)),
        "updatedReplicas": int(dstat.get("updatedReplicas", 0)),
        "availableReplicas": int(dstat.get("availableReplicas", 0)),
        "desiredReplicas": obs.desired_replicas,
        "selector": obs.selector,
        "endpoint": obs.endpoint,
        "updateRevision": obs.revision,
        "currentRevision": obs.revision if rolled else previous.get("currentRevision"),
        "conditions": merge(previous.get("conditions", []), conditions, obs.generation, now),
    }
    block = autoscaler if autoscaler is not None else previous.get("autoscaler")
    if block:
        status["autoscaler"] = dict(block)
    return {k: v for k, v in status.items() if v is not None}
