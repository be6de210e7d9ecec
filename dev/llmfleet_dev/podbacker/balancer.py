"""One LLMDeployment's HTTP load balancer, as its Service would be: on a loopback port, least
outstanding requests with round-robin among equals (the pick function decides), streaming
responses through (SSE included), and 503 in the OpenAI error shape when no worker is ready.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Protocol

import aiohttp
from aiohttp import web

from llmfleet_dev.podbacker.discovery import PodView

log = logging.getLogger("podbacker")

#: Headers that describe one connection, not the message (RFC 9110 7.6.1), plus the ones the
#: proxy recomputes (length, host) or sets itself (server, date).
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "server",
        "date",
    }
)


class Upstream(Protocol):
    """A worker the balancer routes to; it counts the requests it has outstanding there."""

    pod: PodView
    port: int
    inflight: int


#: ``pick(exclude, turn)``: a ready worker whose pod uid is not in ``exclude``, or None.
Pick = Callable[[set[str], int], Upstream | None]


def client_session() -> aiohttp.ClientSession:
    """The HTTP client the balancers forward with."""
    # auto_decompress=False: bodies pass through byte for byte with their encoding.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)


class Balancer:
    """One LLMDeployment's load balancer on a loopback port."""

    def __init__(self, key: tuple[str, str], pick: Pick, http: aiohttp.ClientSession) -> None:
        self.key = key
        self.pick = pick
        self.http = http
        self.turn = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )

    async def start(self) -> None:
        try:
            await self.runner.setup()
            await web.SockSite(self.runner, self.sock).start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self.runner.cleanup()
        self.sock.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        tried: set[str] = set()
        while True:
            self.turn += 1
            worker = self.pick(tried, self.turn)
            if worker is None:
                what = f"{self.key[0]}/{self.key[1]}"
                if tried:
                    return _error(502, f"no worker of {what} accepted the request")
                return _error(503, f"no ready worker for {what}")
            tried.add(worker.pod.uid)
            worker.inflight += 1
            try:
                try:
                    upstream = await self.http.request(
                        request.method,
                        f"http://127.0.0.1:{worker.port}{request.rel_url}",
                        data=body,
                        headers=headers,
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=3.0),
                    )
                except aiohttp.ClientConnectorError:
                    continue  # it went away before accepting: nothing was sent, try another
                except (aiohttp.ClientError, TimeoutError) as e:
                    return _error(502, f"worker {worker.pod.name} failed: {e}")
                return await self._relay(request, upstream)
            finally:
                worker.inflight -= 1

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        complete = False
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP_HEADERS:
                    response.headers.add(k, v)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                complete = True
            except aiohttp.ClientPayloadError as e:  # the worker broke off mid-response
                log.warning("upstream response broken off: %s", e)
                response.force_close()
            except ConnectionResetError:  # the client went away; closing upstream cancels it
                pass
            return response
        finally:
            if complete:
                upstream.release()
            else:
                upstream.close()


def _error(status: int, message: str) -> web.Response:
    """An OpenAI-shaped error."""
    kind = {503: "service_unavailable", 502: "bad_gateway"}.get(status, "server_error")
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": status}},
        status=status,
        headers={"Retry-After": "1"} if status == 503 else None,
    )
