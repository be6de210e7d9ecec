"""The operator itself as `helm install` runs it: the chart's Deployment, ServiceAccount and
RBAC, the ``localhost/llmfleet/operator:dev`` image as a real container on the real node
under Pod Security "restricted", in-cluster configuration, leader election, reconciling.

A module of its own: no operator runs on the host here, so the pod is the only one acting.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmfleet_dev.helm import CHART, Helm
from llmfleet_dev.kube import Kubectl
from llmfleet_dev.localcluster import LocalCluster
from llmfleet_dev.manifests import from_hub
from llmfleet_dev.realnode import REAL_NODE_LABEL, REAL_NODE_TAINT
from llmfleet_dev.wait import wait_for
from llmfleet_operator.k8s import FIELD_MANAGER


@pytest.fixture
def release_ns(kubectl: Kubectl, real_node: str) -> Iterator[str]:
    """A namespace for the release, Pod Security "restricted" enforced."""
    name = f"t-operator-pod-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    kubectl(
        "label", "namespace", name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )  # fmt: skip
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.usefixtures("crd_installed")
def test_the_chart_runs_the_operator_as_a_pod_on_the_real_node(
    cluster: LocalCluster, kubectl: Kubectl, namespace: str, release_ns: str, tmp_path: Path
) -> None:
    helm = Helm(cluster.bin("helm"), tmp_path / "helm-home", cluster.kubeconfig)
    values = {
        "image": {"repository": "localhost/llmfleet/operator", "tag": "dev", "pullPolicy": "Never"},
        "replicaCount": 1,
        "crds": {"enabled": False},  # the session installed it; the chart must not own it here
        "watchNamespaces": [namespace],
        "nodeSelector": {REAL_NODE_LABEL: "true"},
        "tolerations": [
            {**REAL_NODE_TAINT, "operator": "Equal"},
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        ],
    }
    (tmp_path / "values.json").write_text(json.dumps(values))
    release = "fleet"
    try:
        helm.run(
            "install", release, str(CHART), f"--namespace={release_ns}",
            f"--values={tmp_path / 'values.json'}", "--wait", "--timeout=240s",
        )  # fmt: skip
        ops = kubectl.in_namespace(release_ns)
        # helm's --wait counts a Deployment whose rollout may leave none available as ready.
        ops("wait", "--for=condition=Ready", "pod", "-l", "app.kubernetes.io/name=llmfleet",
            "--timeout=180s")  # fmt: skip
        (pod,) = ops.get("pods", None, "-l", "app.kubernetes.io/name=llmfleet")["items"]
        assert pod["spec"]["nodeName"] == "real-node-0"
        assert pod["spec"]["serviceAccountName"] == f"{release}-llmfleet"
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"]
        assert status["image"].endswith("llmfleet/operator:dev")
        # Leader election on the release's Lease, held by the pod.
        lease = wait_for(
            "the pod to take the release's Lease",
            lambda: (ops.get_or_none("lease", f"{release}-llmfleet") or {}).get("spec"),
            timeout=60,
        )
        assert lease["holderIdentity"].startswith(pod["metadata"]["name"])

        # It reconciles: an LLMDeployment in the watched namespace (scheduled on kwok GPU
        # nodes) gets its children and goes Ready, written by the pod's ServiceAccount.
        kube = kubectl.in_namespace(namespace)
        kube.apply(from_hub("from-a-pod"))
        kube("wait", "--for=condition=Ready", "llmd/from-a-pod", "--timeout=120s")
        deployment = kube.get("deployment", "from-a-pod", "--show-managed-fields")
        managers = {m["manager"] for m in deployment["metadata"]["managedFields"]}
        assert FIELD_MANAGER in managers
        wait_for(
            "the operator's status write to name the generation",
            lambda: kube.get("llmd", "from-a-pod")["status"].get("observedGeneration") == 1,
            timeout=60,
        )
        logs = ops("logs", pod["metadata"]["name"]).stdout
        assert "forbidden" not in logs.lower()
    finally:
        helm.run("uninstall", release, f"--namespace={release_ns}", "--wait", check=False)
