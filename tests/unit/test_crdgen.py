"""The generated CRD: in sync with the models, structural, complete."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from llmfleet_operator import api, crdgen

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / crdgen.FILE_NAME


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return crdgen.crd()


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    version = crd["spec"]["versions"][0]
    assert isinstance(version["schema"]["openAPIV3Schema"], dict)
    return dict(version["schema"]["openAPIV3Schema"])


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (properties, items, additionalProperties)."""
    if not isinstance(node, dict):
        return
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_committed_crd_matches_the_models() -> None:
    assert COMMITTED.exists(), "crds/ has no CRD; run `make crds`"
    assert COMMITTED.read_text() == crdgen.render(), (
        f"{COMMITTED.relative_to(ROOT)} differs from what api.py generates; run `make crds`"
    )


def test_rendering_is_deterministic() -> None:
    assert crdgen.render() == crdgen.render()
    assert yaml.safe_load(crdgen.render()) == crdgen.crd()


def test_check_mode_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 1  # nothing there yet
    capsys.readouterr()
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    target = tmp_path / crdgen.FILE_NAME
    assert target.read_text() == crdgen.render()
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 0
    target.write_text(target.read_text().replace("default: 900", "default: 901"))
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "-                    default: 901" in out
    assert "+                    default: 900" in out
    assert "make crds" in err


