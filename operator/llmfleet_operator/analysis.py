"""Pure: one canary analysis. The candidate's error ratio and TTFT p95 (from Prometheus, by
the ``revision`` label the scrape attaches) against the spec's limits and the stable
revision's TTFT, into a verdict with the measured values (status.rollout.lastAnalysis)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmfleet_operator.api import CanaryAnalysis
from llmfleet_operator.rollout import FAILED, INCONCLUSIVE, PASSED


@dataclass(frozen=True)
class RevisionMetrics:
    """What Prometheus says about one revision over the analysis window."""

    requests: float | None = None
    errors: float | None = None
    ttft_p95: float | None = None


def window_seconds(interval_seconds: int, min_window_seconds: int) -> int:
    """The PromQL range: one interval, but at least a few scrapes long."""
    return max(interval_seconds, min_window_seconds)


def inconclusive(message: str, time: str) -> dict[str, Any]:
    """No verdict (no data, too little traffic, Prometheus unreachable): the step holds."""
    return {"verdict": INCONCLUSIVE, "message": message, "time": time}


def judge(
    limits: CanaryAnalysis,
    candidate: RevisionMetrics,
    stable: RevisionMetrics,
    window: int,
    time: str,
) -> dict[str, Any]:
    """The verdict of one check, shaped as status.rollout.lastAnalysis."""
    if candidate.requests is None:
        return inconclusive(f"no request metrics of the candidate in the last {window}s", time)
    requests = candidate.requests
    if requests < limits.min_requests:
        return {
            **inconclusive(
                f"{requests:.0f} candidate requests in the last {window}s, fewer than "
                f"minRequests {limits.min_requests}",
                time,
            ),
            "requests": round(requests, 3),
        }
    errors = candidate.errors or 0.0
    error_ratio = errors / requests if requests > 0 else 0.0
    result: dict[str, Any] = {
        "requests": round(requests, 3),
        "errorRatio": round(error_ratio, 4),
        "time": time,
    }
    problems: list[str] = []
    seen: list[str] = [f"error ratio {error_ratio:.3f} (max {limits.max_error_ratio:g})"]
    if error_ratio > limits.max_error_ratio:
        problems.append(f"error ratio {error_ratio:.3f} > {limits.max_error_ratio:g}")
    if candidate.ttft_p95 is not None:
        result["ttftP95Seconds"] = round(candidate.ttft_p95, 4)
    if stable.ttft_p95 is not None:
        result["stableTtftP95Seconds"] = round(stable.ttft_p95, 4)
    if candidate.ttft_p95 is not None and stable.ttft_p95 is not None and stable.ttft_p95 > 0:
        ratio = candidate.ttft_p95 / stable.ttft_p95
        result["ttftRatio"] = round(ratio, 3)
        text = (
            f"TTFT p95 {candidate.ttft_p95:.3f}s vs stable {stable.ttft_p95:.3f}s "
            f"(ratio {ratio:.2f}, max {limits.max_ttft_ratio:g})"
        )
        seen.append(text)
        if ratio > limits.max_ttft_ratio:
            problems.append(text)
    volume = f"{requests:.0f} requests in {window}s"
    if problems:
        result.update(verdict=FAILED, message="; ".join(problems) + f"; {volume}")
    else:
        result.update(verdict=PASSED, message="; ".join(seen) + f"; {volume}")
    return result
