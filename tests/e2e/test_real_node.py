"""The operator's own pod spec, unchanged, on a real kubelet node (``llmfleet_dev.realnode``):
worker pods run ``localhost/llmfleet/worker:dev`` as real containers under Pod Security
"restricted", load the tiny model from a PersistentVolumeClaim, become Ready only through the
worker's real readiness probe, are discovered by Prometheus through ``kubernetes_sd_configs``
with the chart's PodMonitor relabelling, and drain a streaming request when deleted.

Needs the real node (``make images`` and ``make tools``; ``LLMFLEET_REAL_NODES=0`` turns it
off): without one these tests skip, saying why.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmfleet_dev.helm import Helm, one
from llmfleet_dev.kube import Kubectl
from llmfleet_dev.localcluster import LocalCluster, model_volume, tiny_llmdeployment
from llmfleet_dev.processes import OperatorProcess, operator_reading
from llmfleet_dev.prometheus import PrometheusServer
from llmfleet_dev.realnode import REAL_NODE_LABEL, REAL_NODE_TAINT
from llmfleet_dev.wait import wait_for
from llmfleet_operator import api
from llmfleet_operator.resources import revision_of

WORKER_IMAGE = "localhost/llmfleet/worker:dev"
MODEL_ROOT = Path("/var/lib/llmfleet/models")


@pytest.fixture
def restricted_ns(kubectl: Kubectl, namespace: str, tiny_model: Path) -> Iterator[str]:
    """The test's namespace under Pod Security "restricted" (enforced), with a ``models``
    claim whose volume holds the tiny model at ``tiny/``."""
    kubectl(
        "label", "namespace", namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )  # fmt: skip
    objects = model_volume(namespace)
    host_path = Path(objects[0]["spec"]["hostPath"]["path"])  # type: ignore[index]
    shutil.copytree(tiny_model, host_path / "tiny", dirs_exist_ok=True)
    # The worker runs as uid 65532: the model must be readable by anyone, as on a real PV.
    for p in [host_path, *host_path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    kubectl.apply(objects)
    ns = kubectl.in_namespace(namespace)
    wait_for(
        "the models claim to bind", lambda: ns.get("pvc", "models")["status"]["phase"] == "Bound"
    )
    try:
        yield namespace
    finally:
        shutil.rmtree(host_path, ignore_errors=True)


def real_llmd(name: str, namespace: str, **autoscaling: Any) -> dict[str, Any]:
    """The tiny-model LLMDeployment, pinned to the real node by the user's own fields
    (nodeSelector, tolerations): everything else is the operator's pod spec. A quarter CPU
    each, so that the node's two cores hold a rolling update's surge pod too."""
    llmd: dict[str, Any] = tiny_llmdeployment(name, namespace, **{"maxReplicas": 2, **autoscaling})
    llmd["spec"]["worker"] = {
        "image": WORKER_IMAGE,
        "imagePullPolicy": "Never",
        "nodeSelector": {REAL_NODE_LABEL: "true"},
        "tolerations": [{**REAL_NODE_TAINT, "operator": "Equal"}],
        "resources": {"gpus": 1, "cpu": "250m", "memory": "2Gi"},
    }
    return llmd


def worker_pods(ns: Kubectl, name: str) -> list[dict[str, Any]]:
    pods = ns.get("pods", None, "-l", f"llmfleet.io/deployment={name}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def wait_ready_pods(
    ns: Kubectl, name: str, count: int, timeout: float = 300
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = [p for p in worker_pods(ns, name) if ready(p)]
        return len(found) >= count

    wait_for(f"{count} Ready worker pod(s) of {name}", enough, timeout=timeout)
    return found


def completion(pod_ip: str, model: str, max_tokens: int = 8) -> dict[str, Any]:
    """A completion from the worker at ``pod_ip`` serving ``model`` (the LLMDeployment's name)."""
    r = httpx.post(
        f"http://{pod_ip}:8000/v1/completions",
        json={"model": model, "prompt": "hello", "max_tokens": max_tokens, "temperature": 0},
        timeout=60,
    )
    r.raise_for_status()
    return dict(r.json())


def test_worker_pods_are_real_containers_under_restricted(
    real_node: str, kubectl: Kubectl, restricted_ns: str, operator: OperatorProcess
) -> None:
    ns = kubectl.in_namespace(restricted_ns)
    ns.apply([real_llmd("real", restricted_ns)])
    (pod,) = wait_ready_pods(ns, "real", 1)
    assert pod["spec"]["nodeName"] == real_node
    (status,) = pod["status"]["containerStatuses"]
    assert status["image"].endswith("llmfleet/worker:dev")
    assert status["imageID"].startswith("sha256:") or "@sha256:" in status["imageID"]
    assert status["started"]
    assert status["restartCount"] == 0
    # Ready came from the kubelet running the worker's probe: the pod's own server answers.
    body = completion(pod["status"]["podIP"], "real")
    assert body["usage"]["completion_tokens"] >= 1

    name = pod["metadata"]["name"]
    # What the restricted profile and the image promise, seen from inside the container.
    assert ns("exec", name, "-c", "worker", "--", "id", "-u").stdout.strip() == "65532"
    touch = ns("exec", name, "-c", "worker", "--", "touch", "/opt/llmfleet/x", check=False)
    assert touch.returncode != 0
    assert "Read-only file system" in touch.stderr
    caps = ns("exec", name, "-c", "worker", "--", "grep", "CapEff", "/proc/1/status").stdout
    assert caps.split()[-1] == "0000000000000000"
    # The model really comes from the claim, mounted read-only.
    mounts = ns("exec", name, "-c", "worker", "--", "cat", "/proc/self/mounts").stdout
    assert any(" /models " in line and " ro," in line for line in mounts.splitlines())

    # Status reports the real readiness (the operator writes it once it has seen the
    # Deployment count the pod, moments after the pod's own Ready).
    ns("wait", "--for=condition=Ready", "llmdeployment/real", "--timeout=60s")


def podmonitor_scrape_config(monitor: dict[str, Any], cluster: LocalCluster) -> dict[str, Any]:
    """A Prometheus scrape job for the chart's PodMonitor, as prometheus-operator writes one:
    pod-role discovery through the API server, the PodMonitor's selector and port as
    ``keep`` rules, then its relabelings unchanged (their keys spelled as Prometheus does)."""
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    keep = [
        {
            "action": "keep",
            "source_labels": [f"__meta_kubernetes_pod_label_{_label_name(k)}"],
            "regex": v,
        }
        for k, v in monitor["spec"]["selector"]["matchLabels"].items()
    ] + [
        {
            "action": "keep",
            "source_labels": ["__meta_kubernetes_pod_container_port_name"],
            "regex": endpoint["port"],
        }
    ]
    relabel = [{_snake(k): v for k, v in rule.items()} for rule in endpoint.get("relabelings", [])]
    state = cluster.load_state()
    assert state is not None
    return {
        "job_name": "podmonitor/llmfleet-workers",
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "metrics_path": endpoint.get("path", "/metrics"),
        "kubernetes_sd_configs": [
            {
                "role": "pod",
                "api_server": f"https://127.0.0.1:{state.ports['kube-apiserver']}",
                "tls_config": {
                    "ca_file": str(cluster.pki / "ca.crt"),
                    "cert_file": str(cluster.pki / "admin.crt"),
                    "key_file": str(cluster.pki / "admin.key"),
                },
            }
        ],
        "relabel_configs": keep + relabel,
    }


def _label_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


@pytest.fixture(scope="module")
def kube_sd_prometheus(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    """Prometheus finding worker pods the way the chart's PodMonitor tells it to."""
    workdir = tmp_path_factory.mktemp("kube-sd-prometheus")
    chart = Helm(cluster.bin("helm"), workdir / "helm")
    monitor = one(chart.template({"monitoring.podMonitor.enabled": True}), "PodMonitor")
    no_files = workdir / "file-sd.json"
    no_files.write_text("[]")
    server = PrometheusServer(
        workdir,
        no_files,
        scrape_configs=[podmonitor_scrape_config(monitor, cluster)],
        # Debian's Prometheus is built without Kubernetes service discovery; hack/tools.sh
        # builds one with it.
        binary=cluster.bin("prometheus"),
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster,
    crd_installed: str,
    kube_sd_prometheus: PrometheusServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The operator, its Builtin autoscaler reading that Prometheus."""
    with operator_reading(
        cluster.kubeconfig,
        kube_sd_prometheus.url,
        tmp_path_factory.mktemp("operator") / "operator.log",
        "--autoscale-interval=2",
        "--rate-window=15s",
    ) as proc:
        yield proc


def test_prometheus_discovers_real_pods_and_the_autoscaler_scales_on_them(
    real_node: str,
    kubectl: Kubectl,
    restricted_ns: str,
    kube_sd_prometheus: PrometheusServer,
    operator: OperatorProcess,
) -> None:
    ns = kubectl.in_namespace(restricted_ns)
    llmd = real_llmd("scaled", restricted_ns, targetQueueDepthPerReplica=1,
                     scaleDownStabilizationSeconds=600)  # fmt: skip
    # A running batch of two: eight clients leave six waiting, a queue the autoscaler sees.
    llmd["spec"]["worker"]["maxNumSeqs"] = 2
    ns.apply([llmd])
    (pod,) = wait_ready_pods(ns, "scaled", 1)

    def labelled_series() -> bool:
        series = kube_sd_prometheus.query('up{job="podmonitor/llmfleet-workers"}')
        return any(
            s["metric"].get("pod") == pod["metadata"]["name"]
            and s["metric"].get("namespace") == restricted_ns
            and s["metric"].get("llmdeployment") == "scaled"
            and s["metric"].get("revision")
            and s["value"][1] == "1"
            for s in series
        )

    wait_for("Prometheus to scrape the real pod with the PodMonitor's labels", labelled_series, 60)

    # A queue on the one replica: the Builtin autoscaler reads it from Prometheus and adds one.
    stop = threading.Event()
    ip = pod["status"]["podIP"]

    def load() -> None:
        while not stop.is_set():
            try:
                completion(ip, "scaled", max_tokens=64)
            except httpx.HTTPError:
                time.sleep(0.2)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_ready_pods(ns, "scaled", 2, timeout=300)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=90)


def ready_endpoints(ns: Kubectl, service: str) -> list[str]:
    """What kube-proxy would route new connections to: the Service's ready endpoints."""
    slices = ns.get("endpointslices", None, "-l", f"kubernetes.io/service-name={service}")
    return [
        address
        for s in slices["items"]
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready")
        for address in e["addresses"]
    ]


def serve_through(
    ns: Kubectl,
    service: str,
    *,
    until: Callable[[], bool],
    avoid: str | None = None,
    timeout: float,
) -> tuple[int, list[str]]:
    """Requests one after the other, each to a ready endpoint of ``service`` as it is at that
    moment (what kube-proxy routes a new connection to), until ``until()``; returns (served,
    failures). ``avoid``: an address never sent to (a pod known to be going away)."""
    failures: list[str] = []
    served = 0
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"still serving after {timeout:.0f}s"
        targets = [t for t in ready_endpoints(ns, service) if t != avoid]
        if not targets:
            time.sleep(0.2)
            continue
        target = targets[(served + len(failures)) % len(targets)]
        try:
            completion(target, service, max_tokens=4)
            served += 1
        except httpx.HTTPError as e:
            failures.append(f"{target}: {e!r}")
    return served, failures


def test_deleting_a_pod_drains_its_streaming_request(
    real_node: str, kubectl: Kubectl, restricted_ns: str, operator: OperatorProcess
) -> None:
    ns = kubectl.in_namespace(restricted_ns)
    ns.apply([real_llmd("drain", restricted_ns, minReplicas=2)])
    pods = wait_ready_pods(ns, "drain", 2)
    victim = pods[0]
    ip = victim["status"]["podIP"]

    finish: list[str | None] = []
    usage: list[dict[str, int]] = []
    started = threading.Event()

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"http://{ip}:8000/v1/completions",
            json={"model": "drain", "prompt": "hello", "max_tokens": 200, "stream": True,
                  "temperature": 0, "ignore_eos": True,
                  "stream_options": {"include_usage": True}},
            timeout=120,
        ) as r:  # fmt: skip
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = json.loads(line.removeprefix("data: "))
                    started.set()
                    finish.extend(c.get("finish_reason") for c in chunk["choices"])
                    if chunk.get("usage"):
                        usage.append(chunk["usage"])

    streamer = threading.Thread(target=stream)
    streamer.start()
    assert started.wait(60), "the stream never started"
    ns("delete", "pod", victim["metadata"]["name"], "--wait=false")

    # While it drains, new requests go where the Service routes them: never to the victim.
    served, failures = serve_through(
        ns, "drain", until=lambda: not streamer.is_alive(), avoid=ip, timeout=120
    )
    streamer.join(timeout=120)
    assert not streamer.is_alive()
    assert finish[-1:] == ["length"], f"the stream was cut: {finish[-3:]}"
    # Every token generated and sent: the count, not the text (a random tiny model's tokens
    # often decode to nothing on their own).
    assert [u["completion_tokens"] for u in usage] == [200]
    assert not failures
    assert served >= 1
    # The pod went through preStop and SIGTERM and exited 0 (the worker drains, then exits).
    wait_for(
        "the victim to be gone",
        lambda: ns.get_or_none("pod", victim["metadata"]["name"]) is None,
        120,
    )
    wait_ready_pods(ns, "drain", 2)


def test_rolling_update_under_load_fails_no_request(
    real_node: str, kubectl: Kubectl, restricted_ns: str, operator: OperatorProcess
) -> None:
    ns = kubectl.in_namespace(restricted_ns)
    llmd = real_llmd("rolled", restricted_ns, minReplicas=2)
    ns.apply([llmd])
    before = {p["metadata"]["name"] for p in wait_ready_pods(ns, "rolled", 2)}

    llmd["spec"]["model"]["revision"] = "v2"
    ns.apply([llmd])

    def rolled_out() -> bool:
        pods = worker_pods(ns, "rolled")
        return len(pods) == 2 and all(
            ready(p) and p["metadata"]["name"] not in before for p in pods
        )

    served, failures = serve_through(ns, "rolled", until=rolled_out, timeout=600)
    assert failures == []
    assert served >= 10
    # One revision left, the new one (the label is a hash of the pod-shaping spec).
    new = revision_of(api.LLMDeploymentSpec.model_validate(llmd["spec"]))
    labels = [p["metadata"]["labels"] for p in worker_pods(ns, "rolled")]
    assert {label[api.LABEL_REVISION] for label in labels} == {new}
