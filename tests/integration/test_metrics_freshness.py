"""The autoscaler's and the canary analysis' queries against a real Prometheus.

No Kubernetes cluster: tiny exporters on loopback serve the worker's metric names, a real
Prometheus scrapes them with the labels the chart's PodMonitor attaches, and the autoscaler
loop runs against it directly (LLMDeployments fed to its cache by hand).

- Two scrape jobs scraping the same pods (a PodMonitor next to a ServiceMonitor) must not
  double anything: the answers equal what one job alone says.
- Samples that carry their own old timestamps (``honor_timestamps``, as federation or a
  stuck exporter give) are served by Prometheus for its lookback delta: the fleet holds and
  says how old they are; fresh samples scale again.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from llmfleet_dev.events import EventRecorder
from llmfleet_dev.prometheus import PrometheusServer, prometheus_available
from llmfleet_dev.wait import wait_for
from llmfleet_operator import promql
from llmfleet_operator.autoscale_loop import AutoscaleLoop
from llmfleet_operator.cache import Cache
from llmfleet_operator.prometheus import client, query_all

NS = "team"
STALE_SECONDS = 200.0  # older than MAX_SIGNAL_AGE, younger than the 5m lookback delta


@dataclass
class Worker:
    """What one worker pod exports; counters grow at a steady rate from ``started``."""

    waiting: float
    running: float
    max_num_seqs: float
    requests_per_second: float = 20.0
    error_ratio: float = 0.1
    #: Seconds before the scrape that the samples are stamped with; None: no timestamps.
    stamp_age: float | None = None
    started: float = 0.0

    def exposition(self) -> str:
        now = time.time()
        n = int(self.requests_per_second * (now - self.started))
        errors = int(n * self.error_ratio)
        ts = "" if self.stamp_age is None else f" {int((now - self.stamp_age) * 1000)}"
        ttft = "llmfleet_worker_time_to_first_token_seconds"
        lines = [
            "# TYPE llmfleet_worker_requests_waiting gauge",
            f"llmfleet_worker_requests_waiting {self.waiting}{ts}",
            "# TYPE llmfleet_worker_requests_running gauge",
            f"llmfleet_worker_requests_running {self.running}{ts}",
            "# TYPE llmfleet_worker_max_num_seqs gauge",
            f"llmfleet_worker_max_num_seqs {self.max_num_seqs}{ts}",
            "# TYPE llmfleet_worker_requests_total counter",
            f'llmfleet_worker_requests_total{{outcome="ok"}} {n - errors}{ts}',
            f'llmfleet_worker_requests_total{{outcome="error"}} {errors}{ts}',
            f"# TYPE {ttft} histogram",
        ]
        for le, share in (("0.1", 0.5), ("0.5", 0.9), ("1.0", 1.0), ("+Inf", 1.0)):
            lines.append(f'{ttft}_bucket{{le="{le}"}} {int(n * share)}{ts}')
        lines += [f"{ttft}_sum {n * 0.2}{ts}", f"{ttft}_count {n}{ts}"]
        return "\n".join(lines) + "\n"


class Exporter:
    """``/metrics`` of one :class:`Worker` on a free loopback port."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.worker.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


#: Two pods of "dup" (scraped by two jobs) and one of "old" (old timestamps).
DUP = [Worker(waiting=30, running=4, max_num_seqs=4), Worker(waiting=10, running=4, max_num_seqs=4)]
OLD = Worker(waiting=40, running=8, max_num_seqs=8, stamp_age=STALE_SECONDS)
#: The truth for "dup", from the exporters: what one job alone reports.
DUP_TRUTH = {"waiting": 40.0, "running": 8.0, "capacity": 8.0, "reportingReplicas": 2.0}


def _labels(llmd: str, pod: str) -> dict[str, str]:
    return {"namespace": NS, "llmdeployment": llmd, "revision": "r1", "pod": pod}


@dataclass
class Stand:
    prometheus: PrometheusServer
    dup: list[Exporter]
    old: Exporter


