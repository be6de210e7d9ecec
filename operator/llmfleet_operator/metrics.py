"""The operator's own Prometheus metrics, each defined once.

Two kinds live here:

- counters, histograms and process gauges that the code updates as things happen (reconciles,
  API writes, scaling decisions, canary analyses, rollbacks, the work queue, leadership);
- per-LLMDeployment and cluster GPU gauges that :class:`FleetCollector` computes *at scrape
  time* from the operator's informer cache, the autoscaler's last evaluation and the free-GPU
  view: nothing sets or removes them, so a deleted fleet's series vanish by themselves.

Only the leader replica exports the collector's series (a standby exports none), so a sum
over every operator pod does not count a fleet twice. :func:`fleet_samples` and
:func:`gpu_samples` are the pure part that turns objects into samples; unit tests call them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError

from llmfleet_operator.api import AutoscalingMode, LLMDeploymentSpec, Reason
from llmfleet_operator.autoscaler import Signals
from llmfleet_operator.cache import Cache, Key
from llmfleet_operator.rollout import FAILED, INCONCLUSIVE, PASSED, PHASES, STABLE

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

#: The labels every per-LLMDeployment series carries (the worker's scrape attaches the same).
FLEET_LABELS: Final = ("namespace", "llmdeployment")

RECONCILES = Counter(
    "llmfleet_operator_reconciles_total",
    "Reconciles of LLMDeployments by result.",
    ["result"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "llmfleet_operator_reconcile_duration_seconds",
    "Time one reconcile took.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
WRITES = Counter(
    "llmfleet_operator_api_writes_total",
    "Writes the operator sent to the API server, by object kind and verb.",
    ["kind", "verb"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "llmfleet_operator_workqueue_depth",
    "LLMDeployments waiting to be reconciled.",
    registry=REGISTRY,
)
QUEUE_LATENCY = Histogram(
    "llmfleet_operator_workqueue_latency_seconds",
    "Time a key waited in the work queue, from when it became due to when its reconcile started.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
MANAGED = Gauge(
    "llmfleet_operator_llmdeployments",
    "LLMDeployments the operator watches.",
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "llmfleet_operator_api_requests_total",
    "Requests the reconciler sent to the API server (watches are kopf's), by HTTP method.",
    ["method"],
    registry=REGISTRY,
)
SCALING_DECISIONS = Counter(
    "llmfleet_operator_scaling_decisions_total",
    "Replica changes decided by the built-in autoscaler, by direction (up, down) and reason.",
    [*FLEET_LABELS, "direction", "reason"],
    registry=REGISTRY,
)
CANARY_ANALYSES = Counter(
    "llmfleet_operator_canary_analyses_total",
    "Canary analyses by verdict (Passed, Failed, Inconclusive).",
    [*FLEET_LABELS, "verdict"],
    registry=REGISTRY,
)
ROLLBACKS = Counter(
    "llmfleet_operator_rollbacks_total",
    "Candidate revisions rolled back, by Stalled reason (RolledBack, CanaryAnalysisFailed).",
    [*FLEET_LABELS, "reason"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "llmfleet_operator_leader",
    "1 while this replica holds the leader Lease (or runs without leader election), else 0.",
    registry=REGISTRY,
)
LEADERSHIP_CHANGES = Counter(
    "llmfleet_operator_leadership_changes_total",
    "Times this replica acquired or lost the leader Lease.",
    ["change"],
    registry=REGISTRY,
)

# Every label value at 0 from the start: ``rate()`` and ``increase()`` then see the first
# error and the first change of leader (a series born at 1 has no increase to see).
for _result in ("ok", "error"):
    RECONCILES.labels(result=_result)
for _change in ("acquired", "lost"):
    LEADERSHIP_CHANGES.labels(change=_change)

#: Verdicts and rollback reasons every fleet's counters start with at 0, so that the first
#: one shows in ``increase()`` (a series born at 1 has no increase to see).
VERDICTS: Final = (PASSED, FAILED, INCONCLUSIVE)
ROLLBACK_REASONS: Final = (str(Reason.ROLLED_BACK), str(Reason.CANARY_ANALYSIS_FAILED))

# --- per-fleet counters: counted by the leader, dropped with the fleet -------------------------

_fleet_series: dict[Key, set[tuple[Counter, tuple[str, ...]]]] = {}
_fleet_lock = threading.Lock()


def _fleet_counter(counter: Counter, key: Key, *values: str) -> Counter:
    with _fleet_lock:
        _fleet_series.setdefault(key, set()).add((counter, (key[0], key[1], *values)))
    return counter.labels(key[0], key[1], *values)


def count_scaling_decision(key: Key, direction: str, reason: str) -> None:
    """One replica change decided by the built-in autoscaler for ``key``."""
    _fleet_counter(SCALING_DECISIONS, key, direction, reason).inc()


def count_canary_analysis(key: Key, verdict: str) -> None:
    """One canary analysis of ``key`` and its verdict."""
    _fleet_counter(CANARY_ANALYSES, key, verdict).inc()


def count_rollback(key: Key, reason: str) -> None:
    """One candidate revision of ``key`` rolled back (``reason``: the Stalled reason)."""
    _fleet_counter(ROLLBACKS, key, reason).inc()


def start_fleet_counters(key: Key) -> None:
    """The analyses and rollbacks counters of ``key`` at 0 (idempotent): alert rules and
    panels on ``increase()`` then see the first analysis and the first rollback."""
    for verdict in VERDICTS:
        _fleet_counter(CANARY_ANALYSES, key, verdict)
    for reason in ROLLBACK_REASONS:
        _fleet_counter(ROLLBACKS, key, reason)


def forget_fleet(key: Key) -> None:
    """Drop the counter series of a deleted LLMDeployment."""
    with _fleet_lock:
        series = _fleet_series.pop(key, set())
    for counter, values in series:
        with contextlib.suppress(KeyError):
            counter.remove(*values)


# --- scrape-time gauges: the pure part -----------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One sample of a collector family: its metric name, labels and value."""

    name: str
    labels: Mapping[str, str]
    value: float


