"""Chaos on the closed loop: the leader killed mid-scale, the API server restarted.

Two operator replicas with leader election run against the real control plane, real
workers and the real Prometheus. Each test prints the figure it measures (run with ``-s``).
Prometheus outages are in test_autoscaling.py (held, then resumed) and
test_rollouts_under_load.py (mid-canary); ``kill -9`` mid-canary is in
tests/integration/test_rollout_restart.py; the failover's audit-log check of double writes
is in tests/integration/test_leader_election.py.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from llmfleet_dev.kube import Kubectl
from llmfleet_dev.loadgen import LoadGenerator
from llmfleet_dev.localcluster import LocalCluster
from llmfleet_dev.podbacker import PodBacker
from llmfleet_dev.processes import OperatorProcess
from llmfleet_dev.prometheus import PrometheusServer
from llmfleet_dev.wait import wait_for

INTERVAL = 1.0
LEASE = "llmfleet-chaos"


class Pair:
    """Two operator replicas electing a leader in the test's namespace."""

    def __init__(self, cluster: LocalCluster, kube: Kubectl, prometheus_url: str, tmp: Path):
        assert kube.namespace
        self.kube = kube
        self.procs = {
            who: OperatorProcess(
                cluster.kubeconfig,
                tmp / f"operator-{who}.log",
                f"--prometheus-url={prometheus_url}",
                f"--autoscale-interval={INTERVAL}",
                "--rate-window=15s",
                f"--namespace={kube.namespace}",
                "--leader-elect",
                f"--leader-election-namespace={kube.namespace}",
                f"--leader-election-id={LEASE}",
                f"--identity={who}",
            )
            for who in ("a", "b")
        }

    def start(self) -> Pair:
        self.procs["a"].start()
        wait_for("replica a to lead", lambda: self.holder() == "a", timeout=30)
        self.procs["b"].start()
        return self

    def holder(self) -> str:
        lease = self.kube.get_or_none("lease", LEASE) or {}
        return str((lease.get("spec") or {}).get("holderIdentity") or "")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


@pytest.fixture
def pair(
    cluster: LocalCluster, kube: Kubectl, prometheus: PrometheusServer, tmp_path: Path
) -> Iterator[Pair]:
    operators = Pair(cluster, kube, prometheus.url, tmp_path).start()
    try:
        yield operators
    finally:
        operators.stop()


def status(kube: Kubectl, name: str) -> dict[str, Any]:
    return dict(kube.get("llmd", name).get("status", {}))


def ready_condition(kube: Kubectl, name: str) -> dict[str, Any]:
    conds = {c["type"]: c for c in status(kube, name).get("conditions", [])}
    return dict(conds.get("Ready") or {})


