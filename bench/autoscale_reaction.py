#!/usr/bin/env python3
"""How fast the built-in autoscaler reacts to a load step, and whether it ever flaps.

Part 1, live: a private local cluster (kwok GPU nodes), real worker processes behind the
simulated pods, a real Prometheus scraping them every second, the real operator. For each
run a closed-loop load steps from 0 to ``--concurrency`` clients; measured from the step:

- decision: the LLMDeployment's ``status.desiredReplicas`` grows (polled every 0.1 s);
- pods Ready: ``status.readyReplicas`` reaches the new size (simulated pods);
- serving: the new real workers answer ``/ready`` (loading the model on this CPU).

Target: decision within one scrape interval + one loop interval + 2 s.

Part 2, replay: the pure decision function over an hour of noisy steady load (many seeds)
and a burst-and-idle trace; flaps (direction reversals) are counted.

    .venv/bin/python bench/autoscale_reaction.py [--runs 3] [--interval 2]

Both parts are drawn into a PNG (``--plot``, default ``bench/results/autoscale_reaction.png``):
the live times per run against the target, the replayed burst (load and replicas over time)
and the flaps per noisy hour.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from llmfleet_dev.flaps import count_flaps
from llmfleet_dev.loadgen import LoadGenerator
from llmfleet_dev.localcluster import (
    LocalCluster,
    Topology,
    operator_command,
    tiny_llmdeployment,
)
from llmfleet_dev.plots import Reaction, ReactionRun, ReplayTrace, render_reaction
from llmfleet_dev.podbacker import PodBacker, ensure_tiny_model
from llmfleet_dev.prometheus import PrometheusServer
from llmfleet_operator.autoscaler import (
    Fleet,
    History,
    Policy,
    Signals,
    decide,
)

ROOT = Path(__file__).resolve().parents[1]

NS, NAME = "bench", "chat"
SCRAPE_SECONDS = 1.0
#: A reversal of direction within this long of the previous change is a flap.
FLAP_WINDOW = 600.0
DEFAULT_PLOT = ROOT / "bench" / "results" / "autoscale_reaction.png"


def status(cluster: LocalCluster) -> dict[str, Any]:
    out = cluster.kubectl("get", "llmd", NAME, "-n", NS, "-o", "json").stdout
    return dict(json.loads(out).get("status", {}))


def wait(what: str, probe: Any, timeout: float, every: float = 0.1) -> float:
    """Poll until ``probe()`` is truthy; return the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return time.monotonic()
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


