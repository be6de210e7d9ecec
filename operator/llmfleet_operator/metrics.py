"""The operator's own Prometheus metrics, each defined once."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmfleet_operator.rollout import PHASES

REGISTRY = CollectorRegistry(auto_describe=True)

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
MANAGED = Gauge(
    "llmfleet_operator_llmdeployments",
    "LLMDeployments the operator watches.",
    registry=REGISTRY,
)
SCALING_DECISIONS = Counter(
    "llmfleet_operator_scaling_decisions_total",
    "Replica changes decided by the built-in autoscaler.",
    ["direction", "reason"],
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "llmfleet_operator_api_requests_total",
    "Requests the reconciler sent to the API server (watches are kopf's), by HTTP method.",
    ["method"],
    registry=REGISTRY,
)
ROLLOUT_PHASE = Gauge(
    "llmfleet_operator_rollout_phase",
    "1 for the rollout phase each LLMDeployment is in (status.rollout.phase), 0 for the others.",
    ["namespace", "llmdeployment", "phase"],
    registry=REGISTRY,
)
CANARY_ANALYSES = Counter(
    "llmfleet_operator_canary_analyses_total",
    "Canary analyses by verdict (Passed, Failed, Inconclusive).",
    ["verdict"],
    registry=REGISTRY,
)
ROLLBACKS = Counter(
    "llmfleet_operator_rollbacks_total",
    "Candidate revisions rolled back, by Stalled reason.",
    ["reason"],
    registry=REGISTRY,
)


def set_rollout_phase(key: tuple[str, str], phase: str) -> None:
    """One series per phase, so ``== 1`` selects the current one."""
    for p in PHASES:
        ROLLOUT_PHASE.labels(namespace=key[0], llmdeployment=key[1], phase=p).set(
            1 if p == phase else 0
        )


def forget_rollout(key: tuple[str, str]) -> None:
    """Drop the series of a deleted LLMDeployment."""
    for p in PHASES:
        with contextlib.suppress(KeyError):
            ROLLOUT_PHASE.remove(key[0], key[1], p)


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
