"""Pure: the autoscaler's PromQL, per worker engine, and parsing of the answers.

Every query aggregates ``by (namespace, llmdeployment)``: one query answers for the whole
fleet, so the number of queries per interval is constant however many LLMDeployments exist.
The scrape configuration (the chart's PodMonitor, the tests' file-based discovery) attaches
exactly those two labels, plus ``revision`` and ``pod``.
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


def queries(engine: str, rate_window: str = "1m") -> dict[str, str]:
    """Signal name -> PromQL for one engine."""
    m = ENGINE_METRICS[engine]
    q = {
        "waiting": f"sum by ({GROUP_BY}) ({m['waiting']})",
        "running": f"sum by ({GROUP_BY}) ({m['running']})",
        "reporting": f"count by ({GROUP_BY}) ({m['waiting']})",
        "ttft_p95": (
            f"histogram_quantile(0.95, sum by ({GROUP_BY}, le) "
            f"(rate({m['ttft_bucket']}[{rate_window}])))"
        ),
    }
    if "capacity" in m:
        q["capacity"] = f"sum by ({GROUP_BY}) ({m['capacity']})"
    return q


Key = tuple[str, str]


@dataclass(frozen=True)
class Sample:
    """One LLMDeployment's value of one query."""

    value: float | None  # None for NaN/Inf (e.g. a quantile of no traffic)


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
        raw = float(item["value"][1])
        out[key] = Sample(raw if math.isfinite(raw) else None)
    return out


# --- canary analysis ---------------------------------------------------------------------------

ANALYSIS_BY: Final = ("namespace", "llmdeployment", "revision")
REQUESTS_TOTAL: Final = "llmfleet_worker_requests_total"
ERROR_OUTCOME: Final = "error"


def analysis_queries(window_seconds: int) -> dict[str, str]:
    """Per-revision requests, errors and TTFT p95 over the last ``window_seconds``."""
    by = ", ".join(ANALYSIS_BY)
    w = f"{window_seconds}s"
    ttft = ENGINE_METRICS["llmfleet"]["ttft_bucket"]
    return {
        "requests": f"sum by ({by}) (increase({REQUESTS_TOTAL}[{w}]))",
        "errors": (f'sum by ({by}) (increase({REQUESTS_TOTAL}{{outcome="{ERROR_OUTCOME}"}}[{w}]))'),
        "ttft_p95": (f"histogram_quantile(0.95, sum by ({by}, le) (rate({ttft}[{w}])))"),
    }
