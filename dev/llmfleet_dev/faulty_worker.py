"""A worker for tests: ``llmfleet-worker`` itself, plus faults that a test injects by env.

Same command line as ``python -m llmfleet_worker``; :func:`worker_command` is how to start it
(the e2e pod backer does by default, so an LLMDeployment's ``worker.env`` reaches it)::

    python -P -m llmfleet_dev.faulty_worker serve --model DIR --port 8000 ...

Faults (each off unless its variable is set; with none set the worker is not wrapped at all):

``SIM_FAIL_RATIO`` (0..1)
    That share of the completion and chat-completion requests that reach the engine fail
    inside the worker: the engine refuses them the way a failed engine does, so the worker's
    own error mapping answers 500 in the OpenAI error shape (``type: server_error``) and
    counts them as ``llmfleet_worker_requests_total{outcome="error"}``. Deterministic, for
    stable tests: of the first n such requests, exactly floor(n * ratio) have failed (with
    0.5: the 2nd, 4th, 6th, ...). Requests refused before the engine (bad model name, too
    long, draining) are neither counted nor failed.
``SIM_TTFT_DELAY_SECONDS`` (>= 0)
    Every request's tokens reach the client that much later than the engine made them, the
    first one included: time to first token (``llmfleet_worker_time_to_first_token_seconds``)
    and request duration grow by the delay; the time between tokens stays the engine's.
``SIM_READY_DELAY_SECONDS`` (>= 0)
    ``/ready`` (and the ``llmfleet_worker_ready`` gauge) stay not-ready that long after the
    model loaded, a slow warm-up: the worker runs and answers, its pod is not Ready yet.

This is test infrastructure: the product worker has no fault switches. The seam is the
engine that ``build_app`` gets (the same seam the worker's own tests use for fakes); the
model, scheduler, serving layer, metrics and drain are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, cast

# The engine's contract alone, which FaultyEngine implements; it imports nothing else.
from llmfleet_worker.engine.protocol import EngineClient

if TYPE_CHECKING:  # the worker's modules load only in the worker process, not in pytest's
    from fastapi import FastAPI

    from llmfleet_worker.engine.core import EngineStats, Output, RequestHandle
    from llmfleet_worker.engine.scheduler import SamplingParams
    from llmfleet_worker.metrics import Metrics
    from llmfleet_worker.settings import Settings

FAIL_RATIO_ENV = "SIM_FAIL_RATIO"
TTFT_DELAY_ENV = "SIM_TTFT_DELAY_SECONDS"
READY_DELAY_ENV = "SIM_READY_DELAY_SECONDS"
#: Every variable this module reads (all of them plain pod env, which the pod backer passes).
FAULT_ENV = (FAIL_RATIO_ENV, TTFT_DELAY_ENV, READY_DELAY_ENV)

MODULE = "llmfleet_dev.faulty_worker"


def worker_command(python: str = sys.executable) -> tuple[str, ...]:
    """The command that starts this worker (``serve ...`` follows, as for llmfleet-worker).

    ``-m`` with the development venv's Python, whose editable install puts llmfleet_dev on
    ``sys.path``: the process needs no PYTHONPATH. ``-P`` keeps the working directory off
    ``sys.path``, so nothing there can shadow anything the worker imports.
    """
    return (python, "-P", "-m", MODULE)


@dataclass(frozen=True)
class Faults:
    """What to inject; the zero value injects nothing."""

    fail_ratio: Fraction = Fraction(0)
    ttft_delay: float = 0.0
    ready_delay: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Faults:
        """Read the ``SIM_*`` variables; ValueError names the one that is wrong."""
        ratio = _number(env, FAIL_RATIO_ENV)
        if not 0 <= ratio <= 1:
            raise ValueError(f"{FAIL_RATIO_ENV} must be between 0 and 1, not {ratio:g}")
        ttft, ready = _number(env, TTFT_DELAY_ENV), _number(env, READY_DELAY_ENV)
        for name, value in ((TTFT_DELAY_ENV, ttft), (READY_DELAY_ENV, ready)):
            if value < 0:
                raise ValueError(f"{name} must not be negative, not {value:g}")
        # A fraction, so that "0.3" fails exactly 3 of every 10, with no float drift.
        return cls(Fraction(ratio).limit_denominator(10_000), ttft, ready)

    @property
    def active(self) -> bool:
        return bool(self.fail_ratio or self.ttft_delay or self.ready_delay)


def _number(env: Mapping[str, str], name: str) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, not {raw!r}")
    return value


class FailureSchedule:
    """Which requests fail: exactly floor(n * ratio) of the first n, spread evenly."""

    def __init__(self, ratio: Fraction) -> None:
        self.ratio = ratio
        self.seen = 0
        self.failed = 0

    def next_fails(self) -> bool:
        self.seen += 1
        if math.floor(self.seen * self.ratio) > self.failed:
            self.failed += 1
            return True
        return False


class FaultyEngine(EngineClient):
    """An :class:`~llmfleet_worker.engine.protocol.EngineClient` that fails, delays and warms
    up slowly as :class:`Faults` say, and is the wrapped engine in everything else."""

    def __init__(self, engine: EngineClient, faults: Faults) -> None:
        self._engine = engine
        self._faults = faults
        self._schedule = FailureSchedule(faults.fail_ratio)
        # build_app runs once the model has loaded: the warm-up counts from there.
        self._ready_at = time.monotonic() + faults.ready_delay
        self.max_model_len = engine.max_model_len
        self.vocab_size = engine.vocab_size
        self.max_chars_per_token = engine.max_chars_per_token

    @property
    def stats(self) -> EngineStats:
        """The engine's own step statistics, which the gauges read at every scrape."""
        return self._engine.stats

    @property
    def ready(self) -> bool:
        return self._engine.ready and time.monotonic() >= self._ready_at

    @property
    def healthy(self) -> bool:
        return self._engine.healthy

    @property
    def num_waiting(self) -> int:
        return self._engine.num_waiting

    @property
    def num_running(self) -> int:
        return self._engine.num_running

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._engine.encode(text, add_special_tokens=add_special_tokens)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self._engine.chat_prompt(messages)

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> RequestHandle:
        # Only while the engine would admit it: a draining worker must still answer 503
        # (retry elsewhere), not an injected 500.
        if self._faults.fail_ratio and self._engine.ready and self._schedule.next_fails():
            # What Engine.submit raises once its thread has failed; serving maps it to a 500
            # with outcome="error", exactly as for a real engine failure.
            raise RuntimeError(
                f"simulated failure ({FAIL_RATIO_ENV}={float(self._faults.fail_ratio):g})"
            )
        handle = self._engine.submit(prompt_ids, params)
        if self._faults.ttft_delay:
            # Serving reads only batches(), cancel() and the handle's attributes.
            return cast("RequestHandle", _DelayedHandle(handle, self._faults.ttft_delay))
        return handle


