#!/usr/bin/env python3
"""How long rollouts of a new model revision take, and what they cost the clients.

A private local cluster (kwok GPU nodes) and the real operator (``--prometheus-url``,
``--analysis-min-window=5``). A fleet of N = 2 replicas (Manual mode, one GPU each) whose pods
are backed by real worker processes (the tiny model; the pod backer makes a pod Ready only
once its worker serves), scraped every second by a real Prometheus through the pod backer's
file_sd, under steady closed-loop load through the pod backer's per-LLMDeployment load
balancer. Measured from the spec change (a new ``spec.model.revision``):

- rolling update: until rolled out (``status.rollout.phase`` Stable, ``currentRevision`` ==
  ``updateRevision`` == the new revision); requests failed meanwhile (expected 0);
- healthy canary (one step at 50 %, 5 s pause, analysis every 3 s): until the canary step is
  reached and until promoted (Stable, currentRevision the candidate, NAME-canary gone);
  requests failed (expected 0);
- failing canary (the candidate's workers fail half their requests, ``SIM_FAIL_RATIO=0.5``
  through the test worker ``llmfleet_dev.faulty_worker``): from the candidate's first
  failed request (and from its first worker Ready) until rolled back (phase RolledBack,
  Stalled/CanaryAnalysisFailed); the requests that failed; the fewest Ready stable pods
  during the canary (the stable shrinks to N - 1 for a 50 % step, never below).

The rolling update and the healthy canary run again on a second fleet whose pods no worker
backs (kwok makes them Ready at once, no load; the canary is promoted with the
``llmfleet.io/promote=<candidateRevision>`` annotation once its step is reached, since no
metrics mean no verdict): the operator's own share of the time, against real worker start-up.

Every scenario also counts the fewest Ready pods and the pods the rollout started, by
revision (a rollout that starts pods of the old revision wastes a GPU and a model load).
Scenarios take turns within each repeat. Prints the command line, each run, and medians;
SIGTERM or Ctrl-C stops everything it started (operator, workers, Prometheus, cluster).

    .venv/bin/python bench/rollout.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from llmfleet_dev import faulty_worker
from llmfleet_dev.loadgen import LoadGenerator, LoadResult
from llmfleet_dev.localcluster import LocalCluster, Topology, tiny_llmdeployment
from llmfleet_dev.podbacker import PodBacker, ensure_tiny_model
from llmfleet_dev.processes import OperatorProcess
from llmfleet_dev.prometheus import PrometheusServer

ROOT = Path(__file__).resolve().parents[1]

NAME = "chat"
REAL_NS, SIM_NS = "bench-rollout", "bench-rollout-sim"
N = 2
SCRAPE = "1s"
ANALYSIS_MIN_WINDOW = 5
OPERATOR_FLAGS = (f"--analysis-min-window={ANALYSIS_MIN_WINDOW}", "--autoscale-interval=2")
CANARY = {
    "steps": [{"weight": 50, "pauseSeconds": 5}],
    "analysis": {"intervalSeconds": 3, "minRequests": 5, "failureLimit": 2, "maxTtftRatio": 3},
}
FAIL_RATIO = "0.5"
LLMD_PATH = "/apis/llmfleet.io/v1alpha1/namespaces/{ns}/llmdeployments"
#: Seconds between two looks at the LLMDeployment, its pods and its canary Deployment.
POLL = 0.15
TIMEOUT = 300.0
#: Load kept running after a rollout finished, so that the old workers' drain is covered.
TAIL = 3.0


class BenchError(RuntimeError):
    """Something did not happen in time, or the cluster answered an error."""


class Terminated(BaseException):
    """SIGTERM: unwind, stopping everything this benchmark started."""


def on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one clean-up, not interrupted again
    raise Terminated


# --- the API server -------------------------------------------------------------------------
class Api:
    """A few JSON calls to the API server over one kept-alive HTTPS connection (kubectl
    costs a process start per look; this polls several times a second for almost nothing)."""

    def __init__(self, kubeconfig: Path) -> None:
        config = json.loads(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        server = urlsplit(cluster["server"])
        ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
        ctx.load_cert_chain(user["client-certificate"], user["client-key"])
        assert server.hostname
        assert server.port
        self.host, self.port, self.ctx = server.hostname, server.port, ctx
        self.conn = http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=15)

    def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        """The answer as parsed JSON; None on 404."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "Content-Type": content_type}
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException):
                self.conn.close()  # reconnects on the next request
                if attempt == 2:
                    raise
        if response.status == 404:
            return None
        if response.status >= 300:
            raise BenchError(f"{method} {path}: {response.status} {raw[:300]!r}")
        return json.loads(raw)

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def apply(self, obj: dict[str, Any]) -> None:
        """Server-side apply as the benchmark: fields it stops sending are removed."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        path = LLMD_PATH.format(ns=ns) + f"/{name}?fieldManager=bench-rollout&force=true"
        self.call("PATCH", path, obj, "application/apply-patch+yaml")

    def annotate(self, ns: str, name: str, key: str, value: str) -> None:
        body = {"metadata": {"annotations": {key: value}}}
        path = LLMD_PATH.format(ns=ns) + f"/{name}"
        self.call("PATCH", path, body, "application/merge-patch+json")

    def close(self) -> None:
        self.conn.close()


def manifest(
    ns: str, revision: str, *, backed: bool, canary: bool, fail_ratio: str | None = None
) -> dict[str, Any]:
    """The fleet at ``revision``: N replicas (Manual), one GPU, cpu 1, memory 1Gi each."""
    obj = tiny_llmdeployment(NAME, ns, backed=backed, mode="Manual")
    spec: Any = obj["spec"]
    spec["model"]["revision"] = revision
    spec["replicas"] = N
    if fail_ratio is not None:
        spec["worker"]["env"] = [{"name": "SIM_FAIL_RATIO", "value": fail_ratio}]
    spec["rollout"] = (
        {"strategy": "Canary", "canary": CANARY} if canary else {"strategy": "RollingUpdate"}
    )
    return obj


@dataclass
class Snap:
    """One look at the fleet."""

    at: float  # time.monotonic()
    obj: dict[str, Any]
    pods: list[dict[str, Any]]
    canary_deployment: bool

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.obj.get("status") or {})

    @property
    def rollout(self) -> dict[str, Any]:
        return dict(self.status.get("rollout") or {})

    @property
    def phase(self) -> str | None:
        return self.rollout.get("phase")

    def condition(self, kind: str) -> dict[str, Any]:
        return next((c for c in self.status.get("conditions", []) if c["type"] == kind), {})

    @property
    def live_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.pods if not p["metadata"].get("deletionTimestamp")]

    def ready(self, track: str | None = None, revision: str | None = None) -> int:
        """Ready, non-terminating pods (of ``track`` and ``revision`` when given)."""
        count = 0
        for pod in self.live_pods:
            labels = pod["metadata"].get("labels") or {}
            if track is not None and labels.get("llmfleet.io/track") != track:
                continue
            if revision is not None and labels.get("llmfleet.io/revision") != revision:
                continue
            conditions = (pod.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                count += 1
        return count


@dataclass
class Fleet:
    """The LLMDeployment NAME in ``ns``; ``backer`` when real workers back its pods."""

    api: Api
    ns: str
    backer: PodBacker | None
    serial: int = 0
    history: list[str] = field(default_factory=list)

    @property
    def real(self) -> bool:
        return self.backer is not None

    def next_revision(self) -> str:
        self.serial += 1
        return f"r{self.serial}"

    def snap(self) -> Snap:
        obj = self.api.get(LLMD_PATH.format(ns=self.ns) + f"/{NAME}") or {}
        selector = quote(f"llmfleet.io/deployment={NAME}")
        pods = self.api.get(f"/api/v1/namespaces/{self.ns}/pods?labelSelector={selector}")
        canary = self.api.get(f"/apis/apps/v1/namespaces/{self.ns}/deployments/{NAME}-canary")
        return Snap(time.monotonic(), obj, (pods or {}).get("items", []), canary is not None)

    def apply(self, revision: str, *, canary: bool, fail_ratio: str | None = None) -> float:
        """Apply the spec at ``revision``; the monotonic time just before the change."""
        obj = manifest(self.ns, revision, backed=self.real, canary=canary, fail_ratio=fail_ratio)
        t0 = time.monotonic()
        self.api.apply(obj)
        return t0

    def serving(self, revision: str | None = None) -> int:
        """Workers the load balancer routes to (of ``revision``)."""
        assert self.backer is not None
        return sum(
            1
            for w in self.backer.ready_workers(self.ns, NAME)
            if revision is None or w.revision == revision
        )

    def watch(
        self, what: str, done: Callable[[Snap], bool], on_snap: Callable[[Snap], None] | None = None
    ) -> Snap:
        """Look every POLL seconds until ``done``; the first snapshot for which it was."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            s = self.snap()
            if on_snap is not None:
                on_snap(s)
            if done(s):
                return s
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.ns}: timed out after {TIMEOUT:.0f}s waiting for {what}; "
                    f"rollout {s.rollout}, conditions {s.status.get('conditions')}"
                )
            time.sleep(POLL)

    def steady(self) -> Snap:
        """Wait until the fleet stands at N Ready pods of its current revision, no canary
        (and, with workers, N of them serving that revision)."""

        def ok(s: Snap) -> bool:
            st, current = s.status, s.status.get("currentRevision")
            return bool(
                current
                and st.get("observedGeneration") == s.obj["metadata"]["generation"]
                and s.phase in ("Stable", "RolledBack")
                and not s.canary_deployment
                and len(s.live_pods) == N
                and s.ready("stable", current) == N
                and (not self.real or (self.serving(current) == N and self.serving() == N))
            )

        return self.watch("a steady fleet", ok)


