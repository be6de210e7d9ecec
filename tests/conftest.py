"""Shared pytest wiring: tests under tests/integration and tests/e2e get their marker
automatically, so `-m "not integration and not e2e"` selects exactly the fast unit tests."""

from __future__ import annotations

import gc
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmfleet_dev.kube import FIELD_MANAGER, Kubectl
from llmfleet_dev.localcluster import LocalCluster, Topology, apply_crd, model_volume
from llmfleet_dev.processes import OperatorProcess
from llmfleet_dev.realnode import leftovers, why_no_real_node
from llmfleet_dev.wait import wait_for
from llmfleet_operator import api

TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.path)).resolve().relative_to(TESTS).parts
        if parts and parts[0] in ("integration", "e2e"):
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """A resource leaked in a reference cycle warns when the collector finds it, which is
    whenever; collecting here fails the test that leaked it, not a later bystander."""
    yield
    gc.collect()


# --- the local Kubernetes cluster ------------------------------------------------------------
ROOT = TESTS.parent


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real control plane with simulated GPU nodes, shared by the whole session.

    With LLMFLEET_REUSE_CLUSTER=1 the tests use the cluster that `make cluster-up` started
    (and leave it running); otherwise they start their own on free ports and stop it at the
    end.
    """
    if os.environ.get("LLMFLEET_REUSE_CLUSTER") == "1":
        existing = LocalCluster(ROOT / ".cluster")
        if not existing.running():
            pytest.fail("LLMFLEET_REUSE_CLUSTER=1 but no cluster runs; run `make cluster-up`")
        yield existing
        return
    topology = Topology(
        gpu_nodes=int(os.environ.get("LLMFLEET_GPU_NODES", "4")),
        gpus_per_node=int(os.environ.get("LLMFLEET_GPUS_PER_NODE", "8")),
        cpu_nodes=int(os.environ.get("LLMFLEET_CPU_NODES", "1")),
        # One real kubelet node (tests/e2e/test_real_node.py), started by `real_nodes` when a
        # test first asks for it.
        real_nodes=int(os.environ.get("LLMFLEET_REAL_NODES", "1")),
    )
    own = LocalCluster(tmp_path_factory.mktemp("cluster"), topology, tie_to_parent=True)
    own.up(with_real_nodes=False)
    try:
        yield own
    finally:
        own.down()


@pytest.fixture(scope="session")
def real_nodes(cluster: LocalCluster) -> Iterator[list[str]]:
    """The names of the cluster's real kubelet nodes (``llmfleet_dev.realnode``), started on
    first use; skips, saying why, where there are none or this machine cannot run one
    (``why_no_real_node``: root, tools, images, network namespaces, disk)."""
    if os.environ.get("LLMFLEET_REUSE_CLUSTER") == "1":
        names = [node.name for node in cluster.real_nodes(on_disk=True)]
        if not names:
            pytest.skip(
                "the running cluster has no real node (LLMFLEET_REAL_NODES=1 make cluster-up)"
            )
        yield names
        return
    if cluster.topology.real_nodes == 0:
        pytest.skip("no real node asked for (LLMFLEET_REAL_NODES=0)")
    if (why := why_no_real_node()) is not None:
        pytest.skip(f"this machine cannot run a real node: {why}")
    nodes = cluster.start_real_nodes()
    states = [(node, node.load_state()) for node in nodes]
    try:
        yield [node.name for node in nodes]
    finally:
        for node, _ in states:
            node.down()
        # What `make cluster-down` promises: no process, mount, cgroup, namespace or
        # interface of a real node survives it.
        left = [x for node, st in states if st for x in leftovers(node.dir, st.slot)]
        assert left == [], f"left behind by the real nodes: {left}"


@pytest.fixture(scope="session")
def kubectl(cluster: LocalCluster) -> Kubectl:
    """Real kubectl as cluster admin."""
    return Kubectl(cluster.bin("kubectl"), cluster.kubeconfig)


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40]
    name = f"t-{base.strip('-')}-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def kube(kubectl: Kubectl, namespace: str) -> Kubectl:
    """kubectl bound to the test's namespace."""
    return kubectl.in_namespace(namespace)


@pytest.fixture(scope="session")
def crd_installed(kubectl: Kubectl) -> str:
    """The committed LLMDeployment CRD, applied and served; returns its name.

    Server-side apply makes this idempotent (a no-op when the cluster already has it, e.g.
    with LLMFLEET_REUSE_CLUSTER=1), and --force-conflicts takes over fields another manager
    (a Helm install) may own. The CRD stays: the session's cluster goes away anyway.
    """
    apply_crd(kubectl, field_manager=FIELD_MANAGER)
    kubectl("wait", "--for=condition=Established", f"crd/{api.CRD_NAME}", "--timeout=60s")
    # Established is the server's view; kubectl's discovery must also know the short name.
    wait_for(
        "`kubectl get llmd` to work",
        lambda: kubectl("get", "llmd", "--all-namespaces", check=False).returncode == 0,
        timeout=30,
    )
    return api.CRD_NAME


# Module scope: each test file gets its own operator, so a file that runs a differently
# configured operator (e.g. the Helm chart's namespace-scoped one) never races a shared one.
@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster, crd_installed: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The real operator process, watching every namespace of the test cluster."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    proc = OperatorProcess(cluster.kubeconfig, log).start()
    try:
        yield proc
    finally:
        code = proc.stop()
        assert code in (0, None), f"operator exited {code}: {proc.log_tail()}"


@pytest.fixture
def models_pvc(kubectl: Kubectl, namespace: str) -> Iterator[str]:
    """A bound ``models`` PersistentVolumeClaim in the test's namespace (for pvc:// URIs)."""
    objects = model_volume(namespace)
    kubectl.apply(objects)
    wait_for(
        "the models PVC to bind",
        lambda: (
            kubectl.in_namespace(namespace).get("pvc", "models")["status"].get("phase") == "Bound"
        ),
    )
    try:
        yield "models"
    finally:
        kubectl("delete", "pv", objects[0]["metadata"]["name"], "--wait=false", check=False)