def live(args: argparse.Namespace) -> list[dict[str, float]]:
    work = Path(tempfile.mkdtemp(prefix="llmfleet-autoscale-bench-"))
    cluster = LocalCluster(
        work / "cluster", Topology(gpu_nodes=4, gpus_per_node=8), tie_to_parent=True
    )
    cluster.up()
    model = ensure_tiny_model(work / "tiny")
    sd_file = work / "workers.json"
    prometheus = PrometheusServer(
        work / "prometheus", sd_file, scrape_interval=f"{SCRAPE_SECONDS:g}s"
    ).start()
    backer = operator = None
    try:
        cluster.install_crd()
        cluster.prepare_namespace(NS)
        backer = PodBacker(
            cluster.kubeconfig,
            model,
            work / "backer",
            namespaces=[NS],
            sd_file=sd_file,
            worker_args=("--max-num-seqs", "2", "--max-queue", "256"),
        ).start()
        log = (work / "operator.log").open("wb")
        operator = subprocess.Popen(
            operator_command(
                f"--prometheus-url={prometheus.url}",
                f"--autoscale-interval={args.interval}",
                "--rate-window=15s",
            ),
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        manifest = tiny_llmdeployment(
            NAME, NS, backed=True, scaleDownStabilizationSeconds=args.stabilization
        )
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
        runs = []
        for i in range(args.runs):
            wait(
                "one replica, one worker serving, no load",
                lambda: (
                    status(cluster).get("desiredReplicas") == 1
                    and len(backer.ready_workers(NS, NAME)) == 1
                ),
                timeout=300,
                every=0.5,
            )
            url = backer.endpoint(NS, NAME)
            assert url
            t0 = time.monotonic()
            gen = LoadGenerator(
                url, model=NAME, concurrency=args.concurrency, duration=120, max_tokens=48
            ).start()
            try:
                t_decision = wait(
                    "the scale-up decision",
                    lambda: status(cluster).get("desiredReplicas", 1) > 1,
                    60,
                )
                want = int(status(cluster)["desiredReplicas"])
                t_pods = wait(
                    "pods Ready",
                    lambda w=want: status(cluster).get("readyReplicas", 0) >= w,
                    120,
                )
                t_serving = wait(
                    "workers serving",
                    lambda w=want: len(backer.ready_workers(NS, NAME)) >= w,
                    180,
                )
            finally:
                gen.stop()
            runs.append(
                {
                    "decision": t_decision - t0,
                    "pods_ready": t_pods - t0,
                    "serving": t_serving - t0,
                    "to": float(want),
                }
            )
            print(
                f"run {i + 1}: 1 -> {want} replicas; decision {t_decision - t0:.2f}s, "
                f"pods Ready {t_pods - t0:.2f}s, workers serving {t_serving - t0:.2f}s",
                flush=True,
            )
        return runs
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        if backer is not None:
            backer.stop()
        prometheus.stop()
        cluster.down()


def replay(seeds: int) -> tuple[list[int], ReplayTrace]:
    """Flaps over an hour of noisy steady load per seed, and the burst-and-idle trace (its
    load and decided replicas per loop, and its flaps)."""
    interval, capacity = 15.0, 4
    policy = Policy(
        min_replicas=1, max_replicas=16, target_queue_per_replica=4, stabilization_seconds=300
    )

    def simulate(
        load: Any, replicas: int, record: list[tuple[float, float, int]] | None = None
    ) -> list[int]:
        history, ready, curve, t = History(), replicas, [], 0.0
        while t < 3600:
            served = ready * capacity
            in_flight = load(t)
            s = Signals(
                at=t,
                waiting=max(0.0, in_flight - served),
                running=min(in_flight, served),
                capacity=float(served),
                reporting=ready,
            )
            d = decide(policy, Fleet(replicas, ready), s, history, t)
            ready, replicas = replicas, d.replicas
            curve.append(replicas)
            if record is not None:
                record.append((t, in_flight, replicas))
            t += interval
        return curve

    flaps = []
    for seed in range(seeds):
        rng = random.Random(seed)
        base = rng.uniform(10, 60)
        curve = simulate(lambda t, r=rng, b=base: b * r.uniform(0.7, 1.3), 2)
        flaps.append(count_flaps(curve, interval, FLAP_WINDOW))
    steps: list[tuple[float, float, int]] = []
    burst = simulate(lambda t: 60.0 if 600 <= t < 1500 else 3.0, 1, steps)
    times, loads, replicas = zip(*steps, strict=True)
    return flaps, ReplayTrace(times, loads, replicas, count_flaps(burst, interval, FLAP_WINDOW))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval", type=float, default=2.0, help="autoscaler loop, seconds")
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--stabilization", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--replay-only", action="store_true")
    parser.add_argument(
        "--plot",
        default=str(DEFAULT_PLOT),
        help="PNG of the live runs and the replay (default: %(default)s; '' for none)",
    )
    args = parser.parse_args()
    print(f"$ {shlex.join([sys.executable, *sys.argv])}")
    print(f"load: {os.getloadavg()[0]:.2f} (1-minute average; 2 cores)")
    target = SCRAPE_SECONDS + args.interval + 2.0
    ok = True
    runs: list[dict[str, float]] = []
    if not args.replay_only:
        runs = live(args)
        med = {
            k: statistics.median(r[k] for r in runs) for k in ("decision", "pods_ready", "serving")
        }
        print(
            f"\nmedian over {len(runs)} runs: decision {med['decision']:.2f}s "
            f"(target <= {target:.1f}s = scrape {SCRAPE_SECONDS:g}s + loop "
            f"{args.interval:g}s + 2s), pods Ready {med['pods_ready']:.2f}s, "
            f"workers serving {med['serving']:.2f}s"
        )
        print(f"worst decision {max(r['decision'] for r in runs):.2f}s")
        ok = max(r["decision"] for r in runs) <= target
    flaps, burst = replay(args.seeds)
    burst_flaps = burst.flaps
    print(
        f"\nreplay: {args.seeds} noisy steady hours (load +-30%, 15 s loop, 300 s window; "
        f"a flap = a reversal within {FLAP_WINDOW:.0f} s of the previous change): "
        f"flaps total {sum(flaps)}, worst hour {max(flaps)}; burst-and-idle trace: "
        f"{burst_flaps} flaps"
    )
    if args.plot:
        reaction = Reaction(
            runs=[
                ReactionRun(r["decision"], r["pods_ready"], r["serving"], int(r["to"]))
                for r in runs
            ],
            target=target,
            burst=burst,
            flaps_per_hour=flaps,
        )
        title = "Autoscaler replay: the decision function, 15 s loop, 300 s window"
        if runs:
            title = (
                f"Autoscaler reaction: {len(runs)} live load steps 0 -> {args.concurrency} "
                f"clients (loop {args.interval:g} s, scrape {SCRAPE_SECONDS:g} s), and replay"
            )
        print(f"plot: {render_reaction(reaction, Path(args.plot), title=title)}")
    return 0 if ok and sum(flaps) == 0 and burst_flaps == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
