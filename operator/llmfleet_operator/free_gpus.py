"""Free GPUs in the cluster, from watches of nodes and of the pods that hold devices.

A small informer of our own rather than kopf's: kopf's namespace scope applies to every
resource, and even a namespaced install must count the GPUs that every namespace's pods hold.
Each of the two streams LISTs once, then WATCHes from that resourceVersion (with bookmarks),
and LISTs again only when the server says the version expired (410 Gone) or the stream
failed (with backoff). Pods are selected server-side (bound to a node, not finished: a pod
that finishes leaves the watch as DELETED).

Only slim records are kept (``capacity.NodeRecord``, ``capacity.PodRecord``): per node its
labels, blocking taints, Ready, cordoned and extended-resource allocatable; per pod that
requests an extended resource, its node and those requests. Memory grows with the nodes and
the device-holding pods, not with all pods; a pod without devices is parsed and dropped.

Shared by the reconciler (InsufficientGPU messages, surge or in place) and the autoscaler
(scale-ups must fit): both ask for the capacity *for one pod template*, which is a lookup in
memory, never an API call. Before the first full LIST, while a stream has been broken for
longer than ``stale_after`` seconds, when RBAC forbids the view, or when the view is turned
off (namespaced installs that may not read other namespaces), the answer is
``CapacityUnknown`` with a sentence for status, never a wrong number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp

from llmfleet_operator.api import STABLE_TRACK, LLMDeploymentSpec
from llmfleet_operator.capacity import (
    CapacityUnknown,
    GpuCapacity,
    NodeRecord,
    Placement,
    PodRecord,
    free_capacity,
    slim_node,
    slim_pod,
)
from llmfleet_operator.k8s import ApiError, Kube, resource_path
from llmfleet_operator.resources import Owner, pod_template

log = logging.getLogger(__name__)

#: Pods that can hold devices: bound to a node and not finished.
POD_FIELD_SELECTOR: Final = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
VIEW_OFF: Final = (
    "free GPUs unknown: the operator does not read pods outside its namespaces "
    "(gpuCapacity.clusterWideReads=false)"
)
NOT_SYNCED: Final = "free GPUs unknown: the operator has not read every node and pod yet"
#: How long a broken stream may be repaired before its view counts as unknown.
STALE_AFTER_SECONDS: Final = 60.0
WATCH_TIMEOUT_SECONDS: Final = 300
PAGE: Final = "500"
#: Backoff between attempts after a failure: doubling from the first to the last.
BACKOFF_SECONDS: tuple[float, float] = (1.0, 30.0)


def placement_of(spec: LLMDeploymentSpec) -> Placement:
    """Where this LLMDeployment's worker pods may go, from the very pod template the
    operator builds (the GPU toleration included)."""
    template = pod_template(Owner("placement", "placement", ""), spec, "", STABLE_TRACK)
    return Placement.of_pod_spec(template["spec"])


def _slim_node(obj: Mapping[str, Any]) -> tuple[str, NodeRecord]:
    node = slim_node(obj)
    return node.name, node


def _slim_pod(obj: Mapping[str, Any]) -> tuple[str, PodRecord | None]:
    return str((obj.get("metadata") or {}).get("uid", "")), slim_pod(obj)


class _GoneError(Exception):
    """The resourceVersion is too old (410): list again."""


class _Stream:
    """LIST then WATCH one collection, feeding ``reset`` and ``event`` callbacks."""

    def __init__(
        self,
        kube: Kube,
        kind: str,
        path: str,
        slim: Callable[[Mapping[str, Any]], tuple[str, Any]],
        reset: Callable[[dict[str, Any]], None],
        event: Callable[[str, str, Any], None],
        field_selector: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        watch_timeout: int = WATCH_TIMEOUT_SECONDS,
    ) -> None:
        self.kube = kube
        self.kind = kind
        self.path = path
        self.field_selector = field_selector
        self._slim = slim
        self._reset = reset
        self._event = event
        self._clock = clock
        self.watch_timeout = watch_timeout
        self.synced = False
        #: When the stream last failed and has not been re-listed since (None: healthy).
        self.broken_since: float | None = None
        self.error = ""
        #: RBAC says no (the API server's message); None: allowed, or not known yet.
        self.forbidden: str | None = None
        self.lists = 0
        self.watches = 0
        self._backoff = BACKOFF_SECONDS[0]
        self._warned = ""
        #: The last WATCH was refused (403) although the LIST was allowed.
        self._watch_refused = False

    async def run(self) -> None:
        self._backoff = BACKOFF_SECONDS[0]
        while True:
            try:
                version = await self._list()
                while True:
                    version = await self._watch(version)
            except asyncio.CancelledError:
                raise
            except _GoneError:
                log.debug("%s watch expired; listing again", self.kind)
                continue
            except ApiError as e:
                if e.status == 410:
                    continue
                self._failed(e.message, forbidden=e.status == 403)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                self._failed(f"{type(e).__name__}: {e}")
            except Exception as e:
                # A bug must not leave a silently frozen view: it counts as broken, and the
                # next attempt starts from a fresh LIST.
                log.exception("GPU capacity: the %s stream failed unexpectedly", self.kind)
                self._failed(f"{type(e).__name__}: {e}")
            # Reset only by a watch that works: a LIST that succeeds before a WATCH that is
            # refused (RBAC with list but not watch) must not become a LIST per second.
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, BACKOFF_SECONDS[1])

    def _failed(self, message: str, forbidden: bool = False) -> None:
        if self.broken_since is None:
            self.broken_since = self._clock()
        if message != self._warned:
            self._warned = message
            if forbidden:
                log.warning(
                    "GPU capacity: may not list and watch %s cluster-wide (%s); free GPUs are "
                    "unknown. Grant nodes get/list/watch and pods list/watch, or set "
                    "gpuCapacity.clusterWideReads=false to say so.",
                    self.kind,
                    message,
                )
            else:
                log.warning(
                    "GPU capacity: the %s stream failed (%s); listing again with backoff",
                    self.kind,
                    message,
                )
        self.forbidden = message if forbidden else None
        self.error = message

    def _healthy(self) -> None:
        """A watch delivered: whatever failed before works again."""
        if self._warned:
            log.info("GPU capacity: the %s stream works again", self.kind)
        self.broken_since, self.error, self.forbidden, self._warned = None, "", None, ""
        self._backoff = BACKOFF_SECONDS[0]

    async def _list(self) -> str:
        # Slimmed page by page: a full LIST never sits in memory at once.
        records: dict[str, Any] = {}
        query = {"limit": PAGE}
        if self.field_selector:
            query["fieldSelector"] = self.field_selector
        while True:
            try:
                page = await self.kube.request("GET", self.path, query=query) or {}
            except ApiError as e:
                if e.status == 410:  # the continue token expired: start over
                    raise _GoneError from e
                raise
            for obj in page.get("items", []):
                key, record = self._slim(obj)
                if record is not None:
                    records[key] = record
            meta = page.get("metadata", {})
            if not meta.get("continue"):
                break
            query["continue"] = str(meta["continue"])
        self._reset(records)
        self.lists += 1
        self.synced = True
        # Fresh data; a refused WATCH stays refused until one works (see _healthy).
        self.broken_since = None
        if not self._watch_refused:
            self.forbidden = None
        return str(meta.get("resourceVersion", ""))

    async def _watch(self, version: str) -> str:
        self.watches += 1
        stream = self.kube.watch(
            self.path,
            version,
            field_selector=self.field_selector,
            timeout_seconds=self.watch_timeout,
        )
        try:
            # aclosing: leaving the loop by an exception closes the stream's connection now,
            # not whenever the collector finalises the suspended generator.
            async with contextlib.aclosing(stream):
                async for ev in stream:
                    type_, obj = str(ev.get("type", "")), ev.get("object") or {}
                    if type_ == "ERROR":
                        code = int(obj.get("code", 0) or 0)
                        if code == 410:
                            raise _GoneError
                        raise ApiError(
                            code or 500, "WATCH", self.path, str(obj.get("message", obj))
                        )
                    version = str((obj.get("metadata") or {}).get("resourceVersion", version))
                    if self._warned or self._watch_refused:
                        self._watch_refused = False
                        self._healthy()
                    if type_ in ("ADDED", "MODIFIED", "DELETED"):
                        key, record = self._slim(obj)
                        self._event(type_, key, None if type_ == "DELETED" else record)
        except ApiError as e:
            if e.status == 410:
                raise _GoneError from e
            self._watch_refused = e.status == 403
            raise
        self._watch_refused = False
        self._healthy()  # the server ended it on time: it worked
        return version


class FreeGpus:
    """The cluster-wide view of nodes and device-holding pods, kept current by watches."""

    def __init__(
        self,
        kube: Kube,
        *,
        enabled: bool = True,
        stale_after: float = STALE_AFTER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        watch_timeout: int = WATCH_TIMEOUT_SECONDS,
    ) -> None:
        self.kube = kube
        self.enabled = enabled
        self.stale_after = stale_after
        self._clock = clock
        self.nodes: dict[str, NodeRecord] = {}
        self.pods: dict[str, PodRecord] = {}
        #: node -> resource -> what the kept pods request there.
        self.used: dict[str, dict[str, int]] = {}
        #: Moves on every change; computed capacities are valid for one version.
        self.version = 0
        self._memo: dict[tuple[str, Placement | None], GpuCapacity] = {}
        self._task: asyncio.Task[None] | None = None
        self.streams = (
            _Stream(
                kube,
                "nodes",
                resource_path("v1", "Node"),
                _slim_node,
                self._reset_nodes,
                self._node_event,
                clock=clock,
                watch_timeout=watch_timeout,
            ),
            _Stream(
                kube,
                "pods",
                resource_path("v1", "Pod"),
                _slim_pod,
                self._reset_pods,
                self._pod_event,
                field_selector=POD_FIELD_SELECTOR,
                clock=clock,
                watch_timeout=watch_timeout,
            ),
        )

    # --- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep the view current until cancelled (returns at once when turned off)."""
        if not self.enabled:
            log.info("GPU capacity: cluster-wide reads are off; free GPUs are unknown")
            return
        await asyncio.gather(*(s.run() for s in self.streams))

    def start(self) -> asyncio.Task[None]:
        """Run in a background task (see :meth:`stop`)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="llmfleet-gpu-capacity")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def synced(self) -> bool:
        """Both streams have listed once."""
        return all(s.synced for s in self.streams)

    async def wait_synced(self, within: float) -> bool:
        """Wait until both streams have listed (or RBAC refused, or ``within`` seconds): the
        first reconciles then say what is free rather than "not read yet". Whether synced."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.enabled and not self.synced and loop.time() < deadline:
            if any(s.forbidden is not None for s in self.streams):
                break
            await asyncio.sleep(0.05)
        return self.synced

    # --- the store ---------------------------------------------------------------------------
    def _changed(self) -> None:
        self.version += 1
        self._memo.clear()

    def _reset_nodes(self, records: dict[str, NodeRecord]) -> None:
        self.nodes = records
        self._changed()

    def _node_event(self, type_: str, name: str, record: NodeRecord | None) -> None:
        if record is None:
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = record
        self._changed()

    def _reset_pods(self, records: dict[str, PodRecord]) -> None:
        self.pods, self.used = {}, {}
        for uid, record in records.items():
            self.pods[uid] = record
            self._account(record, +1)
        self._changed()

    def _pod_event(self, type_: str, uid: str, record: PodRecord | None) -> None:
        old = self.pods.pop(uid, None)
        if old is not None:
            self._account(old, -1)
        if record is not None:
            self.pods[uid] = record
            self._account(record, +1)
        if old != record:
            self._changed()

    def _account(self, record: PodRecord, sign: int) -> None:
        per = self.used.setdefault(record.node, {})
        for resource, n in record.requests:
            per[resource] = per.get(resource, 0) + sign * n
            if per[resource] <= 0:
                del per[resource]
        if not per:
            del self.used[record.node]

    # --- the view ----------------------------------------------------------------------------
    def unknown(self) -> CapacityUnknown | None:
        """Why free GPUs cannot be known right now (None: they can)."""
        if not self.enabled:
            return CapacityUnknown(VIEW_OFF)
        for s in self.streams:
            if s.forbidden is not None:
                return CapacityUnknown(
                    f"free GPUs unknown: the operator may not list and watch {s.kind} "
                    f"cluster-wide ({s.forbidden})"
                )
        if not self.synced:
            return CapacityUnknown(NOT_SYNCED)
        now = self._clock()
        for s in self.streams:
            if s.broken_since is not None and now - s.broken_since > self.stale_after:
                return CapacityUnknown(
                    f"free GPUs unknown: the operator's watch of {s.kind} keeps failing ({s.error})"
                )
        return None

    def capacity(
        self, resource: str, placement: Placement | None = None
    ) -> GpuCapacity | CapacityUnknown:
        """Free ``resource`` on the nodes that pods with ``placement`` may use."""
        unknown = self.unknown()
        if unknown is not None:
            return unknown
        key = (resource, placement)
        cap = self._memo.get(key)
        if cap is None:
            cap = free_capacity(self.nodes.values(), self.used, resource, placement)
            self._memo[key] = cap
        return cap

    def totals(self) -> dict[str, tuple[int, int]] | None:
        """Resource -> (allocatable, free) on Ready, schedulable nodes, for every extended
        resource a node offers (None while free GPUs are unknown). For the metrics."""
        if self.unknown() is not None:
            return None
        # Copies first: scrapes run on the metrics server's thread while watches write.
        nodes = list(self.nodes.values())
        used = {node: dict(per) for node, per in list(self.used.items())}
        out = {}
        for resource in sorted({r for node in nodes for r in node.allocatable}):
            cap = free_capacity(nodes, used, resource)
            out[resource] = (cap.total, cap.free)
        return out

    def for_spec(self, spec: LLMDeploymentSpec) -> GpuCapacity | CapacityUnknown:
        """Free GPUs for this LLMDeployment's worker pods."""
        return self.capacity(spec.worker.resources.gpu_resource_name, placement_of(spec))
