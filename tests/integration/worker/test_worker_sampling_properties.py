"""Property: every sampling parameter set the API accepts completes on the real engine (the
tiny model, real torch sampling); everything else is refused at the edge."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

pytest.importorskip("torch")

from llmfleet_worker.api.protocol import CompletionRequest
from llmfleet_worker.engine.core import Output
from llmfleet_worker.engine.scheduler import SamplingParams
from llmfleet_worker.engine.tokenizing import TokenizingEngine, build_engine
from llmfleet_worker.serving import sampling_params
from llmfleet_worker.settings import Settings

INT64 = 2**63
# Edges first: the values that once broke the engine, the bounds, and what lies beyond them.
EDGE_FLOATS = [0.0, 5e-324, 1e-300, 1e-45, 1e-7, 1e-6, 1e-5, 0.5, 1.0, 2.0, 2.0000001, -0.0]
unit_floats = st.one_of(
    st.sampled_from(EDGE_FLOATS), st.floats(min_value=0.0, max_value=2.0), st.floats()
)
PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "temperature": unit_floats,
        "top_p": unit_floats,
        "seed": st.one_of(
            st.none(),
            st.sampled_from([0, -1, INT64 - 1, -INT64, INT64, 2**64, 99999999999999999999999]),
            st.integers(min_value=-INT64, max_value=INT64 - 1),
        ),
        "stop": st.one_of(
            st.none(),
            st.text(max_size=8),
            # Around the 256-character cap; repeated text keeps the example small.
            st.lists(
                st.text(max_size=8)
                | st.builds(lambda c, n: c * n, st.characters(), st.integers(250, 260)),
                max_size=5,
            ),
        ),
        "max_tokens": st.integers(min_value=-1, max_value=40),
        "ignore_eos": st.booleans(),
    },
)


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[TokenizingEngine]:
    eng = build_engine(Settings(model=str(tiny_model), max_model_len=64, threads=1))
    eng.start()
    yield eng
    eng.shutdown()


def run(engine: TokenizingEngine, ids: list[int], params: SamplingParams) -> list[Output]:
    async def collect() -> list[Output]:
        out: list[Output] = []
        async for batch in engine.submit(ids, params).batches():
            out.extend(batch)
        return out

    return asyncio.run(collect())


@given(body=PARAMS)
@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_any_accepted_parameter_set_completes(
    engine: TokenizingEngine, body: dict[str, Any]
) -> None:
    try:
        req = CompletionRequest.model_validate({"model": "tiny", "prompt": "hi", **body})
    except ValidationError as exc:
        event(f"refused: {exc.errors()[0]['loc'][0]}")
        return  # a 400 at the edge (the app tests check its shape and param)
    event("accepted")
    max_tokens = req.max_tokens or 16
    outs = run(engine, engine.encode("hi"), sampling_params(req, max_tokens))
    reason = outs[-1].finish_reason
    assert reason in ("stop", "length"), (body, outs)
    if reason == "length":
        assert sum(o.num_tokens for o in outs) == max_tokens
    assert engine.healthy
