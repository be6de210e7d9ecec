"""The operator's metrics: the pure samples of an LLMDeployment, the scrape-time collector
(leader only, deleted fleets gone by themselves), per-fleet counters, the work-queue latency,
the free-GPU totals and the autoscaler's last signals."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from llmfleet_dev.events import EventRecorder
from llmfleet_dev.processes import parse_exposition
from llmfleet_operator import metrics
from llmfleet_operator.api import LLMDeploymentSpec, parse_spec
from llmfleet_operator.autoscale_loop import AutoscaleLoop
from llmfleet_operator.autoscaler import Signals
from llmfleet_operator.cache import Cache
from llmfleet_operator.capacity import slim_node, slim_pod
from llmfleet_operator.free_gpus import FreeGpus
from llmfleet_operator.leader import LeaderDuties
from llmfleet_operator.rollout import PHASES
from llmfleet_operator.workqueue import WorkQueue

KEY = ("team-a", "chat")
GPU = "nvidia.com/gpu"


def llmd(
    mode: str = "Builtin", gpus: int = 2, status: dict[str, Any] | None = None, name: str = "chat"
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "pvc://models/tiny"},
        "worker": {"resources": {"gpus": gpus}},
        "autoscaling": {"mode": mode, "minReplicas": 1, "maxReplicas": 6},
    }
    if mode != "Builtin":
        spec["replicas"] = 3
    body: dict[str, Any] = {
        "apiVersion": "llmfleet.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": "team-a", "uid": "u", "generation": 2},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


CANARY_STATUS: dict[str, Any] = {
    "observedGeneration": 2,
    "desiredReplicas": 4,
    "readyReplicas": 3,
    "currentRevision": "aaa",
    "updateRevision": "bbb",
    "conditions": [
        {"type": "Ready", "status": "True", "reason": "Available"},
        {"type": "Reconciling", "status": "True", "reason": "CanaryStep"},
        {"type": "Stalled", "status": "False", "reason": "Progressing"},
        # A second entry of one type (never written by us): still one series per type.
        {"type": "Ready", "status": "False", "reason": "Duplicate"},
    ],
    "rollout": {
        "phase": "Canary",
        "strategy": "Canary",
        "stableRevision": "aaa",
        "candidateRevision": "bbb",
    },
}


def by_name(samples: list[metrics.Sample]) -> dict[str, list[metrics.Sample]]:
    out: dict[str, list[metrics.Sample]] = {}
    for s in samples:
        out.setdefault(s.name, []).append(s)
    return out


def one(samples: list[metrics.Sample], name: str) -> float:
    [s] = by_name(samples)[name]
    assert s.labels == {"namespace": "team-a", "llmdeployment": "chat"}
    return s.value


def samples_of(body: dict[str, Any], signals: dict[str, float] | None = None) -> list[Any]:
    return metrics.fleet_samples(KEY, body, parse_spec(body), signals)


# --- the pure part ------------------------------------------------------------------------------


def test_replicas_bounds_and_requested_gpus_of_a_builtin_fleet() -> None:
    samples = samples_of(llmd(gpus=2, status=CANARY_STATUS))
    assert one(samples, metrics.DESIRED_REPLICAS) == 4
    assert one(samples, metrics.READY_REPLICAS) == 3
    assert one(samples, metrics.MIN_REPLICAS) == 1
    assert one(samples, metrics.MAX_REPLICAS) == 6
    # Every track at the desired size: 4 pods of 2 GPUs.
    assert one(samples, metrics.REQUESTED_GPUS) == 8


def test_bounds_only_where_the_autoscaler_honours_them() -> None:
    samples = samples_of(llmd(mode="Manual", status=CANARY_STATUS))
    names = by_name(samples)
    assert metrics.MIN_REPLICAS not in names
    assert metrics.MAX_REPLICAS not in names
    assert one(samples, metrics.DESIRED_REPLICAS) == 4


def test_exactly_one_condition_series_per_type_with_status_and_reason() -> None:
    conds = by_name(samples_of(llmd(status=CANARY_STATUS)))[metrics.CONDITION]
    assert {(s.labels["type"], s.labels["status"], s.labels["reason"]) for s in conds} == {
        ("Ready", "True", "Available"),
        ("Reconciling", "True", "CanaryStep"),
        ("Stalled", "False", "Progressing"),
    }
    assert len(conds) == 3
    assert all(s.value == 1 for s in conds)


def test_rollout_phase_is_one_for_the_current_phase_and_zero_for_the_others() -> None:
    phases = by_name(samples_of(llmd(status=CANARY_STATUS)))[metrics.ROLLOUT_PHASE]
    assert {s.labels["phase"]: s.value for s in phases} == {
        p: (1.0 if p == "Canary" else 0.0) for p in PHASES
    }
    # A reconciled fleet without a rollout block is Stable.
    plain = {k: v for k, v in CANARY_STATUS.items() if k != "rollout"}
    phases = by_name(samples_of(llmd(status=plain)))[metrics.ROLLOUT_PHASE]
    assert [s.labels["phase"] for s in phases if s.value == 1] == ["Stable"]


def test_revisions_by_role_tell_the_canary_from_the_stable() -> None:
    revs = by_name(samples_of(llmd(status=CANARY_STATUS)))[metrics.REVISION]
    assert {(s.labels["revision"], s.labels["role"]) for s in revs} == {
        ("aaa", "stable"),
        ("bbb", "candidate"),
    }
    steady = {**CANARY_STATUS, "rollout": {"phase": "Stable", "stableRevision": "bbb"}}
    revs = by_name(samples_of(llmd(status=steady)))[metrics.REVISION]
    assert [(s.labels["revision"], s.labels["role"]) for s in revs] == [("bbb", "stable")]


def test_a_fleet_never_reconciled_exports_only_its_spec() -> None:
    names = set(by_name(samples_of(llmd())))
    assert names == {metrics.MIN_REPLICAS, metrics.MAX_REPLICAS}


def test_an_invalid_spec_exports_only_its_status() -> None:
    body = llmd(status=CANARY_STATUS)
    names = set(by_name(metrics.fleet_samples(KEY, body, None)))
    assert metrics.REQUESTED_GPUS not in names
    assert metrics.MIN_REPLICAS not in names
    assert {metrics.DESIRED_REPLICAS, metrics.READY_REPLICAS, metrics.CONDITION} <= names


def test_autoscaler_signals_in_snake_case_with_units() -> None:
    signals = Signals(at=95.0, waiting=6, running=4, capacity=8, ttft_p95=0.25, reporting=2)
    values = metrics.signal_values(signals, evaluated_at=100.0)
    assert values == {
        "requests_waiting": 6,
        "requests_running": 4,
        "requests_waiting_per_replica": 3,
        "batch_capacity_sequences": 8,
        "ttft_p95_seconds": 0.25,
        "reporting_replicas": 2,
        "sample_age_seconds": 5,
    }
    # What the engine does not export is absent, not zero.
    bare = metrics.signal_values(Signals(at=100.0, waiting=0, running=0), 100.0)
    assert set(bare) == {
        "requests_waiting",
        "requests_running",
        "reporting_replicas",
        "sample_age_seconds",
    }
    sigs = by_name(samples_of(llmd(status=CANARY_STATUS), values))[metrics.AUTOSCALER_SIGNAL]
    assert {s.labels["signal"]: s.value for s in sigs} == values


def test_gpu_samples_allocatable_and_free_per_resource() -> None:
    samples = metrics.gpu_samples({GPU: (16, 5), "amd.com/gpu": (4, 4)})
    assert {(s.labels["resource"], s.labels["state"]): s.value for s in samples} == {
        (GPU, "allocatable"): 16,
        (GPU, "free"): 5,
        ("amd.com/gpu", "allocatable"): 4,
        ("amd.com/gpu", "free"): 4,
    }


# --- the collector ------------------------------------------------------------------------------


def scrape(collector: metrics.FleetCollector) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return parse_exposition(generate_latest(registry).decode())


def test_the_leader_exports_every_fleet_and_a_deleted_one_vanishes() -> None:
    cache = Cache()
    cache.observe_llmd("ADDED", llmd(status=CANARY_STATUS))
    cache.observe_llmd("ADDED", llmd(status=CANARY_STATUS, name="other"))
    leading = [True]
    evaluation = (Signals(at=10.0, waiting=2, running=1, reporting=1), 10.0)
    collector = metrics.FleetCollector(
        cache,
        lambda: leading[0],
        signals=lambda key: evaluation if key == KEY else None,
        gpus=lambda: {GPU: (8, 3)},
    )
    seen = scrape(collector)
    fleet = 'llmdeployment="chat",namespace="team-a"'
    assert seen[f"llmfleet_operator_desired_replicas{{{fleet}}}"] == 4
    assert seen[f"llmfleet_operator_ready_replicas{{{fleet}}}"] == 3
    assert seen[f"llmfleet_operator_requested_gpus{{{fleet}}}"] == 8
    assert seen['llmfleet_operator_desired_replicas{llmdeployment="other",namespace="team-a"}'] == 4
    assert seen[f'llmfleet_operator_autoscaler_signal{{{fleet},signal="requests_waiting"}}'] == 2
    assert not any('llmdeployment="other",namespace="team-a",signal' in k for k in seen)
    assert (
        seen[
            f'llmfleet_operator_llmdeployment_condition{{{fleet},reason="Available",'
            'status="True",type="Ready"}'
        ]
        == 1
    )
    assert seen[f'llmfleet_operator_rollout_phase{{{fleet},phase="Canary"}}'] == 1
    assert seen['llmfleet_operator_gpus{resource="nvidia.com/gpu",state="free"}'] == 3
    assert seen['llmfleet_operator_gpus{resource="nvidia.com/gpu",state="allocatable"}'] == 8

    cache.observe_llmd("DELETED", llmd(name="other"))
    assert not any('"other"' in k for k in scrape(collector))

    leading[0] = False  # a standby: no per-fleet series, nothing to double in a sum
    assert scrape(collector) == {}


def test_free_gpus_unknown_exports_no_gpu_series() -> None:
    cache = Cache()
    collector = metrics.FleetCollector(cache, lambda: True, gpus=lambda: None)
    assert not any(k.startswith("llmfleet_operator_gpus") for k in scrape(collector))


def test_install_replaces_the_collector_installed_before() -> None:
    registry = CollectorRegistry()
    cache = Cache()
    cache.observe_llmd("ADDED", llmd(status=CANARY_STATUS))
    first = metrics.FleetCollector(cache, lambda: True)
    metrics.install(first, registry)
    metrics.install(metrics.FleetCollector(cache, lambda: True), registry)  # no duplicate
    text = generate_latest(registry).decode()
    assert text.count("# TYPE llmfleet_operator_desired_replicas gauge") == 1


# --- per-fleet counters -------------------------------------------------------------------------


def counter_value(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_fleet_counters_carry_the_fleet_and_go_with_it() -> None:
    key = ("ns-counters", "chat")
    fleet = {"namespace": key[0], "llmdeployment": key[1]}
    metrics.start_fleet_counters(key)
    # Born at 0: the first rollback and the first analysis show in increase().
    for verdict in ("Passed", "Failed", "Inconclusive"):
        assert (
            counter_value("llmfleet_operator_canary_analyses_total", **fleet, verdict=verdict) == 0
        )
    for reason in ("RolledBack", "CanaryAnalysisFailed"):
        assert counter_value("llmfleet_operator_rollbacks_total", **fleet, reason=reason) == 0
    metrics.count_scaling_decision(key, "up", "QueueDepth")
    metrics.count_canary_analysis(key, "Passed")
    metrics.count_rollback(key, "CanaryAnalysisFailed")
    metrics.start_fleet_counters(key)  # idempotent: counts stay
    assert (
        counter_value(
            "llmfleet_operator_scaling_decisions_total",
            **fleet,
            direction="up",
            reason="QueueDepth",
        )
        == 1
    )
    assert counter_value("llmfleet_operator_canary_analyses_total", **fleet, verdict="Passed") == 1
    assert (
        counter_value("llmfleet_operator_rollbacks_total", **fleet, reason="CanaryAnalysisFailed")
        == 1
    )
    metrics.forget_fleet(key)
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'namespace="ns-counters"' not in text
    metrics.forget_fleet(key)  # twice is fine


# --- the work queue -----------------------------------------------------------------------------


def latency_count() -> float:
    return (
        metrics.REGISTRY.get_sample_value("llmfleet_operator_workqueue_latency_seconds_count")
        or 0.0
    )


def latency_sum() -> float:
    return (
        metrics.REGISTRY.get_sample_value("llmfleet_operator_workqueue_latency_seconds_sum") or 0.0
    )


async def test_workqueue_latency_is_the_wait_before_the_reconcile_started() -> None:
    done: list[str] = []
    release, both = asyncio.Event(), asyncio.Event()

    async def handler(key: str) -> None:
        if key == "slow":
            await release.wait()
        done.append(key)
        if len(done) == 2:
            both.set()

    queue: WorkQueue[str] = WorkQueue(handler, workers=1)
    count, total = latency_count(), latency_sum()
    queue.add("slow")
    queue.add("waits")  # behind "slow" on the only worker
    queue.add("waits")  # deduplicated: one wait, one observation
    task = asyncio.create_task(queue.run())
    try:
        await asyncio.sleep(0.2)
        release.set()
        await asyncio.wait_for(both.wait(), timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert latency_count() - count == 2
    # "waits" sat in the queue for the 0.2 s that "slow" held the worker.
    assert latency_sum() - total >= 0.19


# --- where the collector's inputs come from -----------------------------------------------------


def node(name: str, gpus: int, ready: bool = True, unschedulable: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"unschedulable": unschedulable},
        "status": {
            "allocatable": {GPU: str(gpus), "cpu": "8"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(uid: str, node_name: str, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid},
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "c", "resources": {"limits": {GPU: str(gpus)}}}],
        },
        "status": {"phase": "Running"},
    }


def test_free_gpu_totals_count_ready_schedulable_nodes() -> None:
    view = FreeGpus(kube=None)  # type: ignore[arg-type]
    assert view.totals() is None  # not listed yet: unknown, not zero
    nodes = [
        node("g0", 8),
        node("g1", 8),
        node("down", 8, ready=False),
        node("cordoned", 4, unschedulable=True),
    ]
    view._reset_nodes({n["metadata"]["name"]: slim_node(n) for n in nodes})
    pods = [pod("p1", "g0", 3), pod("p2", "g1", 8), pod("p3", "down", 2)]
    records = {p["metadata"]["uid"]: slim_pod(p) for p in pods}
    view._reset_pods({uid: r for uid, r in records.items() if r is not None})
    for stream in view.streams:
        stream.synced = True
    assert view.totals() == {GPU: (16, 5)}
    assert FreeGpus(kube=None, enabled=False).totals() is None  # type: ignore[arg-type]


async def test_the_autoscaler_keeps_the_signals_of_its_last_evaluation() -> None:
    cache = Cache()
    body = llmd(status={"desiredReplicas": 2})
    cache.observe_llmd("ADDED", body)
    loop = AutoscaleLoop(cache, lambda key: None, EventRecorder(), "http://prom")  # type: ignore[arg-type]
    spec = LLMDeploymentSpec.model_validate(body["spec"])
    signals = Signals(at=99.0, waiting=3, running=2, reporting=1)
    await loop._evaluate(KEY, body, spec, signals, None, "http://prom", 100.0)
    assert loop.last_signals(KEY) == (signals, 100.0)
    # Metrics unavailable: the last evaluation used nothing, so nothing is exported.
    await loop._evaluate(KEY, body, spec, None, "down", "http://prom", 101.0)
    assert loop.last_signals(KEY) is None
    assert loop.last_signals(("team-a", "unknown")) is None


class _Idle:
    async def run(self) -> None:
        await asyncio.Event().wait()


async def test_leader_duties_say_when_this_replica_leads() -> None:
    autoscaler = AutoscaleLoop(Cache(), lambda key: None, EventRecorder(), "http://prom")  # type: ignore[arg-type]
    duties = LeaderDuties(_Idle(), _Idle(), autoscaler, Cache())  # type: ignore[arg-type]
    assert not duties.leading
    await duties.start()
    assert duties.leading
    await duties.stop()
    assert not duties.leading


def test_one_unreadable_fleet_does_not_empty_the_scrape() -> None:
    cache = Cache()
    cache.observe_llmd("ADDED", llmd(status=CANARY_STATUS))
    cache.observe_llmd(
        "ADDED", llmd(status={"observedGeneration": 1, "conditions": "?"}, name="odd")
    )
    seen = scrape(metrics.FleetCollector(cache, lambda: True))
    assert 'llmfleet_operator_desired_replicas{llmdeployment="chat",namespace="team-a"}' in seen
    assert not any('"odd"' in k for k in seen)
