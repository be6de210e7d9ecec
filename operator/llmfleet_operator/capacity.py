"""Pure: how many GPUs the cluster has free, and which worker pods wait for GPUs.

Used to explain ``Stalled=InsufficientGPU`` ("asks for 4, 3 free on the best node") and, by
the autoscaler, to avoid piling Pending pods onto a full cluster. Free GPUs are counted only
on the nodes a worker pod template may use: Ready, not cordoned, matching its nodeSelector
and required node affinity, every NoSchedule/NoExecute taint tolerated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from llmfleet_operator.quantity import parse_quantity


@dataclass(frozen=True)
class ContainerFailure:
    """Why a worker container cannot run, as the kubelet reports it."""

    reason: str  # a Reason: CrashLoopBackOff, ImagePullBackOff, ConfigError or OOMKilled
    message: str


# Waiting reasons of the kubelet (pkg/kubelet/images, kuberuntime), by what a user must fix.
_IMAGE_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "ErrImageNeverPull",
        "RegistryUnavailable",
    }
)
_CONFIG_REASONS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)


def container_failure(pod: Mapping[str, Any]) -> ContainerFailure | None:
    """The first container of ``pod`` that the kubelet cannot keep running, and why."""
    status = pod.get("status", {})
    for cs in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
        name = cs.get("name", "?")
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = str(waiting.get("reason", ""))
        message = str(waiting.get("message", "")).strip()
        last = (
            (cs.get("lastState") or {}).get("terminated")
            or (cs.get("state") or {}).get("terminated")
            or {}
        )
        if reason in _IMAGE_REASONS:
            return ContainerFailure("ImagePullBackOff", f"container {name}: {reason}: {message}")
        if reason in _CONFIG_REASONS:
            return ContainerFailure("ConfigError", f"container {name}: {reason}: {message}")
        if last.get("reason") == "OOMKilled":
            restarts = int(cs.get("restartCount", 0))
            return ContainerFailure(
                "OOMKilled",
                f"container {name} was killed for exceeding its memory limit "
                f"(exit {last.get('exitCode', 137)}, {restarts} restarts)",
            )
        if reason == "CrashLoopBackOff":
            said = str(last.get("message", "")).strip()
            exit_code = last.get("exitCode")
            text = f"container {name} keeps exiting"
            if exit_code is not None:
                text += f" (last exit code {exit_code})"
            return ContainerFailure("CrashLoopBackOff", f"{text}: {said}" if said else text)
    return None


#: Event reasons of the attach/detach controller and the kubelet when a volume cannot be
#: attached or mounted (a ReadWriteOnce claim in use on another node: "Multi-Attach error").
VOLUME_EVENT_REASONS: Final = ("FailedAttachVolume", "FailedMount")


def creating_since(pod: Mapping[str, Any]) -> str | None:
    """When a scheduled pod whose containers are still being created was scheduled
    (RFC 3339), or None. Volumes are attached and mounted in this state, and what goes wrong
    there is only told in Events, not in the pod's status."""
    status = pod.get("status", {})
    conds = {c.get("type"): c for c in status.get("conditions", [])}
    scheduled = conds.get("PodScheduled", {})
    if scheduled.get("status") != "True" or status.get("phase", "Pending") != "Pending":
        return None
    statuses = [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]
    creating = not statuses or all(
        ((cs.get("state") or {}).get("waiting") or {}).get("reason")
        in ("ContainerCreating", "PodInitializing")
        for cs in statuses
    )
    return str(scheduled.get("lastTransitionTime") or "") or None if creating else None


def volume_failure(events: Iterable[Mapping[str, Any]]) -> ContainerFailure | None:
    """The newest attach or mount failure among a pod's Events (Multi-Attach first)."""
    found = [e for e in events if e.get("reason") in VOLUME_EVENT_REASONS]
    if not found:
        return None
    found.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    multi = [e for e in found if "Multi-Attach" in str(e.get("message", ""))]
    event = (multi or found)[-1]
    return ContainerFailure(
        "VolumeAttachFailed", f"{event.get('reason')}: {str(event.get('message', '')).strip()}"
    )


@dataclass(frozen=True)
class PodInfo:
    """What status and the autoscaler need to know about one worker pod."""

    name: str
    revision: str
    phase: str
    ready: bool
    terminating: bool
    #: The scheduler said no because of ``gpu_resource`` (Unschedulable, message names it).
    waiting_for_gpu: bool
    unschedulable_message: str
    gpus: int
    #: The kubelet cannot keep a container running (None: nothing failing).
    failure: ContainerFailure | None = None


