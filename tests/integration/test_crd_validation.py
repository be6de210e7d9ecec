"""The CRD in a real API server: bad manifests are refused with a message naming the field,
good ones are defaulted as the models default them, and kubectl's scale and get work."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmfleet_dev.kube import Kubectl
from llmfleet_operator import api

pytestmark = pytest.mark.usefixtures("crd_installed")

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def llmd(name: str = "x", **spec: Any) -> dict[str, Any]:
    """An LLMDeployment with a valid minimal spec, top-level spec keys replaced by ``spec``."""
    body: dict[str, Any] = {"model": {"uri": "pvc://models/tiny-llama", "revision": "v1"}}
    body.update(copy.deepcopy(spec))
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": body,
    }


def table(text: str) -> list[dict[str, str]]:
    """kubectl's table output as rows keyed by column header (blank cells stay blank)."""
    header, *rows = text.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    spans = list(zip(starts, [*starts[1:], None], strict=True))
    return [
        {name: row[a:b].strip() for name, (a, b) in zip(header.split(), spans, strict=True)}
        for row in rows
    ]


BAD = {
    "maxReplicas below minReplicas": (
        llmd(autoscaling={"minReplicas": 3, "maxReplicas": 2}),
        ["spec.autoscaling.maxReplicas", api.MAX_REPLICAS_MESSAGE],
    ),
    "negative gpus": (
        llmd(worker={"resources": {"gpus": -1}}),
        ["spec.worker.resources.gpus", "greater than or equal to 0"],
    ),
    "unknown autoscaling mode": (
        llmd(autoscaling={"mode": "Sometimes"}),
        ["spec.autoscaling.mode", 'Unsupported value: "Sometimes"', '"Builtin"'],
    ),
    "s3 uri": (
        llmd(model={"uri": "s3://bucket/llama"}),
        ["spec.model.uri", api.MODEL_URI_MESSAGE],
    ),
    "http uri": (
        llmd(model={"uri": "http://example.com/llama"}),
        ["spec.model.uri", api.MODEL_URI_MESSAGE],
    ),
    "replicas with Builtin mode": (
        llmd(replicas=2, autoscaling={"mode": "Builtin"}),
        ["spec.replicas", api.REPLICAS_BUILTIN_MESSAGE],
    ),
    "replicas with the default mode": (
        llmd(replicas=2),
        ["spec.replicas", api.REPLICAS_BUILTIN_MESSAGE],
    ),
    "empty uri": (
        llmd(model={"uri": ""}),
        ["spec.model.uri", "at least 1 chars long"],
    ),
    "missing uri": (
        llmd(model={"name": "chat"}),
        ["spec.model.uri: Required value"],
    ),
    "model name with a slash": (
        llmd(model={"uri": "hf://org/repo", "name": "org/repo"}),
        ["spec.model.name", api.MODEL_NAME_MESSAGE],
    ),
    "model name with a space": (
        llmd(model={"uri": "hf://org/repo", "name": "my model"}),
        ["spec.model.name", api.MODEL_NAME_MESSAGE],
    ),
    "object name that cannot name a Service": (
        llmd(name="7b.chat"),
        [api.OBJECT_NAME_MESSAGE],
    ),
    "unknown field": (
        llmd(worker={"gpus": 1}),
        ['unknown field "spec.worker.gpus"'],
    ),
    "canary steps that do not increase": (
        llmd(rollout={"strategy": "Canary", "canary": {"steps": [{"weight": 50}, {"weight": 20}]}}),
        ["spec.rollout.canary.steps", api.STEPS_INCREASING_MESSAGE],
    ),
    "canary steps with a repeated weight": (
        llmd(rollout={"strategy": "Canary", "canary": {"steps": [{"weight": 20}, {"weight": 20}]}}),
        ["spec.rollout.canary.steps", api.STEPS_INCREASING_MESSAGE],
    ),
    "canary step above 100": (
        llmd(rollout={"strategy": "Canary", "canary": {"steps": [{"weight": 150}]}}),
        ["spec.rollout.canary.steps[0].weight", "less than or equal to 100"],
    ),
    "no canary steps": (
        llmd(rollout={"strategy": "Canary", "canary": {"steps": []}}),
        ["spec.rollout.canary.steps", "at least 1 items"],
    ),
    "error ratio above 1": (
        llmd(rollout={"strategy": "Canary", "canary": {"analysis": {"maxErrorRatio": 1.5}}}),
        ["spec.rollout.canary.analysis.maxErrorRatio", "less than or equal to 1"],
    ),
    "negative error ratio": (
        llmd(rollout={"strategy": "Canary", "canary": {"analysis": {"maxErrorRatio": -0.1}}}),
        ["spec.rollout.canary.analysis.maxErrorRatio", "greater than or equal to 0"],
    ),
    "failure limit of zero": (
        llmd(rollout={"strategy": "Canary", "canary": {"analysis": {"failureLimit": 0}}}),
        ["spec.rollout.canary.analysis.failureLimit", "greater than or equal to 1"],
    ),
    "negative minRequests": (
        llmd(rollout={"strategy": "Canary", "canary": {"analysis": {"minRequests": -1}}}),
        ["spec.rollout.canary.analysis.minRequests", "greater than or equal to 0"],
    ),
    "paused with RollingUpdate": (
        llmd(rollout={"strategy": "RollingUpdate", "paused": True}),
        ["spec.rollout.paused", api.PAUSED_NEEDS_CANARY_MESSAGE],
    ),
    "paused with the default strategy": (
        llmd(rollout={"paused": True}),
        ["spec.rollout.paused", api.PAUSED_NEEDS_CANARY_MESSAGE],
    ),
    "canary settings with RollingUpdate": (
        llmd(rollout={"canary": {"steps": [{"weight": 10}]}}),
        ["spec.rollout.canary", api.CANARY_NEEDS_STRATEGY_MESSAGE],
    ),
    "canary of a vllm worker": (
        llmd(rollout={"strategy": "Canary"}, worker={"engine": "vllm"}),
        ["spec.rollout.strategy", api.CANARY_NEEDS_LLMFLEET_MESSAGE],
    ),
    "zero progress deadline": (
        llmd(rollout={"progressDeadlineSeconds": 0}),
        ["spec.rollout.progressDeadlineSeconds", "greater than 0"],
    ),
    "public LoadBalancer without an API key": (
        llmd(service={"type": "LoadBalancer"}),
        ["spec.service.type", api.LOAD_BALANCER_NEEDS_KEY_MESSAGE],
    ),
    "an inline hub token": (
        llmd(worker={"env": [{"name": "HF_TOKEN", "value": "hf_abc"}]}),
        ["spec.worker.env[0].value", api.CREDENTIAL_ENV_MESSAGE],
    ),
    "an inline password, whatever its case": (
        llmd(
            worker={
                "env": [
                    {"name": "LOG_LEVEL", "value": "info"},
                    {"name": "db_password", "value": "x"},
                ]
            }
        ),
        ["spec.worker.env[1].value", api.CREDENTIAL_ENV_MESSAGE],
    ),
    "cpu that is not a quantity": (
        llmd(worker={"resources": {"cpu": "lots"}}),
        ["spec.worker.resources.cpu", "should match"],
    ),
    "a network peer that names nothing": (
        llmd(networkPolicy={"from": [{}]}),
        ["spec.networkPolicy.from[0]", api.PEER_MESSAGE],
    ),
    "an ipBlock next to a selector": (
        llmd(networkPolicy={"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}),
        ["spec.networkPolicy.from[0]", api.PEER_MESSAGE],
    ),
    "an empty list of peers": (
        llmd(networkPolicy={"from": []}),
        ["spec.networkPolicy.from", "at least 1 items"],
    ),
    "a CIDR with host bits": (
        llmd(networkPolicy={"from": [{"ipBlock": {"cidr": "10.1.2.3/8"}}]}),
        ["spec.networkPolicy.from[0].ipBlock.cidr", api.CIDR_MESSAGE],
    ),
    "an address that is not a CIDR": (
        llmd(networkPolicy={"from": [{"ipBlock": {"cidr": "10.0.0.0"}}]}),
        ["spec.networkPolicy.from[0].ipBlock.cidr", api.CIDR_MESSAGE],
    ),
    "an except outside its CIDR": (
        llmd(
            networkPolicy={"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}
        ),
        ["spec.networkPolicy.from[0].ipBlock.except", api.EXCEPT_MESSAGE],
    ),
    "an except that is the whole CIDR": (
        llmd(networkPolicy={"from": [{"ipBlock": {"cidr": "fd00::/8", "except": ["fd00::/8"]}}]}),
        ["spec.networkPolicy.from[0].ipBlock.except", api.EXCEPT_MESSAGE],
    ),
    "In without values": (
        llmd(
            networkPolicy={
                "from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]
            }
        ),
        [
            "spec.networkPolicy.from[0].podSelector.matchExpressions[0].values",
            api.SELECTOR_VALUES_MESSAGE,
        ],
    ),
    "Exists with values": (
        llmd(
            networkPolicy={
                "from": [
                    {
                        "namespaceSelector": {
                            "matchExpressions": [
                                {"key": "a", "operator": "Exists", "values": ["b"]}
                            ]
                        }
                    }
                ]
            }
        ),
        [
            "spec.networkPolicy.from[0].namespaceSelector.matchExpressions[0].values",
            api.SELECTOR_VALUES_MESSAGE,
        ],
    ),
}


@pytest.mark.parametrize(("manifest", "needles"), list(BAD.values()), ids=list(BAD))
def test_bad_manifest_is_refused_naming_the_field(
    kube: Kubectl, manifest: dict[str, Any], needles: list[str]
) -> None:
    # YAML text, as users apply it (kubectl validates a List client-side, with other words).
    result = kube.apply(yaml.safe_dump(manifest), check=False)
    assert result.returncode != 0, f"accepted: {json.dumps(manifest)}"
    for needle in needles:
        assert needle in result.stderr
    assert kube("get", "llmd", "-o", "name").stdout == ""


def test_the_python_models_refuse_the_same_manifests() -> None:
    # The server-side (CEL/OpenAPI) and Python-side rules must not drift apart.
    for name, (manifest, _) in BAD.items():
        if name == "object name that cannot name a Service":
            continue  # metadata is the API server's to validate
        with pytest.raises(ValueError, match=r"\w"):
            api.parse_spec(manifest)


def test_good_manifest_gets_the_model_defaults(kube: Kubectl) -> None:
    manifest = llmd("chat")
    kube.apply(manifest)
    stored = kube.get("llmd", "chat")["spec"]
    assert stored["autoscaling"] == {
        "mode": "Builtin",
        "minReplicas": 1,
        "maxReplicas": 8,
        "targetQueueDepthPerReplica": 4,
        "scaleDownStabilizationSeconds": 300,
    }
    assert stored["worker"]["resources"] == {
        "gpus": 1,
        "gpuResourceName": "nvidia.com/gpu",
        "cpu": "4",
        "memory": "32Gi",
    }
    assert "image" not in stored["worker"]  # the operator resolves it from worker.engine
    assert "maxModelLen" not in stored["model"]  # unset: the worker uses the model's length
    assert stored["rollout"] == {
        "strategy": "RollingUpdate",
        "progressDeadlineSeconds": 900,
        "allowDowntime": False,
        "paused": False,
    }
    assert stored["service"] == {"port": 8000, "type": "ClusterIP"}
    assert stored["networkPolicy"] == {"enabled": True}  # on unless turned off
    assert stored["suspend"] is False
    assert "replicas" not in stored  # no default: only Manual/External users set it
    assert "args" not in stored["worker"]  # empty collections are not spelled out
    # Whatever the server filled in, it is what the models would have filled in.
    assert api.parse_spec({"spec": stored}) == api.parse_spec(manifest)


def test_every_kind_of_network_peer_is_accepted_as_written(kube: Kubectl) -> None:
    peers = [
        {"namespaceSelector": {}},
        {"podSelector": {}},
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}},
            "podSelector": {
                "matchExpressions": [
                    {"key": "app", "operator": "NotIn", "values": ["batch"]},
                    {"key": "llm-client", "operator": "DoesNotExist"},
                ]
            },
        },
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}},
        {"ipBlock": {"cidr": "2001:db8::/32"}},
    ]
    manifest = llmd("peers", networkPolicy={"enabled": True, "from": peers})
    kube.apply(manifest)
    stored = kube.get("llmd", "peers")["spec"]["networkPolicy"]
    assert stored == {"enabled": True, "from": peers}
    assert api.parse_spec({"spec": kube.get("llmd", "peers")["spec"]}) == api.parse_spec(manifest)


