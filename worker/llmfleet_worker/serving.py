"""Protocol <-> engine: prompts to token ids, engine outputs to OpenAI responses and SSE.

Routes stay thin; everything that knows both the OpenAI protocol and the engine lives here,
including error mapping and the per-request metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmfleet_worker.api.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    Usage,
    error_json,
    new_id,
    now,
)
from llmfleet_worker.engine.core import DrainingError, Output, QueueFullError, RequestHandle
from llmfleet_worker.engine.scheduler import SamplingParams
from llmfleet_worker.metrics import Metrics
from llmfleet_worker.settings import Settings

log = logging.getLogger(__name__)

# Tokenizing is linear in the text; beyond this many characters do it off the event loop.
_INLINE_TOKENIZE_CHARS = 20_000


class TextEngine(Protocol):
    """What serving needs: the core engine plus a tokenizer."""

    max_model_len: int
    vocab_size: int
    max_chars_per_token: int

    @property
    def ready(self) -> bool: ...

    @property
    def healthy(self) -> bool: ...

    @property
    def num_waiting(self) -> int: ...

    @property
    def num_running(self) -> int: ...

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def chat_prompt(self, messages: list[dict[str, str]]) -> str: ...

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> RequestHandle: ...


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        outcome: str = "invalid",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_
        self.param, self.code, self.headers, self.outcome = param, code, headers, outcome

    def response(self) -> JSONResponse:
        body = error_json(self.message, self.type, param=self.param, code=self.code)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class Serving:
    """OpenAI endpoints over a :class:`TextEngine`."""

    def __init__(self, engine: TextEngine, settings: Settings, metrics: Metrics) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.created = now()

    # ---- endpoints ------------------------------------------------------------------
    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.settings.model_name, created=self.created)])

    async def completion(self, req: CompletionRequest, request: Request) -> Response:
        arrival = time.monotonic()
        try:
            self._check_model(req.model)
            prompt = req.prompt_input()
            if isinstance(prompt, str):
                ids = await self._encode(prompt, add_special_tokens=True, param="prompt")
            else:
                ids = prompt
                vocab = self.engine.vocab_size
                if any(t < 0 or t >= vocab for t in ids):
                    raise APIError(
                        400,
                        f"prompt token ids must be in [0, {vocab}) for this model",
                        param="prompt",
                    )
            handle = self._submit(ids, req, default_max=None)
        except APIError as err:
            return self._fail(err)
        rid = new_id("cmpl")
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(self._completion_events(handle, rid, req.model, arrival, include_usage))
        return await self._complete(handle, request, arrival, rid, req.model, chat=False)

    async def chat(self, req: ChatCompletionRequest, request: Request) -> Response:
        arrival = time.monotonic()
        try:
            self._check_model(req.model)
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
            try:
                text = self.engine.chat_prompt(messages)
            except ValueError as exc:
                raise APIError(
                    400, f"cannot apply the chat template: {exc}", param="messages"
                ) from exc
            ids = await self._encode(text, add_special_tokens=False, param="messages")
            handle = self._submit(ids, req, default_max=self.engine.max_model_len - len(ids))
        except APIError as err:
            return self._fail(err)
        rid = new_id("chatcmpl")
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(self._chat_events(handle, rid, req.model, arrival, include_usage))
        return await self._complete(handle, request, arrival, rid, req.model, chat=True)

    # ---- admission ------------------------------------------------------------------
    def _check_model(self, model: str) -> None:
        if model != self.settings.model_name:
            raise APIError(
                404,
                f"The model '{model}' does not exist; this worker serves "
                f"'{self.settings.model_name}'.",
                param="model",
                code="model_not_found",
            )

    def _too_long(self, n: int | None) -> APIError:
        got = f" However, your prompt has {n} tokens." if n is not None else ""
        return APIError(
            400,
            f"This model's maximum context length is {self.engine.max_model_len} tokens.{got}",
            param="prompt",
            code="context_length_exceeded",
        )

    async def _encode(self, text: str, *, add_special_tokens: bool, param: str) -> list[int]:
        # A token covers at most max_chars_per_token characters, so longer text cannot fit:
        # refuse megabytes without tokenizing them (and without stalling anybody).
        if len(text) > self.engine.max_model_len * self.engine.max_chars_per_token:
            raise self._too_long(None)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            # JSON can carry lone surrogates ("\ud800"); they are not text, and tokenizers
            # raise on them.
            raise APIError(
                400, f"{param} is not valid Unicode text: {exc.reason}", param=param
            ) from exc
        if len(text) > _INLINE_TOKENIZE_CHARS:
            ids = await asyncio.to_thread(
                self.engine.encode, text, add_special_tokens=add_special_tokens
            )
        else:
            ids = self.engine.encode(text, add_special_tokens=add_special_tokens)
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        if len(ids) >= self.engine.max_model_len:
            raise self._too_long(len(ids))
        return ids

    def _submit(
        self,
        ids: list[int],
        req: CompletionRequest | ChatCompletionRequest,
        *,
        default_max: int | None,
    ) -> RequestHandle:
        room = self.engine.max_model_len - len(ids)
        if room < 1:
            raise self._too_long(len(ids))
        max_tokens = req.max_tokens if req.max_tokens is not None else (default_max or 16)
        if max_tokens > room:
            raise APIError(
                400,
                f"This model's maximum context length is {self.engine.max_model_len} tokens; "
                f"the prompt has {len(ids)} tokens and max_tokens asks for {max_tokens}.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        try:
            handle = self.engine.submit(ids, sampling_params(req, max_tokens))
        except QueueFullError as exc:
            raise APIError(
                429,
                f"The worker is at capacity ({exc}); retry later.",
                "rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self.settings.retry_after)},
                outcome="rejected",
            ) from exc
        except DrainingError as exc:
            raise _draining() from exc
        except ValueError as exc:
            raise APIError(400, str(exc), param="prompt") from exc
        except RuntimeError as exc:
            raise APIError(500, "the engine has failed", "server_error", outcome="error") from exc
        self.metrics.prompt_tokens.inc(len(ids))
        return handle

    def _fail(self, err: APIError) -> JSONResponse:
        self.metrics.requests.labels(outcome=err.outcome).inc()
        return err.response()

    # ---- results ------------------------------------------------------------------
    def _observe(
        self, handle: RequestHandle, batch: list[Output], arrival: float, state: list[float]
    ) -> None:
        """Per-token metrics; ``state`` holds the previous token's time (empty before the first)."""
        m = self.metrics
        for out in batch:
            if out.num_tokens:
                m.generation_tokens.inc(out.num_tokens)
                if state:
                    m.itl.observe(out.time - state[0])
                    state[0] = out.time
                else:
                    m.ttft.observe(out.time - arrival)
                    state.append(out.time)
            if out.finish_reason is not None:
                m.duration.observe(out.time - arrival)

    def _outcome(self, reason: str | None) -> str:
        return {"stop": "success", "length": "success", "cancelled": "cancelled"}.get(
            reason or "", "aborted" if reason == "abort" else "error"
        )

    async def _complete(
        self,
        handle: RequestHandle,
        request: Request,
        arrival: float,
        rid: str,
        model: str,
        *,
        chat: bool,
    ) -> Response:
        pieces: list[str] = []
        count = 0
        state: list[float] = []

        async def collect() -> None:
            nonlocal count
            async for batch in handle.batches():
                self._observe(handle, batch, arrival, state)
                for out in batch:
                    pieces.append(out.text)
                    count += out.num_tokens

        collector = asyncio.ensure_future(collect())
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        try:
            await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not collector.done():  # the client went away: free the slot
                handle.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
        collector.result()
        reason = handle.finish_reason
        outcome = self._outcome(reason)
        self.metrics.requests.labels(outcome=outcome).inc()
        if reason in ("abort", "error"):
            return _cut_short(reason).response()
        if outcome != "success":
            return APIError(
                499 if outcome == "cancelled" else 500,
                f"request {outcome}",
                "server_error",
                outcome=outcome,
            ).response()
        usage = _usage(handle, count)
        text = "".join(pieces)
        body: ChatCompletionResponse | CompletionResponse
        if chat:
            body = ChatCompletionResponse(
                id=rid,
                created=now(),
                model=model,
                choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=reason)],
                usage=usage,
            )
        else:
            body = CompletionResponse(
                id=rid,
                created=now(),
                model=model,
                choices=[CompletionChoice(text=text, finish_reason=reason)],
                usage=usage,
            )
        return JSONResponse(body.model_dump())

    async def _events(
        self, handle: RequestHandle, arrival: float
    ) -> AsyncIterator[tuple[str, str | None, int]]:
        """(text, finish_reason, tokens so far) per delivered batch; cancels on disconnect."""
        state: list[float] = []
        count = 0
        finished = False
        try:
            async for batch in handle.batches():
                self._observe(handle, batch, arrival, state)
                count += sum(o.num_tokens for o in batch)
                finished = batch[-1].finish_reason is not None
                yield "".join(o.text for o in batch), batch[-1].finish_reason, count
        finally:
            if not finished:  # generator closed early: the client disconnected
                handle.cancel()
                self.metrics.requests.labels(outcome="cancelled").inc()
            else:
                self.metrics.requests.labels(outcome=self._outcome(handle.finish_reason)).inc()

    async def _chat_events(
        self, handle: RequestHandle, rid: str, model: str, arrival: float, include_usage: bool
    ) -> AsyncIterator[str]:
        created = now()

        # Chunks are formatted from a pre-serialised head: this runs once per token per stream.
        head = _json(
            {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
        )[:-1]

        def chunk(delta: ChatDelta, reason: str | None = None) -> str:
            body = _json(delta.model_dump(exclude_none=True))
            return (
                f'data: {head},"choices":[{{"index":0,"delta":{body},'
                f'"finish_reason":{_json(reason)},"logprobs":null}}]}}\n\n'
            )

        yield chunk(ChatDelta(role="assistant", content=""))
        count = 0
        async for text, reason, total in self._events(handle, arrival):
            count = total
            if reason in ("abort", "error"):
                yield _data(_cut_short(reason).body())
                break
            if text:
                yield chunk(ChatDelta(content=text))
            if reason is not None:
                yield chunk(ChatDelta(), reason)
        if include_usage:
            usage = _usage(handle, count)
            yield _data(
                ChatCompletionChunk(
                    id=rid, created=created, model=model, choices=[], usage=usage
                ).model_dump()
            )
        yield "data: [DONE]\n\n"

    async def _completion_events(
        self, handle: RequestHandle, rid: str, model: str, arrival: float, include_usage: bool
    ) -> AsyncIterator[str]:
        created = now()
        head = _json({"id": rid, "object": "text_completion", "created": created, "model": model})[
            :-1
        ]
        count = 0
        async for text, reason, total in self._events(handle, arrival):
            count = total
            if reason in ("abort", "error"):
                yield _data(_cut_short(reason).body())
                break
            if text or reason is not None:
                yield (
                    f'data: {head},"choices":[{{"index":0,"text":{_json(text)},'
                    f'"finish_reason":{_json(reason)},"logprobs":null}}]}}\n\n'
                )
        if include_usage:
            usage = _usage(handle, count)
            yield _data(
                CompletionResponse(
                    id=rid, created=created, model=model, choices=[], usage=usage
                ).model_dump()
            )
        yield "data: [DONE]\n\n"


def sampling_params(
    req: CompletionRequest | ChatCompletionRequest, max_tokens: int
) -> SamplingParams:
    """The engine's view of a validated request."""
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed,
        stop=req.stop_tuple(),
        ignore_eos=req.ignore_eos,
    )


def _usage(handle: RequestHandle, completion_tokens: int) -> Usage:
    """Token counts of a finished (or cut short) request."""
    return Usage(
        prompt_tokens=handle.prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=handle.prompt_tokens + completion_tokens,
    )


class _ServingError(APIError):
    def body(self) -> dict[str, Any]:
        return error_json(self.message, self.type, code=self.code)


def _draining(
    message: str = "The worker is shutting down; retry on another replica.",
) -> _ServingError:
    return _ServingError(503, message, "service_unavailable", code="draining", outcome="rejected")


def _cut_short(reason: str) -> _ServingError:
    """The error for a request the worker could not finish (drain deadline, or a failure of
    this request, of its engine step or of the engine)."""
    if reason == "abort":
        return _draining("The worker shut down before the request finished; retry it.")
    return _ServingError(
        500,
        "The worker failed while generating this request; retry it.",
        "server_error",
        code="engine_error",
        outcome="error",
    )


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _data(obj: dict[str, Any]) -> str:
    return f"data: {_json(obj)}\n\n"


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
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
