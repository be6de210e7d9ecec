"""The fleet-wide loop against a stand-in Prometheus (an in-process HTTP server).

This is a unit test of the loop's wiring; the closed loop with the real Prometheus, real
workers and the real cluster is in tests/e2e.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llmfleet_dev.events import EventRecorder
from llmfleet_dev.stand_in_prometheus import StandIn, by_query, stand_in_prometheus
from llmfleet_operator import promql
from llmfleet_operator.autoscale_loop import METRICS_GRACE_SECONDS, AutoscaleLoop, ScaleState
from llmfleet_operator.cache import Cache
from llmfleet_operator.prometheus import client


def llmd(name: str, mode: str = "Builtin", desired: int | None = 2) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "pvc://m/x"},
        "autoscaling": {
            "mode": mode,
            "minReplicas": 1,
            "maxReplicas": 10,
            "targetQueueDepthPerReplica": 4,
            "scaleDownStabilizationSeconds": 60,
        },
    }
    if mode != "Builtin":
        spec["replicas"] = 2
    return {
        "apiVersion": "llmfleet.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": "ns", "uid": "u", "generation": 1},
        "spec": spec,
        "status": {"desiredReplicas": desired} if desired is not None else {},
    }


#: Prometheus's clock, far from the loop's (1000.0): ages must come from Prometheus's.
PROM_NOW = 5000.0
VALUES = {
    "waiting": 24.0,
    "running": 8.0,
    "capacity": 8.0,
    "reporting": 2.0,
    "ttft_p95": 0.3,
    "sampled_at": PROM_NOW - 5,
}


def _vector(name: str) -> Callable[[], list[dict[str, Any]]]:
    return lambda: [
        {"metric": {"namespace": "ns", "llmdeployment": n}, "value": [0, str(VALUES[name])]}
        for n in ("a", "b", "manual")
    ]


# Exactly the queries the loop sends; any other is refused.
answer = by_query({q: _vector(name) for name, q in promql.queries("llmfleet").items()})


@pytest.fixture
async def prometheus() -> AsyncIterator[StandIn]:
    async with stand_in_prometheus(answer, clock=lambda: PROM_NOW) as stand_in:
        yield stand_in


async def test_one_constant_set_of_queries_scales_every_builtin_fleet(
    prometheus: StandIn,
) -> None:
    url, seen = prometheus.url, prometheus.seen
    cache = Cache()
    for body in (llmd("a"), llmd("b"), llmd("manual", mode="Manual")):
        cache.observe_llmd("ADDED", body)
    enqueued: list[tuple[str, str]] = []
    kube = EventRecorder()
    loop = AutoscaleLoop(cache, enqueued.append, kube, url, clock=lambda: 1000.0)  # type: ignore[arg-type]
    async with client(10.0) as session:
        await loop.tick(session)
    # waiting, running, reporting, ttft, capacity, sampled_at: for all fleets at once
    assert len(seen) == 6
    # (24 + 8) in flight / (4 per batch + 4 waiting) = 4 replicas, from 2.
    assert loop.wants(("ns", "a")) == loop.wants(("ns", "b")) == 4
    assert loop.wants(("ns", "manual")) is None
    block = loop.status_block(("ns", "a"))
    assert block is not None
    assert block["lastDecision"]["from"] == 2
    assert block["lastDecision"]["to"] == 4
    assert block["lastDecision"]["reason"] == "QueueDepth"
    assert block["lastDecision"]["signals"]["waiting"] == 24.0
    conds = {c.type: c for c in loop.conditions(("ns", "a"))}
    assert (conds["ScalingActive"].status, conds["ScalingActive"].reason) == (
        "True",
        "MetricsAvailable",
    )
    assert (conds["ScalingLimited"].status, conds["ScalingLimited"].reason) == (
        "False",
        "DesiredWithinRange",
    )
    assert ("ns", "a") in enqueued
    assert [e[0] for e in kube.events] == ["ScaledUp", "ScaledUp"]
    json.dumps(block)  # status must be JSON-serialisable


async def test_prometheus_down_holds_and_reports(prometheus: StandIn) -> None:
    url = prometheus.url
    cache = Cache()
    cache.observe_llmd("ADDED", llmd("a", desired=3))
    kube = EventRecorder()
    loop = AutoscaleLoop(cache, lambda key: None, kube, url, clock=lambda: 1000.0)  # type: ignore[arg-type]
    prometheus.up = False
    async with client(10.0) as session:
        await loop.tick(session)
        await loop.tick(session)
    assert loop.wants(("ns", "a")) == 3
    [cond] = loop.conditions(("ns", "a"))
    assert (cond.status, cond.reason) == ("False", "MetricsUnavailable")
    assert "HTTP 503" in cond.message
    assert [e[0] for e in kube.events] == ["MetricsUnavailable"]  # once, on the flip
    prometheus.up = True
    async with client(10.0) as session:
        await loop.tick(session)
    cond = next(c for c in loop.conditions(("ns", "a")) if c.type == "ScalingActive")
    assert cond.status == "True"


async def test_stale_samples_hold_with_their_age(
    prometheus: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache()
    cache.observe_llmd("ADDED", llmd("a", desired=2))
    kube = EventRecorder()
    loop = AutoscaleLoop(cache, lambda key: None, kube, prometheus.url, clock=lambda: 1000.0)  # type: ignore[arg-type]
    # The queue asks for 4 replicas, but the oldest worker's newest sample is 200 s old by
    # Prometheus's clock (the loop's own clock would call it fresh).
    monkeypatch.setitem(VALUES, "sampled_at", PROM_NOW - 200)
    async with client(10.0) as session:
        await loop.tick(session)
    assert loop.wants(("ns", "a")) == 2
    [cond] = loop.conditions(("ns", "a"))
    assert (cond.status, cond.reason) == ("False", "MetricsUnavailable")
    assert cond.message == (
        f"worker metrics in {prometheus.url} are stale: the oldest worker's newest sample is "
        "at least 180s old (more than 60s); holding the current size"
    )
    assert kube.events == [("MetricsUnavailable", cond.message, "Warning")]

    monkeypatch.setitem(VALUES, "sampled_at", PROM_NOW - 10)
    async with client(10.0) as session:
        await loop.tick(session)
    assert loop.wants(("ns", "a")) == 4
    cond = next(c for c in loop.conditions(("ns", "a")) if c.type == "ScalingActive")
    assert (cond.status, cond.reason) == ("True", "MetricsAvailable")


def test_signals_are_as_old_as_the_oldest_sample_by_prometheus_clock() -> None:
    def answers(sampled: float | None) -> dict[str, dict[tuple[str, ...], promql.Sample]]:
        out = {n: {("ns", "a"): promql.Sample(1.0, PROM_NOW)} for n in ("waiting", "running")}
        if sampled is not None:
            out["sampled_at"] = {("ns", "a"): promql.Sample(sampled, PROM_NOW)}
        return out

    signals = AutoscaleLoop._signals(answers(PROM_NOW - 42.5), ("ns", "a"), 1000.0)
    assert signals is not None
    assert signals.at == 1000.0 - 42.5
    # An exporter's clock ahead of Prometheus's: fresh, not from the future.
    signals = AutoscaleLoop._signals(answers(PROM_NOW + 3), ("ns", "a"), 1000.0)
    assert signals is not None
    assert signals.at == 1000.0
    # Values without their age are not usable.
    assert AutoscaleLoop._signals(answers(None), ("ns", "a"), 1000.0) is None


def test_during_a_canary_the_fleet_counts_both_tracks() -> None:
    cache = Cache()
    body = llmd("a", desired=None)
    cache.observe_llmd("ADDED", body)
    meta = {"namespace": "ns", "labels": {"llmfleet.io/deployment": "a"}}
    for name, replicas in (("a", 3), ("a-canary", 1)):
        cache.observe_child(
            "ADDED",
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    **meta,
                    "name": name,
                    "ownerReferences": [
                        {
                            "apiVersion": "llmfleet.io/v1alpha1",
                            "kind": "LLMDeployment",
                            "name": "a",
                            "uid": "u",
                            "controller": True,
                        }
                    ],
                },
                "spec": {"replicas": replicas},
            },
        )
    for i, track in enumerate(("stable", "stable", "stable", "canary")):
        labels = {**meta["labels"], "llmfleet.io/track": track}
        cache.observe_child(
            "ADDED",
            {
                "kind": "Pod",
                "metadata": {"namespace": "ns", "name": f"p{i}", "labels": labels},
                "spec": {"nodeName": "n"},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            },
        )
    loop = AutoscaleLoop(cache, lambda key: None, EventRecorder(), "http://x")  # type: ignore[arg-type]
    spec = cache.spec_of(("ns", "a"), body)
    fleet, observed = loop._fleet_of(("ns", "a"), body, spec, ScaleState())
    assert (fleet.current, fleet.ready) == (4, 4)
    assert observed.placed == 4


def ready_pod(name: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "labels": {}},
        "spec": {"containers": [{"name": "worker"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


async def test_a_new_fleet_without_series_is_held_quietly_until_its_workers_had_time_to_be_scraped(
    prometheus: StandIn,
) -> None:
    """Prometheus answers, with no series of fleet "c" (its workers are new): no condition
    and no Warning while no worker is Ready, nor for 90 s after the first is; then
    MetricsUnavailable, with one Warning."""
    now = [1000.0]
    cache = Cache()
    cache.observe_llmd("ADDED", llmd("c", desired=1))
    kube = EventRecorder()
    loop = AutoscaleLoop(cache, lambda key: None, kube, prometheus.url, clock=lambda: now[0])  # type: ignore[arg-type]
    async with client(10.0) as session:
        await loop.tick(session)  # no worker Ready yet
        assert loop.conditions(("ns", "c")) == []
        cache.pods[("ns", "c")] = {"c-0": ready_pod("c-0")}
        now[0] += 30.0
        await loop.tick(session)  # Ready from now on
        now[0] += METRICS_GRACE_SECONDS - 1
        await loop.tick(session)
        assert loop.conditions(("ns", "c")) == []
        assert kube.events == []
        assert loop.wants(("ns", "c")) == 1  # held
        now[0] += 1
        await loop.tick(session)
    [cond] = loop.conditions(("ns", "c"))
    assert (cond.status, cond.reason) == ("False", "MetricsUnavailable")
    assert cond.message == (
        f"no worker metrics for this LLMDeployment in {prometheus.url}; holding the current size"
    )
    assert kube.events == [("MetricsUnavailable", cond.message, "Warning")]


async def test_a_fleet_that_had_metrics_hears_at_once_that_they_are_gone() -> None:
    """The grace is for a fleet's first verdict only: the series of a fleet that had them
    going away (every worker restarted, a scrape job removed) is reported at the next tick."""
    scraped = ["a"]

    def vector(name: str) -> Callable[[], list[dict[str, Any]]]:
        return lambda: [
            {"metric": {"namespace": "ns", "llmdeployment": n}, "value": [0, str(VALUES[name])]}
            for n in scraped
        ]

    table = {q: vector(name) for name, q in promql.queries("llmfleet").items()}
    cache = Cache()
    cache.observe_llmd("ADDED", llmd("a", desired=2))
    cache.pods[("ns", "a")] = {"a-0": ready_pod("a-0"), "a-1": ready_pod("a-1")}
    kube = EventRecorder()
    async with stand_in_prometheus(by_query(table), clock=lambda: PROM_NOW) as stand_in:
        loop = AutoscaleLoop(cache, lambda key: None, kube, stand_in.url, clock=lambda: 1000.0)  # type: ignore[arg-type]
        async with client(10.0) as session:
            await loop.tick(session)
            cond = next(c for c in loop.conditions(("ns", "a")) if c.type == "ScalingActive")
            assert cond.status == "True"
            scraped.clear()
            await loop.tick(session)
    cond = next(c for c in loop.conditions(("ns", "a")) if c.type == "ScalingActive")
    assert (cond.status, cond.reason) == ("False", "MetricsUnavailable")
    assert [e for e in kube.events if e[0] == "MetricsUnavailable"] == [
        ("MetricsUnavailable", cond.message, "Warning")
    ]
