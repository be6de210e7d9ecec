#!/usr/bin/env python3
"""How the operator copes with many LLMDeployments on a real (kwok-simulated) cluster.

Starts a private cluster with enough simulated GPU nodes, optionally fills it with other
pods that are none of the operator's business (``--other-pods``, bound to simulated CPU
nodes in another namespace: the operator still watches them for GPU accounting), applies N
LLMDeployments (one GPU each), and reports:

- the operator's own latency per object, from the API server's audit log: the
  LLMDeployment's create -> the operator's apply of its worker Deployment -> its first
  status write (medians and p95), and apply -> Ready (kubelet and scheduler time included);
- the operator's peak RSS and CPU seconds;
- API requests the operator sent, by verb, during convergence (and per object) and during
  an idle window afterwards, counted by the API server itself (its audit log, filtered to
  the operator's own client identity), so nothing the operator does can hide; and the
  Events it posted, by reason.

The fleets autoscale (Builtin). ``--metrics steady`` (the default) gives the operator a
stand-in Prometheus with each fleet's series from 15 s after its first worker is Ready, quiet
and fresh, as on a normal day (the kwok pods serve no metrics); ``--metrics none`` gives it
none, so every fleet's autoscaling reports MetricsUnavailable, with a Warning.

    .venv/bin/python bench/operator_scale.py [--count 200] [--other-pods 0] [--idle 60]

The latencies (as the share of LLMDeployments done after t seconds) and the API requests by
verb are drawn into a PNG (``--plot``, default ``bench/results/operator_scale.png``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from llmfleet_dev.localcluster import LocalCluster, Topology, operator_command
from llmfleet_dev.net import free_port
from llmfleet_dev.plots import OperatorScale, render_operator_scale
from llmfleet_dev.processes import scrape
from llmfleet_dev.stand_in_prometheus import stand_in_prometheus_thread
from llmfleet_operator import promql
from llmfleet_operator.api import LABEL_DEPLOYMENT
from llmfleet_operator.k8s import FIELD_MANAGER

ROOT = Path(__file__).resolve().parents[1]

NAMESPACE = "bench"
OPERATOR_USER = "llmfleet-operator-bench"
DEFAULT_PLOT = ROOT / "bench" / "results" / "operator_scale.png"


def proc_stats(pid: int) -> tuple[float, float]:
    """(peak RSS in MiB, CPU seconds) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return hwm / 1024, (int(fields[11]) + int(fields[12])) / ticks


def audit_events(path: Path) -> list[dict[str, Any]]:
    """Every event of the audit log."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(
        event["requestReceivedTimestamp"].replace("Z", "+00:00")
    ).timestamp()


def operator_latencies(events: list[dict[str, Any]], user: str) -> tuple[list[float], list[float]]:
    """Per LLMDeployment: seconds from its create to the operator's first apply of its
    worker Deployment, and to the operator's first status write."""
    created: dict[str, float] = {}
    applied: dict[str, float] = {}
    status: dict[str, float] = {}
    for e in events:
        ref = e.get("objectRef") or {}
        if ref.get("namespace") != NAMESPACE or e.get("responseStatus", {}).get("code", 0) >= 400:
            continue
        name, at = ref.get("name", ""), stamp(e)
        by_operator = e.get("user", {}).get("username") == user
        if ref.get("resource") == "llmdeployments" and e["verb"] == "create" and not by_operator:
            created.setdefault(name, at)
        elif by_operator and e["verb"] == "patch" and ref.get("resource") == "deployments":
            applied.setdefault(name, at)
        elif by_operator and ref.get("resource") == "llmdeployments" and ref.get("subresource"):
            status.setdefault(name, at)
    to_apply = sorted(applied[n] - t for n, t in created.items() if n in applied)
    to_status = sorted(status[n] - t for n, t in created.items() if n in status)
    return to_apply, to_status


def audit_counts(events: list[dict[str, Any]], user: str, start: float, end: float) -> Counter[str]:
    """Requests by verb that ``user`` made between two wall-clock times."""
    counts: Counter[str] = Counter()
    for event in events:
        if event.get("user", {}).get("username") != user or not start <= stamp(event) <= end:
            continue
        verb = event["verb"]
        if event.get("objectRef", {}).get("subresource"):
            verb += "/" + event["objectRef"]["subresource"]
        counts[verb] += 1
    return counts


