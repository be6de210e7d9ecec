"""The serving layer's results as HTTP responses: status codes, streams, client disconnects.

:class:`~llmfleet_worker.serving.Serving` answers with protocol objects, a
:class:`~llmfleet_worker.serving.PendingResult`, an async iterator of server-sent events, or a
:class:`~llmfleet_worker.serving.ServingError`; this module alone turns those into Starlette
responses for the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmfleet_worker.serving import ErrorKind, PendingResult, ServingError

# 499 is nginx's "client closed request": the answer nobody reads, kept distinct from a failure.
_STATUS = {
    ErrorKind.INVALID: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.OVERLOADED: 429,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.FAILED: 500,
    ErrorKind.CANCELLED: 499,
}


def error_response(err: ServingError) -> JSONResponse:
    """``err`` in OpenAI's error shape, with its status code (and ``Retry-After``)."""
    headers = None if err.retry_after is None else {"Retry-After": str(err.retry_after)}
    return JSONResponse(err.body(), status_code=_STATUS[err.kind], headers=headers)


async def respond(request: Request, result: PendingResult | AsyncIterator[str]) -> Response:
    """The response to an admitted generation request: a JSON answer or an event stream."""
    if isinstance(result, PendingResult):
        return await _answer(request, result)
    return _event_stream(result)


async def _answer(request: Request, pending: PendingResult) -> Response:
    """The JSON answer; a client that goes away first cancels the request in the engine."""
    collector = asyncio.ensure_future(pending.result())
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not collector.done():  # the client went away: free the slot
            pending.cancel()
            # Wait for the engine to confirm; its error (cancelled) is answered below.
            with contextlib.suppress(asyncio.CancelledError, ServingError):
                await collector
    try:
        body = collector.result()
    except ServingError as err:
        return error_response(err)
    return JSONResponse(body.model_dump())


def _event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    # Starlette stops iterating when the client disconnects; closing the iterator early is
    # how the serving layer learns it, and aborts the request in the engine.
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _wait_disconnect(request: Request) -> None:
    """Return when the client disconnects (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