def rolled_out(before: Snap) -> Callable[[Snap], bool]:
    """Stable, currentRevision == updateRevision == a revision new since ``before``, and no
    canary Deployment."""
    old = {before.status.get("currentRevision"), before.status.get("updateRevision")}

    def done(s: Snap) -> bool:
        st = s.status
        return (
            s.phase == "Stable"
            and st.get("currentRevision") == st.get("updateRevision")
            and st.get("updateRevision") not in old
            and not s.canary_deployment
        )

    return done


class Load:
    """Steady closed-loop load through the fleet's load balancer, on monotonic time."""

    def __init__(self, fleet: Fleet, args: argparse.Namespace) -> None:
        assert fleet.backer is not None
        url = fleet.backer.endpoint(fleet.ns, NAME)
        if not url:
            raise BenchError("the pod backer has no load balancer for the fleet")
        self.gen = LoadGenerator(
            url,
            model=NAME,
            concurrency=args.concurrency,
            duration=600,
            max_tokens=args.max_tokens,
            think_time=args.think_time,
        )
        self.t0 = time.monotonic()
        self.gen.start()
        deadline = time.monotonic() + 60
        while len(self.gen.result.ok) < 5:
            if time.monotonic() > deadline:
                self.gen.stop()
                raise BenchError(f"no steady traffic: {self.gen.result.summary()}")
            time.sleep(0.1)
        self.result: LoadResult | None = None

    def stop(self) -> LoadResult:
        if self.result is None:
            self.result = self.gen.stop()
        return self.result

    def failed_between(self, start: float, end: float = float("inf")) -> int:
        """Failed requests that ended in [start, end) (monotonic)."""
        assert self.result is not None
        return sum(1 for r in self.result.failed if start <= self.t0 + r.started + r.latency < end)

    def first_failure(self, after: float) -> float | None:
        assert self.result is not None
        ends = [self.t0 + r.started + r.latency for r in self.result.failed]
        return min((t for t in ends if t >= after), default=None)


