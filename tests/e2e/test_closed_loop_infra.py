"""The closed-loop infrastructure, end to end, without the autoscaler.

A Manual-mode LLMDeployment's simulated pods get real worker processes (the pod backer),
Prometheus discovers and scrapes them with the labels the operator's queries group by, the
per-LLMDeployment load balancer spreads OpenAI requests over them, and scaling down drains
and stops a worker and takes its target away. A backed pod is Ready only while its worker's
``/ready`` is, so a Deployment's readyReplicas counts workers that serve. The test worker's
injected faults (failed requests, a slow first token) show in its answers and its metrics.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmfleet_dev.faulty_worker import FAIL_RATIO_ENV, READY_DELAY_ENV, TTFT_DELAY_ENV
from llmfleet_dev.kube import Kubectl
from llmfleet_dev.loadgen import LoadGenerator, run_load
from llmfleet_dev.localcluster import pid_alive
from llmfleet_dev.podbacker import PodBacker, WorkerInfo
from llmfleet_dev.processes import OperatorProcess
from llmfleet_dev.prometheus import PrometheusServer
from llmfleet_dev.wait import GiveUpError, wait_for

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


def _condition(pod: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in pod["status"].get("conditions", []) if c["type"] == type_)


def _at(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _http(url: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET, or of a POST of ``body`` as JSON; (0, b"") when refused."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


def _worker_metrics(worker: WorkerInfo) -> dict[str, float]:
    """The worker's own /metrics as ``{'name{label="v"}': value}`` (labels sorted)."""
    status, body = _http(f"{worker.url}/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


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


def test_backed_pod_becomes_ready_only_once_its_worker_answers_ready(
    operator: OperatorProcess,
    kube: Kubectl,
    namespace: str,
    apply_llmd: Callable[..., dict[str, Any]],
    pod_backer: PodBacker,
) -> None:
    # A warm-up on top of the model load: the worker serves HTTP but /ready says 503 for
    # that long, so "Running but not Ready" lasts seconds however fast the machine.
    warmup = 3
    name = "warmup"
    env = [{"name": READY_DELAY_ENV, "value": str(warmup)}]
    apply_llmd(name, replicas=1, autoscaling={"mode": "Manual"}, worker={"env": env})

    # kwok makes the backed pod Running at once, but not Ready: nothing serves behind it.
    # Probes assert rather than return None: wait_for retries on both, and what it returns
    # is then never None.
    def running_pod() -> dict[str, Any]:
        pods = [p for p in _pods(kube, name).values() if p["status"].get("phase") == "Running"]
        assert pods, "no pod Running yet"
        return pods[0]

    pod = wait_for("the pod to run", running_pod, timeout=60, interval=0.1)
    for type_ in ("Ready", "ContainersReady"):
        condition = _condition(pod, type_)
        assert condition["status"] == "False"
        assert condition["reason"] == "ContainersNotReady"
        assert condition["message"] == "simulated: waiting for the backing worker's /ready"
    assert [c["ready"] for c in pod["status"]["containerStatuses"]] == [False]
    pod_name = pod["metadata"]["name"]

    # The worker process answers, /ready says not yet: the pod is still not Ready. (The pod
    # is read first: /ready never goes back to 503 here, so a 503 after the read means the
    # backer had seen no 200 when the pod was read.)
    def answering_not_ready() -> tuple[WorkerInfo, dict[str, Any]]:
        workers = pod_backer.workers(namespace, name)
        assert workers, "no worker process yet"
        current = kube.get("pod", pod_name)
        status = _http(f"{workers[0].url}/ready")[0]
        assert status == 503, f"/ready answered {status or 'nothing'}"
        return workers[0], current

    worker, current = wait_for(
        "the worker to answer /ready with 503 (warming up)", answering_not_ready, timeout=60
    )
    assert worker.pod == pod_name
    assert _condition(current, "Ready")["status"] == "False"
    assert not pod_backer.readiness_patches(namespace)

    # Ready once /ready answers 200, set by the backer then and only then.
    def ready_pod() -> dict[str, Any]:
        current: dict[str, Any] = kube.get("pod", pod_name)
        assert _condition(current, "Ready")["status"] == "True", "not Ready yet"
        return current

    ready = wait_for(
        "the pod to become Ready",
        ready_pod,
        timeout=30,
        interval=0.1,
    )
    assert _http(f"{worker.url}/ready")[0] == 200
    assert [w.state for w in pod_backer.workers(namespace, name)] == ["ready"]
    patches = pod_backer.readiness_patches(namespace)
    assert [(p.pod, p.ready, p.worker_state) for p in patches] == [(pod_name, True, "ready")]
    for type_ in ("Ready", "ContainersReady"):
        condition = _condition(ready, type_)
        assert condition["status"] == "True"
        assert "reason" not in condition
        assert "message" not in condition
    assert [c["ready"] for c in ready["status"]["containerStatuses"]] == [True]
    # Not at scheduling: Ready came at least the warm-up after the pod started running
    # (both stamps have whole seconds, hence the one second of slack).
    became_ready = _at(_condition(ready, "Ready")["lastTransitionTime"])
    assert became_ready - _at(ready["status"]["startTime"]) >= warmup - 1

    # Nobody fights the patch (kwok's pod stages select on Pending), and the backer, looking
    # again and again, patches nothing more: it patches on change only.
    rounds = pod_backer.rounds
    wait_for("three more pod-backer rounds", lambda: pod_backer.rounds >= rounds + 3)
    assert _condition(kube.get("pod", pod_name), "Ready")["status"] == "True"
    assert len(pod_backer.readiness_patches(namespace)) == 1


def test_deployment_ready_replicas_follow_the_workers(
    operator: OperatorProcess,
    kube: Kubectl,
    namespace: str,
    apply_llmd: Callable[..., dict[str, Any]],
    pod_backer: PodBacker,
) -> None:
    name = "follow"
    env = [{"name": READY_DELAY_ENV, "value": "2"}]
    apply_llmd(name, replicas=2, autoscaling={"mode": "Manual"}, worker={"env": env})

    def ready_replicas() -> int:
        deployment = kube.get_or_none("deployment", name) or {}
        return int(deployment.get("status", {}).get("readyReplicas", 0))

    # Coming up: the Deployment never counts more ready replicas than there are ready
    # workers (it is read first; workers only become ready here), and it did count fewer
    # while both pods already ran.
    seen_running_unready = False

    def both_ready() -> bool:
        nonlocal seen_running_unready
        ready = ready_replicas()
        serving = len(pod_backer.ready_workers(namespace, name))
        if ready > serving:
            raise GiveUpError(f"{ready} ready replicas but {serving} ready workers")
        pods = _pods(kube, name).values()
        running = sum(p["status"].get("phase") == "Running" for p in pods)
        seen_running_unready |= running == 2 and ready < 2
        return ready == 2

    wait_for("two ready replicas", both_ready, timeout=60, interval=0.1)
    assert seen_running_unready, "the pods were Ready as soon as they ran"

    # A worker dies: its pod turns not Ready, the Deployment counts one; the backer restarts
    # the worker (as a kubelet restarts a container) and the pod is Ready again.
    victim = pod_backer.ready_workers(namespace, name)[0]
    os.kill(victim.pid, signal.SIGKILL)
    wait_for("one ready replica", lambda: ready_replicas() == 1, timeout=30, interval=0.1)
    condition = _condition(kube.get("pod", victim.pod), "Ready")
    assert condition["status"] == "False"
    assert condition["reason"] == "ContainersNotReady"
    assert [(e.pod, e.reason) for e in pod_backer.exited(namespace, name)] == [
        (victim.pod, "crashed")
    ]
    wait_for("two ready replicas again", lambda: ready_replicas() == 2, timeout=60, interval=0.2)
    restarted = next(w for w in pod_backer.workers(namespace, name) if w.pod == victim.pod)
    assert restarted.pid != victim.pid
    assert restarted.state == "ready"
    flips = [p for p in pod_backer.readiness_patches(namespace) if p.pod == victim.pod]
    assert [p.ready for p in flips] == [True, False, True]
    assert flips[1].worker_state in ("none", "unready")  # reaped, or probed refused first


def test_injected_faults_show_in_answers_and_worker_metrics(
    operator: OperatorProcess,
    kube: Kubectl,
    namespace: str,
    apply_llmd: Callable[..., dict[str, Any]],
    pod_backer: PodBacker,
    prometheus: PrometheusServer,
) -> None:
    name = "faulty"
    ttft_delay = 0.6  # between the 0.5 s and 1 s buckets; the tiny model's own TTFT is ms
    env = [
        {"name": FAIL_RATIO_ENV, "value": "0.5"},
        {"name": TTFT_DELAY_ENV, "value": str(ttft_delay)},
    ]
    apply_llmd(name, replicas=1, autoscaling={"mode": "Manual"}, worker={"env": env})
    workers = wait_for("a ready worker", lambda: _ready(pod_backer, namespace, name, 1), timeout=60)
    assert workers is not None
    (worker,) = workers
    served = _env(next(iter(_pods(kube, name).values())), "LLMFLEET_SERVED_MODEL_NAME")
    url = pod_backer.endpoint(namespace, name)
    assert url is not None

    # One at a time through the balancer, in pairs of a kind: the schedule fails every
    # second request, so each kind (plain, chat, streamed) is seen both failing and not.
    completion = {"model": served, "prompt": "hello", "max_tokens": 4}
    chat = {"model": served, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    kinds = [
        ("/v1/completions", completion),
        ("/v1/chat/completions", chat),
        ("/v1/completions", {**completion, "stream": True}),
        ("/v1/chat/completions", {**chat, "stream": True}),
        ("/v1/completions", completion),
    ]
    answers = []
    for path, body in kinds:
        for _ in range(2):
            started = time.monotonic()
            status, raw = _http(url + path, body)
            answers.append(
                (path, bool(body.get("stream")), status, raw, time.monotonic() - started)
            )
    assert [a[2] for a in answers] == [200, 500] * 5
    for path, stream, status, raw, took in answers:
        if status == 500:
            # Failed inside the worker, before any token: the OpenAI error shape, stream or not.
            error = json.loads(raw)["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "server_error"
        elif stream:
            assert raw.decode().rstrip().endswith("data: [DONE]"), raw[-200:]
            assert took >= ttft_delay
        else:
            answer = json.loads(raw)
            assert answer["choices"], answer
            assert took >= ttft_delay, f"{path} answered in {took:.3f}s"

    # The worker counts them itself, and its TTFT histogram shows the delay.
    metrics = _worker_metrics(worker)
    total = "llmfleet_worker_requests_total"
    assert metrics[f'{total}{{outcome="error"}}'] == 5
    assert metrics[f'{total}{{outcome="success"}}'] == 5
    ttft = "llmfleet_worker_time_to_first_token_seconds"
    assert metrics[f"{ttft}_count"] == 5
    assert metrics[f'{ttft}_bucket{{le="0.5"}}'] == 0
    assert metrics[f"{ttft}_sum"] >= 5 * ttft_delay

    # And Prometheus sees the error share by revision, as a rollout's analysis will.
    by_outcome = (
        f'sum by (outcome, revision) (llmfleet_worker_requests_total{{namespace="{namespace}",'
        f'llmdeployment="{name}",outcome=~"success|error"}})'
    )
    counts = wait_for(
        "the outcomes in Prometheus",
        lambda: (
            (c := prometheus.values(by_outcome, "outcome", "revision"))
            and sum(c.values()) == 10
            and c
        ),
        timeout=30,
    )
    revision = worker.revision
    assert counts == {("error", revision): 5, ("success", revision): 5}