def test_identity(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "llmdeployments.llmfleet.io"
    assert crd["metadata"]["labels"] == {"app.kubernetes.io/part-of": "llmfleet"}
    spec = crd["spec"]
    assert spec["group"] == "llmfleet.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "LLMDeployment"
    assert spec["names"]["plural"] == "llmdeployments"
    assert spec["names"]["singular"] == "llmdeployment"
    assert spec["names"]["shortNames"] == ["llmd"]
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    forbidden = {"$ref", "$defs", "allOf", "oneOf", "not", "nullable", "title", "const"}
    seen = 0
    for path, node in walk(schema):
        seen += 1
        assert not forbidden & node.keys(), f"{path}: {sorted(forbidden & node.keys())}"
        preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        if "anyOf" in node:
            assert int_or_string, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        assert "type" in node or preserve or int_or_string, f"{path}: no type"
        assert node.get("default", 0) is not None, f"{path}: default null"
        if node.get("type") == "object" and path != ".metadata":  # the server owns ObjectMeta
            assert "properties" in node or "additionalProperties" in node or preserve, path
            assert not ("properties" in node and "additionalProperties" in node), path
        if "additionalProperties" in node:
            assert node["additionalProperties"] in ({"type": "string"}, {"type": "number"}), path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                assert node[key] is True, f"{path}: {key} must be the OpenAPI v3.0 boolean"
        assert "\n" not in node.get("description", ""), path
        assert node.get("required", []) == sorted(node.get("required", [])), path
    assert seen > 80  # the walk really went through the whole schema


def test_root_is_a_kubernetes_object(schema: dict[str, Any]) -> None:
    props = schema["properties"]
    assert set(props) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert props["metadata"] == {"type": "object"}
    assert schema["required"] == ["spec"]
    assert props["spec"]["required"] == ["model"]
    assert props["spec"]["properties"]["model"]["required"] == ["uri"]


def test_status_has_no_defaults_and_conditions_are_a_map(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]
    assert [path for path, node in walk(status) if "default" in node] == []
    assert "required" not in status
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert set(conditions["items"]["required"]) == {"type", "status"}
    assert status["properties"]["autoscaler"]["properties"]["lastDecision"]["required"] == [
        "from",
        "to",
    ]


def test_kubernetes_extensions(schema: dict[str, Any]) -> None:
    worker = schema["properties"]["spec"]["properties"]["worker"]["properties"]
    for quantity in ("cpu", "memory"):
        node = worker["resources"]["properties"][quantity]
        assert node["x-kubernetes-int-or-string"] is True
        assert node["pattern"] == api.QUANTITY_PATTERN
    assert worker["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
    assert worker["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    env_from = worker["env"]["items"]["properties"]["valueFrom"]
    assert env_from["x-kubernetes-preserve-unknown-fields"] is True
    assert worker["nodeSelector"]["additionalProperties"] == {"type": "string"}
    mode = schema["properties"]["spec"]["properties"]["autoscaling"]["properties"]["mode"]
    assert mode["enum"] == ["Builtin", "External", "Manual"]
    assert mode["default"] == "Builtin"


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """What the API server's structural defaulting does, including nested ``default: {}``."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                apply_defaults(value[name], sub)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            apply_defaults(item, schema["items"])
    return value


def without_empty(value: Any) -> Any:
    """Empty lists and maps mean the same as absent ones."""
    if isinstance(value, dict):
        pruned = {k: without_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ([], {})}
    if isinstance(value, list):
        return [without_empty(v) for v in value]
    return value


@pytest.mark.parametrize(
    "spec",
    [
        {"model": {"uri": "pvc://models/tiny"}},
        {
            "model": {"uri": "hf://org/repo"},
            "autoscaling": {"mode": "Manual"},
            "replicas": 2,
            "rollout": {"strategy": "Canary", "canary": {}},
            "worker": {"env": [{"name": "A", "value": "1"}]},
        },
    ],
)
def test_schema_defaults_equal_model_defaults(schema: dict[str, Any], spec: dict[str, Any]) -> None:
    from_schema = apply_defaults(copy.deepcopy(spec), schema["properties"]["spec"])
    from_model = api.LLMDeploymentSpec.model_validate(spec).model_dump(
        mode="json", exclude_none=True
    )
    if "image" not in spec.get("worker", {}):
        # The one default the server leaves alone: the image follows the engine.
        from_schema.setdefault("worker", {}).setdefault("image", api.DEFAULT_WORKER_IMAGE)
    assert without_empty(from_schema) == without_empty(from_model)
    # The server-defaulted object parses back to the same model.
    parsed = api.LLMDeploymentSpec.model_validate(from_schema)
    assert parsed == api.LLMDeploymentSpec.model_validate(spec)


def test_subresources(crd: dict[str, Any]) -> None:
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_printer_columns(crd: dict[str, Any]) -> None:
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    default = [(c["name"], c["jsonPath"]) for c in columns if c.get("priority", 0) == 0]
    assert default == [
        ("Model", ".spec.model.uri"),
        ("Revision", ".spec.model.revision"),
        ("Ready", ".status.readyReplicas"),
        ("Desired", ".status.desiredReplicas"),
        ("Status", '.status.conditions[?(@.type=="Ready")].status'),
        ("Rollout", ".status.rollout.phase"),
        ("Canary", ".status.rollout.canaryWeight"),
        ("Age", ".metadata.creationTimestamp"),
    ]
    wide = {c["name"]: c["jsonPath"] for c in columns if c.get("priority", 0) == 1}
    assert wide["Served-As"] == ".spec.model.name"
    assert wide["Current"] == ".status.currentRevision"


def test_cel_rules_sit_where_their_messages_say(schema: dict[str, Any]) -> None:
    rules = {
        rule["message"]: (path, rule)
        for path, node in walk(schema)
        for rule in node.get("x-kubernetes-validations", [])
    }
    assert set(rules) == {
        api.MAX_REPLICAS_MESSAGE,
        api.REPLICAS_BUILTIN_MESSAGE,
        api.MODEL_URI_MESSAGE,
        api.MODEL_NAME_MESSAGE,
        api.OBJECT_NAME_MESSAGE,
        api.STEPS_INCREASING_MESSAGE,
        api.PAUSED_NEEDS_CANARY_MESSAGE,
        api.CANARY_NEEDS_STRATEGY_MESSAGE,
        api.CANARY_NEEDS_LLMFLEET_MESSAGE,
        api.VLLM_INT8_MESSAGE,
        api.VLLM_OWNED_FLAG_MESSAGE,
        api.LOAD_BALANCER_NEEDS_KEY_MESSAGE,
        api.CREDENTIAL_ENV_MESSAGE,
        api.PEER_MESSAGE,
        api.SELECTOR_VALUES_MESSAGE,
        api.CIDR_MESSAGE,
        api.EXCEPT_MESSAGE,
    }
    assert rules[api.PEER_MESSAGE][0] == ".spec.networkPolicy.from[]"
    assert rules[api.EXCEPT_MESSAGE][0] == ".spec.networkPolicy.from[].ipBlock"
    assert rules[api.EXCEPT_MESSAGE][1]["fieldPath"] == ".except"
    assert rules[api.SELECTOR_VALUES_MESSAGE][1]["fieldPath"] == ".values"
    assert rules[api.LOAD_BALANCER_NEEDS_KEY_MESSAGE][1]["fieldPath"] == ".service.type"
    assert rules[api.CREDENTIAL_ENV_MESSAGE][0] == ".spec.worker.env[]"
    assert rules[api.CREDENTIAL_ENV_MESSAGE][1]["fieldPath"] == ".value"
    assert rules[api.STEPS_INCREASING_MESSAGE][0] == ".spec.rollout.canary.steps"
    assert rules[api.PAUSED_NEEDS_CANARY_MESSAGE][1]["fieldPath"] == ".paused"
    assert rules[api.CANARY_NEEDS_STRATEGY_MESSAGE][1]["fieldPath"] == ".canary"
    assert rules[api.MAX_REPLICAS_MESSAGE][0] == ".spec.autoscaling"
    assert rules[api.MAX_REPLICAS_MESSAGE][1]["fieldPath"] == ".maxReplicas"
    assert rules[api.REPLICAS_BUILTIN_MESSAGE][0] == ".spec"
    assert rules[api.REPLICAS_BUILTIN_MESSAGE][1]["fieldPath"] == ".replicas"
    assert rules[api.MODEL_URI_MESSAGE][0] == ".spec.model.uri"
    assert api.MODEL_URI_PATTERN in rules[api.MODEL_URI_MESSAGE][1]["rule"]
    assert rules[api.MODEL_NAME_MESSAGE][0] == ".spec.model.name"
    assert rules[api.OBJECT_NAME_MESSAGE][0] == ""
    assert rules[api.VLLM_INT8_MESSAGE][1]["fieldPath"] == ".model.quantization"
    assert rules[api.VLLM_OWNED_FLAG_MESSAGE][1]["fieldPath"] == ".worker.args"
    assert api.VLLM_OWNED_FLAG_PATTERN in rules[api.VLLM_OWNED_FLAG_MESSAGE][1]["rule"]
    # CEL cost estimation needs a bound on every string a rule scans.
    model = schema["properties"]["spec"]["properties"]["model"]["properties"]
    assert model["uri"]["maxLength"] == 1024
    assert model["name"]["maxLength"] == 63
    worker = schema["properties"]["spec"]["properties"]["worker"]["properties"]
    assert worker["args"]["maxItems"] == 64
    assert worker["args"]["items"]["maxLength"] == 4096
    # The image's default depends on the engine: the operator resolves it, not the server.
    assert "default" not in worker["image"]


# --- the generator on models other than the API's --------------------------------------------


class _Inner(BaseModel):
    """Inner docstring."""

    n: int = 3


class _Toy(BaseModel):
    free: dict[str, Any]
    labels: dict[str, str] = Field(default_factory=dict)
    qty: int | str = 1
    maybe: float | None = Field(default=None, gt=0, lt=1)
    inner: _Inner = Field(default_factory=_Inner, description="Field description wins.")
    changed: _Inner = _Inner(n=5)


def test_generator_on_a_toy_model() -> None:
    out = crdgen.openapi_schema(_Toy)
    props = out["properties"]
    assert props["free"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert props["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert props["qty"]["x-kubernetes-int-or-string"] is True
    assert props["qty"]["default"] == 1
    assert props["maybe"] == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 1,
        "exclusiveMaximum": True,
    }
    assert props["inner"]["default"] == {}
    assert props["inner"]["description"] == "Field description wins."
    assert props["inner"]["properties"]["n"]["default"] == 3
    assert props["changed"]["default"] == {"n": 5}
    assert out["required"] == ["free"]
    assert "default" not in crdgen.openapi_schema(_Inner, defaults=False)["properties"]["n"]


class _Unstructural(BaseModel):
    either: int | float | str


def test_generator_refuses_what_has_no_structural_form() -> None:
    with pytest.raises(crdgen.NotStructuralError, match="either"):
        crdgen.openapi_schema(_Unstructural)
