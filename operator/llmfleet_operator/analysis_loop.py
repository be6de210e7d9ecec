"""The canary analysis loop: every ``analysis.intervalSeconds`` of each canary in progress,
ask Prometheus about the candidate and the stable revision, judge, hand the verdict to the
reconciler (which counts it and moves the rollout) and enqueue a reconcile.

One set of queries per Prometheus and window answers for every canary at once (grouped by
namespace, LLMDeployment and revision), as the autoscaler does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import ValidationError

from llmfleet_operator import metrics, promql, rollout
from llmfleet_operator.analysis import RevisionMetrics, inconclusive, judge, window_seconds
from llmfleet_operator.api import LLMDeploymentSpec, RolloutStrategy
from llmfleet_operator.cache import Cache, Key
from llmfleet_operator.prometheus import PrometheusError, client, pick_url, query_all

log = logging.getLogger(__name__)

#: Phases in which the candidate's step is analysed.
ANALYSED_PHASES = (rollout.CANARY, rollout.PAUSED)


def analysis_time(moment: float) -> str:
    """Millisecond RFC 3339: two checks of a 1 s interval must not share a timestamp."""
    return (
        datetime.fromtimestamp(moment, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class AnalysisLoop:
    """Owns the latest verdict per LLMDeployment; the reconciler reads it with ``latest``."""

    def __init__(
        self,
        cache: Cache,
        enqueue: Callable[[Key], None],
        prometheus_url: str,
        min_window_seconds: int = 60,
        tick: float = 1.0,
        clock: Callable[[], float] = time.time,
        allowed_urls: tuple[str, ...] = (),
    ) -> None:
        self.cache = cache
        self.enqueue = enqueue
        self.prometheus_url = prometheus_url
        self.allowed_urls = allowed_urls
        self.min_window_seconds = min_window_seconds
        self.tick_seconds = tick
        self._clock = clock
        self._latest: dict[Key, tuple[str, dict[str, Any]]] = {}
        self._last_run: dict[Key, float] = {}

    def latest(self, key: Key, revision: str) -> Mapping[str, Any] | None:
        """The newest verdict about candidate ``revision`` of ``key``."""
        found = self._latest.get(key)
        return found[1] if found is not None and found[0] == revision else None

    def forget(self, key: Key) -> None:
        self._latest.pop(key, None)
        self._last_run.pop(key, None)

    async def run(self) -> None:
        """Check what is due every ``tick`` seconds until cancelled."""
        timeout = 10.0
        async with client(timeout) as session:
            while True:
                try:
                    await self.tick(session)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("canary analysis failed; every canary holds its step")
                await asyncio.sleep(self.tick_seconds)

    def _due(self, now: float) -> list[tuple[Key, LLMDeploymentSpec, str, str]]:
        """(key, spec, candidate, stable) of every canary whose next check is due."""
        due = []
        for key, body in list(self.cache.llmds.items()):
            st = (body.get("status") or {}).get("rollout") or {}
            if st.get("phase") not in ANALYSED_PHASES or not st.get("stepStartedTime"):
                continue
            try:
                spec = self.cache.spec_of(key, body)
            except ValidationError:
                continue
            if spec.rollout.strategy is not RolloutStrategy.CANARY:
                continue
            interval = spec.rollout.canary_settings().analysis.interval_seconds
            if now - self._last_run.get(key, 0.0) < interval:
                continue
            due.append((key, spec, str(st.get("candidateRevision")), str(st.get("stableRevision"))))
        return due

    async def tick(self, session: httpx.AsyncClient) -> None:
        now = self._clock()
        groups: dict[
            tuple[str | PrometheusError, int], list[tuple[Key, LLMDeploymentSpec, str, str]]
        ] = {}
        for item in self._due(now):
            spec = item[1]
            analysis = spec.rollout.canary_settings().analysis
            url = pick_url(spec.autoscaling.prometheus_url, self.prometheus_url, self.allowed_urls)
            window = window_seconds(analysis.interval_seconds, self.min_window_seconds)
            groups.setdefault((url, window), []).append(item)
        keys = list(groups)
        # Every Prometheus at once, each with its own timeout.
        fetched = await asyncio.gather(*(self._fetch(session, u, w) for u, w in keys))
        for (url, window), answers in zip(keys, fetched, strict=True):
            items = groups[(url, window)]
            stamp = analysis_time(self._clock())
            for key, spec, candidate, stable in items:
                limits = spec.rollout.canary_settings().analysis
                if isinstance(url, PrometheusError):
                    result = inconclusive(str(url), stamp)
                elif isinstance(answers, PrometheusError):
                    result = inconclusive(f"Prometheus at {url}: {answers}", stamp)
                else:
                    result = judge(
                        limits,
                        _metrics_of(answers, key, candidate),
                        _metrics_of(answers, key, stable),
                        window,
                        stamp,
                    )
                self._last_run[key] = now
                self._latest[key] = (candidate, result)
                metrics.count_canary_analysis(key, result["verdict"])
                log.info("canary analysis %s/%s: %s %s", *key, result["verdict"], result["message"])
                self.enqueue(key)

    async def _fetch(
        self, session: httpx.AsyncClient, url: str | PrometheusError, window: int
    ) -> dict[str, dict[tuple[str, ...], promql.Sample]] | PrometheusError:
        if isinstance(url, PrometheusError):
            return url
        return await query_all(session, url, promql.analysis_queries(window), promql.ANALYSIS_BY)


def _metrics_of(
    answers: Mapping[str, Mapping[tuple[str, ...], promql.Sample]], key: Key, revision: str
) -> RevisionMetrics:
    def value(name: str) -> float | None:
        sample = answers.get(name, {}).get((key[0], key[1], revision))
        return sample.value if sample is not None else None

    return RevisionMetrics(value("requests"), value("errors"), value("ttft_p95"))