def at(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def owned(kube: Kubectl, kind: str, name: str) -> list[str]:
    """Names of the ``kind`` objects carrying LLMDeployment ``name``'s label."""
    items = kube.get(kind, None, "-l", f"llmfleet.io/deployment={name}")["items"]
    return sorted(i["metadata"]["name"] for i in items)


def test_the_leader_killed_mid_scale_up_leaves_the_size_held_and_the_fleet_converges(
    kube: Kubectl,
    apply_llmd: Callable[..., dict[str, Any]],
    pod_backer: PodBacker,
    pair: Pair,
) -> None:
    apply_llmd(
        "chat",
        autoscaling={
            "mode": "Builtin",
            "minReplicas": 1,
            "maxReplicas": 4,
            "targetQueueDepthPerReplica": 2,
            "scaleDownStabilizationSeconds": 20,
        },
        worker={"resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"}},
    )
    assert kube.namespace
    wait_for(
        "one worker serving",
        lambda: len(pod_backer.ready_workers(kube.namespace or "", "chat")) == 1,
        timeout=90,
    )
    url = pod_backer.endpoint(kube.namespace, "chat")
    assert url
    gen = LoadGenerator(url, model="chat", concurrency=12, duration=150, max_tokens=48).start()
    try:
        up = wait_for(
            "the first scale-up decision",
            lambda: (s := status(kube, "chat")).get("desiredReplicas", 1) > 1 and s,
            timeout=60,
        )
        decided = int(up["desiredReplicas"])
        pair.procs["a"].stop(signal.SIGKILL)  # the leader, mid-scale
        killed = time.time()
        sizes: list[int] = []
        took: list[float] = []

        def converged() -> bool:
            sizes.append(int(kube.get("deployment", "chat")["spec"]["replicas"]))
            if not took and pair.holder() == "b":
                took.append(time.time() - killed)
            desired = int(status(kube, "chat").get("desiredReplicas", 0))
            ready = len(pod_backer.ready_workers(kube.namespace or "", "chat"))
            return bool(took) and desired >= decided and ready >= desired

        wait_for("the new leader's fleet to converge", converged, timeout=150)
        converged_after = time.time() - killed
        final = status(kube, "chat")
        decided_at = at(final["autoscaler"]["lastDecision"]["time"]) - killed
    finally:
        result = gen.stop()
    print(
        f"\nkill -9 of the leader mid-scale ({decided} replicas decided): the standby led "
        f"after {took[0]:.1f} s, its last decision ({final['autoscaler']['lastDecision']['from']}"
        f" -> {final['desiredReplicas']}) came {decided_at:.1f} s and every worker was serving "
        f"{converged_after:.1f} s after the kill; the Deployment never had fewer than "
        f"{min(sizes)} replicas"
    )
    assert min(sizes) >= decided, f"the fleet shrank during the failover: {sizes}"
    assert took[0] <= 15.0
    assert result.ok, result.summary()
    # Nothing doubled by the takeover.
    assert owned(kube, "deployments", "chat") == ["chat"]
    assert len(owned(kube, "services", "chat")) == len(set(owned(kube, "services", "chat")))
    assert pair.procs["b"].metrics().get("llmfleet_operator_leader") == 1.0


def test_an_api_server_restart_loses_no_change(
    cluster: LocalCluster,
    kube: Kubectl,
    apply_llmd: Callable[..., dict[str, Any]],
    pair: Pair,
) -> None:
    # Kwok's instant readiness: this test is about watches, not workers.
    unbacked = {"podAnnotations": {"sim.llmfleet.io/backed": "false"}}
    apply_llmd("steady", replicas=1, autoscaling={"mode": "Manual"}, worker=unbacked)
    wait_for(
        "the fleet Ready",
        lambda: ready_condition(kube, "steady").get("status") == "True",
        timeout=60,
    )
    restarted = time.time()
    cluster.restart("kube-apiserver")
    back = time.time()
    # Changes right after the restart, while every watch is reconnecting: one to the
    # LLMDeployment, one to a child behind the operator's back.
    kube("scale", "llmd/steady", "--replicas=3")
    kube("delete", "service", "steady", "--wait=false")
    wait_for(
        "the scale to reach the Deployment",
        lambda: kube.get("deployment", "steady")["spec"]["replicas"] == 3,
        timeout=60,
    )
    scaled = time.time() - back
    wait_for(
        "the deleted Service to be recreated",
        lambda: kube.get_or_none("service", "steady") is not None,
        timeout=60,
    )
    recreated = time.time() - back
    wait_for(
        "status to say 3 ready",
        lambda: (
            status(kube, "steady").get("readyReplicas") == 3
            and ready_condition(kube, "steady").get("status") == "True"
        ),
        timeout=60,
    )
    print(
        f"\nAPI server restart ({back - restarted:.1f} s down and up): the scale applied "
        f"{scaled:.1f} s and the deleted Service recreated {recreated:.1f} s after it was "
        f"back; leader now {pair.holder()!r}"
    )
    assert pair.holder() in ("a", "b")
    leaders = [p for p in pair.procs.values() if p.metrics().get("llmfleet_operator_leader")]
    assert len(leaders) == 1
