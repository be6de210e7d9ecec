"""Closed-loop fixtures: a tiny model, real worker processes behind the simulated pods (the
pod backer, ``llmfleet_dev.podbacker``) and a real Prometheus scraping them.

Prometheus is shared by the session (it starts in about a second, but its TSDB and port
staying put is what lets a test stop and restart it); the pod backer is per test and
watches only the test's namespace, so every test starts with no worker processes and its
own are drained and reaped before the next test begins. Both meet in one file-based
service discovery file.

Every LLMDeployment that ``apply_llmd`` applies is backed (``sim.llmfleet.io/backed``): its
pods are Ready only while their real workers' ``/ready`` is, as on a real cluster. The
workers are the faulty test worker (``llmfleet_dev.faulty_worker``), which is the real
worker unless the LLMDeployment's ``worker.env`` sets a fault, e.g.
``apply_llmd("canary", worker={"env": [{"name": "SIM_FAIL_RATIO", "value": "0.5"}]})``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmfleet_dev.faulty_worker import worker_command
from llmfleet_dev.kube import Kubectl
from llmfleet_dev.localcluster import BACKED_ANNOTATION, LocalCluster
from llmfleet_dev.podbacker import PodBacker, ensure_tiny_model
from llmfleet_dev.prometheus import PrometheusServer, prometheus_available

#: What a worker is started with: a small running batch, so that a few concurrent clients
#: on a 2-core machine already build a queue that the autoscaler can see.
E2E_WORKER_ARGS = ("--max-num-seqs", "2", "--max-queue", "256")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smallest model ``make-tiny-model`` builds (random weights, seconds to make)."""
    return ensure_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture(scope="session")
def sd_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file-based service discovery file the pod backer writes and Prometheus reads."""
    return tmp_path_factory.mktemp("file-sd") / "workers.json"


@pytest.fixture(scope="session")
def prometheus_server(
    tmp_path_factory: pytest.TempPathFactory, sd_file: Path
) -> Iterator[PrometheusServer]:
    if not prometheus_available():
        pytest.fail("/usr/bin/prometheus is missing; run `make apt` (hack/apt.sh)")
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), sd_file).start()
    try:
        yield server
    finally:
        code = server.stop()
        assert code in (0, None), f"prometheus exited {code}: {server.log_tail()}"


@pytest.fixture
def prometheus(prometheus_server: PrometheusServer) -> PrometheusServer:
    """Real Prometheus on loopback (1 s scrapes of the backed workers), running.

    A test may stop it (``prometheus.stop()``) and start it again (``prometheus.start()``,
    same port and data); if a test leaves it stopped, the next test gets it started again.
    """
    return prometheus_server.start()


@pytest.fixture
def pod_backer_factory(
    cluster: LocalCluster, tiny_model: Path, sd_file: Path, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., PodBacker]]:
    """Start a pod backer for the test's namespace with other options (e.g. worker_args).

    Its workers are the faulty test worker by default: without SIM_* env it is exactly
    ``llmfleet-worker``, and with it any test injects faults through the pod's env (the pod
    backer passes a pod's literal env values on). At most one per test: it owns the shared
    discovery file while it runs.
    """
    started: list[PodBacker] = []

    def start(**options: Any) -> PodBacker:
        assert not started, "one pod backer per test (it owns the discovery file)"
        options.setdefault("worker_args", E2E_WORKER_ARGS)
        options.setdefault("worker_command", worker_command())
        backer = PodBacker(
            cluster.kubeconfig,
            tiny_model,
            tmp_path / "podbacker",
            namespaces=[namespace],
            sd_file=sd_file,
            **options,
        )
        started.append(backer.start())
        return backer

    yield start
    for backer in started:
        backer.stop()
        assert not backer.workers(), "the pod backer left worker processes behind"


@pytest.fixture
def pod_backer(pod_backer_factory: Callable[..., PodBacker]) -> PodBacker:
    """Real worker processes for the test namespace's LLMDeployment pods (default options)."""
    return pod_backer_factory()


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture
def apply_llmd(kube: Kubectl, crd_installed: str, models_pvc: str) -> Callable[..., dict[str, Any]]:
    """``apply_llmd(name, **spec)``: apply an LLMDeployment serving the tiny model.

    ``spec`` is merged into ``{"model": {"uri": "pvc://models/tiny"}, "worker":
    {"podAnnotations": {"sim.llmfleet.io/backed": "true"}}}`` (nested dicts are merged), e.g.
    ``apply_llmd("chat", replicas=2, autoscaling={"mode": "Manual"})``. The annotation makes
    the pods' readiness follow their workers (the pod backer sets it); a test that wants
    kwok's instant readiness passes ``worker={"podAnnotations": {BACKED_ANNOTATION:
    "false"}}``. Returns the manifest that was applied.
    """

    def apply(name: str, **spec: Any) -> dict[str, Any]:
        base = {
            "model": {"uri": f"pvc://{models_pvc}/tiny"},
            "worker": {"podAnnotations": {BACKED_ANNOTATION: "true"}},
        }
        manifest = {
            "apiVersion": "llmfleet.io/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"name": name},
            "spec": _merge(base, spec),
        }
        kube.apply(manifest)
        return manifest

    return apply


@pytest.fixture
def real_node(real_nodes: list[str]) -> str:
    """The name of the cluster's real kubelet node (``llmfleet_dev.realnode``)."""
    return real_nodes[0]
