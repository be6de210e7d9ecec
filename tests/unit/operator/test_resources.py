"""The pure builders: what one LLMDeployment turns into."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llmfleet_operator.api import LLMDeploymentSpec
from llmfleet_operator.plan import is_subset, plan_children
from llmfleet_operator.resources import (
    MANAGED_KINDS,
    Owner,
    desired_children,
    desired_replicas,
    revision_of,
    spec_json,
    worker_deployment,
)

OWNER = Owner("chat", "team-a", "uid-1", 3)
PDB = "PodDisruptionBudget"
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def spec(**overrides: Any) -> LLMDeploymentSpec:
    body: dict[str, Any] = {"model": {"uri": "pvc://models/tiny/v1"}}
    body.update(overrides)
    return LLMDeploymentSpec.model_validate(body)


def container(dep: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return c


def env_of(dep: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(dep)["env"]}


def test_worker_pods_request_gpus_tolerate_the_taint_and_mount_the_model() -> None:
    dep = worker_deployment(OWNER, spec(worker={"resources": {"gpus": 2}}), 1, "abc")
    pod = dep["spec"]["template"]["spec"]
    assert container(dep)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    } in pod["volumes"]
    env = env_of(dep)
    assert env["LLMFLEET_MODEL"] == "/models/tiny/v1"
    assert env["LLMFLEET_SERVED_MODEL_NAME"] == "chat"
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert dep["metadata"]["labels"]["llmfleet.io/deployment"] == "chat"
    assert dep["spec"]["template"]["metadata"]["labels"]["llmfleet.io/revision"] == "abc"


def test_pods_pass_pod_security_restricted() -> None:
    dep = worker_deployment(OWNER, spec(), 1, "abc")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(dep)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container(dep)["volumeMounts"]}
    assert {"/tmp", "/dev/shm"} <= mounts
    assert pod["automountServiceAccountToken"] is False


def test_probes_and_drain() -> None:
    c = container(worker_deployment(OWNER, spec(), 1, "abc"))
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60
    pod = worker_deployment(OWNER, spec(), 1, "abc")["spec"]["template"]["spec"]
    drain = int(next(e["value"] for e in c["env"] if e["name"] == "LLMFLEET_DRAIN_TIMEOUT"))
    assert (
        pod["terminationGracePeriodSeconds"] > drain + c["lifecycle"]["preStop"]["sleep"]["seconds"]
    )


def test_secrets_are_references_never_values() -> None:
    s = spec(
        model={
            "uri": "hf://org/repo",
            "revision": "main",
            "hfTokenSecretRef": {"name": "hf", "key": "token"},
        },
        auth={"apiKeySecretRef": {"name": "keys", "key": "api"}},
    )
    env = env_of(worker_deployment(OWNER, s, 1, "abc"))
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["LLMFLEET_API_KEY"] == {"secretKeyRef": {"name": "keys", "key": "api"}}
    assert env["LLMFLEET_MODEL"] == "hf://org/repo@main"


def test_revision_changes_with_the_model_not_with_scaling() -> None:
    base = spec()
    assert revision_of(base) == revision_of(spec(autoscaling={"maxReplicas": 3}))
    assert revision_of(base) != revision_of(spec(model={"uri": "pvc://models/tiny/v2"}))
    assert revision_of(base) != revision_of(spec(worker={"image": "other:1"}))


@pytest.mark.parametrize(
    ("overrides", "current", "autoscaler", "want"),
    [
        ({}, None, None, 1),  # Builtin starts at minReplicas
        ({"autoscaling": {"minReplicas": 2, "maxReplicas": 5}}, 9, None, 5),  # clamped
        ({"autoscaling": {"minReplicas": 2, "maxReplicas": 5}}, None, 4, 4),
        ({"autoscaling": {"mode": "Manual"}, "replicas": 3}, 1, 7, 3),
        ({"autoscaling": {"mode": "External"}, "replicas": 0}, 2, None, 0),
        ({"suspend": True}, 3, 3, 0),
    ],
)
def test_desired_replicas(
    overrides: dict[str, Any], current: int | None, autoscaler: int | None, want: int
) -> None:
    assert desired_replicas(spec(**overrides), current, autoscaler) == want


def test_pdb_only_with_more_than_one_replica() -> None:
    kinds = lambda n: [c["kind"] for c in desired_children(OWNER, spec(), n, "r")]  # noqa: E731
    assert "PodDisruptionBudget" not in kinds(1)
    assert "PodDisruptionBudget" in kinds(2)


def test_plan_is_empty_when_observed_has_server_defaults() -> None:
    desired = desired_children(OWNER, spec(), 2, "r")
    observed = []
    for obj in desired:
        o = yaml.safe_load(yaml.safe_dump(obj))
        o["metadata"]["resourceVersion"] = "7"
        o["metadata"]["uid"] = "x"
        o.setdefault("status", {})["observedGeneration"] = 1
        if o["kind"] == "Deployment":
            o["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
            o["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = (
                "/dev/termination-log"
            )
        observed.append(o)
    plan = plan_children(desired, observed, MANAGED_KINDS)
    assert plan.empty, plan


def test_plan_reverts_manual_edits_recreates_deleted_and_deletes_unwanted() -> None:
    desired = desired_children(OWNER, spec(), 1, "r")
    dep, _svc, _netpol = (yaml.safe_load(yaml.safe_dump(o)) for o in desired)
    dep["spec"]["replicas"] = 5  # someone scaled the Deployment by hand
    (pdb,) = (c for c in desired_children(OWNER, spec(), 2, "r") if c["kind"] == PDB)
    plan = plan_children(desired, [dep, pdb], MANAGED_KINDS)
    assert [a.obj["kind"] for a in plan.apply] == ["Deployment", "Service", "NetworkPolicy"]
    assert all(a.look_first for a in plan.apply if a.verb == "Created")
    assert [o["kind"] for o in plan.delete] == ["PodDisruptionBudget"]
    assert not is_subset(desired[0], dep)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_builds(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "LLMDeployment":
            s = LLMDeploymentSpec.model_validate(doc["spec"])
            children = desired_children(OWNER, s, 2, revision_of(s))
            assert {c["kind"] for c in children} == {"Deployment", "Service", PDB, "NetworkPolicy"}


def test_max_model_len_reaches_the_worker_only_when_the_user_set_it() -> None:
    unset = env_of(worker_deployment(OWNER, spec(), 1, "abc"))
    assert "LLMFLEET_MAX_MODEL_LEN" not in unset  # the worker takes the model's own length
    chosen = spec(model={"uri": "pvc://models/tiny/v1", "maxModelLen": 4096})
    assert env_of(worker_deployment(OWNER, chosen, 1, "abc"))["LLMFLEET_MAX_MODEL_LEN"] == "4096"


def test_a_worker_that_refuses_to_start_says_why_in_its_termination_message() -> None:
    assert container(worker_deployment(OWNER, spec(), 1, "abc"))["terminationMessagePolicy"] == (
        "FallbackToLogsOnError"
    )


# --- the NetworkPolicy ----------------------------------------------------------------------


def netpol_of(s: LLMDeploymentSpec, monitoring: str = "monitoring") -> dict[str, Any]:
    (policy,) = (
        c
        for c in desired_children(OWNER, s, 2, "r", monitoring_namespace=monitoring)
        if c["kind"] == "NetworkPolicy"
    )
    return policy


MONITORING_RULE = {
    "ports": [{"port": "http", "protocol": "TCP"}],
    "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
}


def test_network_policy_by_default_admits_the_namespace_and_the_monitoring_namespace() -> None:
    policy = netpol_of(spec())
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["metadata"]["name"] == "chat"
    assert policy["metadata"]["namespace"] == "team-a"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert policy["metadata"]["ownerReferences"][0]["controller"] is True
    assert policy["metadata"]["labels"]["llmfleet.io/deployment"] == "chat"
    body = policy["spec"]
    assert body["policyTypes"] == ["Ingress"]  # egress stays open (model downloads)
    assert body["ingress"] == [
        {"ports": [{"port": "http", "protocol": "TCP"}], "from": [{"podSelector": {}}]},
        MONITORING_RULE,
    ]


def test_network_policy_selects_the_pods_of_both_tracks_on_the_port_they_serve() -> None:
    s = spec(service={"port": 9000})
    policy = netpol_of(s)
    children = desired_children(OWNER, s, 3, "r", canary=(1, "c"))
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for dep in (c for c in children if c["kind"] == "Deployment"):
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        (port,) = container(dep)["ports"]
        assert (port["name"], port["containerPort"]) == ("http", 9000)
    # The API and /metrics share that one port; it is named, as the Service's targetPort.
    (service,) = (c for c in children if c["kind"] == "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {"http"}


def test_network_policy_admits_exactly_the_peers_the_spec_names() -> None:
    peers = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}},
        {
            "namespaceSelector": {},
            "podSelector": {
                "matchLabels": {"app": "chat-ui"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}],
            },
        },
        {"podSelector": {"matchExpressions": [{"key": "llm-client", "operator": "Exists"}]}},
        {"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.9.0/24"]}},
    ]
    policy = netpol_of(spec(networkPolicy={"from": peers}))
    assert policy["spec"]["ingress"][0]["from"] == peers
    assert policy["spec"]["ingress"][1] == MONITORING_RULE


def test_network_policy_of_an_external_service_admits_any_source_unless_peers_are_named() -> None:
    key = {"apiKeySecretRef": {"name": "k", "key": "api-key"}}
    for type_ in ("LoadBalancer", "NodePort"):
        clients = netpol_of(spec(service={"type": type_}, auth=key))["spec"]["ingress"][0]
        # Clients outside the cluster: only the port is restricted (the API key guards it).
        assert clients == {"ports": [{"port": "http", "protocol": "TCP"}]}
    office = [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    lb = spec(service={"type": "LoadBalancer"}, auth=key, networkPolicy={"from": office})
    assert netpol_of(lb)["spec"]["ingress"][0]["from"] == office


def test_network_policy_monitoring_namespace_comes_from_the_operator() -> None:
    rules = netpol_of(spec(), monitoring="prom")["spec"]["ingress"]
    assert rules[1]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prom"}}}
    ]
    assert len(netpol_of(spec(), monitoring="")["spec"]["ingress"]) == 1


def test_network_policy_disabled_is_not_desired_and_the_old_one_is_deleted() -> None:
    kinds = [c["kind"] for c in desired_children(OWNER, spec(), 1, "r")]
    assert kinds == ["Deployment", "Service", "NetworkPolicy"]
    off = spec(networkPolicy={"enabled": False})
    desired = desired_children(OWNER, off, 1, "r")
    assert "NetworkPolicy" not in [c["kind"] for c in desired]
    observed = [yaml.safe_load(yaml.safe_dump(o)) for o in desired_children(OWNER, spec(), 1, "r")]
    plan = plan_children(desired, observed, MANAGED_KINDS)
    assert plan.apply == []
    assert [o["kind"] for o in plan.delete] == ["NetworkPolicy"]


def test_network_policy_changes_neither_the_revision_nor_the_stored_stable_spec() -> None:
    closed = spec(networkPolicy={"from": [{"podSelector": {"matchLabels": {"a": "b"}}}]})
    assert revision_of(closed) == revision_of(spec())  # no pod restarts
    assert spec_json(closed) == spec_json(spec())
    assert "networkPolicy" not in spec_json(closed)


def test_network_policy_as_the_api_server_returns_it_needs_no_write() -> None:
    peers = [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "ui"}}},
        {"podSelector": {"matchExpressions": [{"key": "x", "operator": "Exists"}]}},
        {"ipBlock": {"cidr": "10.0.0.0/8"}},
    ]
    desired = [netpol_of(spec(networkPolicy={"from": peers}))]
    observed = yaml.safe_load(yaml.safe_dump(desired[0]))
    observed["metadata"].update(
        {"uid": "np-uid", "resourceVersion": "9", "generation": 1, "managedFields": []}
    )
    assert plan_children(desired, [observed], MANAGED_KINDS).empty
    # A hand edit (another port opened, a peer removed) is reverted.
    observed["spec"]["ingress"][0]["from"].pop()
    assert [a.verb for a in plan_children(desired, [observed], MANAGED_KINDS).apply] == ["Updated"]
