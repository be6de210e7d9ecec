"""The closed-loop infrastructure, end to end, without the autoscaler.

A Manual-mode LLMDeployment's simulated pods get real worker processes (the pod backer),
Prometheus discovers and scrapes them with the labels the operator's queries group by, the
per-LLMDeployment load balancer spreads OpenAI requests over them, and scaling down drains
and stops a worker and takes its target away.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from localcluster import pid_alive
from podbacker import PodBacker, WorkerInfo
from support.kube import Kubectl
from support.loadgen import LoadGenerator, run_load
from support.processes import OperatorProcess
from support.prometheus import PrometheusServer
from support.wait import wait_for

pytestmark = pytest.mark.timeout(240)


def _pods(kube: Kubectl, name: str) -> dict[str, dict[str, Any]]:
    items = kube.get("pods", None, "-l", f"llmfleet.io/deployment={name}")["items"]
    return {p["metadata"]["name"]: p for p in items if "deletionTimestamp" not in p["metadata"]}


def _env(pod: dict[str, Any], name: str) -> str:
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "worker")
    return next(e["value"] for e in container["env"] if e["name"] == name)


def _ready(backer: PodBacker, ns: str, name: str, count: int) -> list[WorkerInfo] | None:
    workers = backer.workers(ns, name)
    if len(workers) == count and all(w.state == "ready" for w in workers):
        return workers
    return None


def _worker_targets(prometheus: PrometheusServer, ns: str, count: int) -> list[dict[str, Any]]:
    """The namespace's worker targets once there are ``count`` of them, all up."""
    targets = [t for t in prometheus.targets() if t["labels"].get("namespace") == ns]
    if len(targets) == count and all(t["health"] == "up" for t in targets):
        return targets
    return []


def test_manual_fleet_is_backed_scraped_balanced_and_drained_on_scale_down(
    operator: OperatorProcess,
    kube: Kubectl,
    namespace: str,
    apply_llmd: Callable[..., dict[str, Any]],
    pod_backer: PodBacker,
    prometheus: PrometheusServer,
) -> None:
    name = "infra"
    apply_llmd(name, replicas=2, autoscaling={"mode": "Manual"})

    # Two Running pods -> two real worker processes, one per pod, serving.
    workers = wait_for(
        "a ready worker process for each of the two pods",
        lambda: _ready(pod_backer, namespace, name, 2),
        timeout=120,
        interval=0.5,
    )
    pods = _pods(kube, name)
    assert {w.pod for w in workers} == set(pods)
    assert all(pid_alive(w.pid) for w in workers)
    served = _env(next(iter(pods.values())), "LLMFLEET_SERVED_MODEL_NAME")

    # Prometheus discovers both, with the pod's identity as labels.
    targets = wait_for(
        "two worker targets up in Prometheus",
        lambda: _worker_targets(prometheus, namespace, 2),
        timeout=30,
    )
    by_pod = {t["labels"]["pod"]: t for t in targets}
    assert set(by_pod) == set(pods)
    for pod_name, pod in pods.items():
        labels = by_pod[pod_name]["labels"]
        assert labels["namespace"] == namespace
        assert labels["llmdeployment"] == name
        assert labels["revision"] == pod["metadata"]["labels"]["llmfleet.io/revision"]
        assert labels["job"] == "llmfleet-workers"
        worker = next(w for w in workers if w.pod == pod_name)
        assert labels["instance"] == worker.target

    # The operator's kind of query: one series per LLMDeployment, however many replicas.
    waiting = "sum by (namespace, llmdeployment) (llmfleet_worker_requests_waiting)"
    series = wait_for(
        "the grouped queue-depth series",
        lambda: [s for s in prometheus.query(waiting) if s["metric"]["namespace"] == namespace],
    )
    assert [s["metric"] for s in series] == [{"namespace": namespace, "llmdeployment": name}]
    assert float(series[0]["value"][1]) == 0

    # Load through the balancer: every request answered in the OpenAI shape, both served.
    url = pod_backer.endpoint(namespace, name)
    assert url is not None
    result = run_load(url, model=served, concurrency=4, duration=60, max_requests=24, max_tokens=8)
    assert result.total == 24
    assert not result.failed, result.errors()
    streamed = run_load(url, model=served, concurrency=2, max_requests=2, max_tokens=4, stream=True)
    assert streamed.total == 2
    assert not streamed.failed, streamed.errors()
    per_pod = f'sum by (pod) (llmfleet_worker_requests_total{{namespace="{namespace}"}})'
    counts = wait_for(
        "the 26 requests counted in Prometheus",
        lambda: (c := prometheus.values(per_pod, "pod")) and sum(c.values()) == 26 and c,
        timeout=30,
    )
    assert {pod for (pod,) in counts} == set(pods)
    assert all(n > 0 for n in counts.values()), f"one worker got no requests: {counts}"

    # Scale down: one pod goes, its worker drains and exits 0, its target disappears.
    kube("scale", f"llmd/{name}", "--replicas=1")
    exited = wait_for(
        "one worker process to exit",
        lambda: pod_backer.exited(namespace, name),
        timeout=60,
    )
    assert [(e.reason, e.returncode) for e in exited] == [("drained", 0)]
    assert not pid_alive(exited[0].pid)
    remaining = wait_for(
        "one worker process left",
        lambda: _ready(pod_backer, namespace, name, 1),
    )
    assert remaining[0].pod != exited[0].pod
    target = wait_for(
        "one worker target left in Prometheus",
        lambda: _worker_targets(prometheus, namespace, 1),
    )
    assert target[0]["labels"]["pod"] == remaining[0].pod
    count = f'count(llmfleet_worker_requests_waiting{{namespace="{namespace}"}})'
    wait_for("the gone worker's series to go stale", lambda: prometheus.value(count) == 1)
    after = run_load(url, model=served, concurrency=2, max_requests=4, max_tokens=4)
    assert after.total == 4
    assert not after.failed, after.errors()


def test_balancer_without_ready_workers_answers_503_in_openai_shape(
    operator: OperatorProcess,
    namespace: str,
    apply_llmd: Callable[..., dict[str, Any]],
    pod_backer: PodBacker,
) -> None:
    apply_llmd("idle", replicas=0, autoscaling={"mode": "Manual"})
    url = wait_for("the balancer of `idle`", lambda: pod_backer.endpoint(namespace, "idle"))
    request = urllib.request.Request(
        f"{url}/v1/completions",
        data=json.dumps({"model": "idle", "prompt": "hi", "max_tokens": 1}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5).close()
    with caught.value as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        error = json.loads(response.read())["error"]
    assert error["type"] == "service_unavailable"
    assert "idle" in error["message"]
    assert pod_backer.workers(namespace) == []

    # The load generator is bounded by its duration even when every request fails at once.
    load = LoadGenerator(url, model="idle", concurrency=2, duration=1.0).start()
    result = load.join(timeout=10)
    assert 0.9 <= result.duration < 5
    assert result.total > 0
    assert result.statuses().keys() == {503}
