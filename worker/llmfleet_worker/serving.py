"""Protocol <-> engine: prompts to token ids, engine outputs to OpenAI responses and SSE events.

Everything that knows both the OpenAI protocol and the engine lives here, including the
per-request metrics; nothing here knows HTTP. A request's result is a protocol object (a
:class:`PendingResult` while the engine generates it) or an async iterator of the stream's
server-sent events (the OpenAI protocol's stream format, ``data: [DONE]`` included); a request
refused or not finished is a :class:`ServingError`. :mod:`llmfleet_worker.api` turns these
into HTTP responses and status codes, and watches for clients that go away.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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
from llmfleet_worker.engine.protocol import EngineClient
from llmfleet_worker.engine.scheduler import SamplingParams
from llmfleet_worker.metrics import Metrics
from llmfleet_worker.settings import Settings

log = logging.getLogger(__name__)

# Tokenizing is linear in the text; beyond this many characters do it off the event loop.
_INLINE_TOKENIZE_CHARS = 20_000


class ErrorKind(enum.Enum):
    """Why a request was refused or not finished (the router answers each with its status)."""

    INVALID = enum.auto()  # it cannot be served as asked
    NOT_FOUND = enum.auto()  # it names a model this worker does not serve
    OVERLOADED = enum.auto()  # the waiting queue is full: retry later
    UNAVAILABLE = enum.auto()  # the worker is draining or shut down: retry on another replica
    FAILED = enum.auto()  # this request, its engine step or the engine failed
    CANCELLED = enum.auto()  # the client went away before it finished


# OpenAI's error ``type`` of each kind, and the requests_total outcome it is counted under.
_ERROR_TYPES = {
    ErrorKind.INVALID: "invalid_request_error",
    ErrorKind.NOT_FOUND: "invalid_request_error",
    ErrorKind.OVERLOADED: "rate_limit_error",
    ErrorKind.UNAVAILABLE: "service_unavailable",
    ErrorKind.FAILED: "server_error",
    ErrorKind.CANCELLED: "server_error",
}
_OUTCOMES = {
    ErrorKind.INVALID: "invalid",
    ErrorKind.NOT_FOUND: "invalid",
    ErrorKind.OVERLOADED: "rejected",
    ErrorKind.UNAVAILABLE: "rejected",
    ErrorKind.FAILED: "error",
    ErrorKind.CANCELLED: "cancelled",
}


class ServingError(Exception):
    """A request refused or not finished, in OpenAI's error terms (its body is
    :meth:`body`); ``retry_after`` is the seconds a client should wait before retrying."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind, self.message, self.param, self.code = kind, message, param, code
        self.retry_after = retry_after

    @property
    def type(self) -> str:
        """OpenAI's error ``type``."""
        return _ERROR_TYPES[self.kind]

    @property
    def outcome(self) -> str:
        """The ``outcome`` label a request refused with this error is counted under."""
        return _OUTCOMES[self.kind]

    def body(self) -> dict[str, Any]:
        """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
        return error_json(self.message, self.type, param=self.param, code=self.code)


CompletionResult = CompletionResponse | ChatCompletionResponse


class PendingResult:
    """A non-streamed answer that the engine is generating.

    Await :meth:`result` for it (it raises :class:`ServingError` for a request that did not
    finish); call :meth:`cancel` once nobody waits for it any more: the engine frees the
    request's slot, and :meth:`result` then ends with the ``cancelled`` outcome counted.
    """

    def __init__(
        self, handle: RequestHandle, collect: Callable[[], Awaitable[CompletionResult]]
    ) -> None:
        self._handle = handle
        self._collect = collect

    async def result(self) -> CompletionResult:
        """The response once the request finished."""
        return await self._collect()

    def cancel(self) -> None:
        """Abort the request in the engine (idempotent)."""
        self._handle.cancel()


class Serving:
    """OpenAI endpoints over an :class:`~llmfleet_worker.engine.protocol.EngineClient`."""

    def __init__(self, engine: EngineClient, settings: Settings, metrics: Metrics) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.created = now()

    # ---- endpoints ------------------------------------------------------------------
    def models(self) -> ModelList:
        """The one model this worker serves."""
        return ModelList(data=[ModelCard(id=self.settings.model_name, created=self.created)])

    async def completion(self, req: CompletionRequest) -> PendingResult | AsyncIterator[str]:
        """Admit a ``/v1/completions`` request: its stream's events, or its pending answer.
        Raises :class:`ServingError` for a request refused (counted here)."""
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
                    raise ServingError(
                        ErrorKind.INVALID,
                        f"prompt token ids must be in [0, {vocab}) for this model",
                        param="prompt",
                    )
            handle = self._submit(ids, req, default_max=None)
        except ServingError as err:
            self._refused(err)
            raise
        rid = new_id("cmpl")
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._completion_events(handle, rid, req.model, arrival, include_usage)
        collect = functools.partial(self._complete, handle, arrival, rid, req.model, chat=False)
        return PendingResult(handle, collect)

    async def chat(self, req: ChatCompletionRequest) -> PendingResult | AsyncIterator[str]:
        """Admit a ``/v1/chat/completions`` request: its stream's events, or its pending
        answer. Raises :class:`ServingError` for a request refused (counted here)."""
        arrival = time.monotonic()
        try:
            self._check_model(req.model)
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
            try:
                text = self.engine.chat_prompt(messages)
            except ValueError as exc:
                raise ServingError(
                    ErrorKind.INVALID, f"cannot apply the chat template: {exc}", param="messages"
                ) from exc
            ids = await self._encode(text, add_special_tokens=False, param="messages")
            handle = self._submit(ids, req, default_max=self.engine.max_model_len - len(ids))
        except ServingError as err:
            self._refused(err)
            raise
        rid = new_id("chatcmpl")
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._chat_events(handle, rid, req.model, arrival, include_usage)
        collect = functools.partial(self._complete, handle, arrival, rid, req.model, chat=True)
        return PendingResult(handle, collect)

    # ---- admission ------------------------------------------------------------------
    def _check_model(self, model: str) -> None:
        if model != self.settings.model_name:
            raise ServingError(
                ErrorKind.NOT_FOUND,
                f"The model '{model}' does not exist; this worker serves "
                f"'{self.settings.model_name}'.",
                param="model",
                code="model_not_found",
            )

    def _too_long(self, n: int | None) -> ServingError:
        got = f" However, your prompt has {n} tokens." if n is not None else ""
        return ServingError(
            ErrorKind.INVALID,
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
            raise ServingError(
                ErrorKind.INVALID, f"{param} is not valid Unicode text: {exc.reason}", param=param
            ) from exc
        if len(text) > _INLINE_TOKENIZE_CHARS:
            ids = await asyncio.to_thread(
                self.engine.encode, text, add_special_tokens=add_special_tokens
            )
        else:
            ids = self.engine.encode(text, add_special_tokens=add_special_tokens)
        if not ids:
            raise ServingError(ErrorKind.INVALID, "the prompt is empty", param="prompt")
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
            raise ServingError(
                ErrorKind.INVALID,
                f"This model's maximum context length is {self.engine.max_model_len} tokens; "
                f"the prompt has {len(ids)} tokens and max_tokens asks for {max_tokens}.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        try:
            handle = self.engine.submit(ids, sampling_params(req, max_tokens))
        except QueueFullError as exc:
            raise ServingError(
                ErrorKind.OVERLOADED,
                f"The worker is at capacity ({exc}); retry later.",
                code="queue_full",
                retry_after=self.settings.retry_after,
            ) from exc
        except DrainingError as exc:
            raise _draining() from exc
        except ValueError as exc:
            raise ServingError(ErrorKind.INVALID, str(exc), param="prompt") from exc
        except RuntimeError as exc:
            raise ServingError(ErrorKind.FAILED, "the engine has failed") from exc
        self.metrics.prompt_tokens.inc(len(ids))
        return handle

    def _refused(self, err: ServingError) -> None:
        self.metrics.requests.labels(outcome=err.outcome).inc()

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
        arrival: float,
        rid: str,
        model: str,
        *,
        chat: bool,
    ) -> CompletionResult:
        """The answer once ``handle`` finished (cancelled ones too: see PendingResult)."""
        pieces: list[str] = []
        count = 0
        state: list[float] = []
        async for batch in handle.batches():
            self._observe(handle, batch, arrival, state)
            for out in batch:
                pieces.append(out.text)
                count += out.num_tokens
        reason = handle.finish_reason
        outcome = self._outcome(reason)
        self.metrics.requests.labels(outcome=outcome).inc()
        if reason in ("abort", "error"):
            raise _cut_short(reason)
        if outcome != "success":
            kind = ErrorKind.CANCELLED if outcome == "cancelled" else ErrorKind.FAILED
            raise ServingError(kind, f"request {outcome}")
        usage = _usage(handle, count)
        text = "".join(pieces)
        body: CompletionResult
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
        return body

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


def _draining(
    message: str = "The worker is shutting down; retry on another replica.",
) -> ServingError:
    return ServingError(ErrorKind.UNAVAILABLE, message, code="draining")


def _cut_short(reason: str) -> ServingError:
    """The error for a request the worker could not finish (drain deadline, or a failure of
    this request, of its engine step or of the engine)."""
    if reason == "abort":
        return _draining("The worker shut down before the request finished; retry it.")
    return ServingError(
        ErrorKind.FAILED,
        "The worker failed while generating this request; retry it.",
        code="engine_error",
    )


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _data(obj: dict[str, Any]) -> str:
    return f"data: {_json(obj)}\n\n"
