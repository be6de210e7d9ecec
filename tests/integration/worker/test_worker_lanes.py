"""Engine lanes: batches stepped side by side on their own threads, sharing the weights."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

torch = pytest.importorskip("torch")

from worker_procs import start_worker  # noqa: E402

from llmfleet_worker.engine.core import Engine  # noqa: E402  # after importorskip
from llmfleet_worker.engine.scheduler import SamplingParams  # noqa: E402
from llmfleet_worker.engine.tokenizing import (  # noqa: E402
    TokenizingEngine,
    _ThreadShare,
    build_engine,
)
from llmfleet_worker.settings import Settings  # noqa: E402

PROMPTS = ["the cat", "a dog ran", "hello there", "one two three", "zz", "why"]


def generate(engine: TokenizingEngine, prompts: list[str], max_tokens: int) -> list[str]:
    """Submit every prompt at once (greedy), then collect each one's text."""

    async def main() -> list[str]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        handles = [engine.submit(engine.encode(p), params) for p in prompts]
        engine.start()

        async def text(handle: Any) -> str:
            return "".join([o.text async for batch in handle.batches() for o in batch])

        return list(await asyncio.gather(*(text(h) for h in handles)))

    try:
        return asyncio.run(main())
    finally:
        engine.shutdown()


def test_requests_spread_over_the_lanes_and_get_the_one_lane_answers(tiny_model: Path) -> None:
    one = build_engine(Settings(model=str(tiny_model), max_model_len=64, max_num_seqs=4))
    expected = generate(one, PROMPTS, 12)
    laned = build_engine(
        Settings(model=str(tiny_model), max_model_len=64, max_num_seqs=5, lanes=2, threads=2)
    )
    assert [lane.stats.max_num_seqs for lane in laned.lanes] == [3, 2]
    placed: list[list[int]] = []

    def note_placement(lane: Engine, original: Any) -> Any:
        def step() -> None:
            placed.append([other.num_requests for other in laned.lanes])
            original()

        return step

    for lane in laned.lanes:
        assert lane.before_step is not None
        lane.before_step = note_placement(lane, lane.before_step)
    assert generate(laned, PROMPTS, 12) == expected
    assert placed[0] == [3, 3]  # six requests, the fewest-first rule: three each
    stats = laned.stats
    assert stats.max_num_seqs == 5
    assert stats.steps == sum(lane.stats.steps for lane in laned.lanes) > 0
    assert all(lane.stats.steps > 0 for lane in laned.lanes)
    assert laned.kv_plan is not None
    assert stats.kv_cache_bytes == laned.kv_plan.allocated_bytes == 5 * 64 * 2048


def test_busy_lanes_share_the_threads_and_a_lone_lane_takes_them_all() -> None:
    share = _ThreadShare(4)
    me, other = SimpleNamespace(has_work=True), SimpleNamespace(has_work=False)
    share.lanes = [me, other]  # type: ignore[list-item]  # only has_work is read

    def in_a_lane_thread() -> list[int]:
        seen = []
        for other_busy in (False, True, False):
            other.has_work = other_busy
            share.before_step(me)  # type: ignore[arg-type]
            seen.append(torch.get_num_threads())
        return seen

    before = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(1) as pool:  # a thread's OpenMP thread count is its own
            assert pool.submit(in_a_lane_thread).result() == [4, 2, 4]
    finally:
        torch.set_num_threads(before)


def test_a_worker_with_lanes_answers_concurrent_requests_over_http(
    tiny_model: Path, tmp_path: Path
) -> None:
    worker = start_worker(tiny_model, tmp_path, "--max-num-seqs", "4", "--lanes", "2",
                          "--max-model-len", "128")  # fmt: skip
    try:
        body = {"model": "tiny", "max_tokens": 10, "temperature": 0, "ignore_eos": True}

        async def complete(client: httpx.AsyncClient, prompt: str) -> str:
            resp = await client.post("/v1/completions", json={**body, "prompt": prompt})
            resp.raise_for_status()
            text: str = resp.json()["choices"][0]["text"]
            return text

        async def main() -> tuple[list[str], list[str]]:
            async with httpx.AsyncClient(base_url=worker.url, timeout=120) as client:
                together = await asyncio.gather(*(complete(client, p) for p in PROMPTS))
                alone = [await complete(client, p) for p in PROMPTS]
                return list(together), alone

        together, alone = asyncio.run(main())
        assert together == alone
        assert worker.metric("llmfleet_worker_max_num_seqs") == 4
        assert "2 lanes of 2 sequences" in worker.log()
    finally:
        assert worker.stop() == 0


def test_lanes_the_model_cannot_have_are_refused_at_start_up(
    tiny_model: Path, tmp_path: Path
) -> None:
    with pytest.raises(AssertionError, match="exited with 2") as exc:
        start_worker(tiny_model, tmp_path, "--lanes", "3", "--max-num-seqs", "2")
    assert "--lanes must be <= --max-num-seqs" in str(exc.value)
