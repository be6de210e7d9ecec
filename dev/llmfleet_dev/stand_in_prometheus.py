"""An in-process stand-in for Prometheus's instant-query API, for unit tests of the loops
that query it (the real Prometheus is in tests/e2e and tests/integration).

It evaluates no PromQL: a test's ``answer`` maps the exact query text to the result. So that
it stays honest, it answers as Prometheus would where that is not the test's choice: every
result is stamped with the stand-in's evaluation time (``clock``), and a query the test does
not know (``answer`` raises ``KeyError``) is refused as Prometheus refuses a bad query (HTTP
400, ``bad_data``), never answered with a plausible empty vector.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

#: query text -> the vector's result items ({"metric": {...}, "value": [t, "v"]}; ``t`` is
#: replaced by the evaluation time). Raises KeyError for a query it does not know.
Answer = Callable[[str], list[dict[str, Any]]]


@dataclass
class StandIn:
    url: str
    #: Every query received, in order.
    seen: list[str] = field(default_factory=list)
    #: False: answer 503 like a Prometheus that is down.
    up: bool = True
    #: Prometheus's clock: the evaluation time of every answer (epoch seconds).
    clock: Callable[[], float] = time.time


def by_query(table: Mapping[str, Callable[[], list[dict[str, Any]]]]) -> Answer:
    """An ``answer`` from exact query texts (e.g. ``promql.queries(...)``'s values)."""

    def answer(q: str) -> list[dict[str, Any]]:
        return table[q]()

    return answer


@contextlib.asynccontextmanager
async def stand_in_prometheus(
    answer: Answer, clock: Callable[[], float] = time.time
) -> AsyncIterator[StandIn]:
    """Serve ``/api/v1/query`` on a free loopback port until the block ends."""
    stand_in = StandIn("", clock=clock)

    async def query(request: web.Request) -> web.Response:
        q = request.query["query"]
        stand_in.seen.append(q)
        if not stand_in.up:
            return web.Response(status=503, text="down")
        try:
            items = answer(q)
        except KeyError:
            return web.json_response(
                {"status": "error", "errorType": "bad_data", "error": f"unknown query {q!r}"},
                status=400,
            )
        at = stand_in.clock()
        result = [{**item, "value": [at, item["value"][1]]} for item in items]
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stand_in.url = f"http://127.0.0.1:{port}"
    try:
        yield stand_in
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def stand_in_prometheus_thread(
    answer: Answer, clock: Callable[[], float] = time.time
) -> Iterator[StandIn]:
    """:func:`stand_in_prometheus` served from a thread of its own, for synchronous callers
    (the benchmarks); ``answer`` is called on that thread."""
    started = threading.Event()
    served: dict[str, Any] = {}

    async def serve() -> None:
        served["loop"], served["stop"] = asyncio.get_running_loop(), asyncio.Event()
        async with stand_in_prometheus(answer, clock) as stand_in:
            served["stand_in"] = stand_in
            started.set()
            await served["stop"].wait()

    thread = threading.Thread(
        target=lambda: asyncio.run(serve()), name="stand-in-prometheus", daemon=True
    )
    thread.start()
    if not started.wait(timeout=30):
        raise RuntimeError("the stand-in Prometheus did not start within 30 s")
    try:
        yield served["stand_in"]
    finally:
        served["loop"].call_soon_threadsafe(served["stop"].set)
        thread.join(timeout=10)
