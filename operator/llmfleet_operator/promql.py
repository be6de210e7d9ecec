"""Pure: the autoscaler's PromQL, per worker engine, and parsing of the answers.

Every query aggregates ``by (namespace, llmdeployment)``: one query answers for the whole
fleet, so the number of queries per interval is constant however many LLMDeployments exist.
The scrape configuration (the chart's PodMonitor, the tests' file-based discovery) attaches
exactly those two labels, plus ``revision`` and ``pod``.

Each query first takes one value per worker pod (``max by (..., pod)``), then aggregates:
when two scrape jobs scrape the same pod (a PodMonitor and a ServiceMonitor, two Prometheus
jobs), its series differ only in ``job``/``instance`` and would otherwise be counted twice.

``sampled_at`` says how old the answers are: per pod the newest sample's own timestamp
(of any job), and of those the oldest. Prometheus serves a series' last sample for its
lookback delta (5m by default) when nothing ends it with a staleness marker: samples that
carry their own timestamps (``honor_timestamps``, federation), remote-read or Thanos stores,
a Prometheus that stopped scraping or restarted. Query time says nothing about that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

GROUP_BY: Final = "namespace, llmdeployment"

# Metric names the queries use, per engine. The contract test checks the llmfleet ones
# against the names the worker exports.
ENGINE_METRICS: Final[dict[str, dict[str, str]]] = {
    "llmfleet": {
        "waiting": "llmfleet_worker_requests_waiting",
        "running": "llmfleet_worker_requests_running",
        "capacity": "llmfleet_worker_max_num_seqs",
        "ttft_bucket": "llmfleet_worker_time_to_first_token_seconds_bucket",
    },
    "vllm": {
        "waiting": "vllm:num_requests_waiting",
        "running": "vllm:num_requests_running",
        "ttft_bucket": "vllm:time_to_first_token_seconds_bucket",
    },
}


def per_pod(expr: str, by: str = GROUP_BY, extra: str = "") -> str:
    """One value per worker pod (the largest of duplicate scrape jobs' copies)."""
    return f"max by ({by}, pod{extra}) ({expr})"


def queries(engine: str, rate_window: str = "1m") -> dict[str, str]:
    """Signal name -> PromQL for one engine."""
    m = ENGINE_METRICS[engine]
    bucket_rate = f"rate({m['ttft_bucket']}[{rate_window}])"
    q = {
        "waiting": f"sum by ({GROUP_BY}) ({per_pod(m['waiting'])})",
        "running": f"sum by ({GROUP_BY}) ({per_pod(m['running'])})",
        "reporting": f"count by ({GROUP_BY}) ({per_pod(m['waiting'])})",
        "ttft_p95": (
            f"histogram_quantile(0.95, sum by ({GROUP_BY}, le) "
            f"({per_pod(bucket_rate, extra=', le')}))"
        ),
        # Epoch seconds: the oldest worker's newest sample (``timestamp`` of the raw series:
        # of an aggregate it would be the query time).
        "sampled_at": f"min by ({GROUP_BY}) ({per_pod('timestamp(' + m['waiting'] + ')')})",
    }
    if "capacity" in m:
        q["capacity"] = f"sum by ({GROUP_BY}) ({per_pod(m['capacity'])})"
    return q


Key = tuple[str, str]


@dataclass(frozen=True)
class Sample:
    """One LLMDeployment's value of one query."""

    value: float | None  # None for NaN/Inf (e.g. a quantile of no traffic)
    #: When Prometheus evaluated the query (epoch seconds, its own clock).
    evaluated_at: float = 0.0


def parse_vector(
    body: Mapping[str, Any], labels: tuple[str, ...] = ("namespace", "llmdeployment")
) -> dict[tuple[str, ...], Sample]:
    """An instant-vector answer of /api/v1/query -> (values of ``labels``) -> value."""
    if body.get("status") != "success":
        raise ValueError(f"Prometheus answered {body.get('status')}: {body.get('error')}")
    data = body.get("data", {})
    if data.get("resultType") != "vector":
        raise ValueError(f"expected a vector, got {data.get('resultType')}")
    out: dict[tuple[str, ...], Sample] = {}
    for item in data.get("result", []):
        metric = item.get("metric", {})
        key = tuple(str(metric.get(label) or "") for label in labels)
        if not all(key):
            continue
        at, raw = float(item["value"][0]), float(item["value"][1])
        out[key] = Sample(raw if math.isfinite(raw) else None, at)
    return out


# --- canary analysis ---------------------------------------------------------------------------

ANALYSIS_BY: Final = ("namespace", "llmdeployment", "revision")
REQUESTS_TOTAL: Final = "llmfleet_worker_requests_total"
ERROR_OUTCOME: Final = "error"


def analysis_queries(window_seconds: int) -> dict[str, str]:
    """Per-revision requests, errors and TTFT p95 over the last ``window_seconds``.

    Per pod and outcome the largest increase of duplicate scrape jobs' copies, then the sum.
    """
    by = ", ".join(ANALYSIS_BY)
    w = f"{window_seconds}s"
    ttft = ENGINE_METRICS["llmfleet"]["ttft_bucket"]
    requests = f"increase({REQUESTS_TOTAL}[{w}])"
    errors = f'increase({REQUESTS_TOTAL}{{outcome="{ERROR_OUTCOME}"}}[{w}])'
    return {
        "requests": f"sum by ({by}) ({per_pod(requests, by, ', outcome')})",
        "errors": f"sum by ({by}) ({per_pod(errors, by, ', outcome')})",
        "ttft_p95": (
            f"histogram_quantile(0.95, sum by ({by}, le) "
            f"({per_pod(f'rate({ttft}[{w}])', by, ', le')}))"
        ),
    }
