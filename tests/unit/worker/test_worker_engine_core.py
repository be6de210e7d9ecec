"""The engine loop with a fake runner: stop handling, EOS, cancellation, drain, hand-off,
and fault isolation (one request, one step, fatal)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
from worker_fakes import EOS, FAILING_SEED, FakeEngine, FakeRunner, token_for

from llmfleet_worker.engine.core import DrainingError, Output, QueueFullError
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


async def test_a_sequence_that_cannot_be_sampled_fails_alone(engine: FakeEngine) -> None:
    good = [engine.submit([token_for("a")], params(6)) for _ in range(2)]
    bad = engine.submit([token_for("a")], params(6, seed=FAILING_SEED))
    results = await asyncio.gather(*(collect(h.batches()) for h in [*good, bad]))
    for outs in results[:2]:  # same batch, unaffected
        assert "".join(o.text for o in outs) == "bcdefg"
        assert outs[-1].finish_reason == "length"
    assert results[2] == [Output("", 0, results[2][0].time, "error")]
    assert bad.seq in engine.fake_runner.released
    assert engine.healthy
    assert engine.idle()


async def test_a_failed_step_fails_its_requests_frees_their_slots_and_the_engine_goes_on() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    eng = FakeEngine(runner, max_num_seqs=2)
    try:
        # Both queued before the engine starts, so that its first step holds both.
        in_step = [eng.submit([token_for("a")], params(5)) for _ in range(2)]
        eng.start()
        assert await asyncio.to_thread(runner.entered.wait, 10)
        waiting = eng.submit([token_for("a")], params(3))  # no slot: not in the failing step
        runner.raise_next = MemoryError("simulated out of memory")
        runner.gate.set()
        for handle in in_step:
            outs = await collect(handle.batches())
            assert outs[-1].finish_reason == "error"
            assert handle.seq in runner.released
        outs = await collect(waiting.batches())
        assert "".join(o.text for o in outs) == "bcd"
        assert outs[-1].finish_reason == "length"
        assert eng.healthy
        assert eng.ready
        assert eng.num_running == 0
        after = await collect(eng.submit([token_for("a")], params(2)).batches())
        assert after[-1].finish_reason == "length"
    finally:
        eng.shutdown()


async def test_a_fatal_device_error_stops_the_engine_and_calls_on_fatal() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    eng = FakeEngine(runner)
    reported: list[BaseException] = []
    done = threading.Event()

    def on_fatal(exc: BaseException) -> None:
        reported.append(exc)
        done.set()

    eng.start(on_fatal=on_fatal)
    try:
        running = eng.submit([token_for("a")], params(5))
        assert await asyncio.to_thread(runner.entered.wait, 10)
        queued = [eng.submit([token_for("a")], params(5)) for _ in range(6)]  # 2 wait
        fatal = RuntimeError("CUDA error: device-side assert triggered")
        runner.raise_next = fatal
        runner.gate.set()
        assert await asyncio.to_thread(done.wait, 10)
        assert reported == [fatal]
        for handle in [running, *queued]:
            assert (await collect(handle.batches()))[-1].finish_reason == "error"
        assert not eng.healthy
        assert not eng.ready
        with pytest.raises(RuntimeError, match="failed"):
            eng.submit([1], params(1))
    finally:
        eng.shutdown()
