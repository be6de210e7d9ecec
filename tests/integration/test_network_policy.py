"""The worker NetworkPolicy and foreign objects, against the real control plane.

The local cluster's kwok nodes have no network plugin, so nothing here shows that traffic is
actually blocked: these tests check the NetworkPolicy object the operator keeps (what a
plugin such as Calico or Cilium would enforce), its lifecycle, that it causes no writes once
applied, and that an object of the same name the operator does not own is never taken over.

One operator for the file, watching only the file's namespace, so that its write counter
counts this file's objects alone.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from llmfleet_dev.kube import Kubectl
from llmfleet_dev.localcluster import LocalCluster
from llmfleet_dev.processes import OperatorProcess
from llmfleet_dev.wait import wait_for

MONITORING = "np-monitoring"
MANAGER = "llmfleet-operator"
API_PORT = [{"port": "http", "protocol": "TCP"}]
MONITORING_RULE = {
    "ports": API_PORT,
    "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING}}}],
}


class Scoped(NamedTuple):
    kube: Kubectl
    operator: OperatorProcess


@pytest.fixture(scope="module")
def scoped(
    cluster: LocalCluster,
    kubectl: Kubectl,
    crd_installed: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scoped]:
    """A namespace of this file's own, with an operator watching only it."""
    namespace = f"t-netpol-{secrets.token_hex(3)}"
    kubectl("create", "namespace", namespace)
    log = tmp_path_factory.mktemp("operator-netpol") / "operator.log"
    proc = OperatorProcess(
        cluster.kubeconfig,
        log,
        f"--namespace={namespace}",
        f"--monitoring-namespace={MONITORING}",
    ).start()
    try:
        yield Scoped(kubectl.in_namespace(namespace), proc)
    finally:
        code = proc.stop()
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        assert code in (0, None), f"operator exited {code}: {proc.log_tail()}"


@pytest.fixture
def kube(scoped: Scoped) -> Kubectl:
    """kubectl bound to the file's namespace."""
    return scoped.kube


@pytest.fixture
def operator(scoped: Scoped) -> OperatorProcess:
    """The file's namespace-scoped operator."""
    return scoped.operator


def llmd(name: str, **spec: Any) -> dict[str, Any]:
    # hf:// needs no volume; kwok never runs the worker. Manual: no autoscaler in the way.
    body: dict[str, Any] = {
        "model": {"uri": "hf://llmfleet/tiny"},
        "worker": {"resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"}},
        "autoscaling": {"mode": "Manual"},
        "replicas": 1,
    }
    body.update(spec)
    return {
        "apiVersion": "llmfleet.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name},
        "spec": body,
    }


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def wait_condition(
    kube: Kubectl, name: str, type_: str, status: str, reason: str, timeout: float = 90
) -> dict[str, Any]:
    def probe() -> Any:
        obj = kube.get("llmd", name)
        c = conditions(obj).get(type_) or {}
        return obj if (c.get("status"), c.get("reason")) == (status, reason) else None

    return wait_for(f"{name}: {type_}={status} ({reason})", probe, timeout=timeout)  # type: ignore[no-any-return]


def policy(kube: Kubectl, name: str) -> dict[str, Any] | None:
    obj: dict[str, Any] | None = kube.get_or_none("networkpolicy", name)
    return obj


def ingress_of(kube: Kubectl, name: str) -> Any:
    obj = policy(kube, name)
    return None if obj is None else obj["spec"].get("ingress")


def managers(obj: dict[str, Any]) -> set[str]:
    return {m["manager"] for m in obj["metadata"].get("managedFields", [])}