def percentile(values: list[float], q: float) -> float:
    return values[int(q * (len(values) - 1))] if values else float("nan")


def other_pods(count: int, nodes: int) -> list[dict[str, Any]]:
    """Plain pods bound to the CPU nodes (no scheduler round trip), in namespace ``noise``."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p{i:05d}", "namespace": "noise", "labels": {"app": "noise"}},
            "spec": {
                "nodeName": f"cpu-node-{i % nodes}",
                "containers": [
                    {
                        "name": "app",
                        "image": "registry.example/noise:1",
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    }
                ],
            },
        }
        for i in range(count)
    ]


def llmd(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "llmfleet.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": f"m{i:04d}", "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": "pvc://models/tiny", "revision": "v1"},
            "worker": {"resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"}},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
        },
    }


def send_in_chunks(cluster: LocalCluster, verb: str, items: list[Any], size: int) -> None:
    """``kubectl create|apply`` of ``items`` as Lists of ``size``: one process per chunk."""
    for chunk in range(0, len(items), size):
        batch = {"apiVersion": "v1", "kind": "List", "items": items[chunk : chunk + size]}
        cluster.kubectl(verb, "-f", "-", stdin=json.dumps(batch))


#: How long after a fleet's first worker is Ready the stand-in has its series (one scrape).
SCRAPE_SECONDS = 15.0


class SteadyMetrics:
    """What a Prometheus scraping every worker would answer the autoscaler on a quiet day
    (``--metrics steady``): nothing waiting, nothing running, one worker reporting, sampled
    5 s ago. A fleet's series appear ``SCRAPE_SECONDS`` after its first worker pod turned
    Ready (Prometheus finds a worker through its endpoints, which follow the pod; the
    Deployment, and so the LLMDeployment, may count it much later on a busy control plane).
    The kwok pods serve no metrics, and what is measured is the operator's API traffic, not
    Prometheus."""

    VALUES: ClassVar[dict[str, Callable[[], float]]] = {
        "waiting": lambda: 0.0,
        "running": lambda: 0.0,
        "reporting": lambda: 1.0,
        "capacity": lambda: 8.0,
        "ttft_p95": lambda: 0.1,
        "sampled_at": lambda: time.time() - 5,
    }

    def __init__(self) -> None:
        #: Fleet name -> when its first worker turned Ready (the bench's polling fills it).
        self.ready_at: dict[str, float] = {}
        self._signal = {q: name for name, q in promql.queries("llmfleet").items()}

    def answer(self, query: str) -> list[dict[str, Any]]:
        value = self.VALUES[self._signal[query]]  # KeyError: refused as a bad query
        now = time.time()
        scraped = [n for n, t in list(self.ready_at.items()) if now - t >= SCRAPE_SECONDS]
        return [
            {"metric": {"namespace": NAMESPACE, "llmdeployment": n}, "value": [0, str(value())]}
            for n in scraped
        ]


def event_reasons(cluster: LocalCluster) -> Counter[str]:
    """The operator's Events in the bench's namespace, by reason (with repeats counted)."""
    out = cluster.kubectl("get", "events", "-n", NAMESPACE, "-o", "json").stdout
    counts: Counter[str] = Counter()
    for event in json.loads(out)["items"]:
        if (event.get("source") or {}).get("component") == FIELD_MANAGER:
            counts[event.get("reason", "")] += int(event.get("count") or 1)
    return counts


def ready_since(conditions: list[dict[str, Any]]) -> float | None:
    """When (epoch seconds) a Ready condition turned True; None while it is not."""
    for c in conditions:
        if c["type"] == "Ready" and c["status"] == "True":
            return datetime.fromisoformat(
                c["lastTransitionTime"].replace("Z", "+00:00")
            ).timestamp()
    return None


def pods_ready(cluster: LocalCluster) -> dict[str, float]:
    """Fleet name -> when (epoch seconds) its first worker pod turned Ready."""
    out = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", LABEL_DEPLOYMENT, "-o", "json")
    first: dict[str, float] = {}
    for pod in json.loads(out.stdout)["items"]:
        fleet = pod["metadata"]["labels"][LABEL_DEPLOYMENT]
        at = ready_since((pod.get("status") or {}).get("conditions") or [])
        if at is not None:
            first[fleet] = min(first.get(fleet, at), at)
    return first


def ready_times(cluster: LocalCluster) -> tuple[dict[str, float], int]:
    """Ready condition transition times (epoch seconds) of Ready LLMDeployments, and how many
    have heard from the autoscaler (its ScalingActive condition: True with ``--metrics
    steady``, MetricsUnavailable without a Prometheus). Both belong to convergence: the idle
    window starts after them."""
    out = cluster.kubectl("get", "llmd", "-n", NAMESPACE, "-o", "json").stdout
    ready = {}
    scaled = 0
    for item in json.loads(out)["items"]:
        conditions = item.get("status", {}).get("conditions", [])
        scaled += any(c["type"] == "ScalingActive" for c in conditions)
        if (at := ready_since(conditions)) is not None:
            ready[item["metadata"]["name"]] = at
    return ready, scaled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--other-pods", type=int, default=0, help="pods of other workloads")
    parser.add_argument("--idle", type=float, default=60.0, help="idle window, seconds")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--metrics",
        choices=["steady", "none"],
        default="steady",
        help="steady: a stand-in Prometheus with each fleet's series (quiet, fresh) from 15 s "
        "after its first worker is Ready, as on a normal day; none: no Prometheus, every "
        "fleet's autoscaling says MetricsUnavailable, with a Warning (default: %(default)s)",
    )
    parser.add_argument(
        "--plot",
        default=str(DEFAULT_PLOT),
        help="PNG of the latencies and API requests (default: %(default)s; '' for none)",
    )
    args = parser.parse_args()
    gpu_nodes = args.count // 8 + 2
    cpu_nodes = max(1, -(-args.other_pods // 100))
    state_dir = Path(tempfile.mkdtemp(prefix="llmfleet-bench-"))
    cluster = LocalCluster(
        state_dir,
        Topology(gpu_nodes=gpu_nodes, gpus_per_node=8, cpu_nodes=cpu_nodes),
        tie_to_parent=True,
        audit=True,
    )
    print(f"$ {shlex.join(sys.argv)}")
    print(f"cluster: {gpu_nodes} GPU nodes x 8, {cpu_nodes} CPU nodes, state in {state_dir}")
    cluster.up(timeout=300)
    operator: subprocess.Popen[bytes] | None = None
    steady = SteadyMetrics() if args.metrics == "steady" else None
    servers = contextlib.ExitStack()
    try:
        cluster.install_crd()
        cluster.prepare_namespace(NAMESPACE)
        if args.other_pods:
            began = time.time()
            cluster.kubectl("create", "namespace", "noise")
            pods = other_pods(args.other_pods, cpu_nodes)
            send_in_chunks(cluster, "create", pods, 500)
            print(f"other pods: {args.other_pods} created in {time.time() - began:.0f}s")
        kubeconfig = cluster.kubeconfig_for(OPERATOR_USER, ("system:masters",))
        metrics_port = free_port()
        log = (state_dir / "operator.log").open("wb")
        flags = ["--log-level=WARNING"]
        if steady is not None:
            prometheus = servers.enter_context(stand_in_prometheus_thread(steady.answer))
            flags.append(f"--prometheus-url={prometheus.url}")
        print(f"metrics: {args.metrics}")
        operator = subprocess.Popen(
            operator_command(*flags, metrics_port=metrics_port),
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # Measure the operator, not its start-up: wait until it primed its cache and leads.
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if scrape(f"http://127.0.0.1:{metrics_port}/metrics").get(
                    "llmfleet_operator_leader"
                ):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            print("the operator did not start within 120 s")
            return 1
        items = [llmd(i) for i in range(args.count)]
        start = time.time()
        send_in_chunks(cluster, "apply", items, 100)
        applied = time.time()
        peak_rss = 0.0
        ready: dict[str, float] = {}
        while time.time() - start < args.timeout:
            peak_rss = max(peak_rss, proc_stats(operator.pid)[0])
            ready, scaled = ready_times(cluster)
            if steady is not None:
                steady.ready_at.update(pods_ready(cluster))
            if len(ready) == args.count and scaled == args.count:
                break
            time.sleep(1)
        converged = time.time()
        _, cpu_converge = proc_stats(operator.pid)
        if len(ready) < args.count:
            print(f"only {len(ready)}/{args.count} Ready after {args.timeout:.0f}s")
            return 1
        reasons = event_reasons(cluster)
        time.sleep(3)  # the audit log is flushed in 1 s batches
        idle_start = time.time()
        time.sleep(args.idle)
        idle_end = time.time()
        time.sleep(2)
        rss, cpu_total = proc_stats(operator.pid)
        peak_rss = max(peak_rss, rss)
        events = audit_events(cluster.audit_log)
        conv = audit_counts(events, OPERATOR_USER, start, converged)
        idle = audit_counts(events, OPERATOR_USER, idle_start, idle_end)
        writes = {"create", "update", "patch", "delete", "deletecollection"}
        idle_writes = sum(n for v, n in idle.items() if v.split("/")[0] in writes)
        latencies = sorted(t - start for t in ready.values())
        to_apply, to_status = operator_latencies(events, OPERATOR_USER)
        own = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        print(
            f"\nLLMDeployments: {args.count} (1 GPU each), applied in {applied - start:.1f}s; "
            f"other pods: {args.other_pods}"
        )
        for label, values in (
            ("create -> Deployment applied", to_apply),
            ("create -> first status", to_status),
        ):
            print(
                f"{label:30} median {statistics.median(values):6.2f}s   "
                f"p95 {percentile(values, 0.95):6.2f}s   max {max(values):6.2f}s"
            )
        print(
            f"{'apply -> Ready':30} median {statistics.median(latencies):6.1f}s   "
            f"p95 {percentile(latencies, 0.95):6.1f}s   max {max(latencies):6.1f}s   "
            "(Ready times have 1 s resolution)"
        )
        print(
            f"operator         peak RSS {peak_rss:6.1f} MiB   CPU {cpu_converge:6.1f}s to "
            f"converge, {cpu_total - cpu_converge:5.2f}s over the idle window"
        )
        ok = own.get('llmfleet_operator_reconciles_total{result="ok"}', 0.0)
        failed = own.get('llmfleet_operator_reconciles_total{result="error"}', 0.0)
        print(f"reconciles       {ok:.0f} ok, {failed:.0f} failed (retried)")
        print("\nAPI requests by the operator (API server audit log), by verb:")
        verbs = sorted(set(conv) | set(idle))
        idle_head = f"idle {args.idle:.0f}s"
        print(f"  {'verb':28} {'convergence':>12} {'per object':>11} {idle_head:>10}")
        for v in verbs:
            print(f"  {v:28} {conv[v]:12d} {conv[v] / args.count:11.2f} {idle[v]:10d}")
        print(
            f"  {'total':28} {sum(conv.values()):12d} {sum(conv.values()) / args.count:11.2f} "
            f"{sum(idle.values()):10d}"
        )
        print(
            "\nEvents the operator posted, by reason: "
            + ", ".join(f"{reason} {n}" for reason, n in reasons.most_common())
        )
        print(f"\nwrites during the idle window: {idle_writes}")
        if args.plot:
            data = OperatorScale(
                count=args.count,
                latencies={
                    "create -> Deployment applied": to_apply,
                    "create -> first status": to_status,
                    "apply -> Ready": latencies,
                },
                requests_converge=dict(conv),
                requests_idle=dict(idle),
                idle_seconds=args.idle,
            )
            title = (
                f"Operator at scale: {args.count} LLMDeployments, {args.other_pods} other pods, "
                f"peak RSS {peak_rss:.0f} MiB, {idle_writes} writes while idle"
            )
            print(f"plot: {render_operator_scale(data, Path(args.plot), title=title)}")
        return 0 if idle_writes == 0 else 1
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        servers.close()
        cluster.down()


if __name__ == "__main__":
    sys.exit(main())
