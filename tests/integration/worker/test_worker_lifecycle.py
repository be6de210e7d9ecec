"""Backpressure (429), graceful drain on SIGTERM, and start-up failures, with real processes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import httpx
from worker_procs import WORKER, start_worker


def long_stream(max_tokens: int) -> dict[str, object]:
    return {
        "model": "tiny",
        "prompt": "x",
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }


async def read_stream(
    client: httpx.AsyncClient, body: dict[str, object], started: asyncio.Event | None = None
) -> tuple[int, str | None, int]:
    """(content chunks, finish_reason or error code, usage.completion_tokens) of one stream."""
    chunks, reason, usage = 0, None, -1
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            if started is not None:
                started.set()
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                reason = f"error:{event['error']['code']}"
                continue
            if event.get("usage"):
                usage = event["usage"]["completion_tokens"]
            for choice in event["choices"]:
                chunks += 1
                reason = choice["finish_reason"] or reason
    return chunks, reason, usage


async def test_full_queue_gets_429_and_drain_timeout_aborts_stragglers(
    tiny_model: Path, tmp_path: Path
) -> None:
    # One process for both checks: worker start-up dominates these tests' run time.
    worker = start_worker(
        tiny_model,
        tmp_path,
        "--max-num-seqs",
        "1",
        "--max-queue",
        "1",
        "--retry-after",
        "2",
        "--max-model-len",
        "2048",
        "--drain-timeout",
        "0.5",
    )
    try:
        async with httpx.AsyncClient(base_url=worker.url, timeout=120) as c:
            running = asyncio.ensure_future(read_stream(c, long_stream(2000)))
            await asyncio.to_thread(
                worker.wait_for, lambda: worker.metric("llmfleet_worker_requests_running") == 1
            )
            queued = asyncio.ensure_future(read_stream(c, long_stream(5)))
            await asyncio.to_thread(
                worker.wait_for, lambda: worker.metric("llmfleet_worker_requests_waiting") == 1
            )
            resp = await c.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
            assert resp.status_code == 429
            assert resp.headers["Retry-After"] == "2"
            assert resp.json()["error"]["type"] == "rate_limit_error"
            assert worker.metric('llmfleet_worker_requests_total{outcome="rejected"}') == 1
            running.cancel()  # disconnect: frees the slot for the queued one
            assert (await queued)[1] == "length"

            # Drain with a deadline shorter than the work left: the stream is cut with an
            # error event instead of a finish reason, and the process still exits 0.
            started = asyncio.Event()
            straggler = asyncio.ensure_future(read_stream(c, long_stream(2000), started))
            await asyncio.wait_for(started.wait(), 60)
            worker.proc.send_signal(signal.SIGTERM)
            _chunks, reason, _usage = await straggler
            assert reason == "error:draining"
        assert await asyncio.to_thread(worker.proc.wait, 60) == 0, worker.log()
    finally:
        worker.stop()


async def test_sigterm_drains_streams_to_completion_then_exits_0(
    tiny_model: Path, tmp_path: Path
) -> None:
    worker = start_worker(
        tiny_model,
        tmp_path,
        "--max-num-seqs",
        "4",
        "--max-model-len",
        "2048",
        "--drain-timeout",
        "120",
    )
    n_tokens = 600
    async with httpx.AsyncClient(base_url=worker.url, timeout=120) as c:
        started = [asyncio.Event() for _ in range(4)]
        streams = [asyncio.ensure_future(read_stream(c, long_stream(n_tokens), e)) for e in started]
        for event in started:
            await asyncio.wait_for(event.wait(), 60)
        # Two more wait in the queue: drain must run them too.
        streams += [asyncio.ensure_future(read_stream(c, long_stream(n_tokens))) for _ in range(2)]
        await asyncio.to_thread(
            worker.wait_for, lambda: worker.metric("llmfleet_worker_requests_waiting") == 2
        )
        worker.proc.send_signal(signal.SIGTERM)
        # /ready flips at once; new work is refused while the old finishes.
        ready = await c.get("/ready")
        assert ready.status_code == 503
        late = await c.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
        assert late.status_code == 503
        assert late.json()["error"]["code"] == "draining"
        results = await asyncio.gather(*streams)
    assert await asyncio.to_thread(worker.proc.wait, 60) == 0, worker.log()
    assert len(results) == 6
    for _chunks, reason, usage in results:
        assert reason == "length"
        assert usage == n_tokens


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WORKER, "serve", *args], capture_output=True, text=True, timeout=180, check=False
    )


def test_missing_model_path_fails_fast(tmp_path: Path) -> None:
    result = run_serve("--model", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_unsupported_dtype_from_env_is_a_usage_error(tiny_model: Path) -> None:
    result = subprocess.run(
        [WORKER, "serve", "--model", str(tiny_model)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"LLMFLEET_DTYPE": "int4", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 2
    assert "LLMFLEET_DTYPE" in result.stderr


def test_non_causal_model_is_refused_at_start_up(tmp_path: Path) -> None:
    config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 32}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = run_serve("--model", str(tmp_path))
    assert result.returncode == 2
    assert "not a causal language model" in result.stderr


def test_max_model_len_beyond_the_model_is_refused_at_start_up(tiny_model: Path) -> None:
    # The tiny model has 2048 positions; asking for more must not be capped silently.
    result = run_serve("--model", str(tiny_model), "--max-model-len", "4096", "--device", "cpu")
    assert result.returncode == 2
    assert "max model length 4096" in result.stderr
    assert "exceeds the model's 2048 positions" in result.stderr


def test_a_kv_cache_budget_that_cannot_hold_the_batch_is_refused_at_start_up(
    tiny_model: Path,
) -> None:
    # 32 sequences x 2048 tokens x 2 KiB (the tiny model in fp32) need 128 MiB.
    result = run_serve("--model", str(tiny_model), "--device", "cpu", "--kv-cache-memory", "64Mi")
    assert result.returncode == 2
    assert "32 sequences x 2048 tokens" in result.stderr
    assert "need 128 MiB" in result.stderr
    assert "--max-num-seqs 16" in result.stderr


def test_a_bad_kv_cache_size_is_a_usage_error(tiny_model: Path) -> None:
    result = run_serve("--model", str(tiny_model), "--kv-cache-memory", "lots")
    assert result.returncode == 2
    assert "'lots' is not a size" in result.stderr


def test_the_kv_cache_budget_and_size_are_metrics(tiny_model: Path, tmp_path: Path) -> None:
    worker = start_worker(
        tiny_model,
        tmp_path,
        "--kv-cache-memory",
        "200Mi",
        "--max-num-seqs",
        "4",
        "--max-model-len",
        "512",
    )
    try:
        assert worker.metric("llmfleet_worker_kv_cache_bytes") == 4 * 512 * 2048
        assert worker.metric("llmfleet_worker_kv_cache_budget_bytes") == 200 * 2**20
        assert worker.metric("llmfleet_worker_max_num_seqs") == 4
    finally:
        assert worker.stop() == 0
