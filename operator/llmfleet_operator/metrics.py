"""The operator's own Prometheus metrics, each defined once."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