def _gpus_of(pod: Mapping[str, Any], gpu_resource: str) -> int:
    total = 0
    for c in pod.get("spec", {}).get("containers", []):
        limits = c.get("resources", {}).get("limits", {}) or {}
        total += int(str(limits.get(gpu_resource, "0")) or 0)
    return total


def pod_info(pod: Mapping[str, Any], gpu_resource: str, revision_label: str) -> PodInfo:
    """Summarise a pod as the API server returns it."""
    meta = pod.get("metadata", {})
    status = pod.get("status", {})
    conds = {c.get("type"): c for c in status.get("conditions", [])}
    scheduled = conds.get("PodScheduled", {})
    unschedulable = (
        scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
    )
    message = str(scheduled.get("message", "")) if unschedulable else ""
    return PodInfo(
        name=str(meta.get("name", "")),
        revision=str(meta.get("labels", {}).get(revision_label, "")),
        phase=str(status.get("phase", "Pending")),
        ready=conds.get("Ready", {}).get("status") == "True",
        terminating=bool(meta.get("deletionTimestamp")),
        waiting_for_gpu=unschedulable and gpu_resource in message,
        unschedulable_message=message,
        gpus=_gpus_of(pod, gpu_resource),
        failure=container_failure(pod),
    )


# --- GPU capacity: slim records of nodes and pods, and where a pod template may go -------------

#: Taint effects that keep a pod off a node (PreferNoSchedule only steers the scheduler).
BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
_FINISHED = frozenset({"Succeeded", "Failed"})


def is_extended_resource(name: str) -> bool:
    """A device-plugin style resource (``nvidia.com/gpu``, ``amd.com/gpu``, ...): a
    domain-prefixed name outside ``kubernetes.io``. Only these are kept, so memory is bounded
    by the nodes and by the pods that request devices, not by all pods."""
    domain, slash, _ = name.partition("/")
    if not slash or name.startswith("requests."):
        return False
    return domain != "kubernetes.io" and not domain.endswith(".kubernetes.io")


def _count(value: object) -> int:
    """An extended resource amount (always an integer); 0 when unreadable."""
    amount = parse_quantity(value)
    return int(amount) if amount is not None and amount > 0 else 0


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class NodeRecord:
    """What GPU accounting keeps of a Node: a few hundred bytes, whatever the object's size."""

    name: str
    labels: Mapping[str, str]
    #: Only NoSchedule and NoExecute taints.
    taints: tuple[Taint, ...]
    ready: bool
    unschedulable: bool
    #: Extended resources only, e.g. {"nvidia.com/gpu": 8}.
    allocatable: Mapping[str, int]


@dataclass(frozen=True)
class PodRecord:
    """A pod bound to a node that requests extended resources (GPUs)."""

    node: str
    requests: tuple[tuple[str, int], ...]


def slim_node(obj: Mapping[str, Any]) -> NodeRecord:
    """A Node as the API server returns it -> the fields GPU accounting needs."""
    meta, spec, status = obj.get("metadata", {}), obj.get("spec") or {}, obj.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    taints = tuple(
        Taint(str(t.get("key", "")), str(t.get("value") or ""), str(t.get("effect", "")))
        for t in spec.get("taints") or []
        if t.get("effect") in BLOCKING_EFFECTS
    )
    allocatable = {
        str(r): n
        for r, v in (status.get("allocatable") or {}).items()
        if is_extended_resource(str(r)) and (n := _count(v)) > 0
    }
    return NodeRecord(
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        taints=taints,
        ready=ready,
        unschedulable=bool(spec.get("unschedulable")),
        allocatable=allocatable,
    )


def _container_requests(container: Mapping[str, Any]) -> dict[str, int]:
    res = container.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    out: dict[str, int] = {}
    # Extended resources: a limit alone is the request too; both must be equal.
    for name in {*requests, *limits}:
        if is_extended_resource(str(name)):
            n = _count(requests.get(name, limits.get(name)))
            if n:
                out[str(name)] = n
    return out


def pod_requests(spec: Mapping[str, Any]) -> dict[str, int]:
    """Extended resources a pod holds on its node, as the scheduler counts them: the app
    containers and sidecars (restartable init containers) together, or the largest init
    container if that is more, plus the pod overhead."""
    total: dict[str, int] = {}
    for c in spec.get("containers") or []:
        for r, n in _container_requests(c).items():
            total[r] = total.get(r, 0) + n
    sidecars: dict[str, int] = {}
    peak: dict[str, int] = {}
    for c in spec.get("initContainers") or []:
        req = _container_requests(c)
        if c.get("restartPolicy") == "Always":
            for r, n in req.items():
                sidecars[r] = sidecars.get(r, 0) + n
            continue
        for r, n in req.items():
            peak[r] = max(peak.get(r, 0), n + sidecars.get(r, 0))
    for r, n in sidecars.items():
        total[r] = total.get(r, 0) + n
    for r, n in peak.items():
        total[r] = max(total.get(r, 0), n)
    for r, v in (spec.get("overhead") or {}).items():
        if is_extended_resource(str(r)) and (n := _count(v)):
            total[str(r)] = total.get(str(r), 0) + n
    return total


