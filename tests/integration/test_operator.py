"""The operator against the real control plane: children, status, GC, scaling, GPU shortage."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from llmfleet_dev.kube import Kubectl, gpu_blocker
from llmfleet_dev.localcluster import LocalCluster
from llmfleet_dev.manifests import llmd
from llmfleet_dev.wait import wait_for

pytestmark = pytest.mark.usefixtures("operator", "models_pvc")


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def condition_is(
    kube: Kubectl, name: str, type_: str, status: str, reason: str | None = None
) -> Any:
    def probe() -> Any:
        obj = kube.get("llmd", name)
        c = conditions(obj).get(type_)
        ok = c is not None and c["status"] == status and (reason is None or c["reason"] == reason)
        return obj if ok else (c or obj.get("status"))

    return probe


def wait_condition(
    kube: Kubectl,
    name: str,
    type_: str,
    status: str,
    reason: str | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    probe = condition_is(kube, name, type_, status, reason)

    def done() -> Any:
        got = probe()
        return got if isinstance(got, dict) and "metadata" in got else None

    return wait_for(f"{name}: {type_}={status} ({reason})", done, timeout=timeout)  # type: ignore[no-any-return]


def deployment_replicas(kube: Kubectl, name: str) -> int | None:
    dep = kube.get_or_none("deployment", name)
    return None if dep is None else int(dep["spec"]["replicas"])


def test_llmdeployment_becomes_ready_with_owned_children(kube: Kubectl) -> None:
    kube.apply(
        llmd(
            "chat",
            worker={"resources": {"gpus": 1}},
            autoscaling={"minReplicas": 2, "maxReplicas": 4},
        )
    )
    kube("wait", "--for=condition=Ready", "llmd/chat", "--timeout=90s")
    obj = kube.get("llmd", "chat")
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["readyReplicas"] == status["desiredReplicas"] == 2
    assert status["selector"] == "llmfleet.io/deployment=chat"
    assert status["endpoint"] == f"http://chat.{kube.namespace}.svc:8000/v1"
    assert status["currentRevision"] == status["updateRevision"]
    conds = conditions(obj)
    assert conds["Reconciling"]["status"] == "False"
    assert conds["Stalled"]["status"] == "False"
    for kind in ("deployment", "service", "poddisruptionbudget"):
        child = kube.get(kind, "chat")
        [ref] = child["metadata"]["ownerReferences"]
        assert ref["uid"] == obj["metadata"]["uid"]
        assert ref["controller"] is True
        assert child["metadata"]["labels"]["llmfleet.io/deployment"] == "chat"
    dep = kube.get("deployment", "chat")
    assert dep["metadata"]["labels"]["llmfleet.io/revision"] == status["currentRevision"]
    managers = {
        m["manager"]
        for m in kube.get("deployment", "chat", "--show-managed-fields")["metadata"][
            "managedFields"
        ]
        if m["operation"] == "Apply"
    }
    assert managers == {"llmfleet-operator"}
    pods = kube.get("pods", None, "-l", "llmfleet.io/deployment=chat")["items"]
    assert len(pods) == 2
    assert all(p["spec"]["nodeName"].startswith("gpu-node-") for p in pods)
    # kopf's bookkeeping never lands on the object; GitOps sees only what it wrote.
    annotations = obj["metadata"].get("annotations", {})
    assert not [a for a in annotations if "kopf" in a]
    assert not obj["metadata"].get("finalizers")

    def reasons() -> list[str]:
        return [
            e["reason"]
            for e in kube.get(
                "events",
                None,
                "--field-selector",
                "involvedObject.name=chat,involvedObject.kind=LLMDeployment",
            )["items"]
        ]

    # A new fleet's one Event is its Ready transition; its children go unannounced.
    assert wait_for("the Ready Event", lambda: "Available" in reasons(), timeout=30)
    assert not [r for r in reasons() if r.startswith("Created")]


def test_manual_edits_and_deletions_of_children_are_reverted(kube: Kubectl) -> None:
    kube.apply(llmd("revert"))
    kube("wait", "--for=condition=Ready", "llmd/revert", "--timeout=90s")
    kube("scale", "deployment/revert", "--replicas=3")
    wait_for("the hand-made scale to be reverted", lambda: deployment_replicas(kube, "revert") == 1)
    kube("delete", "service", "revert")
    wait_for("the Service to be recreated", lambda: kube.get_or_none("service", "revert"))
    kube(
        "patch",
        "deployment/revert",
        "--type=json",
        "-p",
        json.dumps(
            [
                {
                    "op": "replace",
                    "path": "/spec/template/spec/containers/0/image",
                    "value": "evil:latest",
                }
            ]
        ),
    )
    wait_for(
        "the image edit to be reverted",
        lambda: (
            kube.get("deployment", "revert")["spec"]["template"]["spec"]["containers"][0]["image"]
            != "evil:latest"
        ),
    )


def test_deleting_the_llmdeployment_garbage_collects_children(kube: Kubectl) -> None:
    kube.apply(llmd("gone"))
    wait_for("the Deployment", lambda: kube.get_or_none("deployment", "gone"))
    kube("delete", "llmd", "gone", "--wait=true", "--timeout=60s")
    wait_for(
        "children to be collected",
        lambda: (
            kube.get_or_none("deployment", "gone") is None
            and kube.get_or_none("service", "gone") is None
        ),
    )


def test_manual_mode_follows_kubectl_scale_and_manages_the_pdb(kube: Kubectl) -> None:
    kube.apply(llmd("manual", replicas=1, autoscaling={"mode": "Manual"}))
    wait_condition(kube, "manual", "Ready", "True")
    assert kube.get_or_none("poddisruptionbudget", "manual") is None
    kube("scale", "llmd/manual", "--replicas=3")
    wait_for(
        "the Deployment to follow kubectl scale", lambda: deployment_replicas(kube, "manual") == 3
    )
    # Ready stays True while the two new pods start (one is available): wait for the count.
    wait_for(
        "three ready replicas in status",
        lambda: kube.get("llmd", "manual")["status"].get("readyReplicas") == 3,
    )
    wait_condition(kube, "manual", "Ready", "True")
    assert kube.get_or_none("poddisruptionbudget", "manual") is not None
    scale = json.loads(
        kube(
            "get",
            "--raw",
            f"/apis/llmfleet.io/v1alpha1/namespaces/{kube.namespace}/llmdeployments/manual/scale",
        ).stdout
    )
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "llmfleet.io/deployment=manual"
    kube("scale", "llmd/manual", "--replicas=1")
    wait_for(
        "the PDB to go with one replica",
        lambda: kube.get_or_none("poddisruptionbudget", "manual") is None,
    )


def test_suspend_scales_to_zero_and_back(kube: Kubectl) -> None:
    kube.apply(llmd("sleepy"))
    wait_condition(kube, "sleepy", "Ready", "True")
    kube("patch", "llmd/sleepy", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for("zero replicas", lambda: deployment_replicas(kube, "sleepy") == 0)
    wait_condition(kube, "sleepy", "Ready", "True", "Suspended")
    wait_for(
        "pods to go",
        lambda: not kube.get("pods", None, "-l", "llmfleet.io/deployment=sleepy")["items"],
    )
    kube("patch", "llmd/sleepy", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_condition(kube, "sleepy", "Ready", "True", "Available")


def test_insufficient_gpus_stall_with_a_message_and_clear(
    kube: Kubectl, cluster: LocalCluster
) -> None:
    # Plain pods take every GPU node whole; the LLMDeployment then waits for capacity.
    per_node, nodes = cluster.topology.gpus_per_node, cluster.topology.gpu_nodes
    kube.apply(gpu_blocker(nodes, per_node))
    wait_for(
        "the blockers to hold GPUs",
        lambda: kube.get("deployment", "blocker")["status"].get("readyReplicas", 0) >= 1,
    )
    kube.apply(
        llmd(
            "huge",
            replicas=2,
            autoscaling={"mode": "Manual"},
            worker={"resources": {"gpus": per_node}},
        )
    )
    obj = wait_condition(kube, "huge", "Stalled", "True", "InsufficientGPU", timeout=90)
    stalled = conditions(obj)["Stalled"]
    assert f"asks for {per_node} nvidia.com/gpu" in stalled["message"]
    assert " free of " in stalled["message"]
    assert conditions(obj)["Reconciling"]["status"] == "False"
    assert conditions(obj)["Ready"]["status"] == "False"
    events = kube.get(
        "events", None, "--field-selector", "involvedObject.name=huge,reason=InsufficientGPU"
    )["items"]
    assert events
    assert events[0]["type"] == "Warning"
    # Capacity appears: the pods schedule and the condition clears by itself.
    kube("delete", "deployment", "blocker")
    wait_condition(kube, "huge", "Ready", "True", "Available", timeout=90)
    assert conditions(kube.get("llmd", "huge"))["Stalled"]["status"] == "False"


def test_progress_deadline_makes_the_rollout_stall(kube: Kubectl) -> None:
    kube.apply(
        llmd(
            "stuck",
            rollout={"progressDeadlineSeconds": 5},
            worker={"podAnnotations": {"sim.llmfleet.io/never-ready": "true"}},
        )
    )
    obj = wait_condition(kube, "stuck", "Stalled", "True", "ProgressDeadlineExceeded", timeout=90)
    assert conditions(obj)["Ready"]["status"] == "False"


def test_an_idle_fleet_causes_no_writes(kube: Kubectl) -> None:
    # Quantities the API server rewrites (1536Mi, "1", "2"): compared by value, not spelling.
    resources = {"gpus": 1, "cpu": "1000m", "memory": "1.5Gi"}
    kube.apply(llmd("idle", autoscaling={"minReplicas": 2}, worker={"resources": resources}))
    kube("wait", "--for=condition=Ready", "llmd/idle", "--timeout=90s")
    # Convergence includes the autoscaler's first look (no Prometheus here: it says so).
    wait_condition(kube, "idle", "ScalingActive", "False", "MetricsUnavailable")

    def versions() -> dict[str, str]:
        return {
            kind: kube.get(kind, "idle")["metadata"]["resourceVersion"]
            for kind in ("llmd", "deployment", "service", "poddisruptionbudget")
        }

    # Ready was the last status change; from here on nothing of this fleet is written.
    # (The operator-wide write counter is measured in bench/operator_scale.py: here other
    # tests' namespaces are being torn down concurrently.)
    before = versions()
    events_before = len(
        kube.get("events", None, "--field-selector", "involvedObject.kind=LLMDeployment")["items"]
    )
    window = 20.0
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:  # an idle window is observed, not waited on
        assert versions() == before
        time.sleep(2)
    assert versions() == before
    assert (
        len(
            kube.get("events", None, "--field-selector", "involvedObject.kind=LLMDeployment")[
                "items"
            ]
        )
        == events_before
    )


def test_external_mode_hpa_drives_the_scale_subresource(kube: Kubectl) -> None:
    """examples/external-hpa.yaml for real: the HPA controller finds the LLMDeployment's
    /scale subresource; the operator follows spec.replicas and never decides itself."""
    example = Path(__file__).resolve().parents[2] / "examples" / "external-hpa.yaml"
    kube("apply", "-f", str(example))
    wait_condition(kube, "chat-hpa", "Ready", "True")

    def able_to_scale() -> bool:
        hpa = kube.get("hpa", "chat-hpa")
        conds = {c["type"]: c for c in hpa.get("status", {}).get("conditions", [])}
        return conds.get("AbleToScale", {}).get("reason") == "SucceededGetScale"

    wait_for("the HPA to read the LLMDeployment's scale subresource", able_to_scale, timeout=60)
    # What an HPA does when it decides: write spec.replicas through /scale.
    kube("scale", "llmd/chat-hpa", "--replicas=2")
    wait_for("the Deployment to follow", lambda: deployment_replicas(kube, "chat-hpa") == 2)
    obj = kube.get("llmd", "chat-hpa")
    assert "ScalingActive" not in conditions(obj)


def deny_fleet_deployments(kubectl: Kubectl, namespace: str, fleet: str) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy (and its binding) refusing ``fleet``'s Deployments."""
    name = f"deny-{namespace}-{fleet}"
    label = "object.metadata.labels['llmfleet.io/deployment']"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["apps"],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["deployments"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": f"!has(object.metadata.labels) || "
                        f"!('llmfleet.io/deployment' in object.metadata.labels) || "
                        f"{label} != '{fleet}'",
                        "message": "GPU fleets need a cost-center label in this namespace",
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        },
    ]


