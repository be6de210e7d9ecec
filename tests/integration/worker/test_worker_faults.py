"""Fault injection against the real torch code: one sequence's sampling fails alone, a step
that raises fails its batch and the worker goes on, a fatal device error ends the process."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httpx
import pytest

torch = pytest.importorskip("torch")

from step_fault_worker import TRIGGER_SEED  # noqa: E402  # after importorskip
from worker_procs import start_worker  # noqa: E402

from llmfleet_worker.__main__ import EXIT_ENGINE_FAILED  # noqa: E402
from llmfleet_worker.engine.core import Output, RequestHandle  # noqa: E402
from llmfleet_worker.engine.failures import SampleFailure  # noqa: E402
from llmfleet_worker.engine.runner import Sampler  # noqa: E402
from llmfleet_worker.engine.scheduler import SamplingParams, Sequence  # noqa: E402
from llmfleet_worker.engine.tokenizing import build_engine  # noqa: E402
from llmfleet_worker.settings import Settings  # noqa: E402

FAULTY = (sys.executable, str(Path(__file__).with_name("step_fault_worker.py")))
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


async def outputs(handle: RequestHandle) -> list[Output]:
    out: list[Output] = []
    async for batch in handle.batches():
        out.extend(batch)
    return out


def results(outs: list[Output]) -> list[tuple[str, int, str | None]]:
    return [(o.text, o.num_tokens, o.finish_reason) for o in outs]


async def test_a_sequence_whose_sampling_raises_fails_alone(tiny_model: Path) -> None:
    engine = build_engine(
        Settings(model=str(tiny_model), max_model_len=256, max_num_seqs=4, threads=1)
    )
    prompt = [5, 17, 33]
    # A seed torch's generator refuses (as if it slipped past validation) raises inside
    # sampling. All three are queued before the engine starts: its first step holds them all.
    bad = SamplingParams(max_tokens=12, temperature=1.0, seed=2**70)
    seeded = SamplingParams(max_tokens=12, temperature=0.7, seed=3)
    handles = [engine.submit(prompt, p) for p in (GREEDY, seeded)]
    handles.append(engine.submit([9, 8], bad))
    engine.start()
    try:
        same_batch, sampled, failed = await asyncio.gather(*(outputs(h) for h in handles))
        assert results(failed) == [("", 0, "error")]
        assert sampled[-1].finish_reason == "length"
        assert sum(o.num_tokens for o in sampled) == 12
        assert engine.healthy
        alone = await outputs(engine.submit(prompt, GREEDY))
        assert results(same_batch) == results(alone)
        assert results(await outputs(engine.submit(prompt, seeded))) == results(sampled)
    finally:
        engine.shutdown()


def test_rows_with_non_finite_logits_fail_alone() -> None:
    sampler = Sampler(torch.device("cpu"))
    logits = torch.randn(5, 40)
    logits[1, 3] = float("nan")
    logits[2, 7] = float("inf")
    logits[3] = float("-inf")
    params = [
        SamplingParams(max_tokens=1, temperature=0.0),
        SamplingParams(max_tokens=1, temperature=0.8),
        SamplingParams(max_tokens=1, temperature=0.0),
        SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5, seed=1),
        SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5, seed=1),
    ]
    out = sampler.sample(logits, [Sequence([1], p) for p in params])
    assert out[0] == int(logits[0].argmax())
    assert [type(o) for o in out[1:4]] == [SampleFailure] * 3
    assert isinstance(out[4], int)
    assert 0 <= out[4] < 40


def test_vanishing_temperature_and_top_p_sample_the_most_likely_token() -> None:
    sampler = Sampler(torch.device("cpu"))
    # Logits that overflow when divided by a small temperature without the max subtracted.
    logits = torch.randn(3, 50) * 1e4
    seqs = [
        Sequence([1], SamplingParams(max_tokens=1, temperature=2e-5)),
        Sequence([1], SamplingParams(max_tokens=1, temperature=1.0, top_p=2e-6)),
        Sequence([1], SamplingParams(max_tokens=1, temperature=1e-300, top_p=1e-300)),
    ]
    assert sampler.sample(logits, seqs) == logits.argmax(dim=-1).tolist()


def test_a_failed_step_fails_its_request_and_the_worker_goes_on(
    tiny_model: Path, tmp_path: Path
) -> None:
    worker = start_worker(tiny_model, tmp_path, "--max-model-len", "256", program=(*FAULTY, "oom"))
    try:
        with httpx.Client(base_url=worker.url, timeout=60) as c:
            body = {"model": "tiny", "prompt": "hi", "max_tokens": 4}
            failed = c.post("/v1/completions", json={**body, "seed": TRIGGER_SEED})
            assert failed.status_code == 500
            assert failed.json()["error"]["code"] == "engine_error"
            ok = c.post("/v1/completions", json=body)
            assert ok.status_code == 200, ok.text
            assert c.get("/health").status_code == 200
            assert c.get("/ready").status_code == 200
        assert worker.metric('llmfleet_worker_requests_total{outcome="error"}') == 1
        assert "OutOfMemoryError" in worker.log()
        assert worker.proc.poll() is None
    finally:
        worker.stop()


@pytest.mark.parametrize("lanes", ["1", "2"])
def test_a_fatal_device_error_makes_the_process_exit_non_zero(
    tiny_model: Path, tmp_path: Path, lanes: str
) -> None:
    """With lanes, the one that failed takes the process down with it, the others too."""
    worker = start_worker(
        tiny_model, tmp_path, "--max-model-len", "256", "--lanes", lanes,
        program=(*FAULTY, "device"),
    )  # fmt: skip
    try:
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 4, "seed": TRIGGER_SEED}
        sent = time.monotonic()
        resp = httpx.post(f"{worker.url}/v1/completions", json=body, timeout=60)
        assert resp.status_code == 500
        assert resp.json()["error"]["code"] == "engine_error"
        assert worker.proc.wait(30) == EXIT_ENGINE_FAILED, worker.log()
        # Well within the watchdog's limit: the server closed as soon as the error went out.
        assert time.monotonic() - sent < 10
        assert "device-side assert" in worker.log()
    finally:
        worker.stop()
