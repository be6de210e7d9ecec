"""Free GPUs from watches, against the real API server, scheduler and kwok nodes.

- The informer's view equals a fresh LIST of every node and pod as pods are scheduled, pinned,
  finished and deleted, and as nodes are cordoned, tainted, made NotReady, relabelled and
  deleted, without listing again.
- RBAC that forbids the view makes free GPUs unknown, with the API server's words.
- The operator sends no GET (LIST) per autoscaler tick, while a fleet at maxReplicas asks for
  capacity on every tick (a real Prometheus scrapes a stand-in exporter: the signals are the
  input here, not what is tested).
- A pod template whose nodeSelector leaves no GPU node stalls with a message that says so.
- With the view turned off (a namespaced install's ``gpuCapacity.clusterWideReads=false``)
  the operator reads no node or pod cluster-wide and status says free GPUs are unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from llmfleet_dev.capacity import gpu_capacity
from llmfleet_dev.kube import Kubectl
from llmfleet_dev.localcluster import KWOK_NODE_ANNOTATION, LocalCluster
from llmfleet_dev.net import free_port
from llmfleet_dev.processes import OperatorProcess, scrape
from llmfleet_dev.prometheus import PrometheusServer
from llmfleet_dev.wait import wait_for
from llmfleet_operator import login
from llmfleet_operator.capacity import CapacityUnknown, GpuCapacity, Placement
from llmfleet_operator.free_gpus import POD_FIELD_SELECTOR, VIEW_OFF, FreeGpus
from llmfleet_operator.k8s import Kube

GPU = "nvidia.com/gpu"
POOL = "llmfleet.io/test-pool"
T = TypeVar("T")


class ThreadedView:
    """A ``FreeGpus`` running on its own event loop thread; reads go through that loop."""

    def __init__(self, kubeconfig: Path, watch_timeout: int = 300) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        source = login.Source(kubeconfig=str(kubeconfig))
        credentials = asyncio.run_coroutine_threadsafe(login.load(source), self.loop)
        self.kube = Kube(credentials.result(timeout=30))
        self.view = FreeGpus(self.kube, watch_timeout=watch_timeout)
        self.call(self.view.start)

    def call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    def capacity(self, placement: Placement) -> GpuCapacity | CapacityUnknown:
        return self.call(lambda: self.view.capacity(GPU, placement))

    def close(self) -> None:
        async def stop() -> None:
            await self.view.stop()
            await self.kube.close()
            # A watch cancelled mid-read closes its TLS connection on later turns of the
            # loop (aiohttp's graceful-shutdown advice): let them run before it stops.
            await asyncio.sleep(0.25)

        future: Future[None] = asyncio.run_coroutine_threadsafe(stop(), self.loop)
        future.result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@contextlib.contextmanager
def threaded_view(kubeconfig: Path, watch_timeout: int = 300) -> Iterator[ThreadedView]:
    view = ThreadedView(kubeconfig, watch_timeout)
    try:
        yield view
    finally:
        view.close()


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gpu_node(name: str, pool: str, gpus: int, *, kwok: bool = True) -> dict[str, Any]:
    """A GPU node like the cluster's own. ``kwok=False``: no simulated kubelet, so its status
    is what the test writes (kwok would put a Ready condition back at once)."""
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", GPU: str(gpus)}
    status: dict[str, Any] = {"capacity": capacity, "allocatable": capacity}
    if not kwok:
        status["conditions"] = [ready_condition("True")]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake" if kwok else "none"},
            "labels": {"kubernetes.io/hostname": name, "type": "kwok", POOL: pool},
        },
        "spec": {"taints": [{"key": GPU, "value": "present", "effect": "NoSchedule"}]},
        "status": status,
    }


def ready_condition(status: str) -> dict[str, str]:
    return {
        "type": "Ready",
        "status": status,
        "reason": "KubeletReady" if status == "True" else "KubeletNotReady",
        "message": "set by the test",
        "lastHeartbeatTime": now(),
        "lastTransitionTime": now(),
    }


def gpu_pod(name: str, gpus: int, *, node: str | None = None, host: str | None = None) -> Any:
    """A pod holding ``gpus``: bound by the scheduler to ``host``, or pinned to ``node``."""
    spec: dict[str, Any] = {
        "tolerations": [{"key": GPU, "operator": "Exists"}],
        "containers": [
            {
                "name": "c",
                "image": "registry.k8s.io/pause:3.10",
                "resources": {"limits": {GPU: str(gpus)}} if gpus else {},
            }
        ],
    }
    if node:
        spec["nodeName"] = node
    if host:
        spec["nodeSelector"] = {"kubernetes.io/hostname": host}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def reality(kubectl: Kubectl, placement: Placement) -> GpuCapacity:
    """What a full LIST of every node and every unfinished pod says right now."""
    nodes = kubectl.get("nodes")["items"]
    pods = kubectl.get("pods", None, "-A", f"--field-selector={POD_FIELD_SELECTOR}")["items"]
    return gpu_capacity(nodes, pods, GPU, placement)


def test_the_watched_view_follows_pods_and_nodes_without_listing_again(
    cluster: LocalCluster, kubectl: Kubectl, namespace: str
) -> None:
    pool = namespace
    a, b = f"{pool}-a"[:63], f"{pool}-b"[:63]
    kube = kubectl.in_namespace(namespace)
    # The template of a fleet that may use only this test's pool.
    mine = Placement.of_pod_spec(
        {"nodeSelector": {POOL: pool}, "tolerations": [{"key": GPU, "operator": "Exists"}]}
    )
    # Short watches: the test outlives several, each resumed from its resourceVersion.
    with threaded_view(cluster.kubeconfig, watch_timeout=1) as tv:

        def settles(free: dict[str, int], **refused: int) -> Callable[[], Any]:
            def probe() -> Any:
                cap = tv.capacity(mine)
                real = reality(kubectl, mine)
                ok = cap == real and real.free_per_node == free and dict(real.refused) == refused
                return ok or (cap, real)

            return probe

        try:
            kubectl.apply([gpu_node(a, pool, 4), gpu_node(b, pool, 2, kwok=False)])
            wait_for("two new GPU nodes in the view", settles({a: 4, b: 2}))
            assert tv.call(lambda: tv.view.synced)

            # Scheduled by the real scheduler; pinned to a node without a kubelet (bound,
            # never running: it holds its GPUs all the same); a pod without GPUs is not kept.
            kube.apply([gpu_pod("p1", 3, host=a), gpu_pod("p2", 2, node=b)])
            kube.apply(gpu_pod("no-gpu", 0, node=a))
            wait_for("p1 and p2 counted", settles({a: 1, b: 0}))
            kept = tv.call(lambda: set(tv.view.pods))
            uid = {p["metadata"]["name"]: p["metadata"]["uid"] for p in kube.get("pods")["items"]}
            assert {uid["p1"], uid["p2"]} <= kept
            assert uid["no-gpu"] not in kept

            # A finished pod frees its GPUs (and leaves the watch: its phase is selected out).
            wait_for("p1 to run", lambda: kube.get("pod", "p1")["status"].get("phase") == "Running")
            kube(
                "patch", "pod", "p1", "--subresource=status", "--type=merge",
                "-p", '{"status":{"phase":"Succeeded"}}',
            )  # fmt: skip
            wait_for("p1 finished", settles({a: 4, b: 0}))
            assert uid["p1"] not in tv.call(lambda: set(tv.view.pods))
            kube("delete", "pod", "p2", "--grace-period=0", "--force", "--wait=false")
            wait_for("p2 deleted", settles({a: 4, b: 2}))

            kubectl("cordon", a)
            wait_for("a cordoned", settles({b: 2}, cordoned=1))
            kubectl("uncordon", a)
            wait_for("a uncordoned", settles({a: 4, b: 2}))

            kubectl("taint", "nodes", a, "maintenance=soon:PreferNoSchedule")
            kubectl("taint", "nodes", a, "dedicated=other-team:NoSchedule")
            wait_for("a tainted", settles({b: 2}, taint=1))
            kubectl("taint", "nodes", a, "dedicated-")
            wait_for("a untainted (PreferNoSchedule does not count)", settles({a: 4, b: 2}))

            not_ready = json.dumps({"status": {"conditions": [ready_condition("False")]}})
            kubectl("patch", "node", b, "--subresource=status", "--type=strategic", "-p", not_ready)
            wait_for("b NotReady", settles({a: 4}, NotReady=1))

            kubectl("label", "node", a, f"{POOL}=elsewhere", "--overwrite")
            wait_for("a relabelled out of the pool", settles({}, NotReady=1))
            kubectl("label", "node", a, f"{POOL}={pool}", "--overwrite")
            wait_for("a back in the pool", settles({a: 4}, NotReady=1))

            kubectl("delete", "node", b, "--wait=false")
            wait_for("b deleted", lambda: b not in tv.call(lambda: set(tv.view.nodes)))
            wait_for("b gone from capacity", settles({a: 4}))

            # Every change arrived by watch: one LIST of each kind, however many watches
            # ended (each a second long) and resumed from their resourceVersion.
            wait_for(
                "both watches to have been resumed",
                lambda: min(tv.call(lambda: [s.watches for s in tv.view.streams])) >= 3,
            )
            assert tv.call(lambda: [s.lists for s in tv.view.streams]) == [1, 1]
        finally:
            kube("delete", "pods", "--all", "--grace-period=0", "--force", check=False)
            kubectl("delete", "node", a, b, "--ignore-not-found", "--wait=false", check=False)


def test_forbidden_reads_make_free_gpus_unknown(cluster: LocalCluster) -> None:
    nobody = cluster.kubeconfig_for(f"nobody-{secrets.token_hex(3)}")
    with threaded_view(nobody) as tv:

        def refused() -> CapacityUnknown | None:
            cap = tv.capacity(Placement())
            return cap if isinstance(cap, CapacityUnknown) and "may not" in cap.why else None

        cap = wait_for("the view to be refused", refused)
    assert isinstance(cap, CapacityUnknown)
    assert cap.why.startswith("free GPUs unknown: the operator may not list and watch ")
    assert "forbidden" in cap.why


# --- the operator ---------------------------------------------------------------------------


class Exporter:
    """Worker metrics of one simulated worker per fleet, at a fixed queue depth."""

    def __init__(self) -> None:
        self.fleets: dict[tuple[str, str], float] = {}
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.text().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def text(self) -> str:
        lines = []
        for (ns, name), waiting in sorted(self.fleets.items()):
            labels = f'namespace="{ns}",llmdeployment="{name}",pod="{name}-0"'
            lines += [
                f"llmfleet_worker_requests_waiting{{{labels}}} {waiting}",
                f"llmfleet_worker_requests_running{{{labels}}} 8",
                f"llmfleet_worker_max_num_seqs{{{labels}}} 8",
            ]
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    e = Exporter()
    try:
        yield e
    finally:
        e.server.shutdown()
        e.server.server_close()


@pytest.fixture(scope="module")
def prometheus(
    exporter: Exporter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    work = tmp_path_factory.mktemp("prometheus")
    with PrometheusServer(
        work, work / "sd.json", static_jobs={"stand-in-workers": [exporter.target]}
    ) as prom:
        yield prom


@contextlib.contextmanager
def operator_with(
    cluster: LocalCluster, prometheus: PrometheusServer, log: Path, *args: str
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(
        cluster.kubeconfig, log, f"--prometheus-url={prometheus.url}", *args
    ).start()
    try:
        yield proc
    finally:
        assert proc.stop() in (0, None), proc.log_tail()


def llmd(name: str, worker: dict[str, Any], **autoscaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "llmfleet.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "pvc://models/tiny"},
            "worker": {"resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"}, **worker},
            "autoscaling": autoscaling or {"mode": "Manual"},
            **({"replicas": 1} if not autoscaling else {}),
        },
    }


#: Only the CPU node has this instance type: the scheduler finds it without GPUs.
ON_CPU_NODES = {"nodeSelector": {"node.kubernetes.io/instance-type": "sim-cpu"}}


def condition(kube: Kubectl, name: str, type_: str) -> dict[str, Any]:
    obj = kube.get("llmd", name)
    found = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_]
    return found[0] if found else {}


def gets(proc: OperatorProcess) -> float:
    return float(proc.metrics().get('llmfleet_operator_api_requests_total{method="GET"}', 0.0))


def queries_answered(prometheus: PrometheusServer) -> float:
    return sum(
        float(v)
        for k, v in scrape(f"{prometheus.url}/metrics").items()
        if k.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in k
    )


def gpu_nodes(kubectl: Kubectl) -> int:
    return sum(
        1
        for n in kubectl.get("nodes")["items"]
        if int(n["status"].get("allocatable", {}).get(GPU, "0")) > 0
    )


@pytest.mark.usefixtures("crd_installed", "models_pvc")
def test_the_operator_lists_nothing_per_tick_and_explains_a_template_no_gpu_node_takes(
    cluster: LocalCluster,
    kubectl: Kubectl,
    namespace: str,
    exporter: Exporter,
    prometheus: PrometheusServer,
    tmp_path: Path,
) -> None:
    kube = kubectl.in_namespace(namespace)
    exporter.fleets[(namespace, "busy")] = 64.0
    with operator_with(cluster, prometheus, tmp_path / "operator.log") as proc:
        kube.apply(llmd("busy", {}, minReplicas=1, maxReplicas=3))
        kube.apply(llmd("nowhere", ON_CPU_NODES))
        # The queue keeps asking for more than maxReplicas: every tick looks at free GPUs.
        wait_for(
            "busy at maxReplicas",
            lambda: kube.get("llmd", "busy").get("status", {}).get("desiredReplicas") == 3,
            timeout=90,
        )
        n = gpu_nodes(kubectl)
        expected = (
            "1 pod Pending: each asks for 1 nvidia.com/gpu; no node with nvidia.com/gpu accepts "
            f"these pods: of {n} such node{'s' * (n != 1)}, "
            f"{n} {'does' if n == 1 else 'do'} not match the nodeSelector"
        )
        stalled = wait_for(
            "nowhere: Stalled=InsufficientGPU",
            lambda: (
                (c := condition(kube, "nowhere", "Stalled")).get("reason") == "InsufficientGPU"
                and c
            ),
            timeout=90,
        )
        assert stalled["message"] == expected
        assert condition(kube, "busy", "ScalingActive")["status"] == "True"

        before_gets, before_queries = gets(proc), queries_answered(prometheus)
        wait_for(
            "five autoscaler ticks (six queries each)",
            lambda: queries_answered(prometheus) >= before_queries + 30,
            timeout=60,
        )
        assert gets(proc) == before_gets, "a GET (LIST) was sent during autoscaler ticks"
        watches = proc.metrics().get('llmfleet_operator_api_requests_total{method="WATCH"}', 0)
        assert 2 <= watches <= 4, watches  # nodes and pods, each resumed at most once by now


@pytest.mark.usefixtures("crd_installed", "models_pvc")
def test_with_the_view_off_free_gpus_are_unknown_and_nothing_cluster_wide_is_read(
    cluster: LocalCluster,
    kubectl: Kubectl,
    namespace: str,
    exporter: Exporter,
    prometheus: PrometheusServer,
    tmp_path: Path,
) -> None:
    kube = kubectl.in_namespace(namespace)
    # A queue that one replica holds: within range, and a scale-up would be checked.
    exporter.fleets[(namespace, "calm")] = 2.0
    with operator_with(
        cluster, prometheus, tmp_path / "operator.log", "--gpu-capacity-view=none"
    ) as proc:
        kube.apply(llmd("calm", {}, minReplicas=1, maxReplicas=3))
        kube.apply(llmd("nowhere", ON_CPU_NODES))
        stalled = wait_for(
            "nowhere: Stalled=InsufficientGPU",
            lambda: (
                (c := condition(kube, "nowhere", "Stalled")).get("reason") == "InsufficientGPU"
                and c
            ),
            timeout=90,
        )
        assert stalled["message"] == (f"1 pod Pending: each asks for 1 nvidia.com/gpu; {VIEW_OFF}")
        limited = wait_for(
            "calm: ScalingLimited says free GPUs are unknown",
            lambda: (
                VIEW_OFF in (c := condition(kube, "calm", "ScalingLimited")).get("message", "")
                and c
            ),
            timeout=90,
        )
        assert (limited["status"], limited["reason"]) == ("False", "DesiredWithinRange")
        assert 'llmfleet_operator_api_requests_total{method="WATCH"}' not in proc.metrics()