def test_a_write_an_admission_policy_refuses_stalls_with_its_message(
    kube: Kubectl, kubectl: Kubectl, namespace: str
) -> None:
    policy = deny_fleet_deployments(kubectl, namespace, "refused")
    kubectl.apply(policy)
    try:
        # The policy takes a moment to reach the admission chain: probe it like a user would.
        probe = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "probe", "labels": {"llmfleet.io/deployment": "refused"}},
            "spec": {
                "selector": {"matchLabels": {"app": "probe"}},
                "template": {
                    "metadata": {"labels": {"app": "probe"}},
                    "spec": {"containers": [{"name": "c", "image": "x"}]},
                },
            },
        }
        wait_for(
            "the policy to deny",
            lambda: (
                kube.run(
                    "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(probe), check=False
                ).returncode
                != 0
            ),
        )
        kube.apply(llmd("refused"))
        obj = wait_condition(kube, "refused", "Stalled", "True", "ApplyRejected", timeout=60)
        stalled = conditions(obj)["Stalled"]
        assert stalled["message"].startswith("the API server refused Deployment refused: ")
        assert "GPU fleets need a cost-center label" in stalled["message"]
        assert conditions(obj)["Ready"]["status"] == "False"
        assert conditions(obj)["Reconciling"]["status"] == "False"
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        events = kube.get(
            "events", None, "--field-selector", "involvedObject.name=refused,reason=ApplyRejected"
        )["items"]
        assert len(events) == 1
        assert events[0]["type"] == "Warning"
        # The Service was not refused: what can be applied is.
        assert kube.get_or_none("service", "refused") is not None
    finally:
        for obj in reversed(policy):
            kubectl("delete", obj["kind"], obj["metadata"]["name"], "--ignore-not-found")
    # The policy is gone: the next try (within the retry interval) goes through.
    wait_condition(kube, "refused", "Ready", "True", "Available", timeout=90)