def test_canary_defaults_reach_into_lists(kube: Kubectl) -> None:
    manifest = llmd("canary", rollout={"strategy": "Canary", "canary": {}})
    kube.apply(manifest)
    canary = kube.get("llmd", "canary")["spec"]["rollout"]["canary"]
    assert canary["steps"] == [
        {"weight": 10, "pauseSeconds": 60},
        {"weight": 50, "pauseSeconds": 60},
    ]
    assert canary["analysis"] == {
        "maxErrorRatio": 0.05,
        "maxTtftRatio": 1.5,
        "intervalSeconds": 30,
        "minRequests": 20,
        "failureLimit": 2,
    }


def test_kubectl_scale_in_manual_mode(kube: Kubectl) -> None:
    kube.apply(llmd("manual", replicas=1, autoscaling={"mode": "Manual"}))
    kube("scale", "llmd/manual", "--replicas=3")
    assert kube.get("llmd", "manual")["spec"]["replicas"] == 3
    scale = kube.get("llmd", "manual", "--subresource=scale")
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 3


def test_kubectl_scale_is_refused_in_builtin_mode(kube: Kubectl) -> None:
    kube.apply(llmd("auto"))
    result = kube("scale", "llmd/auto", "--replicas=3", check=False)
    assert result.returncode != 0
    assert api.REPLICAS_BUILTIN_MESSAGE in result.stderr


