"""Free GPUs from whole Node and Pod objects, as a test reads them from the API server.

The operator never holds whole objects: its watches keep the slim records
(``slim_node``/``slim_pod``), and this composes the same pure steps over full lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from llmfleet_operator.capacity import (
    GpuCapacity,
    Placement,
    free_capacity,
    slim_node,
    slim_pod,
    used_by_node,
)


def gpu_capacity(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    resource: str,
    placement: Placement | None = None,
) -> GpuCapacity:
    """``free_capacity`` from Node and Pod objects as the API server returns them."""
    records = [p for p in (slim_pod(pod) for pod in pods) if p is not None]
    return free_capacity([slim_node(n) for n in nodes], used_by_node(records), resource, placement)
