"""Two operator replicas, one leader, against a real control plane with an audit log.

Each replica authenticates as its own user, so the API server's audit log says which one
wrote what: the standby must write nothing but its Lease attempts until it leads, and after
a ``kill -9`` of the leader it must lead, and act, within 15 s.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from llmfleet_dev.kube import Kubectl
from llmfleet_dev.localcluster import LocalCluster, Topology
from llmfleet_dev.processes import OperatorProcess
from llmfleet_dev.wait import wait_for

LEASE = "llmfleet-test-leader"
WRITES = {"create", "update", "patch", "delete", "deletecollection"}


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A small cluster of its own whose API server writes an audit log."""
    cluster = LocalCluster(
        tmp_path_factory.mktemp("audited"),
        Topology(gpu_nodes=1, gpus_per_node=8, cpu_nodes=0),
        tie_to_parent=True,
        audit=True,
    )
    cluster.up()
    try:
        cluster.install_crd()
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def ns(audited: LocalCluster) -> Iterator[tuple[Kubectl, str]]:
    kubectl = Kubectl(audited.bin("kubectl"), audited.kubeconfig)
    name = f"le-{int(time.time() * 1000) % 10**8}"
    kubectl("create", "namespace", name)
    try:
        yield kubectl.in_namespace(name), name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


Replica = Callable[[str], OperatorProcess]


@pytest.fixture
def replica(audited: LocalCluster, ns: tuple[Kubectl, str], tmp_path: Path) -> Iterator[Replica]:
    """Starts operator replica ``who`` (user ``operator-<who>``); every one is stopped after
    the test, and its log's tail printed, so that a failure shows what each replica saw."""
    _, namespace = ns
    started: list[OperatorProcess] = []

    def start(who: str) -> OperatorProcess:
        kubeconfig = audited.kubeconfig_for(f"operator-{who}", groups=("system:masters",))
        proc = OperatorProcess(
            kubeconfig,
            tmp_path / f"operator-{who}.log",
            f"--namespace={namespace}",
            "--leader-elect",
            f"--leader-election-namespace={namespace}",
            f"--leader-election-id={LEASE}",
            f"--identity={who}",
        )
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
        print(f"--- {proc.log_path.name}, last lines:\n{proc.log_tail()}")


def holder(kube: Kubectl) -> str:
    lease = kube.get_or_none("lease", LEASE)
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def is_leader(proc: OperatorProcess) -> bool:
    return proc.metrics().get("llmfleet_operator_leader") == 1.0


def manual(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "llmfleet.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": "chat"},
        "spec": {
            "model": {"uri": "pvc://models/tiny"},
            "replicas": replicas,
            "autoscaling": {"mode": "Manual"},
            "worker": {"resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"}},
        },
    }


def writes_by(cluster: LocalCluster, user: str, namespace: str) -> list[tuple[float, str, str]]:
    """(time, verb, resource) of every write ``user`` made in ``namespace``, Lease included."""
    out = []
    for line in cluster.audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if (
            event.get("user", {}).get("username") != user
            or event.get("verb") not in WRITES
            or ref.get("namespace") != namespace
        ):
            continue
        at = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
        resource = ref.get("resource", "") + (
            f"/{ref['subresource']}" if ref.get("subresource") else ""
        )
        out.append((at.timestamp(), event["verb"], resource))
    return out


def flushed(cluster: LocalCluster, user: str, namespace: str, after: float) -> bool:
    """The audit log (1 s batches) holds a write of ``user`` after ``after``."""
    return any(t > after for t, _, _ in writes_by(cluster, user, namespace))


def test_the_standby_writes_nothing_and_leads_within_15s_of_a_kill_9(
    audited: LocalCluster, ns: tuple[Kubectl, str], replica: Replica
) -> None:
    kube, namespace = ns
    a = replica("a")
    wait_for("replica a to lead", lambda: holder(kube) == "a" and is_leader(a), timeout=30)
    b = replica("b")
    kube.apply(manual(2))
    wait_for(
        "the leader to create the worker Deployment with 2 replicas",
        lambda: (kube.get_or_none("deployment", "chat") or {}).get("spec", {}).get("replicas") == 2,
        timeout=30,
    )
    assert not is_leader(b)
    assert b.writes() == 0.0

    a.stop(signal.SIGKILL)
    killed = time.time()
    kube.apply(manual(3))  # a change only a new leader can act on
    wait_for(
        "replica b to take the Lease",
        lambda: holder(kube) == "b",
        timeout=20,
    )
    took_lease = time.time() - killed
    wait_for(
        "replica b to scale the worker Deployment to 3",
        lambda: (kube.get_or_none("deployment", "chat") or {}).get("spec", {}).get("replicas") == 3,
        timeout=20,
    )
    acted = time.time() - killed
    print(
        f"\nleader failover after kill -9: Lease taken in {took_lease:.1f} s, "
        f"the change applied {acted:.1f} s after the kill"
    )
    assert acted <= 15.0, f"the standby acted {acted:.1f} s after the leader's death"
    assert is_leader(b)

    wait_for(
        "the audit log to hold b's writes",
        lambda: flushed(audited, "operator-b", namespace, killed),
        timeout=10,
    )
    by_a = writes_by(audited, "operator-a", namespace)
    by_b = writes_by(audited, "operator-b", namespace)
    # Before the kill, b wrote nothing at all (not even its Lease: it never held it).
    assert [w for w in by_b if w[0] < killed] == [], by_b
    # b's first write of anything but the Lease came after it took the Lease.
    lease_taken = min(t for t, verb, res in by_b if res == "leases")
    assert all(t >= lease_taken for t, _, res in by_b if res != "leases")
    assert all(t <= killed for t, _, _ in by_a)
    # One of each object: a takeover never makes a second Deployment or Service.
    deployments = kube.get("deployments")["items"]
    assert [d["metadata"]["name"] for d in deployments] == ["chat"]


def test_a_clean_stop_hands_the_lease_over_at_once(
    ns: tuple[Kubectl, str], replica: Replica
) -> None:
    kube, _ = ns
    a = replica("a")
    wait_for("replica a to lead", lambda: holder(kube) == "a", timeout=30)
    b = replica("b")
    stopped = time.time()
    assert a.stop() == 0, a.log_tail()
    wait_for("replica b to lead", lambda: holder(kube) == "b" and is_leader(b), timeout=10)
    handover = time.time() - stopped
    print(f"\nleader handover after SIGTERM: {handover:.1f} s")
    # A released Lease is taken at the standby's next attempt (every 2 s), not after
    # the 10 s lease duration.
    assert handover < 6.0
