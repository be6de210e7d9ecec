"""Pure: how many GPUs the cluster has free, and which worker pods wait for GPUs.

Used to explain ``Stalled=InsufficientGPU`` ("asks for 4, 3 free on the best node") and, by
the autoscaler, to avoid piling Pending pods onto a full cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


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


@dataclass(frozen=True)
class GpuCapacity:
    """Free GPUs of one resource name on schedulable nodes."""

    resource: str
    total: int
    free: int
    free_per_node: dict[str, int]
    nodes: int

    @property
    def largest_free_block(self) -> int:
        """The most GPUs one new pod could get (pods cannot span nodes)."""
        return max(self.free_per_node.values(), default=0)

    def fits(self, gpus_per_pod: int) -> int:
        """How many more pods asking ``gpus_per_pod`` GPUs each fit right now."""
        if gpus_per_pod <= 0:
            return 1 << 30
        return sum(free // gpus_per_pod for free in self.free_per_node.values())


def gpu_capacity(
    nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]], resource: str
) -> GpuCapacity:
    """Allocatable minus what scheduled, unfinished pods request, per schedulable node."""
    allocatable: dict[str, int] = {}
    for node in nodes:
        if node.get("spec", {}).get("unschedulable"):
            continue
        amount = int(str(node.get("status", {}).get("allocatable", {}).get(resource, "0")))
        if amount > 0:
            allocatable[str(node["metadata"]["name"])] = amount
    used: dict[str, int] = dict.fromkeys(allocatable, 0)
    for pod in pods:
        node_name = pod.get("spec", {}).get("nodeName")
        phase = pod.get("status", {}).get("phase")
        if node_name in used and phase not in ("Succeeded", "Failed"):
            used[node_name] += _gpus_of(pod, resource)
    free = {n: max(0, allocatable[n] - used[n]) for n in allocatable}
    return GpuCapacity(
        resource=resource,
        total=sum(allocatable.values()),
        free=sum(free.values()),
        free_per_node=free,
        nodes=len(allocatable),
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def free_gpus_text(capacity: GpuCapacity | None) -> str:
    """What is free, for messages: "3 free of 32 on 4 GPU nodes (at most 3 free on one node)"."""
    if capacity is None:
        return "the scheduler found no node with enough free GPUs"
    return (
        f"{capacity.free} free of {capacity.total} on {_plural(capacity.nodes, 'GPU node')} "
        f"(at most {capacity.largest_free_block} free on one node)"
    )
