"""The engine loop: scheduler + runner on a thread of their own, outputs to asyncio.

Pure Python (no torch import): the runner and the detokenizer are passed in (their contracts,
:class:`~llmfleet_worker.engine.protocol.ModelRunner` and
:class:`~llmfleet_worker.engine.protocol.IncrementalDecoder`), so the loop, the stop-string
logic and the thread hand-off are tested with fakes.

Failures are contained as narrowly as they allow (see :mod:`~llmfleet_worker.engine.failures`):
a sequence the runner could not sample ends alone, a step that raised ends the requests in
it, and only a fatal error stops the engine, which then calls ``on_fatal`` so that the
process can exit and be restarted.

The HTTP event loop never waits for torch. Requests enter through :meth:`Engine.submit`
(thread-safe, under a short lock); every step ends with *one* ``call_soon_threadsafe`` that
delivers that step's outputs to all request handles at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from llmfleet_worker.engine.failures import FailureScope, SampleFailure, classify_step_error
from llmfleet_worker.engine.protocol import IncrementalDecoder, ModelRunner
from llmfleet_worker.engine.scheduler import (
    QueueFullError,
    SamplingParams,
    Scheduler,
    Sequence,
    StepPlan,
)
from llmfleet_worker.engine.stops import StopMatcher

log = logging.getLogger(__name__)

__all__ = ["DrainingError", "Engine", "Output", "QueueFullError", "RequestHandle"]


class DrainingError(Exception):
    """The worker is shutting down and takes no new requests."""


@dataclass(frozen=True)
class Output:
    """One generated token's effect on a request (``num_tokens`` 0 for a bare finish)."""

    text: str
    num_tokens: int
    time: float  # time.monotonic() when the step produced it
    finish_reason: str | None = None


@dataclass
class _Stream:
    """Engine-thread state of one request."""

    seq: Sequence
    handle: RequestHandle
    decoder: IncrementalDecoder
    stops: StopMatcher | None = None


