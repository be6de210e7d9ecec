"""The closed loop: real workers -> real Prometheus -> the operator's autoscaler ->
Deployment -> scheduled pods -> new real workers. Short windows keep it quick."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from llmfleet_dev.kube import Kubectl, gpu_blocker
from llmfleet_dev.loadgen import LoadGenerator
from llmfleet_dev.localcluster import LocalCluster
from llmfleet_dev.podbacker import PodBacker
from llmfleet_dev.processes import OperatorProcess, operator_reading
from llmfleet_dev.prometheus import PrometheusServer
from llmfleet_dev.wait import wait_for

#: Fast loop and short windows; the production defaults are 15 s and 300 s.
INTERVAL = 1.0
STABILIZATION = 20


@pytest.fixture(scope="module")
def autoscaling_operator(
    cluster: LocalCluster,
    crd_installed: str,
    prometheus_server: PrometheusServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The operator with its built-in autoscaler reading the test Prometheus."""
    with operator_reading(
        cluster.kubeconfig,
        prometheus_server.url,
        tmp_path_factory.mktemp("operator") / "operator.log",
        f"--autoscale-interval={INTERVAL}",
        "--rate-window=15s",
    ) as proc:
        yield proc


def autoscaled(max_replicas: int = 4, **extra: Any) -> dict[str, Any]:
    return {
        "autoscaling": {
            "mode": "Builtin",
            "minReplicas": 1,
            "maxReplicas": max_replicas,
            "targetQueueDepthPerReplica": 2,
            "scaleDownStabilizationSeconds": STABILIZATION,
            **extra,
        },
        "worker": {"resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"}},
    }