ROLLOUT_PHASE: Final = "llmfleet_operator_rollout_phase"
DESIRED_REPLICAS: Final = "llmfleet_operator_desired_replicas"
READY_REPLICAS: Final = "llmfleet_operator_ready_replicas"
MIN_REPLICAS: Final = "llmfleet_operator_min_replicas"
MAX_REPLICAS: Final = "llmfleet_operator_max_replicas"
REQUESTED_GPUS: Final = "llmfleet_operator_requested_gpus"
CONDITION: Final = "llmfleet_operator_llmdeployment_condition"
REVISION: Final = "llmfleet_operator_llmdeployment_revision"
AUTOSCALER_SIGNAL: Final = "llmfleet_operator_autoscaler_signal"
GPUS: Final = "llmfleet_operator_gpus"

#: Family name -> (help, label names) of everything :class:`FleetCollector` exports.
FAMILIES: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    ROLLOUT_PHASE: (
        "1 for the rollout phase each LLMDeployment is in (status.rollout.phase), 0 for the "
        "others.",
        (*FLEET_LABELS, "phase"),
    ),
    DESIRED_REPLICAS: (
        "Worker replicas the operator wants for the LLMDeployment (status.desiredReplicas).",
        FLEET_LABELS,
    ),
    READY_REPLICAS: (
        "Ready worker replicas of the LLMDeployment, every track (status.readyReplicas).",
        FLEET_LABELS,
    ),
    MIN_REPLICAS: (
        "spec.autoscaling.minReplicas (Builtin autoscaling only).",
        FLEET_LABELS,
    ),
    MAX_REPLICAS: (
        "spec.autoscaling.maxReplicas (Builtin autoscaling only).",
        FLEET_LABELS,
    ),
    REQUESTED_GPUS: (
        "GPUs the LLMDeployment's worker pods request in total at the desired size.",
        FLEET_LABELS,
    ),
    CONDITION: (
        "1 per status.conditions entry of each LLMDeployment, with its status and reason.",
        (*FLEET_LABELS, "type", "status", "reason"),
    ),
    REVISION: (
        "1 per revision each LLMDeployment serves or rolls out, by role: stable (the last "
        "fully Ready revision) or candidate (the one rolling out). Join worker metrics on "
        "revision to tell canary from stable.",
        (*FLEET_LABELS, "revision", "role"),
    ),
    AUTOSCALER_SIGNAL: (
        "The signals the built-in autoscaler's last evaluation of the LLMDeployment used.",
        (*FLEET_LABELS, "signal"),
    ),
    GPUS: (
        "GPUs (extended resources) of Ready, schedulable nodes: allocatable, and free of what "
        "bound, unfinished pods request.",
        ("resource", "state"),
    ),
}

