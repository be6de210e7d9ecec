#!/usr/bin/env python3
"""``make demo``: the main job on the local simulated GPU cluster, end to end.

Brings the cluster up (or reuses it), installs the CRD, starts the operator, applies every
LLMDeployment in ``examples/``, waits until each is Ready (or, for the one that asks for
more GPUs than exist, Stalled with InsufficientGPU) and prints what a user would look at.
The operator keeps running in the background; ``make cluster-down`` stops it with the rest.

After the autoscaling burst it draws the burst from Prometheus range queries (offered load,
queue depth, desired and ready replicas, TTFT p95 over time) into ``.cluster/demo/burst.png``
(``docs/img/demo-burst.png`` is a copy of one run's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from llmfleet_dev import plots
from llmfleet_dev.loadgen import LoadGenerator
from llmfleet_dev.localcluster import (
    ROOT,
    LocalCluster,
    operator_command,
    pid_alive,
    tiny_llmdeployment,
)
from llmfleet_dev.net import free_port
from llmfleet_dev.prometheus import PrometheusServer

NAMESPACE = "llmfleet-demo"
#: The autoscaling part runs in its own namespace: only its pods get real workers.
BURST_NAMESPACE = "llmfleet-autoscale"
BURST_NAME = "chat-burst"
#: The demo loop is fast (the production default is 15 s) so the burst fits in a minute.
AUTOSCALE_INTERVAL = 2
STABILIZATION = 20
EXAMPLES = ROOT / "examples"
BURST_CLIENTS = 12
BURST_SECONDS = 45
#: Prometheus scrapes the operator's own metrics (desired and ready replicas) under this job.
OPERATOR_JOB = "llmfleet-operator"
#: The picture of the burst, relative to the cluster's state directory.
BURST_PLOT = Path("demo") / "burst.png"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def kubectl(cluster: LocalCluster, *args: str, check: bool = True) -> str:
    result = cluster.kubectl(*args, check=False)
    if check and result.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def stop_previous(cluster: LocalCluster, name: str) -> None:
    """Stop a process an earlier demo left running (its pid is in NAME.pid)."""
    pid_file = cluster.dir / f"{name}.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if pid_alive(pid):
            os.killpg(pid, 15)
            deadline = time.monotonic() + 30
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        pid_file.unlink()


def spawn(cluster: LocalCluster, name: str, cmd: list[str]) -> int:
    """Start a background process that `make cluster-down` will stop."""
    stop_previous(cluster, name)
    log = (cluster.logs / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        start_new_session=True,
    )
    (cluster.dir / f"{name}.pid").write_text(str(proc.pid))
    cluster.register_extra(name, proc.pid)
    return proc.pid


def start_prometheus(
    cluster: LocalCluster, sd_file: Path, operator_metrics_port: int
) -> PrometheusServer:
    stop_previous(cluster, "prometheus")
    server = PrometheusServer(
        cluster.dir / "prometheus",
        sd_file,
        static_jobs={OPERATOR_JOB: [f"127.0.0.1:{operator_metrics_port}"]},
        tie_to_parent=False,
    )
    server.start()
    assert server.proc is not None
    (cluster.dir / "prometheus.pid").write_text(str(server.proc.pid))
    cluster.register_extra("prometheus", server.proc.pid)
    return server


def start_operator(cluster: LocalCluster, prometheus_url: str, metrics_port: int) -> int:
    return spawn(
        cluster,
        "operator",
        operator_command(
            f"--prometheus-url={prometheus_url}",
            f"--autoscale-interval={AUTOSCALE_INTERVAL}",
            "--rate-window=15s",
            metrics_port=metrics_port,
        ),
    )


def start_pod_backer(cluster: LocalCluster, sd_file: Path) -> int:
    return spawn(
        cluster,
        "podbacker",
        [
            sys.executable,
            "-m",
            "llmfleet_dev.podbacker",
            f"--kubeconfig={cluster.kubeconfig}",
            "-n",
            BURST_NAMESPACE,
            f"--model-dir={cluster.dir / 'tiny-model'}",
            f"--state-dir={cluster.dir / 'podbacker'}",
            f"--sd-file={sd_file}",
            "--worker-args=--max-num-seqs 2 --max-queue 256",
        ],
    )


def examples() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "LLMDeployment":
                docs.append(doc)
    return docs


def wait_settled(cluster: LocalCluster, names: list[str], timeout: float = 180) -> dict[str, str]:
    """Wait until each LLMDeployment is Ready or Stalled; return name -> outcome."""
    deadline = time.monotonic() + timeout
    outcome: dict[str, str] = {}
    while time.monotonic() < deadline:
        items = json.loads(kubectl(cluster, "get", "llmd", "-n", NAMESPACE, "-o", "json"))["items"]
        for item in items:
            conds = {c["type"]: c for c in item.get("status", {}).get("conditions", [])}
            if conds.get("Ready", {}).get("status") == "True":
                outcome[item["metadata"]["name"]] = "Ready"
            elif conds.get("Stalled", {}).get("status") == "True":
                outcome[item["metadata"]["name"]] = f"Stalled ({conds['Stalled']['reason']})"
        if all(n in outcome for n in names):
            return outcome
        time.sleep(1)
    missing = [n for n in names if n not in outcome]
    sys.exit(f"timed out waiting for {missing}; see {cluster.logs / 'operator.log'}")


def main() -> int:
    cluster = LocalCluster(ROOT / ".cluster")
    if not cluster.running():
        say("starting the local cluster (real control plane, kwok GPU nodes)")
        cluster.up()
    say("nodes: 4 simulated GPU nodes with 8 nvidia.com/gpu each, and a CPU node")
    print(kubectl(cluster, "get", "nodes", "-L", "nvidia.com/gpu.product,nvidia.com/gpu.count"))
    say("installing the LLMDeployment CRD (generated from the API models)")
    cluster.install_crd()
    sd_file = cluster.dir / "podbacker" / "workers.json"
    metrics_port = free_port()
    prometheus = start_prometheus(cluster, sd_file, metrics_port)
    pid = start_operator(cluster, prometheus.url, metrics_port)
    say(
        f"operator running (pid {pid}), log: {cluster.logs / 'operator.log'}; "
        f"Prometheus {prometheus.url}"
    )
    say("a read-only model volume (PV + PVC `models`), as a platform team provides it")
    cluster.prepare_namespace(NAMESPACE)
    docs = examples()
    say(f"applying {len(docs)} LLMDeployments from examples/")
    for doc in docs:
        result = cluster.kubectl(
            "apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(doc), check=False
        )
        print(result.stdout.strip() or result.stderr.strip())
    names = [d["metadata"]["name"] for d in docs]
    outcome = wait_settled(cluster, names)
    say("kubectl get llmd")
    print(kubectl(cluster, "get", "llmd", "-n", NAMESPACE))
    say("worker pods on GPU nodes")
    print(
        kubectl(
            cluster,
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-o",
            "wide",
            "-L",
            "llmfleet.io/deployment,llmfleet.io/revision",
        )
    )
    stalled = [n for n, o in outcome.items() if o.startswith("Stalled")]
    for name in stalled or names[:1]:
        say(f"kubectl describe llmd/{name} (excerpt)")
        text = kubectl(cluster, "describe", "llmd", name, "-n", NAMESPACE)
        keep = text[text.find("Status:") :] if "Status:" in text else text
        print("\n".join(keep.splitlines()[:45]))
    burst_outcome, picture = autoscaling_demo(cluster, sd_file, prometheus)
    say("summary")
    for name in names:
        print(f"  {name:12} {outcome[name]}")
    print(f"  {BURST_NAME:12} {burst_outcome}")
    print(f"\nthe burst, drawn from Prometheus: {picture}")
    print(f"\nexport KUBECONFIG={cluster.kubeconfig}   # then: kubectl get llmd -A")
    print("make cluster-down                           # stops the cluster and the operator")
    expected_stalled = {"too-big"}
    ok = all(outcome[n] == "Ready" for n in names if n not in expected_stalled) and all(
        outcome.get(n, "").startswith("Stalled (InsufficientGPU")
        for n in expected_stalled
        if n in outcome
    )
    return 0 if ok and burst_outcome.startswith("grew") else 1


def burst_status(cluster: LocalCluster) -> dict[str, Any]:
    out = kubectl(cluster, "get", "llmd", BURST_NAME, "-n", BURST_NAMESPACE, "-o", "json")
    return dict(json.loads(out).get("status", {}))


def serving_workers(cluster: LocalCluster) -> int:
    """Workers the pod backer lists for Prometheus (ready ones) for the burst fleet."""
    sd = cluster.dir / "podbacker" / "workers.json"
    if not sd.exists():
        return 0
    groups = json.loads(sd.read_text() or "[]")
    return sum(
        len(g.get("targets", []))
        for g in groups
        if g.get("labels", {}).get("llmdeployment") == BURST_NAME
    )


def endpoint(cluster: LocalCluster) -> str | None:
    path = cluster.dir / "podbacker" / "endpoints.json"
    if not path.exists():
        return None
    url = json.loads(path.read_text() or "{}").get(f"{BURST_NAMESPACE}/{BURST_NAME}")
    return str(url) if url else None


def timeline_row(cluster: LocalCluster, t0: float, note: str = "") -> tuple[int, int]:
    st = burst_status(cluster)
    desired, ready = st.get("desiredReplicas", 0), st.get("readyReplicas", 0)
    last = st.get("autoscaler", {}).get("lastDecision", {})
    signals = last.get("signals", {})
    print(
        f"  t={time.monotonic() - t0:5.1f}s  desired {desired}  ready pods {ready}  "
        f"serving workers {serving_workers(cluster)}  last decision: "
        f"{last.get('from', '-')}->{last.get('to', '-')} {last.get('reason', '')} "
        f"waiting={signals.get('waiting', '-')} {note}",
        flush=True,
    )
    return int(desired), int(ready)


def autoscaling_demo(
    cluster: LocalCluster, sd_file: Path, prometheus: PrometheusServer
) -> tuple[str, str]:
    """A burst of requests against real workers: the fleet grows, then shrinks.

    Returns the outcome and the path of the burst's picture (or why there is none)."""
    say(
        f"autoscaling: {BURST_NAMESPACE}/{BURST_NAME}, real worker processes behind its pods, "
        "Prometheus scraping them every second"
    )
    cluster.prepare_namespace(BURST_NAMESPACE)
    start_pod_backer(cluster, sd_file)
    # backed: its pods are Ready only once their real workers serve, so "ready pods" below
    # counts workers that can take requests, not pods that were merely scheduled.
    manifest = tiny_llmdeployment(
        BURST_NAME, BURST_NAMESPACE, backed=True, scaleDownStabilizationSeconds=STABILIZATION
    )
    print(cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest)).stdout.strip())
    print(
        f"  (demo settings: autoscaler loop {AUTOSCALE_INTERVAL}s, scale-down window "
        f"{STABILIZATION}s; each worker runs batches of 2 so a small burst queues)"
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (serving_workers(cluster) >= 1 and endpoint(cluster)):
        time.sleep(1)
    url = endpoint(cluster)
    if not url:
        return f"no worker came up; see {cluster.logs / 'podbacker.log'}", "none (no burst)"
    # A few idle scrapes of the first worker before the burst: the autoscaler and the
    # picture then start from what it reports, not from a fleet Prometheus has not seen.
    up = f'count(up{{namespace="{BURST_NAMESPACE}",llmdeployment="{BURST_NAME}"}} == 1)'
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not prometheus.value(up):
        time.sleep(0.5)
    time.sleep(5)
    say(f"a burst: {BURST_CLIENTS} concurrent clients for {BURST_SECONDS} s through {url}")
    t0 = time.monotonic()
    wall_start = time.time()
    peak = 1
    with LoadGenerator(
        url, model=BURST_NAME, concurrency=BURST_CLIENTS, duration=BURST_SECONDS, max_tokens=48
    ) as gen:
        while not gen.done:
            desired, _ = timeline_row(cluster, t0)
            peak = max(peak, desired)
            time.sleep(3)
        result = gen.join()
    wall_burst_end = time.time()
    print(f"  load: {result.summary()}")
    say(f"the burst is over: the fleet shrinks after the {STABILIZATION}s window")
    deadline = time.monotonic() + STABILIZATION + 90
    desired = peak
    while time.monotonic() < deadline:
        desired, _ = timeline_row(cluster, t0)
        if desired == 1:
            break
        time.sleep(3)
    say(f"kubectl get events -n {BURST_NAMESPACE} (the autoscaler explains itself)")
    events = json.loads(
        kubectl(
            cluster,
            "get",
            "events",
            "-n",
            BURST_NAMESPACE,
            "-o",
            "json",
            "--field-selector",
            "involvedObject.kind=LLMDeployment",
        )
    )
    for e in sorted(events["items"], key=lambda e: e.get("lastTimestamp") or ""):
        if e["reason"] in ("ScaledUp", "ScaledDown", "MetricsUnavailable"):
            print(f"  {e['type']:8} {e['reason']:11} {e['message']}")
    spec: Any = manifest["spec"]
    target = float(spec["autoscaling"]["targetQueueDepthPerReplica"])
    picture = draw_burst(cluster, prometheus.url, wall_start, wall_burst_end, target)
    if peak > 1 and desired == 1:
        return f"grew 1 -> {peak} under the burst, shrank back to 1", picture
    return f"did not follow the burst (peak {peak}, now {desired})", picture


def draw_burst(
    cluster: LocalCluster, prometheus_url: str, start: float, burst_end: float, target: float
) -> str:
    """The burst as a PNG from Prometheus range queries, from 15 s before the burst to now,
    with the query results beside it (``burst.json``: ``python -m llmfleet_dev.plots`` draws it
    again); returns the PNG's path, or why there is none (the demo's outcome does not
    depend on it)."""
    say("drawing the burst from Prometheus range queries (/api/v1/query_range)")
    time.sleep(2)  # the last scrape of each worker and of the operator lands
    lo, hi = start - 15, time.time()
    path = cluster.dir / BURST_PLOT
    try:
        burst = {
            "start": start,
            "burst_end": burst_end,
            "step": plots.BURST_STEP,
            "clients": BURST_CLIENTS,
            "target_queue_per_replica": target,
            "title": (
                f"make demo: {BURST_NAMESPACE}/{BURST_NAME} under a burst of {BURST_CLIENTS} "
                f"clients (autoscaler loop {AUTOSCALE_INTERVAL} s, scale-down window "
                f"{STABILIZATION} s)"
            ),
            "results": {
                key: plots.query_range(prometheus_url, promql, lo, hi, plots.BURST_STEP)
                for key, promql in plots.burst_queries(BURST_NAMESPACE, BURST_NAME).items()
            },
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".json").write_text(json.dumps(burst, indent=1) + "\n")
        plots.render_burst(burst, path)
    except (plots.PlotError, OSError, ValueError) as e:
        print(f"  could not draw the burst: {e}")
        return f"none ({e})"
    print(f"  {path}")
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
