"""Pure: one observation of an LLMDeployment's worker pods, shared by the reconciler (status,
rollouts) and the autoscaler (capacity, GPU headroom), so both count the same things."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmfleet_operator.api import LABEL_REVISION, LABEL_TRACK, STABLE_TRACK
from llmfleet_operator.capacity import PodInfo, pod_info


@dataclass(frozen=True)
class FleetObservation:
    """The worker pods of one LLMDeployment, counted once."""

    pods: tuple[PodInfo, ...]
    #: Ready, non-terminating pods by (track, revision).
    ready_by: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: Non-terminating pods the scheduler refused for lack of GPUs, by track.
    waiting_by_track: Mapping[str, int] = field(default_factory=dict)
    #: Non-terminating pods that have a node.
    placed: int = 0

    @property
    def live(self) -> tuple[PodInfo, ...]:
        """The pods that are not terminating."""
        return tuple(p for p in self.pods if not p.terminating)

    @property
    def ready(self) -> int:
        """Ready pods of every track and revision."""
        return sum(self.ready_by.values())

    @property
    def waiting_for_gpu(self) -> int:
        return sum(self.waiting_by_track.values())

    def ready_of(self, revision: str) -> int:
        """Ready pods of ``revision`` on any track."""
        return sum(n for (_, rev), n in self.ready_by.items() if rev == revision)


def observe_fleet(pods: Iterable[Mapping[str, Any]], gpu_resource: str) -> FleetObservation:
    """Count the pods as the watches cached them."""
    infos: list[PodInfo] = []
    ready: Counter[tuple[str, str]] = Counter()
    waiting: Counter[str] = Counter()
    placed = 0
    for pod in pods:
        info = pod_info(pod, gpu_resource, LABEL_REVISION)
        infos.append(info)
        if info.terminating:
            continue
        track = str((pod.get("metadata", {}).get("labels") or {}).get(LABEL_TRACK, STABLE_TRACK))
        if info.ready:
            ready[(track, info.revision)] += 1
        if info.waiting_for_gpu:
            waiting[track] += 1
        if pod.get("spec", {}).get("nodeName"):
            placed += 1
    return FleetObservation(tuple(infos), dict(ready), dict(waiting), placed)
