"""Free GPUs in the cluster, looked up through the API server and cached for a few seconds.

Shared by the reconciler (InsufficientGPU messages, surge or in place) and the autoscaler
(scale-ups must fit); neither holds the other.
"""

from __future__ import annotations

import logging
import time

from llmfleet_operator.capacity import GpuCapacity, gpu_capacity
from llmfleet_operator.k8s import ApiError, Kube, resource_path

log = logging.getLogger(__name__)


class FreeGpus:
    """The cluster-wide look at nodes and pods, one per GPU resource name and ``max_age``."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._capacity: dict[str, tuple[float, GpuCapacity | None]] = {}

    async def get(self, resource: str, max_age: float = 10.0) -> GpuCapacity | None:
        """Free GPUs, cached up to ``max_age`` seconds; None when RBAC does not allow the
        cluster-wide look."""
        now = time.monotonic()
        cached = self._capacity.get(resource)
        if cached and now - cached[0] < max_age:
            return cached[1]
        try:
            nodes = await self.kube.list(resource_path("v1", "Node"))
            pods = await self.kube.list(
                resource_path("v1", "Pod"),
                field_selector="status.phase!=Succeeded,status.phase!=Failed",
            )
            capacity: GpuCapacity | None = gpu_capacity(nodes, pods, resource)
        except ApiError as e:
            if e.status != 403:
                raise
            if resource not in self._capacity:
                log.warning(
                    "cannot list nodes and pods cluster-wide (%s); InsufficientGPU messages "
                    "will not say how many GPUs are free. Grant nodes get/list and pods list.",
                    e.message,
                )
            capacity = None
        self._capacity[resource] = (now, capacity)
        return capacity
