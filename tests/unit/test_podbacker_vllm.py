"""The pod backer runs what an engine-vllm pod says, mapped onto this host."""

from __future__ import annotations

from pathlib import Path

from llmfleet_dev.podbacker import PodView, vllm_serve_args
from llmfleet_operator.api import LLMDeploymentSpec
from llmfleet_operator.resources import Owner, revision_of, worker_deployment


def pod_of(spec: dict[str, object]) -> dict[str, object]:
    s = LLMDeploymentSpec.model_validate(spec)
    dep = worker_deployment(Owner("vchat", "ns", "uid"), s, 1, revision_of(s))
    template = dep["spec"]["template"]
    return {"metadata": {"name": "p", "namespace": "ns", **template["metadata"]}, **template}


def test_a_vllm_pod_is_recognised_by_its_command() -> None:
    spec = {"model": {"uri": "pvc://m/t"}, "worker": {"engine": "vllm"}}
    vllm = PodView.from_object(pod_of(spec))
    assert vllm.vllm
    assert vllm.args[:2] == ("--model", "/models/t")
    assert not PodView.from_object(pod_of({"model": {"uri": "pvc://m/t"}})).vllm


def test_paths_address_and_devices_are_mapped_and_the_rest_kept() -> None:
    args = vllm_serve_args(
        ["--model", "/models/t", "--host", "0.0.0.0", "--port=8000", "--tensor-parallel-size",
         "4", "--max-num-seqs", "2", "--enable-prefix-caching"],
        Path("/here/tiny"),
        41000,
    )  # fmt: skip
    assert args == [
        "--model", "/here/tiny", "--host", "127.0.0.1", "--port", "41000",
        "--tensor-parallel-size", "1", "--max-num-seqs", "2", "--enable-prefix-caching",
    ]  # fmt: skip
    # What the pod left to vLLM's defaults is pinned to this host too.
    assert vllm_serve_args([], Path("/m"), 1)[:2] == ["--model", "/m"]
