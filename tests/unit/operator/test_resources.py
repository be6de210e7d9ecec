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
    worker_deployment,
)

OWNER = Owner("chat", "team-a", "uid-1", 3)
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
    dep, _svc = (yaml.safe_load(yaml.safe_dump(o)) for o in desired)
    dep["spec"]["replicas"] = 5  # someone scaled the Deployment by hand
    pdb = desired_children(OWNER, spec(), 2, "r")[2]
    plan = plan_children(desired, [dep, pdb], MANAGED_KINDS)
    assert [a.obj["kind"] for a in plan.apply] == ["Deployment", "Service"]
    assert [o["kind"] for o in plan.delete] == ["PodDisruptionBudget"]
    assert not is_subset(desired[0], dep)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_builds(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "LLMDeployment":
            s = LLMDeploymentSpec.model_validate(doc["spec"])
            children = desired_children(OWNER, s, 2, revision_of(s))
            assert {c["kind"] for c in children} == {"Deployment", "Service", "PodDisruptionBudget"}


def test_max_model_len_reaches_the_worker_only_when_the_user_set_it() -> None:
    unset = env_of(worker_deployment(OWNER, spec(), 1, "abc"))
    assert "LLMFLEET_MAX_MODEL_LEN" not in unset  # the worker takes the model's own length
    chosen = spec(model={"uri": "pvc://models/tiny/v1", "maxModelLen": 4096})
    assert env_of(worker_deployment(OWNER, chosen, 1, "abc"))["LLMFLEET_MAX_MODEL_LEN"] == "4096"


def test_a_worker_that_refuses_to_start_says_why_in_its_termination_message() -> None:
    assert container(worker_deployment(OWNER, spec(), 1, "abc"))["terminationMessagePolicy"] == (
        "FallbackToLogsOnError"
    )