# --- scenarios --------------------------------------------------------------------------------
Run = dict[str, float]


class Pods:
    """What a rollout did to the pods: the fewest Ready (of a track and revision), and the pods
    it started, by revision."""

    def __init__(self, before: Snap, track: str | None = None, revision: str | None = None):
        self.known = {p["metadata"]["uid"] for p in before.pods}
        self.started: dict[str, str] = {}  # uid -> revision label
        self.track, self.revision = track, revision
        self.fewest_ready = N

    def see(self, s: Snap) -> None:
        self.fewest_ready = min(self.fewest_ready, s.ready(self.track, self.revision))
        for pod in s.pods:
            meta = pod["metadata"]
            if meta["uid"] not in self.known:
                self.started.setdefault(meta["uid"], meta["labels"].get("llmfleet.io/revision"))

    def counts(self, revision: str) -> dict[str, float]:
        """Pods started of ``revision`` and of any other (older) revision."""
        new = sum(1 for r in self.started.values() if r == revision)
        return {"pods_new": float(new), "pods_old": float(len(self.started) - new)}


def rolling_update(fleet: Fleet, args: argparse.Namespace) -> Run:
    before = fleet.steady()
    load = Load(fleet, args) if fleet.real else None
    pods = Pods(before)
    try:
        t0 = fleet.apply(fleet.next_revision(), canary=False)
        s = fleet.watch("the rolling update", rolled_out(before), pods.see)
        new = s.status["currentRevision"]
        run = {"done": s.at - t0, "min_ready": float(pods.fewest_ready), **pods.counts(new)}
        if load is not None:
            fleet.watch("N new workers serving", lambda _: fleet.serving(new) == N)
            run["serving"] = time.monotonic() - t0
            time.sleep(TAIL)
            result = load.stop()
            run["failed"] = float(load.failed_between(t0))
            run["requests"] = float(result.total)
        return run
    finally:
        if load is not None:
            load.stop()