def slim_pod(obj: Mapping[str, Any]) -> PodRecord | None:
    """A Pod -> what it holds on its node; None when it holds no devices (not bound, finished,
    or no extended resource requested): such pods are not kept at all."""
    spec = obj.get("spec") or {}
    node = spec.get("nodeName")
    if not node or (obj.get("status") or {}).get("phase") in _FINISHED:
        return None
    requests = pod_requests(spec)
    if not requests:
        return None
    return PodRecord(str(node), tuple(sorted(requests.items())))


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def tolerates(self, taint: Taint) -> bool:
        """core/v1 Toleration.ToleratesTaint."""
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        if self.operator == "Exists":
            return True
        # An empty key with Equal matches nothing (the API server refuses it anyway).
        return bool(self.key) and self.value == taint.value


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions or matchFields entry of a NodeSelectorTerm."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, value: str | None) -> bool:
        op = self.operator
        if op == "In":
            return value is not None and value in self.values
        if op == "NotIn":
            return value is None or value not in self.values
        if op == "Exists":
            return value is not None
        if op == "DoesNotExist":
            return value is None
        if op in ("Gt", "Lt"):
            if value is None or len(self.values) != 1:
                return False
            try:
                have, bound = int(value), int(self.values[0])
            except ValueError:
                return False
            return have > bound if op == "Gt" else have < bound
        return False


@dataclass(frozen=True)
class Term:
    """A NodeSelectorTerm: every expression and field requirement must hold."""

    expressions: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()

    def matches(self, node: NodeRecord) -> bool:
        if not self.expressions and not self.fields:
            return False  # an empty term selects no node
        for req in self.expressions:
            if not req.matches(node.labels.get(req.key)):
                return False
        for req in self.fields:
            # metadata.name is the only field the scheduler supports, with In and NotIn.
            if req.key != "metadata.name" or req.operator not in ("In", "NotIn"):
                return False
            if not req.matches(node.name):
                return False
        return True


def _requirements(items: Any) -> tuple[Requirement, ...]:
    return tuple(
        Requirement(
            str(e.get("key", "")),
            str(e.get("operator", "")),
            tuple(str(v) for v in e.get("values") or ()),
        )
        for e in items or ()
    )


@dataclass(frozen=True)
class Placement:
    """The scheduling constraints of a pod template that decide which nodes it may use.

    Hashable, so capacity can be computed once per distinct template per evaluation.
    """

    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    #: Required node affinity (ORed terms); None: no such constraint.
    terms: tuple[Term, ...] | None = None

    @classmethod
    def of_pod_spec(cls, spec: Mapping[str, Any]) -> Placement:
        """From a core/v1 PodSpec (nodeSelector, tolerations, affinity.nodeAffinity)."""
        tolerations = tuple(
            Toleration(
                str(t.get("key") or ""),
                str(t.get("operator") or "Equal"),
                str(t.get("value") or ""),
                str(t.get("effect") or ""),
            )
            for t in spec.get("tolerations") or ()
        )
        required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        ) or None
        terms = None
        if required is not None:
            terms = tuple(
                Term(_requirements(t.get("matchExpressions")), _requirements(t.get("matchFields")))
                for t in required.get("nodeSelectorTerms") or ()
            )
        return cls(
            node_selector=tuple(sorted((spec.get("nodeSelector") or {}).items())),
            tolerations=tolerations,
            terms=terms,
        )

    def tolerates(self, taint: Taint) -> bool:
        return any(t.tolerates(taint) for t in self.tolerations)

    def refusal(self, node: NodeRecord) -> str | None:
        """Why a pod of this template cannot go to ``node`` (None: it can), as a category
        for messages: NotReady, cordoned, nodeSelector, affinity or taint."""
        if not node.ready:
            return NOT_READY
        if node.unschedulable and not self.tolerates(Taint(UNSCHEDULABLE_TAINT, "", "NoSchedule")):
            return CORDONED
        if any(node.labels.get(k) != v for k, v in self.node_selector):
            return NODE_SELECTOR
        if self.terms is not None and not any(t.matches(node) for t in self.terms):
            return AFFINITY
        if any(not self.tolerates(t) for t in node.taints):
            return TAINT
        return None

    def admits(self, node: NodeRecord) -> bool:
        return self.refusal(node) is None