@pytest.fixture(scope="module")
def stand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stand]:
    if not prometheus_available():
        pytest.fail("/usr/bin/prometheus is missing; run `make apt` (hack/apt.sh)")
    started = time.time()
    for w in (*DUP, OLD):
        w.started = started
    dup = [Exporter(w) for w in DUP]
    old = Exporter(OLD)
    pods = [(e, f"dup-{i}") for i, e in enumerate(dup)]
    job = {"scrape_interval": "1s", "scrape_timeout": "1s", "metrics_path": "/metrics"}
    scrape_configs: list[dict[str, Any]] = [
        # A PodMonitor's job ...
        {
            **job,
            "job_name": "podmonitor/workers",
            "static_configs": [
                {"targets": [e.address], "labels": _labels("dup", pod)} for e, pod in pods
            ],
        },
        # ... and a ServiceMonitor's on the same pods: series differ in job and instance.
        {
            **job,
            "job_name": "servicemonitor/workers",
            "static_configs": [
                {"targets": [e.address], "labels": {**_labels("dup", pod), "instance": pod}}
                for e, pod in pods
            ],
        },
        {
            **job,
            "job_name": "federated",
            "honor_timestamps": True,
            "static_configs": [{"targets": [old.address], "labels": _labels("old", "old-0")}],
        },
    ]
    work = tmp_path_factory.mktemp("prometheus-freshness")
    sd_file = Path(work) / "file_sd" / "workers.json"
    server = PrometheusServer(work, sd_file, scrape_configs=scrape_configs).start()
    try:
        # Every job scraped, and counters with enough history for rate() and increase().
        wait_for(
            "both jobs' counters of both pods to grow",
            lambda: (
                server.value(
                    'count(rate(llmfleet_worker_requests_total{llmdeployment="dup",outcome="ok"}'
                    "[10s]) > 0)"
                )
                == 4
            ),
            timeout=60,
        )
        wait_for(
            "the old-stamped worker's series",
            lambda: (
                server.value('count(llmfleet_worker_requests_waiting{llmdeployment="old"})') == 1
            ),
            timeout=30,
        )
        yield Stand(server, dup, old)
    finally:
        code = server.stop()
        for e in (*dup, old):
            e.close()
        assert code in (0, None), f"prometheus exited {code}: {server.log_tail()}"


def _llmd(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "llmfleet.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": NS, "uid": f"u-{name}", "generation": 1},
        "spec": {
            "model": {"uri": "pvc://m/x"},
            "autoscaling": {
                "mode": "Builtin",
                "minReplicas": 1,
                "maxReplicas": 10,
                "targetQueueDepthPerReplica": 4,
                "scaleDownStabilizationSeconds": 60,
            },
        },
        "status": {"desiredReplicas": 2},
    }


def _tick(loop: AutoscaleLoop) -> None:
    async def once() -> None:
        async with client(10.0) as session:
            await loop.tick(session)

    asyncio.run(once())


def _answers(url: str, qs: dict[str, str], by: tuple[str, ...]) -> Any:
    async def once() -> Any:
        async with client(10.0) as session:
            return await query_all(session, url, qs, by)

    answers = asyncio.run(once())
    assert not isinstance(answers, Exception), answers
    return answers


def test_duplicate_scrape_jobs_count_each_pod_once(stand: Stand) -> None:
    prom = stand.prometheus
    # The setup really duplicates: a plain sum sees every pod twice.
    naive = prom.values(
        'sum by (llmdeployment) (llmfleet_worker_requests_waiting{llmdeployment="dup"})',
        "llmdeployment",
    )
    assert naive == {("dup",): 2 * DUP_TRUTH["waiting"]}

    cache = Cache()
    cache.observe_llmd("ADDED", _llmd("dup"))
    loop = AutoscaleLoop(cache, lambda key: None, EventRecorder(), prom.url)  # type: ignore[arg-type]
    _tick(loop)
    block = loop.status_block((NS, "dup"))
    assert block is not None, loop.conditions((NS, "dup"))
    signals = dict(block["lastDecision"]["signals"])
    ttft = signals.pop("ttftP95Seconds")
    assert signals == DUP_TRUTH
    # (40 waiting + 8 running) / (4 per batch + 4 waiting) = 6 replicas, doubling at most.
    assert (block["lastDecision"]["from"], block["lastDecision"]["to"]) == (2, 4)
    one_job = prom.value(
        "histogram_quantile(0.95, sum by (le) (rate("
        'llmfleet_worker_time_to_first_token_seconds_bucket{llmdeployment="dup",'
        'job="podmonitor/workers"}[1m])))'
    )
    assert one_job is not None
    assert ttft == pytest.approx(one_job, rel=0.1)


