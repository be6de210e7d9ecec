"""The ASGI application: routes, OpenAI-shaped errors, body limit and API key checks.

``build_app(engine, settings)`` takes any engine that satisfies
:class:`~llmfleet_worker.engine.protocol.EngineClient`, so tests inject a fake where torch is
not the point. The app does not start or stop the engine; whoever built the engine does.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmfleet_worker import __version__
from llmfleet_worker.api.protocol import error_json
from llmfleet_worker.api.routes import router
from llmfleet_worker.engine.protocol import EngineClient
from llmfleet_worker.metrics import Metrics
from llmfleet_worker.serving import Serving
from llmfleet_worker.settings import Settings

log = logging.getLogger(__name__)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class RequestTooLargeError(StarletteHTTPException):
    """Raised from ``receive`` once a body passes the limit; becomes a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes.")


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str]
) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class BodyLimitMiddleware:
    """413 before parsing: by ``Content-Length`` up front, or by counting streamed bytes."""

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit or declared < 0:
                    status = 413 if declared > self.limit else 400
                    message = (
                        f"The request body is larger than {self.limit} bytes."
                        if status == 413
                        else "Invalid Content-Length header."
                    )
                    self.metrics.requests.labels(outcome="invalid").inc()
                    await _send_json(
                        send,
                        status,
                        error_json(message, "invalid_request_error"),
                        {"Connection": "close"},
                    )
                    return
        seen = 0
        limit = self.limit

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise RequestTooLargeError(limit)
            return message

        await self.app(scope, counted, send)


class APIKeyMiddleware:
    """Bearer key on ``/v1/*`` (probes and metrics stay open); constant-time comparison."""

    def __init__(self, app: ASGIApp, key: str, metrics: Metrics) -> None:
        self.app, self.key, self.metrics = app, key.encode(), metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        provided = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    provided = token.strip()
        if not hmac.compare_digest(provided, self.key):
            self.metrics.requests.labels(outcome="rejected").inc()
            body = error_json(
                "Missing or incorrect API key; send 'Authorization: Bearer <key>'.",
                "invalid_request_error",
                code="invalid_api_key",
            )
            await _send_json(send, 401, body, {"WWW-Authenticate": "Bearer"})
            return
        await self.app(scope, receive, send)


def _answer_validation_errors_with_400(app: FastAPI) -> None:
    """FastAPI documents a 422 for every body; this app answers invalid bodies with 400 in
    OpenAI's error shape (see ``validation_error``), declared on the routes."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def build_app(engine: EngineClient, settings: Settings, metrics: Metrics | None = None) -> FastAPI:
    """The worker's FastAPI app around ``engine``."""
    metrics = metrics or Metrics()
    metrics.bind(engine)
    app = FastAPI(
        title="llmfleet worker",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",  # what clients and the schema fuzz test read
    )
    app.state.serving = Serving(engine, settings, metrics)
    app.include_router(router)
    _answer_validation_errors_with_400(app)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        # Every API request ends in exactly one outcome, these too: a client that went away
        # while its body was read (FastAPI answers that with a 400 caused by the disconnect)
        # cancelled; anything else refused here (413 while counting, 404, 405) was invalid.
        if isinstance(exc.__cause__, ClientDisconnect):
            metrics.requests.labels(outcome="cancelled").inc()
        elif request.url.path.startswith("/v1/"):
            metrics.requests.labels(outcome="invalid").inc()
        message = str(exc.detail) if exc.detail else "error"
        if status == 404:
            message = "Not found: no such endpoint."
        body = error_json(
            message,
            _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
        )
        return JSONResponse(body, status_code=status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.requests.labels(outcome="invalid").inc()
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            message, param = "The request body is not valid JSON.", None
        else:
            where = ".".join(loc)
            message = (
                f"{where}: {first.get('msg', 'invalid value')}" if where else str(first.get("msg"))
            )
            param = loc[0] if loc else None
        return JSONResponse(
            error_json(message, "invalid_request_error", param=param), status_code=400
        )

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %s", exc, exc_info=exc)
        metrics.requests.labels(outcome="error").inc()
        return JSONResponse(error_json("Internal server error.", "server_error"), status_code=500)

    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes, metrics=metrics)
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, key=settings.api_key, metrics=metrics)
    return app