def healthy_canary(fleet: Fleet, args: argparse.Namespace) -> Run:
    before = fleet.steady()
    load = Load(fleet, args) if fleet.real else None
    seen: dict[str, float] = {}
    pods = Pods(before)

    def mark(s: Snap) -> None:
        pods.see(s)
        if s.phase in ("Canary", "Paused") and s.rollout.get("stepStartedTime"):
            seen.setdefault("step", s.at)
        if s.phase == "Promoting":
            seen.setdefault("promoting", s.at)

    try:
        t0 = fleet.apply(fleet.next_revision(), canary=True)
        if not fleet.real:
            # No metrics, no verdict: promote by hand once the step is reached.
            s = fleet.watch("the canary step", lambda s: "step" in seen, mark)
            candidate = s.rollout["candidateRevision"]
            fleet.api.annotate(fleet.ns, NAME, "llmfleet.io/promote", candidate)
        promoted = rolled_out(before)
        old = {before.status.get("currentRevision"), before.status.get("updateRevision")}

        def ended(s: Snap) -> bool:
            gave_up = s.phase == "RolledBack" and s.status.get("updateRevision") not in old
            return gave_up or promoted(s)

        s = fleet.watch("the promotion", ended, mark)
        if not promoted(s):
            raise BenchError(f"the healthy canary was rolled back: {s.rollout}")
        new = s.status["currentRevision"]
        run = {
            "step": seen.get("step", s.at) - t0,
            "promoting": seen.get("promoting", s.at) - t0,
            "done": s.at - t0,
            "min_ready": float(pods.fewest_ready),
            **pods.counts(new),
        }
        if load is not None:
            fleet.watch("N new workers serving", lambda _: fleet.serving(new) == N)
            run["serving"] = time.monotonic() - t0
            time.sleep(TAIL)
            result = load.stop()
            run["failed"] = float(load.failed_between(t0))
            run["requests"] = float(result.total)
            verdict = (s.rollout.get("lastAnalysis") or {}).get("verdict")
            run["passed"] = 1.0 if verdict == "Passed" else 0.0
        return run
    finally:
        if load is not None:
            load.stop()


def failing_canary(fleet: Fleet, args: argparse.Namespace) -> Run:
    assert fleet.backer is not None
    before = fleet.steady()
    stable = before.status["currentRevision"]
    load = Load(fleet, args)
    pods = Pods(before, "stable", stable)
    seen: dict[str, float] = {}

    def mark(s: Snap) -> None:
        pods.see(s)
        if s.ready("canary") > 0:
            seen.setdefault("canary_ready", s.at)

    def rolled_back(s: Snap) -> bool:
        stalled = s.condition("Stalled")
        return (
            s.phase == "RolledBack"
            and stalled.get("status") == "True"
            and stalled.get("reason") == "CanaryAnalysisFailed"
        )

    def restored(s: Snap) -> bool:
        return (
            not s.canary_deployment
            and len(s.live_pods) == N
            and s.ready("stable", stable) == N
            and fleet.serving(stable) == N
            and fleet.serving() == N
        )

    try:
        wall_offset = time.time() - time.monotonic()
        t0 = fleet.apply(fleet.next_revision(), canary=True, fail_ratio=FAIL_RATIO)
        s = fleet.watch("the rollback (Stalled/CanaryAnalysisFailed)", rolled_back, mark)
        t_rolled = s.at
        analysis = s.rollout.get("lastAnalysis") or {}
        candidate = s.status["updateRevision"]
        s = fleet.watch("the stable back at full size", restored, mark)
        t_restored = s.at
        time.sleep(TAIL)
        result = load.stop()
        first_fail = load.first_failure(t0)
        # The candidate's first worker Ready: the pod backer's readiness patch of a canary pod.
        ready_at = [
            p.at - wall_offset
            for p in fleet.backer.readiness_patches(fleet.ns)
            if p.ready and p.pod.startswith(f"{NAME}-canary-") and p.at - wall_offset >= t0
        ]
        t_ready = min(ready_at, default=seen.get("canary_ready", t_rolled))
        return {
            "rollback": t_rolled - t0,
            "fail_to_rollback": t_rolled - (first_fail if first_fail is not None else t_ready),
            "ready_to_rollback": t_rolled - t_ready,
            "restored": t_restored - t0,
            "failed": float(load.failed_between(t0)),
            "failed_after": float(load.failed_between(t_restored)),
            "requests": float(result.total),
            "min_stable_ready": float(pods.fewest_ready),
            "error_ratio": float(analysis.get("errorRatio", float("nan"))),
            **pods.counts(candidate),
        }
    finally:
        load.stop()