def test_the_policy_follows_the_spec_and_goes_with_enabled_false(kube: Kubectl) -> None:
    kube.apply(llmd("chat"))
    obj = wait_condition(kube, "chat", "Ready", "True", "Available")
    np = policy(kube, "chat")
    assert np is not None
    (ref,) = np["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["controller"]) == (
        "LLMDeployment",
        obj["metadata"]["uid"],
        True,
    )
    assert np["metadata"]["labels"]["llmfleet.io/deployment"] == "chat"
    assert np["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "llmfleet-operator"
    # It selects the worker pods, on their API port (which also serves /metrics).
    assert np["spec"]["podSelector"] == {"matchLabels": {"llmfleet.io/deployment": "chat"}}
    assert np["spec"]["policyTypes"] == ["Ingress"]
    assert np["spec"]["ingress"] == [
        {"ports": API_PORT, "from": [{"podSelector": {}}]},  # this namespace's pods
        MONITORING_RULE,
    ]
    pods = kube.get("pods", None, "--selector=llmfleet.io/deployment=chat")["items"]
    assert pods
    for pod in pods:
        labels = pod["metadata"]["labels"]
        assert np["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        (port,) = pod["spec"]["containers"][0]["ports"]
        assert (port["name"], port["containerPort"]) == ("http", 8000)

    # Named peers replace the default.
    peers = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}},
        {"podSelector": {"matchExpressions": [{"key": "llm-client", "operator": "Exists"}]}},
    ]
    patch = {"spec": {"networkPolicy": {"from": peers}}}
    kube("patch", "llmd", "chat", "--type=merge", "-p", json.dumps(patch))
    wait_for(
        "the named peers in the policy",
        lambda: ingress_of(kube, "chat") == [{"ports": API_PORT, "from": peers}, MONITORING_RULE],
    )

    # A hand edit (a wider rule) is put back.
    widened = [{"op": "replace", "path": "/spec/ingress/0/from", "value": [{"podSelector": {}}]}]
    kube("patch", "networkpolicy", "chat", "--type=json", "-p", json.dumps(widened))
    wait_for(
        "the hand edit reverted",
        lambda: ingress_of(kube, "chat") == [{"ports": API_PORT, "from": peers}, MONITORING_RULE],
    )

    # enabled: false deletes it; true brings it back.
    off = {"spec": {"networkPolicy": {"enabled": False}}}
    kube("patch", "llmd", "chat", "--type=merge", "-p", json.dumps(off))
    wait_for("the policy to be deleted", lambda: policy(kube, "chat") is None)
    deleted = kube.get(
        "events", None, "--field-selector", "involvedObject.name=chat,reason=Deleted"
    )["items"]
    assert any("NetworkPolicy chat" in e["message"] for e in deleted)
    on = {"spec": {"networkPolicy": {"enabled": True, "from": None}}}
    kube("patch", "llmd", "chat", "--type=merge", "-p", json.dumps(on))
    wait_for(
        "the default policy back",
        lambda: (
            ingress_of(kube, "chat")
            == [{"ports": API_PORT, "from": [{"podSelector": {}}]}, MONITORING_RULE]
        ),
    )
    kube("delete", "llmd", "chat", "--wait=true")


def test_an_external_service_admits_any_source_to_the_api_port(kube: Kubectl) -> None:
    kube("create", "secret", "generic", "lb-key", "--from-literal=api-key=s3cret")
    auth = {"apiKeySecretRef": {"name": "lb-key", "key": "api-key"}}
    kube.apply(llmd("public", service={"type": "LoadBalancer"}, auth=auth))
    wait_for(
        "the policy of a LoadBalancer fleet",
        lambda: ingress_of(kube, "public") == [{"ports": API_PORT}, MONITORING_RULE],
    )
    office = [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}]
    patch = {"spec": {"networkPolicy": {"from": office}}}
    kube("patch", "llmd", "public", "--type=merge", "-p", json.dumps(patch))
    wait_for(
        "the CIDR the spec names",
        lambda: (
            ingress_of(kube, "public") == [{"ports": API_PORT, "from": office}, MONITORING_RULE]
        ),
    )
    kube("delete", "llmd", "public", "--wait=true")


