"""The engine loop with a fake runner: stop handling, EOS, cancellation, drain, hand-off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from worker_fakes import EOS, FakeEngine, FakeRunner, token_for

from llmfleet_worker.engine.core import (
    DrainingError,
    Output,
    QueueFullError,
    _partial_stop_len,
)
from llmfleet_worker.engine.scheduler import SamplingParams


def params(max_tokens: int = 8, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    eng = FakeEngine()
    eng.start()
    yield eng
    eng.shutdown()


async def collect(handle_batches: AsyncIterator[list[Output]]) -> list[Output]:
    out: list[Output] = []
    async for batch in handle_batches:
        out.extend(batch)
    return out


async def test_generates_max_tokens_then_finishes_with_length(engine: FakeEngine) -> None:
    handle = engine.submit([token_for("a")], params(5))
    outs = await collect(handle.batches())
    assert "".join(o.text for o in outs) == "bcdef"
    assert outs[-1].finish_reason == "length"
    assert sum(o.num_tokens for o in outs) == 5
    assert handle.finish_reason == "length"
    assert engine.idle()


async def test_eos_stops_unless_ignored() -> None:
    eng = FakeEngine(FakeRunner(script=[token_for("x"), EOS, token_for("y")]))
    eng.start()
    try:
        outs = await collect(eng.submit([1], params(6)).batches())
        assert "".join(o.text for o in outs) == "x"
        assert outs[-1].finish_reason == "stop"
        outs = await collect(eng.submit([1], params(6, ignore_eos=True)).batches())
        assert "".join(o.text for o in outs) == "xyxy"  # EOS decodes to nothing
        assert outs[-1].finish_reason == "length"
        assert sum(o.num_tokens for o in outs) == 6
    finally:
        eng.shutdown()


async def test_stop_string_split_across_tokens_is_never_emitted(engine: FakeEngine) -> None:
    # Generates b c d e f ...; the stop string "de" spans two tokens.
    handle = engine.submit([token_for("a")], params(10, stop=("de",)))
    outs = await collect(handle.batches())
    assert "".join(o.text for o in outs) == "bc"
    assert outs[-1].finish_reason == "stop"


async def test_held_back_prefix_is_flushed_when_the_stop_never_completes(
    engine: FakeEngine,
) -> None:
    handle = engine.submit([token_for("a")], params(3, stop=("dz",)))
    outs = await collect(handle.batches())
    assert "".join(o.text for o in outs) == "bcd"
    assert outs[-1].finish_reason == "length"


def test_partial_stop_length() -> None:
    assert _partial_stop_len("hello wor", ("world",)) == 3
    assert _partial_stop_len("hello", ("xyz", "lo!")) == 2
    assert _partial_stop_len("abc", ("d",)) == 0


async def test_cancel_frees_the_slot_at_the_next_step() -> None:
    runner = FakeRunner(step_seconds=0.002)
    eng = FakeEngine(runner, max_num_seqs=1, max_model_len=1_000_000)
    eng.start()
    try:
        first = eng.submit([1], params(10_000))
        batches = first.batches()
        await anext(batches)  # it is running
        second = eng.submit([2], params(2))
        first.cancel()
        rest = await collect(batches)
        assert rest[-1].finish_reason == "cancelled"
        outs = await collect(second.batches())
        assert outs[-1].finish_reason == "length"
        assert first.seq in runner.released
    finally:
        eng.shutdown()


async def test_full_queue_and_draining_refuse_new_requests() -> None:
    runner = FakeRunner()
    runner.gate.clear()  # hold the engine: nothing leaves the queue
    eng = FakeEngine(runner, max_num_seqs=1, max_queue=1)
    eng.start()
    try:
        eng.submit([1], params(1))
        assert runner.entered.wait(10)  # the first runs (held), so the next one waits
        eng.submit([1], params(1))
        with pytest.raises(QueueFullError):
            eng.submit([1], params(1))
        eng.start_draining()
        assert not eng.ready
        with pytest.raises(DrainingError):
            eng.submit([1], params(1))
    finally:
        runner.gate.set()
        eng.shutdown()


async def test_drain_waits_for_running_and_queued_requests(engine: FakeEngine) -> None:
    handles = [engine.submit([1], params(20)) for _ in range(6)]  # 4 run, 2 wait
    tasks = [asyncio.ensure_future(collect(h.batches())) for h in handles]
    assert await engine.drain(grace_seconds=30)
    results = await asyncio.gather(*tasks)
    assert all(sum(o.num_tokens for o in r) == 20 for r in results)
    assert all(r[-1].finish_reason == "length" for r in results)


async def test_drain_timeout_aborts_the_rest() -> None:
    runner = FakeRunner(step_seconds=0.002)
    eng = FakeEngine(runner, max_model_len=1_000_000)
    eng.start()
    try:
        handle = eng.submit([1], params(900_000))
        batches = handle.batches()
        await anext(batches)
        assert not await eng.drain(grace_seconds=0.2)
        rest = await collect(batches)
        assert rest[-1].finish_reason == "abort"
    finally:
        eng.shutdown()


async def test_shutdown_ends_open_requests() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    eng = FakeEngine(runner)
    eng.start()
    handle = eng.submit([1], params(5))
    runner.gate.set()
    eng.shutdown()
    outs = await collect(handle.batches())
    assert outs[-1].finish_reason in ("length", "abort")
