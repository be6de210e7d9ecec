"""The Prometheus client against a real HTTP server on loopback: no redirects followed, no
response body copied into an error, only allowed URLs queried, a slow one cut off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from llmfleet_operator.prometheus import (
    PrometheusError,
    client,
    pick_url,
    query_all,
    query_prometheus,
)

SECRET_PAGE = "internal admin console: db password hunter2"


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data")

    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=500, text=SECRET_PAGE)

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.json_response({"status": "success", "data": {"result": []}})

    app = web.Application()
    app.router.add_get("/redirect/api/v1/query", redirect)
    app.router.add_get("/broken/api/v1/query", broken)
    app.router.add_get("/slow/api/v1/query", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_redirects_are_not_followed(server: str) -> None:
    async with client(10.0) as session:
        with pytest.raises(PrometheusError, match=r"HTTP 302 \(redirects are not followed\)"):
            await query_prometheus(session, f"{server}/redirect", "up")


async def test_an_error_page_is_not_copied_into_the_error(server: str) -> None:
    async with client(10.0) as session:
        with pytest.raises(PrometheusError) as err:
            await query_prometheus(session, f"{server}/broken", "up")
    assert str(err.value) == "HTTP 500"
    assert "hunter2" not in str(err.value)


async def test_a_slow_prometheus_is_cut_off(server: str) -> None:
    async with client(10.0) as session:
        answer = await query_all(session, f"{server}/slow", {"up": "up"}, limit_seconds=0.2)
    assert isinstance(answer, PrometheusError)
    assert str(answer) == "no answer in 0.2s"


async def test_the_client_times_out_a_silent_server_by_itself(server: str) -> None:
    async with client(0.2) as session:
        with pytest.raises(PrometheusError, match="ReadTimeout"):
            await query_prometheus(session, f"{server}/slow", "up")


def test_only_allowed_urls_are_queried() -> None:
    own = "http://prometheus.monitoring.svc:9090"
    assert pick_url(None, own) == own
    assert pick_url(own + "/", own) == own  # the operator's own, however spelled
    refused = pick_url("http://10.0.0.1:9090", own)
    assert isinstance(refused, PrometheusError)
    assert "is not one the operator may query" in str(refused)
    team = "http://team-prom.ml.svc:9090"
    assert pick_url(team, own, (team,)) == team
    none = pick_url(None, "")
    assert isinstance(none, PrometheusError)
    assert "no Prometheus URL configured" in str(none)
