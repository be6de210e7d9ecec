"""The operator's Prometheus client: instant queries, every failure one exception type."""

from __future__ import annotations

import json

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
