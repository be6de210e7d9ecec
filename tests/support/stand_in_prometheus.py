"""An in-process stand-in for Prometheus's instant-query API, for unit tests of the loops
that query it (the real Prometheus is in tests/e2e)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

#: query text -> the vector's result items ({"metric": {...}, "value": [t, "v"]}).
Answer = Callable[[str], list[dict[str, Any]]]


@dataclass
class StandIn:
    url: str
    #: Every query received, in order.
    seen: list[str] = field(default_factory=list)
    #: False: answer 503 like a Prometheus that is down.
    up: bool = True


@contextlib.asynccontextmanager
async def stand_in_prometheus(answer: Answer) -> AsyncIterator[StandIn]:
    """Serve ``/api/v1/query`` on a free loopback port until the block ends."""
    stand_in = StandIn("")

    async def query(request: web.Request) -> web.Response:
        q = request.query["query"]
        stand_in.seen.append(q)
        if not stand_in.up:
            return web.Response(status=503, text="down")
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": answer(q)}}
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
