"""The HTTP layer over a fake engine (real engine loop, fake model) via httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from worker_fakes import FAILING_SEED, FakeEngine, FakeRunner

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


ENDPOINTS = {
    "/v1/completions": {"model": MODEL, "prompt": "a"},
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "a"}]},
}
# Refused the same way on both endpoints: (extra fields, the param the error names).
REFUSED_ON_BOTH: list[tuple[dict[str, Any], str]] = [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"seed": 99999999999999999999999}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"n": 2}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ["x" * 257]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stop": 7}, "stop"),
    ({"presence_penalty": 1}, "presence_penalty"),
    ({"frequency_penalty": -0.5}, "frequency_penalty"),
    ({"logit_bias": {"50": 10}}, "logit_bias"),
    ({"model": None}, "model"),
]
REFUSED_ON_COMPLETIONS: list[tuple[dict[str, Any], str]] = [
    ({"prompt": None}, "prompt"),
    ({"prompt": [99999]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": [[3, 99999]]}, "prompt"),
    ({"prompt": [True]}, "prompt"),
    ({"prompt": [1.5]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [[1], [2]]}, "prompt"),
    ({"prompt": "a\ud800b"}, "prompt"),
    ({"logprobs": 1}, "logprobs"),
    ({"logprobs": 0}, "logprobs"),
    ({"echo": True}, "echo"),
    ({"suffix": "end"}, "suffix"),
    ({"best_of": 2}, "best_of"),
]
REFUSED_ON_CHAT: list[tuple[dict[str, Any], str]] = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                    ],
                }
            ]
        },
        "messages",
    ),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
]
REFUSALS = [
    *((endpoint, extra, param) for endpoint in ENDPOINTS for extra, param in REFUSED_ON_BOTH),
    *(("/v1/completions", extra, param) for extra, param in REFUSED_ON_COMPLETIONS),
    *(("/v1/chat/completions", extra, param) for extra, param in REFUSED_ON_CHAT),
]


@pytest.mark.parametrize(("endpoint", "extra", "param"), REFUSALS)
async def test_bad_input_is_a_400_in_openai_shape_naming_the_param(
    client: httpx.AsyncClient, endpoint: str, extra: dict[str, Any], param: str
) -> None:
    body = {**ENDPOINTS[endpoint], **extra}
    # Sent as text so that "\ud800" stays an escape (a lone surrogate cannot be encoded).
    content = json.dumps(body).replace("\\\\ud800", "\\ud800")
    resp = await client.post(
        endpoint, content=content, headers={"content-type": "application/json"}
    )
    error = assert_openai_error(resp, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    # The replica goes on serving.
    ok = await client.post(endpoint, json={**ENDPOINTS[endpoint], "max_tokens": 2})
    assert ok.status_code == 200, ok.text


ACCEPTED_ON_BOTH: list[dict[str, Any]] = [
    {"temperature": 1e-300},  # below MIN_TEMPERATURE: greedy
    {"top_p": 1e-300},  # below MIN_TOP_P: greedy
    {"temperature": 2, "top_p": 1, "seed": 2**63 - 1},
    {"seed": -(2**63)},
    {"stop": ["x" * 256, "b", "c", "d"]},
    {"n": 1, "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}},
    {"user": "u-1", "metadata": {"k": "v"}, "store": False, "service_tier": "auto"},
    {"a_field_from_the_future": {"x": 1}},
]
ACCEPTED_ON_COMPLETIONS: list[dict[str, Any]] = [
    {"prompt": ["a"]},
    {"prompt": [3, 4]},
    {"prompt": [[3, 4]]},
    {"logprobs": None, "echo": False, "suffix": None, "best_of": 1},
]
ACCEPTED_ON_CHAT: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]},
    {"messages": [{"role": "system", "content": None}, {"role": "user", "content": "a"}]},
    {"logprobs": False, "tools": [], "tool_choice": "none", "response_format": {"type": "text"}},
    {"modalities": ["text"], "parallel_tool_calls": True, "max_completion_tokens": 2},
]
ACCEPTANCES = [
    *((endpoint, extra) for endpoint in ENDPOINTS for extra in ACCEPTED_ON_BOTH),
    *(("/v1/completions", extra) for extra in ACCEPTED_ON_COMPLETIONS),
    *(("/v1/chat/completions", extra) for extra in ACCEPTED_ON_CHAT),
]


@pytest.mark.parametrize(("endpoint", "extra"), ACCEPTANCES)
async def test_supported_ignored_and_unknown_fields_are_accepted(
    client: httpx.AsyncClient, endpoint: str, extra: dict[str, Any]
) -> None:
    resp = await client.post(endpoint, json={**ENDPOINTS[endpoint], "max_tokens": 2, **extra})
    assert resp.status_code == 200, resp.text


async def test_the_openapi_schema_documents_400_not_422(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    for path in ("/v1/completions", "/v1/chat/completions"):
        responses = schema["paths"][path]["post"]["responses"]
        assert "422" not in responses
        assert {"400", "429", "500"} <= set(responses)


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


async def test_a_request_that_fails_alone_is_a_500_and_the_others_succeed(
    client: httpx.AsyncClient,
) -> None:
    body = {"model": MODEL, "prompt": "a", "max_tokens": 4}
    bad, good = await asyncio.gather(
        client.post("/v1/completions", json={**body, "seed": FAILING_SEED}),
        client.post("/v1/completions", json=body),
    )
    error = assert_openai_error(bad, 500)
    assert (error["type"], error["code"]) == ("server_error", "engine_error")
    assert good.json()["choices"][0]["text"] == "bcde"
    stream = await client.post(
        "/v1/completions", json={**body, "seed": FAILING_SEED, "stream": True}
    )
    assert sse_events(stream.text)[-1]["error"]["code"] == "engine_error"
    text = (await client.get("/metrics")).text
    assert 'llmfleet_worker_requests_total{outcome="error"} 2.0' in text
    assert 'llmfleet_worker_requests_total{outcome="success"} 1.0' in text
    assert (await client.get("/health")).status_code == 200


async def test_a_failed_step_is_a_500_for_its_requests_and_the_next_request_succeeds() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    eng = FakeEngine(runner)
    eng.start()
    try:
        async with client_for(eng) as c:
            body = {"model": MODEL, "prompt": "a", "max_tokens": 5}
            pending = asyncio.ensure_future(c.post("/v1/completions", json=body))
            assert await asyncio.to_thread(runner.entered.wait, 10)
            runner.raise_next = RuntimeError("simulated failure of the forward pass")
            runner.gate.set()
            assert assert_openai_error(await pending, 500)["code"] == "engine_error"
            assert (await c.get("/health")).status_code == 200
            assert (await c.get("/ready")).status_code == 200
            again = await c.post("/v1/completions", json=body)
            assert again.json()["choices"][0]["text"] == "bcdef"
    finally:
        eng.shutdown()


async def test_a_fatal_engine_error_fails_liveness_and_requests() -> None:
    runner = FakeRunner()
    runner.gate.clear()
    eng = FakeEngine(runner)
    eng.start()
    try:
        async with client_for(eng) as c:
            body = {"model": MODEL, "prompt": "a", "max_tokens": 5}
            pending = asyncio.ensure_future(c.post("/v1/completions", json=body))
            assert await asyncio.to_thread(runner.entered.wait, 10)
            runner.raise_next = RuntimeError("CUDA error: an illegal memory access")
            runner.gate.set()
            assert assert_openai_error(await pending, 500)["code"] == "engine_error"
            assert (await c.get("/health")).status_code == 503
            assert (await c.get("/ready")).status_code == 503
            again = await c.post("/v1/completions", json=body)
            assert_openai_error(again, 500)
    finally:
        eng.shutdown()


def completions_scope(headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    """The ASGI scope of a JSON ``POST /v1/completions``, for driving the app by hand."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), *(headers or [])],
        "client": ("127.0.0.1", 1),
        "server": ("worker", 80),
    }


