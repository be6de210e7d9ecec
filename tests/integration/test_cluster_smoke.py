"""The local cluster is a real one: scheduling, GPU capacity, garbage collection, RBAC and
Pod Security admission all behave as in production."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmfleet_dev.kube import Kubectl
from llmfleet_dev.localcluster import NEVER_READY_ANNOTATION, LocalCluster
from llmfleet_dev.wait import wait_for

PAUSE = "registry.k8s.io/pause:3.10"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gpu_pod_spec(gpus: int) -> dict[str, Any]:
    return {
        "tolerations": [GPU_TOLERATION],
        "containers": [
            {
                "name": "worker",
                "image": PAUSE,
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
            }
        ],
    }


def ready_status(pod: dict[str, Any]) -> str | None:
    for c in pod.get("status", {}).get("conditions", []):
        if c["type"] == "Ready":
            return str(c["status"])
    return None


def test_server_is_the_pinned_release(kubectl: Kubectl) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    versions_env = Path(__file__).resolve().parents[2] / "hack" / "versions.env"
    pinned = next(
        line.split("=", 1)[1].strip()
        for line in versions_env.read_text().splitlines()
        if line.startswith("KUBERNETES_VERSION=")
    )
    assert version["serverVersion"]["gitVersion"] == pinned
    assert version["clientVersion"]["gitVersion"] == pinned


def test_gpu_nodes_advertise_capacity_labels_and_taint(kubectl: Kubectl) -> None:
    nodes = kubectl.get("nodes", None, "-l", "nvidia.com/gpu.present=true")["items"]
    assert len(nodes) >= 1
    for node in nodes:
        assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) > 0
        labels = node["metadata"]["labels"]
        assert labels["nvidia.com/gpu.count"] == node["status"]["capacity"]["nvidia.com/gpu"]
        assert labels["nvidia.com/gpu.product"]
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node[
            "spec"
        ]["taints"]
        assert ready_status(node) == "True"


def test_gpu_deployment_is_scheduled_onto_gpu_nodes_and_ready(kube: Kubectl) -> None:
    kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "gpu-app"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "gpu-app"}},
                "template": {
                    "metadata": {"labels": {"app": "gpu-app"}},
                    "spec": gpu_pod_spec(1),
                },
            },
        }
    )
    kube("rollout", "status", "deployment/gpu-app", "--timeout=60s")
    pods = kube.get("pods", None, "-l", "app=gpu-app")["items"]
    assert len(pods) == 2
    gpu_nodes = {
        n["metadata"]["name"]
        for n in kube.get("nodes", None, "-l", "nvidia.com/gpu.present=true")["items"]
    }
    for pod in pods:
        assert pod["spec"]["nodeName"] in gpu_nodes
        assert pod["status"]["phase"] == "Running"
        assert ready_status(pod) == "True"


def test_pod_without_gpu_toleration_avoids_gpu_nodes(kube: Kubectl) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "plain"},
            "spec": {"containers": [{"name": "c", "image": PAUSE}]},
        }
    )
    pod = wait_for(
        "the plain pod to be scheduled",
        lambda: (p := kube.get("pod", "plain"))["spec"].get("nodeName") and p,
    )
    assert not pod["spec"]["nodeName"].startswith("gpu-")


def test_pod_asking_more_gpus_than_any_node_has_stays_pending(
    kube: Kubectl, cluster: LocalCluster
) -> None:
    too_many = cluster.topology.gpus_per_node + 1
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "greedy"},
            "spec": gpu_pod_spec(too_many),
        }
    )

    def failed_scheduling() -> list[dict[str, Any]]:
        events = kube.get(
            "events", None, "--field-selector", "involvedObject.name=greedy,reason=FailedScheduling"
        )["items"]
        return [e for e in events if "nvidia.com/gpu" in e["message"]]

    events = wait_for("a FailedScheduling event naming nvidia.com/gpu", failed_scheduling)
    assert "Insufficient nvidia.com/gpu" in events[0]["message"]
    pod = kube.get("pod", "greedy")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_never_ready_annotation_keeps_a_running_pod_unready(kube: Kubectl) -> None:
    spec = gpu_pod_spec(1)
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "stuck", "annotations": {NEVER_READY_ANNOTATION: "true"}},
            "spec": spec,
        }
    )
    pod = wait_for(
        "the annotated pod to run",
        lambda: (p := kube.get("pod", "stuck"))["status"].get("phase") == "Running" and p,
    )
    assert ready_status(pod) == "False"


def test_deleting_an_owner_garbage_collects_its_child(kube: Kubectl) -> None:
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
    owner = kube.get("configmap", "owner")
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "child",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner["metadata"]["uid"],
                    }
                ],
            },
        }
    )
    kube("delete", "configmap", "owner")
    wait_for(
        "the child to be garbage-collected", lambda: kube.get_or_none("configmap", "child") is None
    )


def test_service_account_without_permissions_is_forbidden(
    kube: Kubectl, cluster: LocalCluster, tmp_path: Path
) -> None:
    assert kube.namespace
    kube("create", "serviceaccount", "nobody")
    token = kube("create", "token", "nobody", "--duration=10m").stdout.strip()
    state = cluster.load_state()
    assert state is not None
    # A kubeconfig with only the token, so no admin certificate can authenticate instead.
    kubeconfig = tmp_path / "nobody.kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": f"https://127.0.0.1:{state.ports['kube-apiserver']}",
                            "certificate-authority": str(cluster.pki / "ca.crt"),
                        },
                    }
                ],
                "users": [{"name": "nobody", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "nobody"}}],
                "current-context": "c",
            }
        )
    )
    nobody = Kubectl(kube.binary, kubeconfig, kube.namespace)
    result = nobody("get", "pods", "-v=6", check=False)
    assert result.returncode != 0
    assert "403" in result.stderr
    assert f"system:serviceaccount:{kube.namespace}:nobody" in result.stderr
    assert 'cannot list resource "pods"' in result.stderr


def test_pod_security_restricted_rejects_privileged_and_admits_compliant(
    kube: Kubectl, kubectl: Kubectl
) -> None:
    assert kube.namespace
    kubectl("label", "namespace", kube.namespace, "pod-security.kubernetes.io/enforce=restricted")
    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged"},
        "spec": {
            "containers": [{"name": "c", "image": PAUSE, "securityContext": {"privileged": True}}]
        },
    }
    rejected = kube.apply(privileged, check=False)
    assert rejected.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in rejected.stderr
    assert "privileged" in rejected.stderr

    compliant = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "compliant"},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "c",
                    "image": PAUSE,
                    "securityContext": {
                        "runAsUser": 65532,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                    },
                }
            ],
        },
    }
    kube.apply(compliant)
    assert kube.get("pod", "compliant")["metadata"]["name"] == "compliant"
