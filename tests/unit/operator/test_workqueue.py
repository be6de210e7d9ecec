"""The work queue collapses bursts, serialises a key and retries with backoff."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from llmfleet_operator.workqueue import WorkQueue


async def test_burst_of_adds_collapses_and_keys_never_overlap() -> None:
    running: set[str] = set()
    calls: list[str] = []
    gate = asyncio.Event()

    async def handler(key: str) -> None:
        assert key not in running, "two reconciles of one key at once"
        running.add(key)
        calls.append(key)
        await gate.wait()
        running.discard(key)

    q: WorkQueue[str] = WorkQueue(handler, workers=4)
    task = asyncio.create_task(q.run())
    for _ in range(10):
        q.add("a")
    q.add("b")
    await asyncio.sleep(0.01)
    q.add("a")  # while "a" runs: exactly one more run afterwards
    q.add("a")
    gate.set()
    for _ in range(100):
        if len(calls) >= 3 and not running and len(q) == 0:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(calls) == ["a", "a", "b"]


async def test_failures_are_retried_with_backoff() -> None:
    attempts: list[float] = []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def handler(key: str) -> None:
        attempts.append(loop.time())
        if len(attempts) < 3:
            raise RuntimeError("API server unavailable")
        done.set()

    q: WorkQueue[str] = WorkQueue(handler, base_delay=0.02)
    task = asyncio.create_task(q.run())
    q.add("x")
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.015
    assert gaps[1] >= 0.035


async def test_an_earlier_deadline_wins_over_a_later_one() -> None:
    """A child's change due in a moment is not held back by a deadline due much later."""

    seen: list[str] = []
    done = asyncio.Event()

    async def handler(key: str) -> None:
        seen.append(key)
        done.set()

    queue: WorkQueue[str] = WorkQueue(handler, workers=1)
    runner = asyncio.create_task(queue.run())
    try:
        queue.add_after("a", 600.0)  # e.g. a progress deadline
        queue.add_after("a", 0.01)  # a pod became ready
        await asyncio.wait_for(done.wait(), timeout=5)
        assert seen == ["a"]
        queue.add_after("b", 0.01)
        queue.add_after("b", 600.0)  # a later deadline does not postpone the earlier one
        done.clear()
        await asyncio.wait_for(done.wait(), timeout=5)
        assert seen == ["a", "b"]
    finally:
        runner.cancel()