async def test_every_api_request_ends_in_one_outcome_even_before_its_body_is_read(
    engine: FakeEngine,
) -> None:
    metrics = Metrics()
    app = build_app(engine, Settings(model="/models/x", served_model_name=MODEL), metrics)

    async def gone() -> dict[str, Any]:  # the client went away before sending its body
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = completions_scope([(b"content-length", b"40")])
    await app(scope, gone, send)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://worker"
    ) as client:
        assert_openai_error(await client.post("/v1/nope", json={}), 404)
        assert (await client.get("/nope")).status_code == 404  # not an API request
        text = (await client.get("/metrics")).text
    assert 'llmfleet_worker_requests_total{outcome="cancelled"} 1.0' in text
    assert 'llmfleet_worker_requests_total{outcome="invalid"} 1.0' in text


async def test_a_client_gone_before_its_answer_cancels_the_request_in_the_engine() -> None:
    runner = FakeRunner(step_seconds=0.01)
    eng = FakeEngine(runner, max_model_len=64)
    eng.start()
    metrics = Metrics()
    app = build_app(eng, Settings(model="/models/x", served_model_name=MODEL), metrics)
    body = json.dumps({"model": MODEL, "prompt": "a", "max_tokens": 50}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        # The client goes away once the request is generating (50 steps take 0.5 s).
        assert await asyncio.to_thread(runner.entered.wait, 10)
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = completions_scope()
    try:
        await app(scope, receive, send)
        assert sent[0]["status"] == 499
        assert [seq.finish_reason for seq in runner.released] == ["cancelled"]
        assert len(runner.released[0].output_ids) < 50
        assert eng.num_running == 0
    finally:
        eng.shutdown()
    counted = metrics.registry.get_sample_value
    assert counted(metric_names.REQUESTS_TOTAL, {"outcome": "cancelled"}) == 1
    assert counted(metric_names.REQUESTS_TOTAL, {"outcome": "error"}) == 0
