"""The LLMDeployment models: defaults, validation, wire format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from llmfleet_operator import api

ROOT = Path(__file__).resolve().parents[2]
MINIMAL: dict[str, Any] = {"model": {"uri": "pvc://models/tiny-llama"}}


def spec_with(**patch: Any) -> dict[str, Any]:
    """MINIMAL with top-level spec keys replaced; nested dicts are merged one level."""
    spec: dict[str, Any] = {"model": dict(MINIMAL["model"])}
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def test_constants() -> None:
    assert api.API_VERSION == "llmfleet.io/v1alpha1"
    assert (api.GROUP, api.VERSION, api.KIND) == ("llmfleet.io", "v1alpha1", "LLMDeployment")
    assert (api.PLURAL, api.SINGULAR, api.SHORT_NAMES) == (
        "llmdeployments",
        "llmdeployment",
        ("llmd",),
    )
    assert api.CRD_NAME == "llmdeployments.llmfleet.io"
    assert api.ConditionType.READY.value == "Ready"
    assert api.Reason.INSUFFICIENT_GPU.value == "InsufficientGPU"


def test_defaults_of_a_minimal_spec() -> None:
    spec = api.LLMDeploymentSpec.model_validate(MINIMAL)
    assert spec.model.name is None
    assert spec.model.served_name("chat") == "chat"
    assert spec.model.dtype is api.Dtype.AUTO
    assert spec.model.quantization is api.Quantization.NONE
    assert spec.model.max_model_len is None  # the model's own length
    assert spec.worker.image == api.DEFAULT_WORKER_IMAGE
    assert spec.worker.engine is api.Engine.LLMFLEET
    assert spec.worker.resources.gpus == 1
    assert spec.worker.resources.gpu_resource_name == "nvidia.com/gpu"
    assert (spec.worker.resources.cpu, spec.worker.resources.memory) == ("4", "32Gi")
    assert spec.replicas is None
    assert spec.autoscaling.mode is api.AutoscalingMode.BUILTIN
    assert (spec.autoscaling.min_replicas, spec.autoscaling.max_replicas) == (1, 8)
    assert spec.autoscaling.target_queue_depth_per_replica == 4
    assert spec.autoscaling.scale_down_stabilization_seconds == 300
    assert spec.rollout.strategy is api.RolloutStrategy.ROLLING_UPDATE
    assert spec.rollout.progress_deadline_seconds == 900
    assert spec.rollout.canary is None
    assert spec.service.port == 8000
    assert spec.service.type is api.ServiceType.CLUSTER_IP
    assert spec.auth.api_key_secret_ref is None
    assert spec.suspend is False


def test_canary_defaults() -> None:
    spec = api.LLMDeploymentSpec.model_validate(
        spec_with(rollout={"strategy": "Canary", "canary": {}})
    )
    assert spec.rollout.canary is not None
    assert [s.weight for s in spec.rollout.canary.steps] == [10, 50]
    assert spec.rollout.canary.analysis.max_error_ratio == 0.05
    assert spec.rollout.canary.analysis.max_ttft_ratio == 1.5
    assert spec.rollout.canary.analysis.interval_seconds == 30


def test_explicit_name_is_served() -> None:
    spec = api.LLMDeploymentSpec.model_validate(spec_with(model={"name": "Llama-3.1-8B"}))
    assert spec.model.served_name("chat") == "Llama-3.1-8B"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (spec_with(autoscaling={"minReplicas": 5, "maxReplicas": 2}), "maxReplicas"),
        (spec_with(worker={"resources": {"gpus": -1}}), "gpus"),
        (spec_with(autoscaling={"mode": "Sometimes"}), "mode"),
        (spec_with(model={"uri": "s3://bucket/model"}), "spec.model.uri must be"),
        (spec_with(model={"uri": "http://example.com/m"}), "spec.model.uri must be"),
        (spec_with(model={"uri": "hf://just-a-repo"}), "spec.model.uri must be"),
        (spec_with(model={"uri": ""}), "uri"),
        (spec_with(replicas=2), "spec.replicas must not be set"),
        (spec_with(model={"name": "-leading-dash"}), "spec.model.name must be"),
        (spec_with(model={"name": "org/model"}), "spec.model.name must be"),
        (spec_with(model={"name": "x" * 64}), "name"),
        (spec_with(model={"dtype": "int4"}), "dtype"),
        (spec_with(model={"maxModelLen": 8}), "maxModelLen"),
        (spec_with(worker={"resources": {"memory": "lots"}}), "memory"),
        (spec_with(autoscaling={"targetQueueDepthPerReplica": 0}), "targetQueueDepthPerReplica"),
        (spec_with(service={"port": 70000}), "port"),
        (spec_with(rollout={"canary": {"steps": [{"weight": 0}]}}), "weight"),
        (spec_with(surprise=True), "surprise"),
        (spec_with(worker={"resource": {}}), "resource"),
        ({"worker": {}}, "model"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, str) else None,
)
def test_invalid_specs_are_rejected(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as caught:
        api.LLMDeploymentSpec.model_validate(spec)
    assert needle in str(caught.value)


@pytest.mark.parametrize(
    "uri",
    [
        "pvc://models/tiny-llama",
        "pvc://models",
        "pvc://model-store.v2/llama/70b",
        "hf://meta-llama/Llama-3.1-8B-Instruct",
        "file:///models/tiny",
    ],
)
def test_supported_uris(uri: str) -> None:
    assert api.LLMDeploymentSpec.model_validate(spec_with(model={"uri": uri})).model.uri == uri


@pytest.mark.parametrize("mode", ["Manual", "External"])
def test_replicas_are_allowed_outside_builtin(mode: str) -> None:
    spec = api.LLMDeploymentSpec.model_validate(spec_with(replicas=3, autoscaling={"mode": mode}))
    assert spec.replicas == 3


@pytest.mark.parametrize(("value", "expected"), [(2, 2), ("500m", "500m"), ("1.5", "1.5")])
def test_cpu_is_int_or_quantity_string(value: int | str, expected: int | str) -> None:
    spec = api.LLMDeploymentSpec.model_validate(spec_with(worker={"resources": {"cpu": value}}))
    assert spec.worker.resources.cpu == expected


def test_wire_names_are_camel_case_and_round_trip() -> None:
    spec = api.LLMDeploymentSpec(
        model=api.ModelSpec(uri="hf://org/repo", max_model_len=4096),
        autoscaling=api.AutoscalingSpec(
            mode=api.AutoscalingMode.MANUAL, prometheus_url="http://prom:9090"
        ),
        replicas=2,
    )
    wire = spec.model_dump(mode="json", exclude_none=True)
    assert wire["model"]["maxModelLen"] == 4096
    assert wire["autoscaling"]["prometheusURL"] == "http://prom:9090"
    assert wire["worker"]["resources"]["gpuResourceName"] == "nvidia.com/gpu"
    assert "max_model_len" not in wire["model"]
    assert api.LLMDeploymentSpec.model_validate(wire) == spec
    # Python names are accepted too, for code that builds specs.
    by_name = api.LLMDeploymentSpec.model_validate(
        {"model": {"uri": "hf://org/repo", "max_model_len": 4096}}
    )
    assert by_name.model.max_model_len == 4096


def test_status_round_trip() -> None:
    wire = {
        "observedGeneration": 3,
        "replicas": 2,
        "readyReplicas": 1,
        "selector": "llmfleet.io/deployment=chat",
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "InsufficientGPU",
                "message": "asked 4 GPUs, 2 free",
                "lastTransitionTime": "2025-01-02T03:04:05Z",
                "observedGeneration": 3,
            }
        ],
        "autoscaler": {
            "lastScaleTime": "2025-01-02T03:04:05Z",
            "lastDecision": {"from": 1, "to": 2, "reason": "queue", "signals": {"queue": 9.5}},
        },
        "addedByANewerOperator": "ignored",
    }
    status = api.LLMDeploymentStatus.model_validate(wire)
    assert status.conditions is not None
    assert status.conditions[0].status is api.ConditionStatus.FALSE
    assert status.autoscaler is not None
    assert status.autoscaler.last_decision is not None
    assert status.autoscaler.last_decision.from_ == 1
    built = api.ScaleDecision(from_=1, to=2)  # Python names work for both odd aliases
    assert built.model_dump(exclude_none=True) == {"from": 1, "to": 2}
    dumped = status.model_dump(mode="json", exclude_none=True)
    del wire["addedByANewerOperator"]
    assert dumped == wire  # the time stays the exact string the server stored


def test_parse_a_stored_object() -> None:
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "chat", "namespace": "ml", "generation": 2},
        "spec": spec_with(worker={"tolerations": [{"key": "x", "operator": "Exists"}]}),
        "status": {"observedGeneration": 1},
    }
    assert api.parse_spec(body).worker.tolerations == [{"key": "x", "operator": "Exists"}]
    obj = api.parse(body)
    assert obj.metadata["name"] == "chat"
    assert obj.status is not None
    assert obj.status.observed_generation == 1


def _example_specs() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == api.KIND:
                found.append((f"{path.name}:{doc['metadata']['name']}", doc))
    return found


def test_there_are_examples() -> None:
    names = [name for name, _ in _example_specs()]
    assert any(n.startswith("chat-small.yaml") for n in names), names
    assert any(n.startswith("llama-70b-4gpu.yaml") for n in names), names


@pytest.mark.parametrize(
    ("name", "body"), _example_specs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_examples_parse(name: str, body: dict[str, Any]) -> None:
    obj = api.parse(body)
    assert obj.api_version == api.API_VERSION
    assert obj.spec.model.uri


def test_full_example() -> None:
    body = dict(_example_specs())["llama-70b-4gpu.yaml:llama-70b"]
    spec = api.parse_spec(body)
    assert spec.worker.resources.gpus == 4
    assert spec.autoscaling.mode is api.AutoscalingMode.MANUAL
    assert spec.replicas == 1


def test_every_condition_type_and_reason_is_one_the_operator_sets() -> None:
    # A reason in the API that no code path sets is a promise nothing keeps.
    package = ROOT / "operator" / "llmfleet_operator"
    code = "\n".join(
        p.read_text() for p in package.glob("*.py") if p.name not in ("api.py", "crdgen.py")
    )
    unused = [
        f"{enum.__name__}.{member.name}"
        for enum in (api.ConditionType, api.Reason)
        for member in enum
        if f"{enum.__name__}.{member.name}" not in code
    ]
    assert not unused, f"defined but never set: {unused}"
