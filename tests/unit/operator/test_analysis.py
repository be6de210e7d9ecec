"""Canary analysis: the verdict table, and the loop against a stand-in Prometheus (an
in-process HTTP server; the real one is in tests/e2e)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmfleet_dev.stand_in_prometheus import StandIn, stand_in_prometheus
from llmfleet_operator.analysis import RevisionMetrics, judge, window_seconds
from llmfleet_operator.analysis_loop import AnalysisLoop
from llmfleet_operator.api import CanaryAnalysis
from llmfleet_operator.cache import Cache
from llmfleet_operator.prometheus import client

LIMITS = CanaryAnalysis(max_error_ratio=0.05, max_ttft_ratio=1.5, min_requests=20)
T = "2026-12-01T12:00:00.000Z"


@pytest.mark.parametrize(
    ("candidate", "stable", "verdict", "needle"),
    [
        (RevisionMetrics(), RevisionMetrics(), "Inconclusive", "no request metrics"),
        (RevisionMetrics(10, 0), RevisionMetrics(), "Inconclusive", "fewer than minRequests 20"),
        (RevisionMetrics(100, 2, 0.2), RevisionMetrics(900, 5, 0.2), "Passed", "error ratio 0.020"),
        (RevisionMetrics(100, 6), RevisionMetrics(), "Failed", "error ratio 0.060 > 0.05"),
        (RevisionMetrics(100, 0, 0.5), RevisionMetrics(900, 0, 0.2), "Failed", "ratio 2.50"),
        # No stable TTFT to compare with (e.g. every pod runs the candidate): errors only.
        (RevisionMetrics(100, 0, 9.0), RevisionMetrics(), "Passed", "error ratio 0.000"),
        (RevisionMetrics(100, 0, 0.5), RevisionMetrics(900, 0, 0.0), "Passed", "100 requests"),
    ],
)
def test_verdicts(
    candidate: RevisionMetrics, stable: RevisionMetrics, verdict: str, needle: str
) -> None:
    result = judge(LIMITS, candidate, stable, 30, T)
    assert result["verdict"] == verdict
    assert needle in result["message"]
    assert result["time"] == T


def test_failed_verdict_carries_the_measured_values() -> None:
    result = judge(LIMITS, RevisionMetrics(200, 50, 0.9), RevisionMetrics(500, 1, 0.3), 30, T)
    assert result == {
        "verdict": "Failed",
        "message": result["message"],
        "requests": 200,
        "errorRatio": 0.25,
        "ttftP95Seconds": 0.9,
        "stableTtftP95Seconds": 0.3,
        "ttftRatio": 3.0,
        "time": T,
    }


def test_the_window_spans_at_least_a_few_scrapes() -> None:
    assert window_seconds(5, 60) == 60
    assert window_seconds(120, 60) == 120


def canary_llmd(name: str, phase: str = "Canary", interval: int = 10) -> dict[str, Any]:
    return {
        "apiVersion": "llmfleet.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {
            "model": {"uri": "pvc://m/x"},
            "rollout": {
                "strategy": "Canary",
                "canary": {"analysis": {"intervalSeconds": interval}},
            },
        },
        "status": {
            "rollout": {
                "phase": phase,
                "candidateRevision": "new",
                "stableRevision": "old",
                "stepStartedTime": "2026-12-01T11:59:00Z",
            }
        },
    }


VALUES = {"requests": {"new": 100, "old": 300}, "errors": {"new": 40, "old": 0}}


def answer(q: str) -> list[dict[str, Any]]:
    name = "errors" if "error" in q else "ttft" if "histogram" in q else "requests"
    per_revision = VALUES.get(name, {"new": 0.4, "old": 0.2})
    return [
        {"metric": {"namespace": "ns", "llmdeployment": n, "revision": rev}, "value": [0, str(v)]}
        for n in ("a", "b")
        for rev, v in per_revision.items()
    ]


@pytest.fixture
async def prometheus() -> AsyncIterator[StandIn]:
    async with stand_in_prometheus(answer) as stand_in:
        yield stand_in


async def test_one_set_of_queries_judges_every_due_canary(prometheus: StandIn) -> None:
    url, seen = prometheus.url, prometheus.seen
    cache = Cache()
    for body in (canary_llmd("a"), canary_llmd("b"), canary_llmd("done", phase="Stable")):
        cache.observe_llmd("ADDED", body)
    now = [1000.0]
    enqueued: list[tuple[str, str]] = []
    loop = AnalysisLoop(cache, enqueued.append, url, min_window_seconds=30, clock=lambda: now[0])
    async with client(10.0) as session:
        await loop.tick(session)
        assert len(seen) == 3  # requests, errors, TTFT: for every canary at once
        assert all("[30s]" in q for q in seen)
        result = loop.latest(("ns", "a"), "new")
        assert result is not None
        assert result["verdict"] == "Failed"
        assert result["errorRatio"] == 0.4
        assert loop.latest(("ns", "a"), "other") is None  # a verdict about another candidate
        assert loop.latest(("ns", "done"), "new") is None
        assert sorted(enqueued) == [("ns", "a"), ("ns", "b")]

        now[0] += 5  # not due yet (intervalSeconds 10)
        await loop.tick(session)
        assert len(seen) == 3

        now[0] += 5
        prometheus.up = False
        await loop.tick(session)
    result = loop.latest(("ns", "b"), "new")
    assert result is not None
    assert result["verdict"] == "Inconclusive"
    assert "HTTP 503" in result["message"]


async def test_without_a_prometheus_url_every_check_is_inconclusive() -> None:
    cache = Cache()
    cache.observe_llmd("ADDED", canary_llmd("a"))
    loop = AnalysisLoop(cache, lambda key: None, "")
    async with client(10.0) as session:
        await loop.tick(session)
    result = loop.latest(("ns", "a"), "new")
    assert result is not None
    assert result["verdict"] == "Inconclusive"
    assert "no Prometheus URL" in result["message"]