@pytest.mark.parametrize(
    ("sim", "reason", "words"),
    [
        ("CrashLoopBackOff", "CrashLoopBackOff", "exceeds the model's 2048 positions"),
        ("OOMKilled", "OOMKilled", "exceeding its memory limit"),
        ("ImagePullBackOff", "ImagePullBackOff", "manifest unknown"),
        ("CreateContainerConfigError", "ConfigError", 'secret "hf-token" not found'),
    ],
)
def test_failing_containers_reach_status_with_the_kubelet_s_words(
    kube: Kubectl, sim: str, reason: str, words: str
) -> None:
    message = {
        "CrashLoopBackOff": "llmfleet-worker: error: max model length 4096 exceeds the "
        "model's 2048 positions",
        "ImagePullBackOff": "Back-off pulling image: manifest unknown",
        "CreateContainerConfigError": 'secret "hf-token" not found',
    }.get(sim, "")
    name = f"fails-{sim.lower()}"
    annotations = {
        "sim.llmfleet.io/container-fails": sim,
        "sim.llmfleet.io/container-message": message,
    }
    kube.apply(llmd(name, worker={"podAnnotations": annotations}))
    obj = wait_condition(kube, name, "Stalled", "True", reason, timeout=60)
    stalled = conditions(obj)["Stalled"]
    assert stalled["message"].startswith(f"1 pod {reason}: {name}-")
    assert words in stalled["message"]
    assert conditions(obj)["Ready"]["status"] == "False"
    events = kube.get(
        "events", None, "--field-selector", f"involvedObject.name={name},reason={reason}"
    )["items"]
    assert [e["type"] for e in events] == ["Warning"]


