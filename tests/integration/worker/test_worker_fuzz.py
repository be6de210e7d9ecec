"""Schemathesis fuzzes the worker's own OpenAPI schema against a real worker process: valid
and invalid bodies for every endpoint, and never a 5xx. Afterwards the replica still serves."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from worker_procs import API_KEY, WorkerProcess, start_worker


@pytest.fixture(scope="module")
def fuzzed_worker(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    # A worker of its own: whatever the fuzzer does to it shows here and nowhere else. A short
    # context bounds the work of the longest generation the fuzzer can ask for.
    w = start_worker(
        tiny_model, tmp_path_factory.mktemp("fuzz"), "--max-model-len", "128", api_key=API_KEY
    )
    yield w
    w.stop()


@pytest.fixture(scope="module")
def api_schema(fuzzed_worker: WorkerProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzzed_worker.url}/openapi.json")


# schemathesis' own pytest integration (``from_fixture``) does not run under pytest 9, so
# each operation's strategy is driven by hypothesis here instead.
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
OPERATIONS = [
    ("POST", "/v1/completions", POSITIVE, 150),
    ("POST", "/v1/completions", NEGATIVE, 150),
    ("POST", "/v1/chat/completions", POSITIVE, 150),
    ("POST", "/v1/chat/completions", NEGATIVE, 150),
    # No parameters: nothing to make invalid.
    ("GET", "/v1/models", POSITIVE, 3),
    ("GET", "/health", POSITIVE, 3),
    ("GET", "/ready", POSITIVE, 3),
    ("GET", "/metrics", POSITIVE, 3),
]


@pytest.mark.parametrize(("method", "path", "mode", "examples"), OPERATIONS)
def test_no_input_makes_the_worker_fail(
    api_schema: schemathesis.BaseSchema,
    fuzzed_worker: WorkerProcess,
    method: str,
    path: str,
    examples: int,
    mode: GenerationMode,
) -> None:
    assert any(p == path for p in api_schema), f"{path} is not in the schema"
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    session = requests.Session()
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,  # the worker's behaviour, not a replay of an old run, is the subject
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def fuzz(case: schemathesis.Case) -> None:
        # The schema allows any model name; aim most bodies at the served model so that the
        # fuzzer reaches generation, not only the 404 for an unknown model.
        if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
            case.body["model"] = "tiny"
        response = case.call_and_validate(
            session=session, headers=headers, checks=[not_a_server_error], timeout=60
        )
        statuses[response.status_code] += 1
        # A refused request must leave the replica alive: liveness after every case.
        assert session.get(f"{fuzzed_worker.url}/health", timeout=10).status_code == 200

    fuzz()
    print(f"{method} {path} {mode.value}: {dict(sorted(statuses.items()))}")
    if mode is POSITIVE:
        assert statuses[200] > 0, statuses  # valid requests were served, not all refused


def test_after_fuzzing_a_plain_request_succeeds(fuzzed_worker: WorkerProcess) -> None:
    resp = httpx.post(
        f"{fuzzed_worker.url}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers=fuzzed_worker.headers,
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    assert httpx.get(f"{fuzzed_worker.url}/health", timeout=10).status_code == 200
    assert fuzzed_worker.proc.poll() is None
    assert fuzzed_worker.metric('llmfleet_worker_requests_total{outcome="error"}') == 0