NOT_READY: Final = "NotReady"
CORDONED: Final = "cordoned"
NODE_SELECTOR: Final = "nodeSelector"
AFFINITY: Final = "affinity"
TAINT: Final = "taint"
#: How each refusal reads in a message (one node, several), in the order shown.
_REFUSALS: Final = (
    (NODE_SELECTOR, ("does not match the nodeSelector", "do not match the nodeSelector")),
    (AFFINITY, ("does not match the node affinity", "do not match the node affinity")),
    (TAINT, ("has a taint the pods do not tolerate", "have a taint the pods do not tolerate")),
    (CORDONED, ("is cordoned", "are cordoned")),
    (NOT_READY, ("is NotReady", "are NotReady")),
)


@dataclass(frozen=True)
class GpuCapacity:
    """Free GPUs of one resource name on the nodes a pod template may use."""

    resource: str
    total: int
    free: int
    free_per_node: dict[str, int]
    nodes: int
    #: Nodes with this resource that the template may not use, by refusal category.
    refused: tuple[tuple[str, int], ...] = ()

    @property
    def largest_free_block(self) -> int:
        """The most GPUs one new pod could get (pods cannot span nodes)."""
        return max(self.free_per_node.values(), default=0)

    def fits(self, gpus_per_pod: int) -> int:
        """How many more pods asking ``gpus_per_pod`` GPUs each fit right now."""
        if gpus_per_pod <= 0:
            return 1 << 30
        return sum(free // gpus_per_pod for free in self.free_per_node.values())


@dataclass(frozen=True)
class CapacityUnknown:
    """Free GPUs cannot be known (no cluster-wide view, RBAC, not synced, watch broken)."""

    why: str


def free_capacity(
    nodes: Iterable[NodeRecord],
    used: Mapping[str, Mapping[str, int]],
    resource: str,
    placement: Placement | None = None,
) -> GpuCapacity:
    """Allocatable minus what bound, unfinished pods request, per node that ``placement``
    may use (None: any Ready, schedulable node). ``used``: node -> resource -> requested."""
    free: dict[str, int] = {}
    total = 0
    refused: dict[str, int] = {}
    for node in nodes:
        amount = node.allocatable.get(resource, 0)
        if amount <= 0:
            continue
        if placement is None:
            why = NOT_READY if not node.ready else CORDONED if node.unschedulable else None
        else:
            why = placement.refusal(node)
        if why is not None:
            refused[why] = refused.get(why, 0) + 1
            continue
        total += amount
        free[node.name] = max(0, amount - used.get(node.name, {}).get(resource, 0))
    return GpuCapacity(
        resource=resource,
        total=total,
        free=sum(free.values()),
        free_per_node=free,
        nodes=len(free),
        refused=tuple((k, refused[k]) for k, _ in _REFUSALS if k in refused),
    )


def used_by_node(pods: Iterable[PodRecord]) -> dict[str, dict[str, int]]:
    """node -> resource -> what the pods bound to it request."""
    used: dict[str, dict[str, int]] = {}
    for pod in pods:
        per = used.setdefault(pod.node, {})
        for r, n in pod.requests:
            per[r] = per.get(r, 0) + n
    return used


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _refusals_text(capacity: GpuCapacity) -> str:
    words = dict(_REFUSALS)
    return ", ".join(f"{n} {words[k][n != 1]}" for k, n in capacity.refused)


def free_gpus_text(capacity: GpuCapacity | CapacityUnknown | None) -> str:
    """What is free, for messages: "3 free of 32 on 4 GPU nodes (at most 3 free on one node)"."""
    if capacity is None:
        return "the scheduler found no node with enough free GPUs"
    if isinstance(capacity, CapacityUnknown):
        return capacity.why
    refused = sum(n for _, n in capacity.refused)
    if capacity.nodes == 0:
        if not refused:
            return f"no node offers {capacity.resource}"
        return (
            f"no node with {capacity.resource} accepts these pods: "
            f"of {_plural(refused, 'such node')}, {_refusals_text(capacity)}"
        )
    text = (
        f"{capacity.free} free of {capacity.total} on {_plural(capacity.nodes, 'GPU node')} "
        f"(at most {capacity.largest_free_block} free on one node)"
    )
    if refused:
        verb = "refuses" if refused == 1 else "refuse"
        text += (
            f"; {_plural(refused, 'other GPU node')} {verb} these pods ({_refusals_text(capacity)})"
        )
    return text