# --- the run ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    fleet: str  # "real" or "sim"
    run: Callable[[Fleet, argparse.Namespace], Run]


SCENARIOS = (
    Scenario("ru-real", "rolling update, real workers", "real", rolling_update),
    Scenario("canary-real", "canary promoted, real workers", "real", healthy_canary),
    Scenario("fail-real", "canary failing (50% errors), real workers", "real", failing_canary),
    Scenario("ru-sim", "rolling update, simulated pods", "sim", rolling_update),
    Scenario("canary-sim", "canary promoted by annotation, simulated pods", "sim", healthy_canary),
)


def describe(key: str, r: Run) -> str:
    if key.startswith("fail"):
        return (
            f"rolled back {r['rollback']:.1f}s after the change, {r['fail_to_rollback']:.1f}s "
            f"after the first failed request ({r['ready_to_rollback']:.1f}s after the candidate's "
            f"first worker Ready); stable back at {N} {r['restored']:.1f}s; failed "
            f"{r['failed']:.0f}/{r['requests']:.0f} requests ({r['failed_after']:.0f} after "
            f"the rollback); fewest Ready stable pods {r['min_stable_ready']:.0f}; last "
            f"analysis error ratio {r['error_ratio']:.2f}; pods started: "
            f"{r['pods_new']:.0f} candidate, {r['pods_old']:.0f} stable"
        )
    parts = []
    if "step" in r:
        parts.append(f"step reached {r['step']:.1f}s, promoting {r['promoting']:.1f}s")
    parts.append(f"done {r['done']:.1f}s")
    if "serving" in r:
        parts.append(f"new workers serving {r['serving']:.1f}s")
        parts.append(f"failed {r['failed']:.0f}/{r['requests']:.0f} requests")
    parts.append(f"fewest Ready pods {r['min_ready']:.0f}")
    parts.append(
        f"pods started: {r['pods_new']:.0f} of the new revision, {r['pods_old']:.0f} of the old"
    )
    return ", ".join(parts)


