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
    assert parsed == {("a", "x"): promql.Sample(3.0, 1.0), ("a", "y"): promql.Sample(None, 1.0)}


def test_parse_vector_keeps_the_evaluation_time_and_sample_timestamps() -> None:
    # ``sampled_at`` answers epoch seconds (``timestamp()``, millisecond precision) next to
    # the time Prometheus evaluated the query: their difference is the samples' age.
    body = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {
                    "metric": {"namespace": "a", "llmdeployment": "x"},
                    "value": [1764600000.25, "1764599815.123"],
                }
            ],
        },
    }
    [sample] = promql.parse_vector(body).values()
    assert sample.evaluated_at == 1764600000.25
    assert sample.value == 1764599815.123
    assert sample.evaluated_at - sample.value == pytest.approx(185.127)


@pytest.mark.parametrize("engine", sorted(promql.ENGINE_METRICS))
def test_every_signal_counts_each_pod_once(engine: str) -> None:
    # Duplicate scrape jobs give a pod's series twice, differing only in job/instance: one
    # value per pod first, then the fleet's aggregate.
    per_pod = "max by (namespace, llmdeployment, pod"
    for name, q in promql.queries(engine).items():
        assert per_pod in q, name
        assert "job" not in q
        assert "instance" not in q
    qs = promql.queries(engine)
    waiting = promql.ENGINE_METRICS[engine]["waiting"]
    assert qs["sampled_at"] == (
        f"min by (namespace, llmdeployment) (max by (namespace, llmdeployment, pod) "
        f"(timestamp({waiting})))"
    )
    assert "max by (namespace, llmdeployment, pod, le) (rate(" in qs["ttft_p95"]


def test_canary_analysis_counts_each_pod_once() -> None:
    qs = promql.analysis_queries(60)
    assert set(qs) == {"requests", "errors", "ttft_p95"}
    for q in qs.values():
        assert "max by (namespace, llmdeployment, revision, pod" in q
        assert q.startswith(("sum by (namespace, llmdeployment, revision", "histogram_quantile"))
    assert qs["requests"] == (
        "sum by (namespace, llmdeployment, revision) "
        "(max by (namespace, llmdeployment, revision, pod, outcome) "
        "(increase(llmfleet_worker_requests_total[60s])))"
    )


def test_parse_vector_rejects_errors() -> None:
    with pytest.raises(ValueError, match="bad_data"):
        promql.parse_vector({"status": "error", "error": "bad_data"})
