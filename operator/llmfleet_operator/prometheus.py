"""The operator's Prometheus client: instant queries, every failure one exception type."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import aiohttp

from llmfleet_operator import promql


class PrometheusError(Exception):
    """Prometheus could not be queried."""


async def query_prometheus(
    session: aiohttp.ClientSession,
    base_url: str,
    query: str,
    labels: tuple[str, ...] = ("namespace", "llmdeployment"),
) -> dict[tuple[str, ...], promql.Sample]:
    """One instant query, keyed by the values of ``labels``; raises PrometheusError."""
    url = base_url.rstrip("/") + "/api/v1/query"
    try:
        async with session.get(url, params={"query": query}) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise PrometheusError(f"HTTP {resp.status}: {text[:200]}")
            body = json.loads(text)
    except (TimeoutError, aiohttp.ClientError, ValueError) as e:
        raise PrometheusError(f"{type(e).__name__}: {e}".strip(": ")) from e
    try:
        return promql.parse_vector(body, labels)
    except ValueError as e:
        raise PrometheusError(str(e)) from e


async def query_all(
    session: aiohttp.ClientSession,
    base_url: str,
    queries: Mapping[str, str],
    labels: tuple[str, ...] = ("namespace", "llmdeployment"),
) -> dict[str, dict[tuple[str, ...], promql.Sample]] | PrometheusError:
    """Every query of ``queries`` (name -> PromQL) at once: all answers, or the first error
    (one failed query makes the set unusable: signals must come from the same moment)."""
    results = await asyncio.gather(
        *(query_prometheus(session, base_url, q, labels) for q in queries.values()),
        return_exceptions=True,
    )
    answers: dict[str, dict[tuple[str, ...], promql.Sample]] = {}
    for name, result in zip(queries, results, strict=True):
        if isinstance(result, BaseException):
            return result if isinstance(result, PrometheusError) else PrometheusError(str(result))
        answers[name] = result
    return answers