def med(runs: list[Run], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summary(results: dict[str, list[Run]]) -> None:
    print(f"\nmedians (seconds from the spec change; N = {N}):")
    width = max(len(s.title) for s in SCENARIOS)
    for sc in SCENARIOS:
        runs = results[sc.key]
        if not runs:
            continue
        if sc.key.startswith("fail"):
            line = (
                f"first failure -> rolled back {med(runs, 'fail_to_rollback'):5.1f}s, "
                f"candidate Ready -> rolled back {med(runs, 'ready_to_rollback'):5.1f}s, "
                f"change -> rolled back {med(runs, 'rollback'):5.1f}s, "
                f"stable restored {med(runs, 'restored'):5.1f}s, "
                f"failed requests {med(runs, 'failed'):.0f} ({med(runs, 'failed_after'):.0f} "
                f"after), fewest Ready stable pods {min(r['min_stable_ready'] for r in runs):.0f}"
                f" (floor {N - 1}), pods started {med(runs, 'pods_new'):.0f} candidate / "
                f"{med(runs, 'pods_old'):.0f} stable"
            )
        else:
            line = f"to done {med(runs, 'done'):5.1f}s"
            if "step" in runs[0]:
                line = f"to step {med(runs, 'step'):5.1f}s, " + line
            if "failed" in runs[0]:
                line += f", failed requests {med(runs, 'failed'):.0f}"
                line += f" (max {max(r['failed'] for r in runs):.0f})"
            line += f", fewest Ready pods {min(r['min_ready'] for r in runs):.0f}"
            line += (
                f", pods started {med(runs, 'pods_new'):.0f} new / {med(runs, 'pods_old'):.0f} old"
            )
        print(f"  {sc.title:{width}}  {len(runs)} runs: {line}")
    for kind, title in (("ru", "rolling update"), ("canary", "canary")):
        real, sim = results[f"{kind}-real"], results[f"{kind}-sim"]
        if real and sim and med(sim, "done") > 0:
            print(
                f"  {title}: real workers / simulated pods = {med(real, 'done'):.1f}s / "
                f"{med(sim, 'done'):.1f}s = {med(real, 'done') / med(sim, 'done'):.1f}x "
                f"(the rest is worker start-up and analysis)"
            )


def bench(args: argparse.Namespace, work: Path) -> dict[str, list[Run]]:
    cluster = LocalCluster(
        work / "cluster", Topology(gpu_nodes=4, gpus_per_node=8), tie_to_parent=True
    )
    cluster.up()
    model = ensure_tiny_model(work / "tiny")
    sd_file = work / "workers.json"
    prometheus = PrometheusServer(work / "prometheus", sd_file, scrape_interval=SCRAPE).start()
    backer: PodBacker | None = None
    operator: OperatorProcess | None = None
    api: Api | None = None
    results: dict[str, list[Run]] = {s.key: [] for s in SCENARIOS}
    try:
        cluster.install_crd()
        for ns in (REAL_NS, SIM_NS):
            cluster.prepare_namespace(ns)
        backer = PodBacker(
            cluster.kubeconfig,
            model,
            work / "backer",
            namespaces=[REAL_NS],  # the simulated fleet's pods get no workers
            sd_file=sd_file,
            worker_command=faulty_worker.worker_command(),
        ).start()
        operator = OperatorProcess(
            cluster.kubeconfig,
            work / "operator.log",
            f"--prometheus-url={prometheus.url}",
            *OPERATOR_FLAGS,
        ).start()
        api = Api(cluster.kubeconfig)
        fleets = {"real": Fleet(api, REAL_NS, backer), "sim": Fleet(api, SIM_NS, None)}
        start = time.monotonic()
        for fleet in fleets.values():
            fleet.apply(fleet.next_revision(), canary=False)
        for fleet in fleets.values():
            fleet.steady()
        print(f"both fleets steady ({N} replicas each) in {time.monotonic() - start:.1f}s")
        for i in range(args.repeats):
            for sc in SCENARIOS:
                if sc.key not in args.only:
                    continue
                run = sc.run(fleets[sc.fleet], args)
                results[sc.key].append(run)
                print(f"[{i + 1}/{args.repeats}] {sc.title}: {describe(sc.key, run)}", flush=True)
        return results
    finally:
        if api is not None:
            api.close()
        if operator is not None:
            operator.stop()
        if backer is not None:
            backer.stop()
        prometheus.stop()
        cluster.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each scenario")
    parser.add_argument("--concurrency", type=int, default=2, help="closed-loop clients")
    parser.add_argument("--think-time", type=float, default=0.2, help="seconds between requests")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[s.key for s in SCENARIOS],
        default=[s.key for s in SCENARIOS],
        help="run only these scenarios",
    )
    parser.add_argument("--keep", action="store_true", help="keep the state directory")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"$ {shlex.join([sys.executable, *sys.argv])}")
    print(f"load: {os.getloadavg()[0]:.2f} (1-minute average; {os.cpu_count()} cores)")
    print(
        f"fleet: {N} replicas (Manual), 1 GPU each; load {args.concurrency} clients, "
        f"{args.max_tokens} tokens, think {args.think_time:g}s; Prometheus scrape {SCRAPE}; "
        f"operator {' '.join(OPERATOR_FLAGS)}; canary {json.dumps(CANARY)}"
    )
    work = Path(tempfile.mkdtemp(prefix="llmfleet-rollout-bench-"))
    started = time.monotonic()
    ok = False
    try:
        results = bench(args, work)
        summary(results)
        ok = True
    except Terminated:
        print("terminated: everything stopped", file=sys.stderr)
        return 143
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        print(f"total {time.monotonic() - started:.0f}s; load {os.getloadavg()[0]:.2f}")
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"state, logs: {work}")
    healthy_failed = sum(
        r["failed"] for k in ("ru-real", "canary-real") for r in results[k] if "failed" in r
    )
    stable_low = min((r["min_stable_ready"] for r in results["fail-real"]), default=N - 1)
    return 0 if healthy_failed == 0 and stable_low >= N - 1 else 1


if __name__ == "__main__":
    sys.exit(main())
