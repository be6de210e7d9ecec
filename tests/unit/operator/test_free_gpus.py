"""The GPU capacity informer's bookkeeping (LIST, WATCH events, 410, RBAC, staleness) on a
scripted client, and how its answers reach the autoscaler. The real API server is in
tests/integration/test_gpu_capacity.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from llmfleet_operator import free_gpus as free_gpus_module
from llmfleet_operator.api import LLMDeploymentSpec
from llmfleet_operator.autoscale_loop import AutoscaleLoop
from llmfleet_operator.autoscaler import Signals
from llmfleet_operator.cache import Cache
from llmfleet_operator.capacity import CapacityUnknown, GpuCapacity
from llmfleet_operator.free_gpus import NOT_SYNCED, POD_FIELD_SELECTOR, VIEW_OFF, FreeGpus
from llmfleet_operator.k8s import ApiError

GPU = "nvidia.com/gpu"
NODES, PODS = "/api/v1/nodes", "/api/v1/pods"
SPEC = LLMDeploymentSpec.model_validate({"model": {"uri": "pvc://models/tiny"}})


def node_obj(name: str, gpus: int = 8, ready: bool = True, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": "1"},
        "spec": {"taints": [{"key": GPU, "effect": "NoSchedule"}], **spec},
        "status": {
            "allocatable": {GPU: str(gpus), "cpu": "8"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod_obj(uid: str, node: str, gpus: int, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "resourceVersion": "2"},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "resources": {"limits": {GPU: str(gpus)}}}],
        },
        "status": {"phase": phase},
    }


Script = list[dict[str, Any] | BaseException]


class ScriptedKube:
    """LISTs answer ``lists``; each WATCH plays the next script, then hangs."""

    def __init__(self, lists: dict[str, list[dict[str, Any]]]) -> None:
        self.lists = lists
        self.watches: dict[str, list[Script]] = {NODES: [], PODS: []}
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.list_error: dict[str, ApiError] = {}
        self.more = asyncio.Event()

    async def request(
        self, method: str, path: str, *, query: dict[str, str] | None = None, **_: Any
    ) -> dict[str, Any]:
        self.calls.append(("LIST", path, dict(query or {})))
        if path in self.list_error:
            raise self.list_error[path]
        return {"metadata": {"resourceVersion": "10"}, "items": list(self.lists[path])}

    async def watch(
        self, path: str, resource_version: str, **kw: Any
    ) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(("WATCH", path, {"resourceVersion": resource_version, **kw}))
        while not self.watches[path]:
            self.more.clear()
            await self.more.wait()
        for item in self.watches[path].pop(0):
            if isinstance(item, BaseException):
                raise item
            yield item

    def play(self, path: str, *items: dict[str, Any] | BaseException) -> None:
        self.watches[path].append(list(items))
        self.more.set()

    def count(self, verb: str, path: str) -> int:
        return sum(1 for v, p, _ in self.calls if (v, p) == (verb, path))


async def until(description: str, probe: Callable[[], Any], within: float = 5.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not (value := probe()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {description}")
        await asyncio.sleep(0.005)
    return value


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(free_gpus_module, "BACKOFF_SECONDS", (0.01, 0.02))


def free(view: FreeGpus) -> dict[str, int]:
    cap = view.for_spec(SPEC)
    assert isinstance(cap, GpuCapacity), cap
    return cap.free_per_node


async def test_list_then_watch_events_keep_the_view_current() -> None:
    kube = ScriptedKube({NODES: [node_obj("g0"), node_obj("g1")], PODS: [pod_obj("p1", "g0", 3)]})
    view = FreeGpus(kube)  # type: ignore[arg-type]
    assert view.for_spec(SPEC) == CapacityUnknown(NOT_SYNCED)
    view.start()
    try:
        assert await view.wait_synced(within=5.0)
        assert free(view) == {"g0": 5, "g1": 8}
        # Pods are selected server-side: bound and unfinished.
        [pod_list] = [q for v, p, q in kube.calls if (v, p) == ("LIST", PODS)]
        assert pod_list["fieldSelector"] == POD_FIELD_SELECTOR
        kube.play(
            PODS,
            {"type": "ADDED", "object": pod_obj("p2", "g1", 8)},
            {"type": "MODIFIED", "object": pod_obj("p1", "g0", 3)},  # no double counting
            {"type": "ADDED", "object": pod_obj("cpu-only", "g1", 0)},
        )
        await until("p2 counted", lambda: free(view) == {"g0": 5, "g1": 0})
        assert set(view.pods) == {"p1", "p2"}  # a pod without devices is not kept
        kube.play(PODS, {"type": "DELETED", "object": pod_obj("p1", "g0", 3)})
        await until("p1 gone", lambda: free(view) == {"g0": 8, "g1": 0})
        kube.play(
            NODES,
            {"type": "MODIFIED", "object": node_obj("g0", unschedulable=True)},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "99"}}},
        )
        await until("g0 cordoned", lambda: "g0" not in free(view))
        cap = view.for_spec(SPEC)
        assert isinstance(cap, GpuCapacity)
        assert cap.refused == (("cordoned", 1),)
        kube.play(NODES, {"type": "DELETED", "object": node_obj("g0")})
        await until("g0 deleted", lambda: "g0" not in view.nodes)
        # Every change went through watches: one LIST of each, ever.
        assert (kube.count("LIST", NODES), kube.count("LIST", PODS)) == (1, 1)
        # The next watch resumes from the bookmark's version.
        await until("a third node watch", lambda: kube.count("WATCH", NODES) >= 3)
        versions = [q["resourceVersion"] for v, p, q in kube.calls if (v, p) == ("WATCH", NODES)]
        assert versions[:2] == ["10", "99"]
        assert view.used == {"g1": {GPU: 8}}
    finally:
        await view.stop()


async def test_expired_version_lists_again_and_replaces_the_store() -> None:
    kube = ScriptedKube({NODES: [node_obj("g0")], PODS: [pod_obj("p1", "g0", 2)]})
    view = FreeGpus(kube)  # type: ignore[arg-type]
    view.start()
    try:
        await until("synced", lambda: view.synced)
        # While the watch was away p1 finished and p3 started: only a new LIST can tell.
        kube.lists[PODS] = [pod_obj("p3", "g0", 6)]
        kube.play(PODS, {"type": "ERROR", "object": {"kind": "Status", "code": 410}})
        await until("re-listed", lambda: kube.count("LIST", PODS) == 2)
        await until("p3 counted", lambda: free(view) == {"g0": 2})
        assert set(view.pods) == {"p3"}
        # A 410 answer to the watch request itself, too.
        kube.lists[PODS] = []
        kube.play(PODS, ApiError(410, "WATCH", PODS, '{"message": "too old"}'))
        await until("re-listed again", lambda: kube.count("LIST", PODS) == 3)
        await until("nothing used", lambda: free(view) == {"g0": 8})
    finally:
        await view.stop()


async def test_forbidden_view_is_unknown_with_the_servers_words() -> None:
    kube = ScriptedKube({NODES: [node_obj("g0")], PODS: []})
    kube.list_error[PODS] = ApiError(
        403, "GET", PODS, '{"message": "pods is forbidden: User \\"op\\" cannot list"}'
    )
    view = FreeGpus(kube)  # type: ignore[arg-type]
    view.start()
    try:
        cap = await until(
            "forbidden",
            lambda: "may not" in (c := str(getattr(view.for_spec(SPEC), "why", ""))) and c,
        )
        assert cap.startswith("free GPUs unknown: the operator may not list and watch pods")
        assert "cannot list" in cap
        # Start-up does not wait for a view it may not have.
        assert not await view.wait_synced(within=5.0)
        # RBAC granted later: it recovers by itself.
        del kube.list_error[PODS]
        await until("recovered", lambda: isinstance(view.for_spec(SPEC), GpuCapacity))
    finally:
        await view.stop()


async def test_a_refused_watch_stays_unknown_across_lists_that_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # RBAC from an older release: list allowed, watch not.
    monkeypatch.setattr(free_gpus_module, "BACKOFF_SECONDS", (0.01, 0.04))
    kube = ScriptedKube({NODES: [node_obj("g0")], PODS: []})
    refused = ApiError(403, "WATCH", PODS, '{"message": "pods is forbidden: cannot watch"}')
    for _ in range(4):
        kube.play(PODS, refused)
    view = FreeGpus(kube)  # type: ignore[arg-type]
    view.start()
    try:
        await until("four refused watches", lambda: kube.count("WATCH", PODS) >= 5)
        cap = view.for_spec(SPEC)
        assert isinstance(cap, CapacityUnknown)
        assert "cannot watch" in cap.why
        assert kube.count("LIST", PODS) == 5  # one per attempt, with backoff between
        # A watch that works: known again.
        kube.play(PODS, {"type": "ADDED", "object": pod_obj("p", "g0", 1)})
        await until("known again", lambda: isinstance(view.for_spec(SPEC), GpuCapacity))
        assert free(view) == {"g0": 7}
    finally:
        await view.stop()


async def test_a_watch_broken_for_too_long_is_unknown_not_stale() -> None:
    now = [0.0]
    kube = ScriptedKube({NODES: [node_obj("g0")], PODS: []})
    view = FreeGpus(kube, stale_after=30.0, clock=lambda: now[0])  # type: ignore[arg-type]
    view.start()
    try:
        await until("synced", lambda: view.synced)
        kube.list_error[NODES] = ApiError(500, "GET", NODES, "etcd is down")
        kube.play(NODES, aiohttp.ClientPayloadError("connection reset"))
        await until("broken", lambda: view.streams[0].broken_since is not None)
        assert isinstance(view.for_spec(SPEC), GpuCapacity)  # a short gap: last view holds
        now[0] = 31.0
        cap = view.for_spec(SPEC)
        assert isinstance(cap, CapacityUnknown)
        assert "watch of nodes keeps failing" in cap.why
        del kube.list_error[NODES]
        await until("repaired", lambda: isinstance(view.for_spec(SPEC), GpuCapacity))
    finally:
        await view.stop()


async def test_view_off_reads_nothing() -> None:
    kube = ScriptedKube({NODES: [], PODS: []})
    view = FreeGpus(kube, enabled=False)  # type: ignore[arg-type]
    await view.run()  # returns at once
    assert kube.calls == []
    assert view.for_spec(SPEC) == CapacityUnknown(VIEW_OFF)


# --- the autoscaler's use of it ----------------------------------------------------------------


class EventSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    async def event(self, body: Any, reason: str, message: str, type_: str = "Normal") -> None:
        self.events.append((reason, message))


def llmd(name: str, **worker: Any) -> dict[str, Any]:
    return {
        "apiVersion": "llmfleet.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": "ns", "uid": name, "generation": 1},
        "spec": {
            "model": {"uri": "pvc://m/x"},
            "worker": worker,
            "autoscaling": {"minReplicas": 1, "maxReplicas": 10},
        },
        "status": {"desiredReplicas": 2},
    }


BUSY = Signals(at=1000.0, waiting=40.0, running=8.0, capacity=8.0, reporting=2)


async def evaluate(loop: AutoscaleLoop, cache: Cache, name: str) -> None:
    key = ("ns", name)
    body = cache.llmds[key]
    await loop._evaluate(key, body, cache.spec_of(key, body), BUSY, None, "http://p", 1000.0)


async def test_capacity_per_pod_template_caps_and_a_failure_holds_only_its_fleet() -> None:
    cache = Cache()
    boom = llmd("boom", env=[{"name": "X", "value": "1"}])
    for body in (llmd("a", nodeSelector={"pool": "a"}), llmd("b"), boom):
        cache.observe_llmd("ADDED", body)
    asked: list[dict[str, str]] = []

    def capacity(spec: LLMDeploymentSpec) -> GpuCapacity | CapacityUnknown:
        asked.append(dict(spec.worker.node_selector))
        if spec.worker.node_selector:
            # Three free, two of them for the pods asked for and not placed yet: one more.
            return GpuCapacity(GPU, 8, 3, {"g0": 3}, 1)
        if spec.worker.env:
            raise RuntimeError("boom")
        return CapacityUnknown(VIEW_OFF)

    sink = EventSink()
    loop = AutoscaleLoop(
        cache,
        lambda key: None,
        sink,  # type: ignore[arg-type]
        "http://p",
        capacity=capacity,
        clock=lambda: 1000.0,
    )
    for name in ("boom", "a", "b"):
        await evaluate(loop, cache, name)
    # a: the queue asks for 6, one more pod fits on the nodes its template may use.
    assert loop.wants(("ns", "a")) == 3
    assert sink.events[0][0] == "ScaledUp"
    assert sink.events[0][1].endswith("; capped by free GPUs")
    # b: free GPUs unknown: not capped, and the condition says why.
    assert loop.wants(("ns", "b")) == 4  # at most doubling
    limited = {c.type: c for c in loop.conditions(("ns", "b"))}["ScalingLimited"]
    assert (limited.status, limited.reason) == ("False", "DesiredWithinRange")
    assert VIEW_OFF in limited.message
    # boom: its capacity failed: held (no decision), and the others went on.
    assert loop.wants(("ns", "boom")) is None
    assert asked.count({"pool": "a"}) == 1