def test_duplicate_scrape_jobs_do_not_inflate_canary_analysis(stand: Stand) -> None:
    prom = stand.prometheus
    window = 20
    # Every series covers the whole window (increase() near a series' start undercounts).
    wait_for(
        f"{window + 2}s of samples in every series",
        lambda: (
            (
                prom.value(
                    'min(count_over_time(llmfleet_worker_requests_total{llmdeployment="dup"}'
                    f"[{window + 5}s]))"
                )
                or 0
            )
            >= window + 2
        ),
        timeout=60,
        interval=1.0,
    )
    answers = _answers(prom.url, promql.analysis_queries(window), promql.ANALYSIS_BY)
    key = (NS, "dup", "r1")
    one_job = 'llmdeployment="dup",job="podmonitor/workers"'
    w = f"[{window}s]"
    truth_requests = prom.value(f"sum(increase(llmfleet_worker_requests_total{{{one_job}}}{w}))")
    truth_errors = prom.value(
        f'sum(increase(llmfleet_worker_requests_total{{{one_job},outcome="error"}}{w}))'
    )
    both_jobs = prom.value(
        f'sum(increase(llmfleet_worker_requests_total{{llmdeployment="dup"}}{w}))'
    )
    assert truth_requests
    assert truth_errors
    assert both_jobs
    assert both_jobs > 1.7 * truth_requests  # the setup really duplicates
    # The two jobs scrape at different moments, so their increases differ a little.
    assert answers["requests"][key].value == pytest.approx(truth_requests, rel=0.15)
    assert answers["errors"][key].value == pytest.approx(truth_errors, rel=0.15)
    ttft = answers["ttft_p95"][key].value
    assert ttft is not None
    assert 0.5 < ttft <= 1.0  # 90% under 0.5 s, all under 1 s


def test_old_samples_hold_the_fleet_and_say_how_old(stand: Stand) -> None:
    prom = stand.prometheus
    # Prometheus serves them although they are older than the autoscaler accepts.
    age = prom.value('time() - timestamp(llmfleet_worker_requests_waiting{llmdeployment="old"})')
    assert age is not None
    assert STALE_SECONDS - 1 <= age < STALE_SECONDS + 10

    cache = Cache()
    cache.observe_llmd("ADDED", _llmd("old"))
    kube = EventRecorder()
    loop = AutoscaleLoop(cache, lambda key: None, kube, prom.url)  # type: ignore[arg-type]
    _tick(loop)
    # The load asks for more (48 in flight), but the size is held.
    assert loop.wants((NS, "old")) == 2
    [cond] = loop.conditions((NS, "old"))
    assert (cond.type, cond.status, cond.reason) == (
        "ScalingActive",
        "False",
        "MetricsUnavailable",
    )
    assert cond.message.startswith(f"worker metrics in {prom.url} are stale: ")
    assert cond.message.endswith("; holding the current size")
    shown = re.search(r"at least (\d+)s old", cond.message)
    assert shown, cond.message
    assert 180 <= int(shown.group(1)) <= STALE_SECONDS + 10
    assert kube.events == [("MetricsUnavailable", cond.message, "Warning")]

    # The exporter catches up (its samples stamped at scrape time): scaling resumes.
    stand.old.worker.stamp_age = None

    def resumed() -> bool:
        _tick(loop)
        return any(c.status == "True" for c in loop.conditions((NS, "old")))

    wait_for("ScalingActive=True on fresh samples", resumed, timeout=30, interval=1.0)
    assert loop.wants((NS, "old")) == 4
    cond = next(c for c in loop.conditions((NS, "old")) if c.type == "ScalingActive")
    assert cond.reason == "MetricsAvailable"