STABLE_ROLE: Final = "stable"
CANDIDATE_ROLE: Final = "candidate"


def _fleet(name: str, key: Key, value: float, **labels: str) -> Sample:
    return Sample(name, {"namespace": key[0], "llmdeployment": key[1], **labels}, float(value))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def signal_values(signals: Signals, evaluated_at: float) -> dict[str, float]:
    """The autoscaler's inputs, by snake_case name with units, as exported."""
    values = {
        "requests_waiting": signals.waiting,
        "requests_running": signals.running,
        "reporting_replicas": float(signals.reporting),
        "sample_age_seconds": max(0.0, evaluated_at - signals.at),
    }
    if signals.capacity is not None:
        values["batch_capacity_sequences"] = signals.capacity
    if signals.ttft_p95 is not None:
        values["ttft_p95_seconds"] = signals.ttft_p95
    if signals.reporting > 0:
        values["requests_waiting_per_replica"] = signals.waiting / signals.reporting
    return values


def fleet_samples(
    key: Key,
    body: Mapping[str, Any],
    spec: LLMDeploymentSpec | None,
    signals: Mapping[str, float] | None = None,
) -> list[Sample]:
    """Every scrape-time sample of one LLMDeployment.

    ``spec`` is the parsed spec (None: invalid; then nothing that needs it is exported);
    ``signals`` are :func:`signal_values` of the autoscaler's last evaluation (None: none).
    Replica counts come from ``status`` as the reconciler last wrote it; a fleet that was
    never reconciled has no status and exports only what its spec says.
    """
    out: list[Sample] = []
    status = body.get("status") or {}
    reconciled = "observedGeneration" in status
    if reconciled:
        phase = str((status.get("rollout") or {}).get("phase") or STABLE)
        out += [_fleet(ROLLOUT_PHASE, key, p == phase, phase=p) for p in PHASES]
        if phase not in PHASES:  # newer status than this operator knows: still one series
            out.append(_fleet(ROLLOUT_PHASE, key, 1, phase=phase))
    desired = _number(status.get("desiredReplicas"))
    if desired is not None:
        out.append(_fleet(DESIRED_REPLICAS, key, desired))
        if spec is not None:
            out.append(_fleet(REQUESTED_GPUS, key, desired * spec.worker.resources.gpus))
    if reconciled:
        ready = _number(status.get("readyReplicas"))
        out.append(_fleet(READY_REPLICAS, key, ready or 0.0))
    if spec is not None and spec.autoscaling.mode == AutoscalingMode.BUILTIN:
        out.append(_fleet(MIN_REPLICAS, key, spec.autoscaling.min_replicas))
        out.append(_fleet(MAX_REPLICAS, key, spec.autoscaling.max_replicas))
    seen: set[str] = set()
    for cond in status.get("conditions") or []:
        type_ = str(cond.get("type") or "")
        if not type_ or type_ in seen:
            continue  # exactly one series per (fleet, condition type)
        seen.add(type_)
        labels = {"type": type_, "status": str(cond.get("status") or "Unknown")}
        out.append(_fleet(CONDITION, key, 1, **labels, reason=str(cond.get("reason") or "")))
    rollout = status.get("rollout") or {}
    stable = rollout.get("stableRevision") or status.get("currentRevision")
    if stable:
        out.append(_fleet(REVISION, key, 1, revision=str(stable), role=STABLE_ROLE))
    candidate = rollout.get("candidateRevision")
    if candidate and candidate != stable:
        out.append(_fleet(REVISION, key, 1, revision=str(candidate), role=CANDIDATE_ROLE))
    for name, value in sorted((signals or {}).items()):
        out.append(_fleet(AUTOSCALER_SIGNAL, key, value, signal=name))
    return out