def test_status_subresource_and_printer_columns(kube: Kubectl) -> None:
    kube.apply(llmd("cols", model={"uri": "pvc://models/tiny-llama", "revision": "v7"}))
    status = {
        "observedGeneration": 1,
        "replicas": 2,
        "readyReplicas": 1,
        "desiredReplicas": 2,
        "selector": "llmfleet.io/deployment=cols",
        "currentRevision": "5d8f7c",
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "InsufficientGPU",
                "message": "asked 1 GPU per pod, 0 free",
                "lastTransitionTime": "2025-01-02T03:04:05Z",
                "observedGeneration": 1,
            }
        ],
        "autoscaler": {"lastDecision": {"from": 1, "to": 2, "signals": {"queue": 9.5}}},
    }
    patch = json.dumps({"status": status})
    kube("patch", "llmd/cols", "--subresource=status", "--type=merge", "-p", patch)
    assert kube.get("llmd", "cols")["status"] == status

    [row] = table(kube("get", "llmd").stdout)
    assert row == {
        "NAME": "cols",
        "MODEL": "pvc://models/tiny-llama",
        "REVISION": "v7",
        "READY": "1",
        "DESIRED": "2",
        "STATUS": "False",
        "ROLLOUT": "",
        "CANARY": "",
        "AGE": row["AGE"],
    }
    [wide] = table(kube("get", "llmd", "-o", "wide").stdout)
    assert wide == {
        **row,
        "REASON": "InsufficientGPU",
        "SERVED-AS": "",
        "MODE": "Builtin",
        "CURRENT": "5d8f7c",
        "AGE": wide["AGE"],
    }


