"""The HTTP layer over a fake engine (real engine loop, fake model) via httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from worker_fakes import FakeEngine, FakeRunner

from llmfleet_worker import metrics as metric_names
from llmfleet_worker.app import build_app
from llmfleet_worker.engine.scheduler import SamplingParams
from llmfleet_worker.metrics import Metrics
from llmfleet_worker.settings import Settings

MODEL = "fake"
Client = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    eng = FakeEngine(max_model_len=64)
    eng.start()
    yield eng
    eng.shutdown()


def client_for(engine: FakeEngine, **settings: Any) -> httpx.AsyncClient:
    app = build_app(engine, Settings(model="/models/x", served_model_name=MODEL, **settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://worker")


@pytest.fixture
async def client(engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine) as c:
        yield c


def assert_openai_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


def sse_events(text: str) -> list[Any]:
    lines = [line for line in text.split("\n\n") if line.strip()]
    assert all(line.startswith("data: ") for line in lines), text
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


async def test_models_lists_the_served_name(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/models")
    assert resp.status_code == 200
    assert [m["id"] for m in resp.json()["data"]] == [MODEL]


async def test_completion_returns_text_usage_and_finish_reason(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 4}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "bcde"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}


async def test_completion_accepts_token_ids(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": [3], "max_tokens": 2}
    )
    assert resp.json()["choices"][0]["text"] == "de"


async def test_chat_completion_with_stop(client: httpx.AsyncClient) -> None:
    # The fake chat prompt ends in "...assistant" (last token 't'), so it generates u v w x ...
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["wx"]},
    )
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "uv"}
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_chat_stream_is_sse_with_role_content_finish_usage_and_done(
    client: httpx.AsyncClient,
) -> None:
    resp = await client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "uvw"
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finishes[-1] == "length"
    assert all(f is None for f in finishes[:-1])
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 3


async def test_completion_stream(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 3, "stream": True}
    )
    events = sse_events(resp.text)
    assert "".join(e["choices"][0]["text"] for e in events) == "bcd"
    assert events[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "prompt": "a", "max_tokens": "many"}, "max_tokens"),
        ({"model": MODEL, "prompt": "a", "temperature": 3}, "temperature"),
        ({"model": MODEL}, "prompt"),
        ({"model": MODEL, "prompt": "a", "n": 2}, "n"),
        ({"model": MODEL, "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": MODEL, "prompt": [99999]}, "prompt"),
    ],
)
async def test_bad_input_is_a_400_in_openai_shape(
    client: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    error = assert_openai_error(await client.post("/v1/completions", json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


async def test_malformed_json_is_a_400(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/v1/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert "JSON" in assert_openai_error(resp, 400)["message"]


async def test_unknown_model_is_a_404(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/completions", json={"model": "gpt-9", "prompt": "a"})
    assert assert_openai_error(resp, 404)["code"] == "model_not_found"


async def test_prompt_longer_than_max_model_len_is_a_400(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/completions", json={"model": MODEL, "prompt": "a" * 64})
    assert assert_openai_error(resp, 400)["code"] == "context_length_exceeded"
    resp = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "a" * 60, "max_tokens": 10}
    )
    assert assert_openai_error(resp, 400)["param"] == "max_tokens"


async def test_unknown_path_and_wrong_method_are_openai_errors(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/nope"), 404)
    assert_openai_error(await client.get("/v1/completions"), 405)


async def test_body_over_the_limit_is_a_413_before_parsing(engine: FakeEngine) -> None:
    async with client_for(engine, max_request_bytes=100) as c:
        big = json.dumps({"model": MODEL, "prompt": "a" * 200})
        assert_openai_error(await c.post("/v1/completions", content=big), 413)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            for _ in range(10):
                yield b"x" * 50

        assert_openai_error(await c.post("/v1/completions", content=chunks()), 413)
        ok = await c.post("/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 1})
        assert ok.status_code == 200


async def test_api_key_is_required_on_v1_but_not_on_probes(engine: FakeEngine) -> None:
    async with client_for(engine, api_key="s3cret") as c:
        error = assert_openai_error(await c.get("/v1/models"), 401)
        assert error["code"] == "invalid_api_key"
        wrong = await c.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert_openai_error(wrong, 401)
        good = await c.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/ready")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200
        assert "s3cret" not in repr(Settings(api_key="s3cret"))


async def test_full_queue_is_a_429_with_retry_after() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    eng = FakeEngine(runner, max_num_seqs=1, max_queue=1)
    eng.start()
    try:
        async with client_for(eng, retry_after=3) as c:
            eng.submit([1], SamplingParams(max_tokens=1))
            assert runner.entered.wait(10)  # running (held); the next one fills the queue
            eng.submit([1], SamplingParams(max_tokens=1))
            resp = await c.post("/v1/completions", json={"model": MODEL, "prompt": "a"})
            error = assert_openai_error(resp, 429)
            assert resp.headers["retry-after"] == "3"
            assert error["type"] == "rate_limit_error"
            text = (await c.get("/metrics")).text
            assert 'llmfleet_worker_requests_total{outcome="rejected"} 1.0' in text
    finally:
        runner.gate.set()
        eng.shutdown()


async def test_draining_turns_ready_false_and_refuses_new_work(
    engine: FakeEngine, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/ready")).status_code == 200
    engine.start_draining()
    assert (await client.get("/ready")).status_code == 503
    assert (await client.get("/health")).status_code == 200
    resp = await client.post("/v1/completions", json={"model": MODEL, "prompt": "a"})
    assert assert_openai_error(resp, 503)["code"] == "draining"


async def test_metrics_expose_every_contract_name(client: httpx.AsyncClient) -> None:
    await client.post("/v1/completions", json={"model": MODEL, "prompt": "ab", "max_tokens": 3})
    text = (await client.get("/metrics")).text
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    counters = {
        line.split()[2]
        for line in text.splitlines()
        if line.startswith("# TYPE ") and line.endswith("counter")
    }
    exposed = families | {f"{c}_total" for c in counters}
    assert set(metric_names.METRIC_NAMES) <= exposed
    assert all(":" not in name for name in metric_names.METRIC_NAMES)
    assert 'llmfleet_worker_requests_total{outcome="success"} 1.0' in text
    assert "llmfleet_worker_prompt_tokens_total 2.0" in text
    assert "llmfleet_worker_generation_tokens_total 3.0" in text
    assert "llmfleet_worker_time_to_first_token_seconds_count 1.0" in text
    assert "llmfleet_worker_inter_token_latency_seconds_count 2.0" in text
    assert "llmfleet_worker_max_num_seqs 4.0" in text


def test_apps_have_independent_registries() -> None:
    a, b = Metrics(), Metrics()
    a.requests.labels(outcome="success").inc()
    assert b.requests.labels(outcome="success")._value.get() == 0


async def test_engine_failure_fails_liveness_and_requests() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    eng = FakeEngine(runner)
    eng.start()
    try:
        async with client_for(eng) as c:
            body = {"model": MODEL, "prompt": "a", "max_tokens": 5}
            pending = asyncio.ensure_future(c.post("/v1/completions", json=body))
            assert await asyncio.to_thread(runner.entered.wait, 10)
            runner.fail = True
            runner.gate.set()
            assert assert_openai_error(await pending, 500)["code"] == "engine_error"
            assert (await c.get("/health")).status_code == 503
            assert (await c.get("/ready")).status_code == 503
            again = await c.post("/v1/completions", json=body)
            assert_openai_error(again, 500)
    finally:
        eng.shutdown()
