"""Pure: the built-in autoscaler's decision for one LLMDeployment.

Given bounds and targets, the fleet's current size, the signals from Prometheus and the
recent recommendations, return the replica count to run and why. HPA's algorithm, adapted
to LLM serving and made explainable:

- each signal proposes a size; the largest proposal wins (HPA with several metrics);
- inside a tolerance band around the current size nothing changes;
- scale-up happens at once but at most doubles (at least +1) per decision;
- scale-down waits for a stabilization window (the highest recommendation inside the window
  wins) and then at most halves per decision;
- pods Pending for lack of GPUs are not capacity: never ask for more while some wait, and
  never ask for more than the free GPUs can hold;
- missing or stale signals hold the current size (fail-static: never down, never to zero);
- fewer workers reporting than are ready never scales down (a partial sum undercounts);
- with ``minReplicas: 0`` a fleet idle for a whole stabilization window goes to zero. Nothing
  brings it back by itself (no replica, no queue to measure): scaling from zero needs
  request holding, which llmfleet does not have; raise minReplicas to serve again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

DEFAULT_TOLERANCE: Final = 0.1
#: Signals older than this (seconds) are stale. Age is the oldest worker's newest sample's
#: own timestamp against the query time, so with 1-30 s scrapes a fresh answer is at most one
#: interval old. A failed scrape or a vanished target ends its series at once (a staleness
#: marker: then the worker stops reporting); what ages past this are samples Prometheus keeps
#: serving for its lookback delta: their own old timestamps, a lagging federation or remote
#: read, a Prometheus that stopped scraping.
MAX_SIGNAL_AGE: Final = 60.0
#: A stale age is reported in steps of this (seconds), so that a held fleet's status is not
#: rewritten on every evaluation.
STALE_AGE_STEP: Final = 30.0


class Why:
    """Decision reasons (CamelCase: they become Event reasons and metric labels)."""

    QUEUE = "QueueDepth"
    RUNNING = "RunningRequests"
    TTFT = "TimeToFirstToken"
    STEADY = "WithinTolerance"
    STABILIZING = "ScaleDownStabilizing"
    IDLE = "Idle"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    PARTIAL_METRICS = "PartialMetrics"
    GPU_LIMITED = "InsufficientGPU"
    AT_MAX = "AtMaxReplicas"
    AT_MIN = "AtMinReplicas"
    SUSPENDED = "Suspended"


@dataclass(frozen=True)
class Policy:
    """Bounds and targets from ``spec.autoscaling``."""

    min_replicas: int
    max_replicas: int
    target_queue_per_replica: float
    ttft_p95_seconds: float | None = None
    stabilization_seconds: float = 300.0
    tolerance: float = DEFAULT_TOLERANCE
    suspended: bool = False


@dataclass(frozen=True)
class Signals:
    """Fleet-wide values for one LLMDeployment, as of ``at`` (epoch seconds)."""

    at: float
    waiting: float
    running: float
    #: Sum over workers of the most sequences each runs at once (None: unknown: neither
    #: exported by the workers nor set by the spec).
    capacity: float | None = None
    ttft_p95: float | None = None
    #: Workers that reported in the last scrape.
    reporting: int = 0

    def as_dict(self) -> dict[str, float]:
        """For ``status.autoscaler.lastDecision.signals`` (no None values)."""
        values = {
            "waiting": self.waiting,
            "running": self.running,
            "reportingReplicas": float(self.reporting),
        }
        if self.capacity is not None:
            values["capacity"] = self.capacity
        if self.ttft_p95 is not None:
            values["ttftP95Seconds"] = round(self.ttft_p95, 4)
        return values


@dataclass(frozen=True)
class Fleet:
    """What the cluster says about the worker pods."""

    current: int  # replicas asked for now
    ready: int
    pending_for_gpu: int = 0
    #: More pods of this LLMDeployment's size that fit on free GPUs now (None: unknown).
    gpu_headroom: int | None = None


@dataclass
class History:
    """Recent raw recommendations (time, replicas) for the stabilization window."""

    recommendations: list[tuple[float, int]] = field(default_factory=list)

    def record(self, at: float, replicas: int, window: float) -> None:
        self.recommendations.append((at, replicas))
        self.recommendations = [(t, r) for t, r in self.recommendations if at - t <= window]

    def highest_since(self, since: float) -> int | None:
        inside = [r for t, r in self.recommendations if t >= since]
        return max(inside) if inside else None


@dataclass(frozen=True)
class Decision:
    """The outcome: ``replicas`` to run, the ``reason``, and whether signals were usable."""

    replicas: int
    reason: str
    signals: dict[str, float]
    metrics_ok: bool
    #: The unbounded proposal of each signal (for the explanation).
    proposals: dict[str, int] = field(default_factory=dict)
    #: What held the size below the proposal: ``AtMaxReplicas`` or ``InsufficientGPU``.
    limited_by: str | None = None
    #: Why the signals were not usable, when they came but were stale.
    detail: str | None = None

    def direction(self, current: int) -> str:
        """``up``, ``down`` or ``none`` relative to ``current``."""
        return "up" if self.replicas > current else "down" if self.replicas < current else "none"


def needs(policy: Policy, fleet: Fleet, s: Signals) -> dict[str, float]:
    """How many replicas each signal says the load needs (fractional)."""
    base = max(fleet.ready, 1)
    out: dict[str, float] = {}
    reporting = max(s.reporting, 1)
    # Batch size unknown (neither exported nor known from the spec): the batches observed
    # now. A lower bound of the capacity (exact while a queue waits: then the batches are
    # full), so the proposal is never below what the true capacity gives. Running requests
    # are not queue: they never stand in for waiting ones.
    per_worker = (s.capacity or s.running) / reporting
    # Every request in flight is either in a batch or waiting. One replica should hold a
    # full batch plus ``targetQueueDepthPerReplica`` waiting, so the fleet needs
    # in-flight / (batch + target) replicas. This counts no replica that is still
    # starting, so a queue that persists while new pods load does not over-scale.
    in_flight = s.waiting + s.running
    need = in_flight / (per_worker + policy.target_queue_per_replica)
    out[Why.QUEUE if s.waiting > 0 else Why.RUNNING] = need
    if policy.ttft_p95_seconds and s.ttft_p95 is not None and s.ttft_p95 > 0:
        ratio = s.ttft_p95 / policy.ttft_p95_seconds
        # Latency below target says nothing about how few replicas would do: only scale up.
        if ratio > 1 + policy.tolerance:
            out[Why.TTFT] = base * ratio
    return out


def decide(
    policy: Policy,
    fleet: Fleet,
    signals: Signals | None,
    history: History,
    now: float,
) -> Decision:
    """The replica count for the next interval, with its reason.

    Hysteresis keeps a noisy load from flapping: the fleet grows when the load needs more
    than ``current * (1 + tolerance)``; it shrinks only to a size that the highest load of
    the stabilization window would still need less than ``1 / (1 + tolerance)`` of, so the
    next peak of the same noise cannot send it straight back up.
    """
    lo, hi = policy.min_replicas, max(policy.max_replicas, policy.min_replicas)
    current = fleet.current
    tol = policy.tolerance
    if policy.suspended:
        return Decision(0, Why.SUSPENDED, {}, True)
    if signals is None or now - signals.at > MAX_SIGNAL_AGE:
        # Fail-static: hold the size we have (only the bounds may move it).
        held = min(hi, max(lo, current))
        detail = None if signals is None else stale_detail(now - signals.at)
        return Decision(held, Why.METRICS_UNAVAILABLE, {}, False, detail=detail)

    if not history.recommendations:
        # After a (re)start nothing is known about the last window: count the current size
        # as recommended now, so that a scale-down waits one full window.
        history.record(now, current, policy.stabilization_seconds)
    need = needs(policy, fleet, signals)
    wanted = {why: math.ceil(n - 1e-9) for why, n in need.items()}
    reason, top = max(need.items(), key=lambda kv: (kv[1], kv[0] == Why.QUEUE))
    if top == 0 and signals.waiting == 0 and signals.running == 0:
        reason = Why.IDLE
    up = math.ceil(top - 1e-9)
    # What the window may shrink to: the load would use at most 1/(1+tol) of it.
    down_floor = min(hi, max(lo, math.ceil(top * (1 + tol) - 1e-9)))
    history.record(now, down_floor, policy.stabilization_seconds)
    limited_by = Why.AT_MAX if up > hi else None

    target = current
    if current == 0 or top > current * (1 + tol):
        target = min(hi, max(lo, up))
    if target > current:
        target = min(target, max(current * 2, current + 1))
        if fleet.pending_for_gpu > 0:
            target, limited_by = current, Why.GPU_LIMITED
        elif fleet.gpu_headroom is not None and target - current > fleet.gpu_headroom:
            target, limited_by = current + fleet.gpu_headroom, Why.GPU_LIMITED
    elif down_floor < current and signals.reporting < fleet.ready:
        # Some ready workers are not in the sums (not scraped yet, or their scrapes fail):
        # the load looks smaller than it is. Growing on an undercount is safe; shrinking not.
        reason = Why.PARTIAL_METRICS
    elif down_floor < current:
        # The highest recommendation inside the window wins: a short lull changes nothing.
        highest = history.highest_since(now - policy.stabilization_seconds)
        stabilized = max(down_floor, highest if highest is not None else current)
        if stabilized >= current:
            reason = Why.STABILIZING
        else:
            # At most halving; a window that needed nothing at all may take the last replica
            # too (minReplicas 0: ceil(1/2) would keep one forever).
            halved = current // 2 if stabilized == 0 else math.ceil(current / 2)
            target = max(stabilized, halved)
            if up < lo and reason != Why.IDLE:
                reason = Why.AT_MIN
    elif target == current and reason != Why.IDLE:
        reason = Why.STEADY
    # Bounds always hold, even against the current size (e.g. after minReplicas was raised).
    target = min(hi, max(lo, target))
    return Decision(target, reason, signals.as_dict(), True, wanted, limited_by)


def stale_detail(age: float) -> str:
    """What a stale answer means, its age rounded down to a ``STALE_AGE_STEP``."""
    shown = max(MAX_SIGNAL_AGE, math.floor(age / STALE_AGE_STEP) * STALE_AGE_STEP)
    return (
        f"the oldest worker's newest sample is at least {shown:.0f}s old "
        f"(more than {MAX_SIGNAL_AGE:.0f}s)"
    )
