"""The official openai client, streaming, bad input, auth, big prompts and metrics against a
real worker process serving the tiny model."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from worker_procs import API_KEY, WorkerProcess

from llmfleet_worker.metrics import METRIC_NAMES


@pytest.fixture
def client(worker: WorkerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{worker.url}/v1", api_key=API_KEY, max_retries=0)


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_completion(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model="tiny",
        prompt="The fleet is",
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    assert choice.text
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 12
    assert resp.usage.prompt_tokens > 0


def test_greedy_is_deterministic_and_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    def run(**kw: object) -> str:
        r = client.completions.create(model="tiny", prompt="hello", max_tokens=10, **kw)  # type: ignore[call-overload]
        text: str = r.choices[0].text
        return text

    assert run(temperature=0) == run(temperature=0)
    assert run(temperature=1.0, top_p=0.9, seed=42) == run(temperature=1.0, top_p=0.9, seed=42)


def test_chat_completion(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="tiny",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello!"},
        ],
        max_tokens=8,
    )
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_stream_delivers_every_token_then_done(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Count to ten"}],
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert reasons == ["length"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 20
    nonstream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Count to ten"}],
        max_tokens=20,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert nonstream.choices[0].message.content == text


def test_completion_stream(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="tiny", prompt="queue", max_tokens=5, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_errors_are_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-unknown", prompt="x")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=0)
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="tiny", prompt="x " * 2000)
    assert exc.value.code == "context_length_exceeded"


def test_auth(worker: WorkerProcess) -> None:
    resp = httpx.get(f"{worker.url}/v1/models")
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=f"{worker.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert API_KEY not in worker.log()


def test_malformed_json_and_wrong_types(worker: WorkerProcess) -> None:
    url = f"{worker.url}/v1/chat/completions"
    headers = {**worker.headers, "content-type": "application/json"}
    for body in (b"{not json", b'{"model": "tiny", "messages": "hi"}', b"[]"):
        resp = httpx.post(url, content=body, headers=headers)
        assert resp.status_code == 400, resp.text
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(f"{worker.url}/health").status_code == 200


def test_body_over_the_limit_is_413(worker: WorkerProcess) -> None:
    body = json.dumps({"model": "tiny", "prompt": "a" * (9 * 1024 * 1024)})
    resp = httpx.post(
        f"{worker.url}/v1/completions",
        content=body,
        headers={**worker.headers, "content-type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 413
    assert resp.json()["error"]["type"] == "invalid_request_error"


async def test_megabyte_prompt_is_refused_fast_and_stalls_nobody(worker: WorkerProcess) -> None:
    async with httpx.AsyncClient(base_url=worker.url, headers=worker.headers, timeout=60) as c:
        # A stream in flight while the huge prompt arrives must keep flowing.
        async def stream() -> int:
            body = {
                "model": "tiny",
                "prompt": "x",
                "max_tokens": 64,
                "stream": True,
                "ignore_eos": True,
            }
            n = 0
            async with c.stream("POST", "/v1/completions", json=body) as resp:
                async for line in resp.aiter_lines():
                    n += line.startswith("data: {")
            return n

        running = asyncio.ensure_future(stream())
        huge = "lorem ipsum dolor " * 250_000  # 4.5 MB
        started = time.monotonic()
        resp = await c.post("/v1/completions", json={"model": "tiny", "prompt": huge})
        refused_in = time.monotonic() - started
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "context_length_exceeded"
        assert refused_in < 1.0, refused_in
        started = time.monotonic()
        ok = await c.post(
            "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4}
        )
        assert ok.status_code == 200
        assert time.monotonic() - started < 5.0
        assert await running > 0


def test_disconnect_cancels_the_request(worker: WorkerProcess) -> None:
    cancelled = worker.metric('llmfleet_worker_requests_total{outcome="cancelled"}')
    body = {"model": "tiny", "prompt": "x", "max_tokens": 400, "stream": True, "ignore_eos": True}
    with httpx.stream(
        "POST", f"{worker.url}/v1/completions", json=body, headers=worker.headers
    ) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    worker.wait_for(
        lambda: worker.metric('llmfleet_worker_requests_total{outcome="cancelled"}') > cancelled
    )
    worker.wait_for(lambda: worker.metric("llmfleet_worker_requests_running") == 0)


def test_metrics(worker: WorkerProcess, client: openai.OpenAI) -> None:
    before = worker.metric("llmfleet_worker_generation_tokens_total")
    client.completions.create(
        model="tiny", prompt="a b c", max_tokens=6, extra_body={"ignore_eos": True}
    )
    text = httpx.get(f"{worker.url}/metrics").text
    assert worker.metric("llmfleet_worker_generation_tokens_total") == before + 6
    for name in METRIC_NAMES:
        assert f"\n{name}" in text or text.startswith(name), name
    assert worker.metric("llmfleet_worker_model_load_seconds") > 0
    assert worker.metric("llmfleet_worker_ready") == 1
    assert worker.metric("llmfleet_worker_time_to_first_token_seconds_count") > 0


HOSTILE = [
    ({"seed": 99999999999999999999999}, 400, "seed"),
    ({"seed": -(2**63) - 1}, 400, "seed"),
    ({"temperature": 1e-300}, 200, None),
    ({"top_p": 1e-300}, 200, None),
    ({"temperature": 1e-300, "top_p": 1e-300, "seed": 2**63 - 1}, 200, None),
    ({"stop": ["x" * 257]}, 400, "stop"),
]


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_hostile_parameters_never_hurt_the_replica(worker: WorkerProcess, endpoint: str) -> None:
    # Each of these once answered 500 and left the replica answering 500 and /health 503.
    prompt: dict[str, object] = (
        {"prompt": "hi"}
        if endpoint == "/v1/completions"
        else {"messages": [{"role": "user", "content": "hi"}]}
    )
    with httpx.Client(base_url=worker.url, headers=worker.headers, timeout=60) as c:
        for extra, status, param in HOSTILE:
            resp = c.post(endpoint, json={"model": "tiny", "max_tokens": 4, **prompt, **extra})
            assert resp.status_code == status, (extra, resp.text)
            if status == 400:
                assert resp.json()["error"]["param"] == param
            ok = c.post(endpoint, json={"model": "tiny", "max_tokens": 4, **prompt})
            assert ok.status_code == 200, (extra, ok.text)
        assert c.get("/health").status_code == 200
