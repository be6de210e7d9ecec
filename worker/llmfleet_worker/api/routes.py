"""HTTP routes: parse, delegate to :class:`~llmfleet_worker.serving.Serving`, and turn what it
returns (or raises) into a response with :mod:`~llmfleet_worker.api.responses`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmfleet_worker.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModelList,
)
from llmfleet_worker.api.responses import error_response, respond
from llmfleet_worker.serving import Serving, ServingError

router = APIRouter()

# What the OpenAPI schema says a generation endpoint can answer besides 200 (docs/worker.md).
_GENERATION_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "invalid request (the error's param names the field)",
        401: "missing or wrong API key",
        404: "unknown model",
        413: "request body too large",
        429: "waiting queue full (Retry-After)",
        500: "this request failed on the worker",
        503: "draining",
    }.items()
}


def _serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    return _serving(request).models()


@router.post("/v1/completions", responses=_GENERATION_ERRORS)
async def completions(body: CompletionRequest, request: Request) -> Response:
    try:
        result = await _serving(request).completion(body)
    except ServingError as err:
        return error_response(err)
    return await respond(request, result)


@router.post("/v1/chat/completions", responses=_GENERATION_ERRORS)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    try:
        result = await _serving(request).chat(body)
    except ServingError as err:
        return error_response(err)
    return await respond(request, result)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """Liveness: 200 while the process serves HTTP and its engine thread is alive."""
    if _serving(request).engine.healthy:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "engine failed"}, status_code=503)


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 only while the model is loaded and the worker is not draining (readiness)."""
    engine = _serving(request).engine
    if engine.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready"}, status_code=503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = _serving(request).metrics.registry
    return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
