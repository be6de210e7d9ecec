"""The operator's Prometheus client: instant queries, every failure one exception type.

What a spec may point it at is the operator's choice (``--allowed-prometheus-urls``): the
URL comes from anyone who may write an LLMDeployment, and the operator's network position is
not theirs to borrow. Redirects are not followed, and no response body reaches status or
Events (an error page of an internal service is not for every reader of the object).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import httpx

from llmfleet_operator import promql

#: One set of queries to one Prometheus; a slow one holds only the fleets that use it.
QUERY_TIMEOUT_SECONDS = 10.0


#: Connections kept per client: one loop's queries to a handful of Prometheus URLs at once.
MAX_CONNECTIONS = 16


class PrometheusError(Exception):
    """Prometheus could not be queried."""


def client(timeout_seconds: float) -> httpx.AsyncClient:
    """The HTTP client Prometheus queries go through: a timeout on every phase (connect,
    read, write, pool), a bounded pool, no redirects, and no proxy taken from the
    environment (the URL is the operator's choice, the route too)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_seconds),
        limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=4),
        follow_redirects=False,
        trust_env=False,
    )


async def query_prometheus(
    session: httpx.AsyncClient,
    base_url: str,
    query: str,
    labels: tuple[str, ...] = ("namespace", "llmdeployment"),
) -> dict[tuple[str, ...], promql.Sample]:
    """One instant query, keyed by the values of ``labels``; raises PrometheusError."""
    url = base_url.rstrip("/") + "/api/v1/query"
    try:
        resp = await session.get(url, params={"query": query})
        if resp.is_redirect or 300 <= resp.status_code < 400:
            raise PrometheusError(f"HTTP {resp.status_code} (redirects are not followed)")
        if resp.status_code >= 400:
            raise PrometheusError(f"HTTP {resp.status_code}")
        body = resp.json()
    except (TimeoutError, httpx.HTTPError, ValueError) as e:
        raise PrometheusError(f"{type(e).__name__}: {e}".strip(": ")) from e
    try:
        return promql.parse_vector(body, labels)
    except ValueError as e:
        raise PrometheusError(str(e)) from e


def normalise(url: str) -> str:
    return url.strip().rstrip("/")


def pick_url(
    spec_url: str | None, default: str, allowed: tuple[str, ...] = ()
) -> str | PrometheusError:
    """The Prometheus to query for one LLMDeployment: its own ``prometheusURL`` when the
    operator allows it (the default URL always is), else the default; a PrometheusError
    saying why when there is none to use."""
    if spec_url and normalise(spec_url) != normalise(default):
        if normalise(spec_url) not in {normalise(u) for u in allowed}:
            return PrometheusError(
                f"spec.autoscaling.prometheusURL {spec_url} is not one the operator may query "
                "(its --allowed-prometheus-urls); the operator's own Prometheus is used only "
                "when the field is unset"
            )
        return spec_url
    if not default:
        return PrometheusError(
            "no Prometheus URL configured (operator --prometheus-url or "
            "spec.autoscaling.prometheusURL)"
        )
    return default


async def query_all(
    session: httpx.AsyncClient,
    base_url: str,
    queries: Mapping[str, str],
    labels: tuple[str, ...] = ("namespace", "llmdeployment"),
    limit_seconds: float = QUERY_TIMEOUT_SECONDS,
) -> dict[str, dict[tuple[str, ...], promql.Sample]] | PrometheusError:
    """Every query of ``queries`` (name -> PromQL) at once: all answers, or the first error
    (one failed query makes the set unusable: signals must come from the same moment)."""
    try:
        async with asyncio.timeout(limit_seconds):
            results = await asyncio.gather(
                *(query_prometheus(session, base_url, q, labels) for q in queries.values()),
                return_exceptions=True,
            )
    except TimeoutError:
        return PrometheusError(f"no answer in {limit_seconds:g}s")
    answers: dict[str, dict[tuple[str, ...], promql.Sample]] = {}
    for name, result in zip(queries, results, strict=True):
        if isinstance(result, BaseException):
            return result if isinstance(result, PrometheusError) else PrometheusError(str(result))
        answers[name] = result
    return answers