def at(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def status(kube: Kubectl, name: str) -> dict[str, Any]:
    return dict(kube.get("llmd", name).get("status", {}))


def condition(kube: Kubectl, name: str, type_: str) -> dict[str, Any] | None:
    for c in status(kube, name).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return None


def serving(backer: PodBacker, kube: Kubectl, name: str, n: int) -> bool:
    assert kube.namespace
    return len(backer.ready_workers(kube.namespace, name)) == n


def load(
    backer: PodBacker, kube: Kubectl, name: str, concurrency: int, seconds: float
) -> LoadGenerator:
    assert kube.namespace
    url = backer.endpoint(kube.namespace, name)
    assert url, "the pod backer has no endpoint for this LLMDeployment"
    return LoadGenerator(
        url, model=name, concurrency=concurrency, duration=seconds, max_tokens=48
    ).start()


pytestmark = pytest.mark.usefixtures("autoscaling_operator", "prometheus")


def test_load_scales_up_then_down_after_the_window(
    kube: Kubectl,
    apply_llmd: Callable[..., dict[str, Any]],
    pod_backer: PodBacker,
    prometheus: PrometheusServer,
) -> None:
    apply_llmd("chat", **autoscaled())
    wait_for("one worker serving", lambda: serving(pod_backer, kube, "chat", 1), timeout=90)
    wait_for(
        "ScalingActive=True",
        lambda: (c := condition(kube, "chat", "ScalingActive")) and c["status"] == "True",
        timeout=60,
    )

    gen = load(pod_backer, kube, "chat", concurrency=12, seconds=120)
    try:
        up = wait_for(
            "a scale-up decision",
            lambda: (s := status(kube, "chat")).get("desiredReplicas", 1) > 1 and s,
            timeout=60,
        )
        decision = up["autoscaler"]["lastDecision"]
        assert decision["from"] == 1
        assert decision["to"] > 1
        assert decision["reason"] == "QueueDepth"
        assert decision["signals"]["waiting"] > 0
        wanted = up["desiredReplicas"]
        wait_for(
            f"{wanted} workers serving",
            lambda: len(pod_backer.ready_workers(kube.namespace or "", "chat")) >= wanted,
            timeout=90,
        )
        events = kube.get(
            "events", None, "--field-selector", "involvedObject.name=chat,reason=ScaledUp"
        )["items"]
        assert events
        assert "QueueDepth" in events[0]["message"]
        # More workers under the same closed-loop load: the queue Prometheus sees falls.
        queued = (
            f'sum(llmfleet_worker_requests_waiting{{namespace="{kube.namespace}",'
            'llmdeployment="chat"})'
        )
        wait_for(
            "the queue to fall below what triggered the scale-up",
            lambda: (
                (v := prometheus.value(queued)) is not None and v < decision["signals"]["waiting"]
            ),
            timeout=60,
        )
    finally:
        result = gen.stop()
    assert result.ok, result.summary()

    # Load stopped: nothing moves down before the stabilization window has passed.
    peak = status(kube, "chat")["desiredReplicas"]
    down = wait_for(
        "the scale-down",
        lambda: (s := status(kube, "chat"))["desiredReplicas"] < peak and s,
        timeout=STABILIZATION + 60,
    )
    last = down["autoscaler"]["lastDecision"]
    assert last["reason"] in ("Idle", "RunningRequests", "AtMinReplicas")
    assert at(last["time"]) - at(decision["time"]) >= STABILIZATION
    wait_for(
        "back to minReplicas",
        lambda: status(kube, "chat")["desiredReplicas"] == 1,
        timeout=STABILIZATION + 60,
    )
    wait_for(
        "extra workers drained and gone", lambda: serving(pod_backer, kube, "chat", 1), timeout=60
    )


def test_prometheus_outage_holds_replicas_and_recovers(
    kube: Kubectl,
    apply_llmd: Callable[..., dict[str, Any]],
    pod_backer: PodBacker,
    prometheus: PrometheusServer,
) -> None:
    apply_llmd(
        "steady",
        **{**autoscaled(), "autoscaling": {**autoscaled()["autoscaling"], "minReplicas": 2}},
    )
    wait_for("two workers serving", lambda: serving(pod_backer, kube, "steady", 2), timeout=90)
    wait_for(
        "ScalingActive=True",
        lambda: (c := condition(kube, "steady", "ScalingActive")) and c["status"] == "True",
        timeout=60,
    )
    prometheus.stop()
    try:
        cond = wait_for(
            "MetricsUnavailable",
            lambda: (
                (c := condition(kube, "steady", "ScalingActive")) and c["status"] == "False" and c
            ),
            timeout=30,
        )
        assert cond["reason"] == "MetricsUnavailable"
        assert "unavailable" in cond["message"]
        events = kube.get(
            "events",
            None,
            "--field-selector",
            "involvedObject.name=steady,reason=MetricsUnavailable",
        )["items"]
        assert events
        assert events[0]["type"] == "Warning"
        # Held: several loop intervals later the size is what it was.
        deployment = kube.get("deployment", "steady")
        assert deployment["spec"]["replicas"] == 2
        assert status(kube, "steady")["desiredReplicas"] == 2
    finally:
        prometheus.start()
    wait_for(
        "ScalingActive=True again",
        lambda: (c := condition(kube, "steady", "ScalingActive")) and c["status"] == "True",
        timeout=60,
    )
    assert kube.get("deployment", "steady")["spec"]["replicas"] == 2


def test_more_replicas_than_gpus_are_capped_without_pending_pile_up(
    kube: Kubectl,
    apply_llmd: Callable[..., dict[str, Any]],
    pod_backer: PodBacker,
    cluster: LocalCluster,
) -> None:
    # Each worker takes a whole GPU node, and plain pods hold all but two nodes, so at most
    # two workers fit (fewer while other tests' pods still hold GPUs).
    per_node = cluster.topology.gpus_per_node
    blockers = cluster.topology.gpu_nodes - 2
    kube.apply(gpu_blocker(blockers, per_node))
    kube("rollout", "status", "deployment/blocker", "--timeout=60s")
    spec = autoscaled(max_replicas=6)
    spec["worker"]["resources"]["gpus"] = per_node
    apply_llmd("wide", **spec)
    wait_for("one worker serving", lambda: serving(pod_backer, kube, "wide", 1), timeout=90)
    # 16 in flight / (a batch of 2 + 2 waiting) asks for 4 workers; 2 fit.
    gen = load(pod_backer, kube, "wide", concurrency=16, seconds=90)
    try:

        def capped() -> Any:
            c = condition(kube, "wide", "ScalingLimited")
            if c and c["status"] == "True" and c["reason"] == "InsufficientGPU":
                return c
            s = status(kube, "wide")
            return (False, s.get("desiredReplicas"), s.get("conditions"), gen.completed)

        wait_for("ScalingLimited=True/InsufficientGPU", capped, timeout=90)
        s = status(kube, "wide")
        assert s["desiredReplicas"] <= 2
        pods = kube.get("pods", None, "-l", "llmfleet.io/deployment=wide")["items"]
        pending = [p for p in pods if p["status"].get("phase") == "Pending"]
        assert not pending, "the autoscaler piled up Pending pods"
    finally:
        gen.stop()