def test_a_pod_stuck_on_a_volume_reaches_status_with_the_controller_s_words(
    kube: Kubectl,
) -> None:
    """A ReadWriteOnce claim in use on another node: the pod stays in ContainerCreating and
    only an Event (from the attach/detach controller, posted here as it would) says why."""
    name = "stuck-volume"
    annotations = {"sim.llmfleet.io/container-fails": "ContainerCreating"}
    kube.apply(
        llmd(
            name, replicas=1, autoscaling={"mode": "Manual"}, worker={"podAnnotations": annotations}
        )
    )
    pod = wait_for(
        "the pod to be created",
        lambda: next(
            iter(kube.get("pods", None, "-l", f"llmfleet.io/deployment={name}")["items"]), None
        ),
    )
    multi_attach = (
        'Multi-Attach error for volume "pvc-3f1c" Volume is already used by pod(s) '
        "other-0 on node gpu-node-3"
    )
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{pod['metadata']['name']}.attach"},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod["metadata"]["name"],
                "namespace": kube.namespace,
                "uid": pod["metadata"]["uid"],
            },
            "reason": "FailedAttachVolume",
            "message": multi_attach,
            "type": "Warning",
            "source": {"component": "attachdetach-controller"},
        }
    )
    # Read after the pod was stuck for a while (20 s), not on its first moments.
    obj = wait_condition(kube, name, "Stalled", "True", "VolumeAttachFailed", timeout=60)
    stalled = conditions(obj)["Stalled"]
    assert stalled["message"].startswith(f"1 pod VolumeAttachFailed: {name}-")
    assert multi_attach in stalled["message"]
    assert conditions(obj)["Ready"]["status"] == "False"


def test_a_users_own_object_with_our_label_is_never_touched(kube: Kubectl) -> None:
    # The user's Service carries the fleet label (e.g. copied from ours for a dashboard).
    theirs = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "mine-metrics", "labels": {"llmfleet.io/deployment": "mine"}},
        "spec": {"ports": [{"port": 9090}], "selector": {"llmfleet.io/deployment": "mine"}},
    }
    kube.apply(theirs)
    kube.apply(llmd("mine", replicas=1, autoscaling={"mode": "Manual"}))
    wait_condition(kube, "mine", "Ready", "True", "Available", timeout=90)
    # A change makes the operator plan (and delete what it no longer wants) again.
    kube("patch", "llmd", "mine", "--type=merge", "-p", '{"spec":{"replicas":2}}')
    wait_for("scaled to 2", lambda: deployment_replicas(kube, "mine") == 2)
    wait_condition(kube, "mine", "Ready", "True", "Available", timeout=90)
    service = kube.get("service", "mine-metrics")
    assert not service["metadata"].get("ownerReferences")
    assert service["spec"]["ports"][0]["port"] == 9090