class _DelayedHandle:
    """A request handle whose outputs arrive ``delay`` seconds after the engine made them,
    stamped that much later, so the worker's latency metrics measure what clients see."""

    def __init__(self, inner: RequestHandle, delay: float) -> None:
        self._inner = inner
        self._delay = delay
        self._cancelled = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        # prompt_tokens, finish_reason, finished, ...: read through, always current.
        return getattr(self._inner, name)

    def cancel(self) -> None:
        self._cancelled.set()  # a client that went away does not wait out the delay
        self._inner.cancel()

    async def batches(self) -> AsyncIterator[list[Output]]:
        async for batch in self._inner.batches():
            wait = batch[-1].time + self._delay - time.monotonic()
            if wait > 0 and not self._cancelled.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cancelled.wait(), wait)
            yield [dataclasses.replace(out, time=out.time + self._delay) for out in batch]


def install(faults: Faults) -> None:
    """Make the worker's ``build_app`` wrap its engine in a :class:`FaultyEngine`.

    ``llmfleet-worker serve`` imports ``build_app`` from ``llmfleet_worker.app`` when it
    serves, so replacing the module's attribute first is enough.
    """
    from llmfleet_worker import app

    real = app.build_app

    def build_app(
        engine: EngineClient, settings: Settings, metrics: Metrics | None = None
    ) -> FastAPI:
        return real(FaultyEngine(engine, faults), settings, metrics)

    app.build_app = build_app


def main(argv: list[str] | None = None) -> int:
    try:
        faults = Faults.from_env(os.environ)
    except ValueError as exc:
        print(f"faulty worker: error: {exc}", file=sys.stderr)
        return 2
    if faults.active:
        install(faults)
    from llmfleet_worker.__main__ import main as worker_main

    return worker_main(argv)


if __name__ == "__main__":
    sys.exit(main())