def test_an_idle_fleet_with_its_policy_causes_no_writes(
    kube: Kubectl, operator: OperatorProcess
) -> None:
    # Peers the API server stores in its own way (empty selectors, expressions, CIDRs).
    peers = [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "ui"}}},
        {"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}},
        {"ipBlock": {"cidr": "fd00::/8"}},
    ]
    kube.apply(llmd("idle", replicas=2, networkPolicy={"from": peers}))
    wait_condition(kube, "idle", "Ready", "True", "Available")
    proc = operator

    def settled() -> bool:
        # Nothing left in flight: the last writes of converging are behind us.
        before = proc.writes()
        time.sleep(3)
        return proc.writes() == before

    wait_for("the operator to stop writing", settled, timeout=60)
    writes = proc.writes()
    version = kube.get("networkpolicy", "idle")["metadata"]["resourceVersion"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # an idle window is observed, not waited on
        assert proc.writes() == writes
        time.sleep(2)
    assert proc.writes() == writes
    assert kube.get("networkpolicy", "idle")["metadata"]["resourceVersion"] == version
    kube("delete", "llmd", "idle", "--wait=true")


def test_objects_of_the_same_name_that_are_not_ours_are_never_touched(
    kube: Kubectl, operator: OperatorProcess
) -> None:
    # The user's own Service and NetworkPolicy, named like the fleet's children; the Service
    # even carries our label (copied for a dashboard). Neither has an ownerReference to it.
    theirs = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "taken", "labels": {"llmfleet.io/deployment": "taken"}},
            "spec": {"ports": [{"port": 9090}], "selector": {"app": "their-own"}},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "taken"},
            "spec": {"podSelector": {"matchLabels": {"app": "their-own"}}, "ingress": [{}]},
        },
    ]
    kube.apply(theirs)
    before = {o["kind"]: kube.get(o["kind"].lower(), "taken") for o in theirs}
    kube.apply(llmd("taken"))
    obj = wait_condition(kube, "taken", "Stalled", "True", "ForeignObject", timeout=60)
    stalled = conditions(obj)["Stalled"]
    assert stalled["message"].startswith(
        "Service taken, NetworkPolicy taken exist and are not this LLMDeployment's "
        "(no ownerReference to it): left untouched"
    )
    assert conditions(obj)["Ready"]["status"] == "False"
    assert conditions(obj)["Reconciling"]["status"] == "False"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]

    def warnings() -> list[dict[str, Any]]:
        fields = "involvedObject.name=taken,reason=ForeignObject"
        items: list[dict[str, Any]] = kube.get("events", None, "--field-selector", fields)["items"]
        return items

    events = wait_for("the ForeignObject Event", warnings)
    assert [(e["type"], e.get("count", 1)) for e in events] == [("Warning", 1)]
    # What can be applied is: the worker Deployment runs.
    wait_for("the Deployment", lambda: kube.get_or_none("deployment", "taken") is not None)
    wait_for(
        "the workers to be ready",
        lambda: conditions(kube.get("llmd", "taken"))["Ready"]["message"].startswith("1/1"),
    )
    # Several looks later (the operator retries every 10 s): still untouched, one Event.
    wait_for(
        "a few retries in the operator's log",
        lambda: operator.log_path.read_text().count("taken: Service taken exists") >= 2,
        timeout=40,
    )
    for o in theirs:
        now = kube.get(o["kind"].lower(), "taken")
        assert (
            now["metadata"]["resourceVersion"] == before[o["kind"]]["metadata"]["resourceVersion"]
        )
        assert not now["metadata"].get("ownerReferences")
        assert MANAGER not in managers(now)
    assert [(e["type"], e.get("count", 1)) for e in warnings()] == [("Warning", 1)]

    # The user removes theirs: the operator creates its own and the fleet becomes Ready.
    for o in theirs:
        kube("delete", o["kind"].lower(), "taken")
    obj = wait_condition(kube, "taken", "Ready", "True", "Available", timeout=60)
    assert conditions(obj)["Stalled"]["status"] == "False"
    for kind in ("service", "networkpolicy"):
        (ref,) = kube.get(kind, "taken")["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["controller"]) == (obj["metadata"]["uid"], True)
    assert kube.get("service", "taken")["spec"]["ports"][0]["port"] == 8000
    kube("delete", "llmd", "taken", "--wait=true")