def test_status_is_not_writable_through_the_main_resource(kube: Kubectl) -> None:
    manifest = llmd("nostatus")
    manifest["status"] = {"replicas": 5}
    kube.apply(manifest)
    assert "status" not in kube.get("llmd", "nostatus")


#: Kinds from add-ons this cluster does not run; their documents are checked offline.
ADDON_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_accepted(kube: Kubectl, path: Path) -> None:
    """Every file in examples/ goes through the real API server (server-side dry run);
    documents of add-ons the test cluster lacks (KEDA) get a structural check instead."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path.name} is empty"
    served = [d for d in docs if (d["apiVersion"], d["kind"]) not in ADDON_KINDS]
    addons = [d for d in docs if (d["apiVersion"], d["kind"]) in ADDON_KINDS]
    text = yaml.safe_dump_all(served)
    result = kube("apply", "--server-side", "--dry-run=server", "-f", "-", stdin=text)
    applied = [line for line in result.stdout.splitlines() if "serverside-applied" in line]
    assert len(applied) == len(served), result.stdout
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "LLMDeployment"}
    for doc in addons:
        check_scaled_object(doc, names)


def check_scaled_object(doc: dict[str, Any], llmdeployments: set[str]) -> None:
    """The parts of KEDA's ScaledObject schema the example relies on."""
    spec = doc["spec"]
    target = spec["scaleTargetRef"]
    assert target == {
        "apiVersion": "llmfleet.io/v1alpha1",
        "kind": "LLMDeployment",
        "name": target["name"],
    }
    assert target["name"] in llmdeployments
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        assert meta["serverAddress"].startswith("http")
        assert "llmfleet_worker_" in meta["query"]
        float(meta["threshold"])  # KEDA wants a number in a string
