"""The autoscaler's queries: shape, parsing, and the contract with the worker's metrics."""

from __future__ import annotations

import pytest

from llmfleet_operator import promql
from llmfleet_worker import metrics as worker_metrics


@pytest.mark.parametrize("engine", sorted(promql.ENGINE_METRICS))
def test_every_query_groups_by_namespace_and_llmdeployment(engine: str) -> None:
    qs = promql.queries(engine)
    assert {"waiting", "running", "reporting", "ttft_p95"} <= set(qs)
    for q in qs.values():
        assert "by (namespace, llmdeployment" in q


def test_llmfleet_queries_use_only_metrics_the_worker_exports() -> None:
    exported = set(worker_metrics.METRIC_NAMES)
    for name in promql.ENGINE_METRICS["llmfleet"].values():
        base = name.removesuffix("_bucket")
        assert base in exported, f"{base} is queried by the operator but not exported"
        # and it really appears in the queries
        assert any(name in q for q in promql.queries("llmfleet").values())


def test_vllm_queries_use_vllm_names() -> None:
    qs = promql.queries("vllm")
    assert "vllm:num_requests_waiting" in qs["waiting"]
    assert "vllm:time_to_first_token_seconds_bucket" in qs["ttft_p95"]
    assert "capacity" not in qs


def test_parse_vector_keys_by_namespace_and_name_and_drops_nan() -> None:
    body = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"namespace": "a", "llmdeployment": "x"}, "value": [1, "3"]},
                {"metric": {"namespace": "a", "llmdeployment": "y"}, "value": [1, "NaN"]},
                {"metric": {"namespace": "a"}, "value": [1, "9"]},
            ],
        },
    }
    parsed = promql.parse_vector(body)
    assert parsed == {("a", "x"): promql.Sample(3.0), ("a", "y"): promql.Sample(None)}


def test_parse_vector_rejects_errors() -> None:
    with pytest.raises(ValueError, match="bad_data"):
        promql.parse_vector({"status": "error", "error": "bad_data"})