def gpu_samples(totals: Mapping[str, tuple[int, int]]) -> list[Sample]:
    """``llmfleet_operator_gpus`` from resource -> (allocatable, free)."""
    out = []
    for resource, (allocatable, free) in sorted(totals.items()):
        out.append(Sample(GPUS, {"resource": resource, "state": "allocatable"}, allocatable))
        out.append(Sample(GPUS, {"resource": resource, "state": "free"}, free))
    return out


def families(samples: Iterable[Sample]) -> list[Metric]:
    """Samples as prometheus_client families, one per name in :data:`FAMILIES` (even empty)."""
    fams = {
        name: GaugeMetricFamily(name, help_, labels=list(labels))
        for name, (help_, labels) in FAMILIES.items()
    }
    for s in samples:
        fam = fams[s.name]
        fam.add_metric([s.labels[label] for label in FAMILIES[s.name][1]], s.value)
    return list(fams.values())


# --- scrape-time gauges: the collector -----------------------------------------------------------


class FleetCollector(Collector):
    """Reads the cache, the autoscaler's last evaluation and the GPU view on each scrape.

    ``leading``: whether this replica leads (a standby exports no series). ``signals``: the
    autoscaler's last evaluation of a fleet as (signals, when) or None. ``gpus``: resource ->
    (allocatable, free), or None while free GPUs are unknown.
    """

    def __init__(
        self,
        cache: Cache,
        leading: Callable[[], bool],
        signals: Callable[[Key], tuple[Signals, float] | None] = lambda key: None,
        gpus: Callable[[], Mapping[str, tuple[int, int]] | None] = lambda: None,
    ) -> None:
        self.cache = cache
        self.leading = leading
        self.signals = signals
        self.gpus = gpus

    def describe(self) -> Iterator[Metric]:
        return iter(families(()))

    def samples(self) -> list[Sample]:
        if not self.leading():
            return []
        out: list[Sample] = []
        # A copy: scrapes run on the metrics server's thread while the event loop writes.
        for key, body in list(self.cache.llmds.items()):
            if body["metadata"].get("deletionTimestamp"):
                continue
            try:
                spec: LLMDeploymentSpec | None = self.cache.spec_of(key, body)
            except (ValidationError, KeyError, TypeError, ValueError):
                spec = None
            try:
                evaluation = self.signals(key)
                values = signal_values(*evaluation) if evaluation is not None else None
                out += fleet_samples(key, body, spec, values)
            except Exception:
                # One odd object must not take every other series off the scrape.
                log.exception("metrics: cannot export %s/%s", *key)
        totals = self.gpus()
        if totals is not None:
            out += gpu_samples(totals)
        return out

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.samples()))


_installed: list[Collector] = []


def install(collector: Collector, registry: CollectorRegistry = REGISTRY) -> None:
    """Register ``collector`` in place of one installed before (a restarted operator)."""
    for old in _installed:
        with contextlib.suppress(KeyError):
            registry.unregister(old)
    _installed[:] = [collector]
    registry.register(collector)