class RequestHandle:
    """The asyncio side of one request: iterate it for outputs, :meth:`cancel` to abort."""

    def __init__(self, engine: Engine, seq: Sequence, loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self.seq = seq
        self.loop = loop
        self.prompt_tokens = len(seq.prompt_ids)
        self.arrival = time.monotonic()
        self._pending: deque[Output] = deque()
        self._event = asyncio.Event()
        self.finished = False
        self.finish_reason: str | None = None

    def _push(self, out: Output) -> None:
        self._pending.append(out)
        self._event.set()

    def cancel(self) -> None:
        """Stop generating; the slot frees at the next step boundary. Idempotent."""
        if not self.finished:
            self._engine.abort(self.seq)

    async def batches(self) -> AsyncIterator[list[Output]]:
        """Everything that arrived since the last batch; ends after the finishing output."""
        while True:
            await self._event.wait()
            self._event.clear()
            batch = list(self._pending)
            self._pending.clear()
            if batch:
                if batch[-1].finish_reason is not None:
                    self.finished = True
                    self.finish_reason = batch[-1].finish_reason
                yield batch
            if self.finished:
                return


@dataclass
class EngineStats:
    """Numbers the metrics read at scrape time."""

    batch_size: int = 0
    step_tokens: int = 0
    token_budget_utilization: float = 0.0
    kv_cache_utilization: float = 0.0
    steps: int = 0
    load_seconds: float = 0.0
    #: Most sequences a step runs at once (exported so the autoscaler knows a worker's size).
    max_num_seqs: int = 0
    #: The KV cache allocated at start-up and the budget it was sized from (0: not known).
    kv_cache_bytes: int = 0
    kv_cache_budget_bytes: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class Engine:
    """Continuous batching engine; see the module docstring."""

    def __init__(
        self,
        *,
        runner: ModelRunner,
        make_decoder: Callable[[], IncrementalDecoder],
        eos_token_ids: frozenset[int],
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        max_queue: int,
        load_seconds: float = 0.0,
        before_step: Callable[[], None] | None = None,
    ) -> None:
        self.runner = runner
        #: Called on the engine thread before every step (the lanes of one worker share
        #: the CPU threads through it: see :mod:`~llmfleet_worker.engine.tokenizing`).
        self.before_step = before_step
        self.make_decoder = make_decoder
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.scheduler = Scheduler(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len,
            max_queue=max_queue,
        )
        self._stats = EngineStats(load_seconds=load_seconds, max_num_seqs=max_num_seqs)
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.draining = False
        self.failed: BaseException | None = None
        self._on_fatal: Callable[[BaseException], None] | None = None

    # ---- lifecycle ------------------------------------------------------------------
    def start(self, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        """Start the engine thread (idempotent). ``on_fatal`` is called, on the engine
        thread, after a fatal error stopped the engine and every request ended."""
        if self._thread is None:
            self._on_fatal = on_fatal
            self._thread = threading.Thread(target=self._loop, name="llmfleet-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the engine thread; unfinished requests end with ``abort``."""
        with self._lock:
            self._stop = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def stats(self) -> EngineStats:
        """This engine's step statistics, updated in place after every step."""
        return self._stats

    @property
    def healthy(self) -> bool:
        """False once a fatal error stopped the engine thread."""
        return self.failed is None

    @property
    def ready(self) -> bool:
        return self._thread is not None and self.failed is None and not self.draining

    @property
    def num_waiting(self) -> int:
        return self.scheduler.num_waiting

    @property
    def num_running(self) -> int:
        return self.scheduler.num_running

    @property
    def num_requests(self) -> int:
        """Requests in this engine, queued or running (read without the lock: a hint)."""
        return len(self._streams)

    @property
    def has_work(self) -> bool:
        """Whether a step is due (read without the lock: a hint)."""
        return self.scheduler.has_work()

    def idle(self) -> bool:
        with self._lock:
            return not self._streams

    def start_draining(self) -> None:
        """Refuse new requests from now on; queued and running ones continue."""
        self.draining = True

    async def drain(self, grace_seconds: float) -> bool:
        """Stop admission, then wait until every request finished or ``grace_seconds``
        passed; leftovers are aborted. Returns True when everything finished in time."""
        self.start_draining()
        deadline = time.monotonic() + grace_seconds
        while not self.idle():
            if time.monotonic() >= deadline:
                self.abort_all()
                return False
            # The engine thread has no asyncio side to notify us from; poll its state.
            await asyncio.sleep(0.05)
        return True

    def abort_all(self) -> None:
        with self._lock:
            for stream in list(self._streams.values()):
                stream.seq.cancelled = True
                stream.seq.finish_reason = "abort"
        self._wakeup.set()

    # ---- requests -------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams) -> RequestHandle:
        """Queue a request; raises :class:`QueueFullError`, :class:`DrainingError` or
        ``ValueError`` (prompt too long). Call from the event loop thread."""
        if self.draining:
            raise DrainingError("the worker is draining")
        if self.failed is not None:
            raise RuntimeError("the engine has failed") from self.failed
        seq = Sequence(list(prompt_ids), params)
        handle = RequestHandle(self, seq, asyncio.get_running_loop())
        stops = StopMatcher(params.stop) if params.stop else None
        stream = _Stream(seq, handle, self.make_decoder(), stops)
        with self._lock:
            self.scheduler.add(seq)
            self._streams[seq.request_id] = stream
        self._wakeup.set()
        return handle

    def abort(self, seq: Sequence) -> None:
        with self._lock:
            self.scheduler.abort(seq)
        self._wakeup.set()

    # ---- the engine thread ----------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                self._wakeup.wait()
                with self._lock:
                    if self._stop:
                        break
                    if not self.scheduler.has_work():
                        self._wakeup.clear()
                        continue
                if self.before_step is not None:
                    self.before_step()
                self._step()
        except BaseException as exc:  # the thread must report, never die silently
            log.critical("engine stopped by a fatal error", exc_info=exc)
            self.failed = exc
            try:
                self._finish_all("error")
            finally:  # even when the bookkeeping is too broken to end every request
                if self._on_fatal is not None:
                    self._on_fatal(exc)
        else:
            self._finish_all("abort")

    def _step(self) -> None:
        deliveries: list[tuple[RequestHandle, Output]] = []
        with self._lock:
            for seq in self.scheduler.collect_cancelled():
                self._retire(seq, seq.finish_reason or "cancelled", deliveries)
            plan = self.scheduler.schedule()
        if plan is not None:
            try:
                results = self.runner.step(plan)
            except Exception as exc:
                if classify_step_error(exc) is FailureScope.FATAL:
                    raise
                log.exception("engine step failed; failing the %d requests in it", len(plan.chunks))
                with self._lock:
                    self._fail_step(plan, deliveries)
            else:
                now = time.monotonic()
                with self._lock:
                    self.scheduler.complete(plan)
                    sampled = [c.seq for c in plan.chunks if c.sample]
                    for seq, result in zip(sampled, results, strict=True):
                        if isinstance(result, SampleFailure):
                            log.warning("request %s failed: %s", seq.request_id, result.reason)
                            self._fail(seq, deliveries)
                        else:
                            self._append(seq, result, now, deliveries)
                    self._update_stats(plan)
        self._deliver(deliveries)

    def _fail(self, seq: Sequence, out: list[tuple[RequestHandle, Output]]) -> None:
        if seq.finish_reason is None:
            self.scheduler.finish(seq, "error")
            self._retire(seq, "error", out)

    def _fail_step(self, plan: StepPlan, out: list[tuple[RequestHandle, Output]]) -> None:
        """End every request whose cache rows the failed step may have half written: those
        it ran, and those the step's row moves copied into place."""
        affected = [c.seq for c in plan.chunks]
        running = self.scheduler.running
        affected += [running[m.dst] for m in plan.moves if m.dst < len(running)]
        for seq in dict.fromkeys(affected):  # in order, once each
            self._fail(seq, out)

    def _append(
        self, seq: Sequence, token: int, now: float, out: list[tuple[RequestHandle, Output]]
    ) -> None:
        stream = self._streams.get(seq.request_id)
        if stream is None or seq.finish_reason is not None:
            return
        seq.output_ids.append(token)
        params = seq.params
        finish: str | None = None
        stops = stream.stops
        if token in self.eos_token_ids and not params.ignore_eos:
            finish = "stop"
            piece = ""
        else:
            piece = stream.decoder.step(token)
            if stops is not None:
                # The matcher holds back a tail that could still become a stop string.
                piece = stops.feed(piece)
                if stops.stopped:
                    finish = "stop"
        if finish is None and (
            len(seq.output_ids) >= params.max_tokens or seq.num_tokens >= self.max_model_len
        ):
            finish = "length"
        if finish is not None and stops is not None:
            piece += stops.flush()
        out.append((stream.handle, Output(piece, 1, now, finish)))
        if finish is not None:
            self.scheduler.finish(seq, finish)
            self._streams.pop(seq.request_id, None)
            self.runner.release(seq)

    def _retire(self, seq: Sequence, reason: str, out: list[tuple[RequestHandle, Output]]) -> None:
        stream = self._streams.pop(seq.request_id, None)
        self.runner.release(seq)
        if stream is not None:
            out.append((stream.handle, Output("", 0, time.monotonic(), reason)))

    def _finish_all(self, reason: str) -> None:
        deliveries: list[tuple[RequestHandle, Output]] = []
        with self._lock:
            for stream in list(self._streams.values()):
                self.scheduler.finish(stream.seq, reason)
                self._retire(stream.seq, reason, deliveries)
        self._deliver(deliveries)

    def _update_stats(self, plan: StepPlan) -> None:
        s = self.scheduler
        self.stats.steps += 1
        self.stats.batch_size = len(plan.chunks)
        self.stats.step_tokens = plan.num_tokens
        self.stats.token_budget_utilization = plan.num_tokens / s.max_num_batched_tokens
        self.stats.kv_cache_utilization = s.tokens_in_cache() / (s.max_num_seqs * s.max_model_len)

    @staticmethod
    def _deliver(deliveries: list[tuple[RequestHandle, Output]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle, Output]]] = {}
        for handle, out in deliveries:
            by_loop.setdefault(handle.loop, []).append((handle, out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_push_all, items)
            except RuntimeError:  # the loop closed under us: nobody is listening any more
                log.debug("dropping outputs for a closed event loop")


def _push_all(items: list[tuple[RequestHandle, Output]]) -> None:
    for handle, out in items:
        handle._push(out)
