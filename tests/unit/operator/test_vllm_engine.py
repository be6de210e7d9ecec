"""engine vllm: the pod runs vLLM's OpenAI server, the autoscaler knows its batch size."""

from __future__ import annotations

from typing import Any

import pytest

from llmfleet_operator import api, promql
from llmfleet_operator.autoscale_loop import AutoscaleLoop
from llmfleet_operator.resources import (
    VLLM_DEFAULT_MAX_NUM_SEQS,
    Owner,
    max_num_seqs,
    revision_of,
    worker_deployment,
)

OWNER = Owner("chat", "team-a", "uid-1", 3)


def vllm(**worker: Any) -> dict[str, Any]:
    return {"model": {"uri": "pvc://models/tiny/v1"}, "worker": {"engine": "vllm", **worker}}


def spec(body: dict[str, Any]) -> api.LLMDeploymentSpec:
    return api.LLMDeploymentSpec.model_validate(body)


def container(s: api.LLMDeploymentSpec) -> dict[str, Any]:
    dep = worker_deployment(OWNER, s, 1, revision_of(s))
    c: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return c


def flags(c: dict[str, Any]) -> dict[str, str]:
    args: list[str] = c["args"]
    return {a: b for a, b in zip(args, [*args[1:], ""], strict=True) if a.startswith("--")}


def test_the_pod_runs_vllm_serve_with_the_spec_mapped_to_flags() -> None:
    s = spec(vllm(resources={"gpus": 4}))
    s.model.max_model_len = 4096
    s.model.dtype = api.Dtype.FLOAT16
    c = container(s)
    assert c["command"] == ["vllm", "serve"]
    assert c["image"] == api.DEFAULT_VLLM_IMAGE
    assert flags(c) == {
        "--model": "/models/tiny/v1",
        "--served-model-name": "chat",
        "--host": "0.0.0.0",
        "--port": "8000",
        "--dtype": "float16",
        "--tensor-parallel-size": "4",
        "--max-num-seqs": str(VLLM_DEFAULT_MAX_NUM_SEQS),
        "--max-model-len": "4096",
    }
    assert "--quantization" not in c["args"]  # none: vLLM reads a checkpoint's own method


def test_hub_models_get_their_id_and_revision() -> None:
    body = vllm()
    body["model"] = {"uri": "hf://Qwen/Qwen2.5-0.5B", "revision": "main"}
    f = flags(container(spec(body)))
    assert (f["--model"], f["--revision"]) == ("Qwen/Qwen2.5-0.5B", "main")
    # A pvc:// revision is llmfleet's label only: vLLM gets no --revision.
    assert "--revision" not in flags(container(spec(vllm())))


def test_cpu_only_pods_run_one_way_tensor_parallel() -> None:
    assert flags(container(spec(vllm(resources={"gpus": 0}))))["--tensor-parallel-size"] == "1"


def test_probes_env_and_writable_dirs() -> None:
    body = vllm(env=[{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}])
    body["auth"] = {"apiKeySecretRef": {"name": "api", "key": "k"}}
    c = container(spec(body))
    assert {
        p: c[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")
    } == {
        "startupProbe": "/health",
        "readinessProbe": "/health",
        "livenessProbe": "/health",
    }
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert not [n for n in env if n.startswith("LLMFLEET_")]
    assert env["VLLM_API_KEY"] == {"secretKeyRef": {"name": "api", "key": "k"}}
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert env["HOME"] == "/home/vllm"
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/home/vllm", "/tmp", env["HF_HOME"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_extra_args_go_last_and_max_num_seqs_is_the_autoscalers_capacity() -> None:
    s = spec(vllm(maxNumSeqs=48, args=["--enable-prefix-caching"]))
    c = container(s)
    assert c["args"][-1] == "--enable-prefix-caching"
    assert flags(c)["--max-num-seqs"] == "48" == str(max_num_seqs(s))
    # llmfleet workers export what they run with; the spec passes its value on when set.
    assert max_num_seqs(spec({"model": {"uri": "pvc://m/t"}})) is None
    llmfleet = spec({"model": {"uri": "pvc://m/t"}, "worker": {"maxNumSeqs": 8}})
    assert {"name": "LLMFLEET_MAX_NUM_SEQS", "value": "8"} in container(llmfleet)["env"]


def test_an_unset_max_num_seqs_keeps_existing_revisions() -> None:
    body: dict[str, Any] = {"model": {"uri": "pvc://m/t"}}
    assert revision_of(spec(body)) != revision_of(spec({**body, "worker": {"maxNumSeqs": 8}}))
    dumped = spec(body).worker.model_dump(mode="json", by_alias=True, exclude={"max_num_seqs"})
    assert "maxNumSeqs" not in dumped  # what revision_of hashes for an unset field


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"model": {"uri": "pvc://m/t", "quantization": "int8"}, "worker": {"engine": "vllm"}},
            api.VLLM_INT8_MESSAGE,
        ),
        (vllm(args=["--port", "9000"]), api.VLLM_OWNED_FLAG_MESSAGE),
        (vllm(args=["--max-num-seqs=512"]), api.VLLM_OWNED_FLAG_MESSAGE),
    ],
)
def test_what_vllm_cannot_honour_is_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message[:40]):
        spec(body)


def test_the_same_args_are_fine_for_the_llmfleet_worker() -> None:
    spec({"model": {"uri": "pvc://m/t"}, "worker": {"args": ["--port", "9000"]}})
    spec(vllm(args=["--port-offset-is-not-port"]))


def test_the_loop_counts_the_specs_batch_as_vllm_capacity() -> None:
    now = 1000.0
    answers = {
        "waiting": {("ns", "a"): promql.Sample(0.0, now)},
        "running": {("ns", "a"): promql.Sample(40.0, now)},
        "reporting": {("ns", "a"): promql.Sample(2.0, now)},
        "sampled_at": {("ns", "a"): promql.Sample(now - 1, now)},
    }
    signals = AutoscaleLoop._signals(answers, ("ns", "a"), now, per_worker=64)
    assert signals is not None
    assert signals.capacity == 128.0
    # A capacity the workers export wins over the spec's.
    answers["capacity"] = {("ns", "a"): promql.Sample(10.0, now)}
    signals = AutoscaleLoop._signals(answers, ("ns", "a"), now, per_worker=64)
    assert signals is not None
    assert signals.capacity == 10.0
