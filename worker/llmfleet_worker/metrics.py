"""Every metric of the worker, defined once, in its own registry.

Names follow Prometheus conventions (base units, ``_total`` counters, no colons). The
operator's autoscaler and canary analysis query these names, with the ``namespace``,
``llmdeployment`` and ``revision`` labels that the scrape configuration attaches; the worker
itself adds no high-cardinality labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:  # the metric names load without the engine (the operator's tests read them)
    from llmfleet_worker.engine.protocol import EngineClient

PREFIX = "llmfleet_worker_"

REQUESTS_WAITING = "llmfleet_worker_requests_waiting"
REQUESTS_RUNNING = "llmfleet_worker_requests_running"
TIME_TO_FIRST_TOKEN = "llmfleet_worker_time_to_first_token_seconds"  # noqa: S105  # a metric name
INTER_TOKEN_LATENCY = "llmfleet_worker_inter_token_latency_seconds"  # noqa: S105  # a metric name
REQUEST_DURATION = "llmfleet_worker_request_duration_seconds"
REQUESTS_TOTAL = "llmfleet_worker_requests_total"
PROMPT_TOKENS_TOTAL = "llmfleet_worker_prompt_tokens_total"
GENERATION_TOKENS_TOTAL = "llmfleet_worker_generation_tokens_total"
BATCH_SIZE = "llmfleet_worker_batch_size"
TOKEN_BUDGET_UTILIZATION = "llmfleet_worker_token_budget_utilization_ratio"  # noqa: S105  # a metric name
KV_CACHE_UTILIZATION = "llmfleet_worker_kv_cache_utilization_ratio"
KV_CACHE_BYTES = "llmfleet_worker_kv_cache_bytes"
KV_CACHE_BUDGET_BYTES = "llmfleet_worker_kv_cache_budget_bytes"
MODEL_LOAD_SECONDS = "llmfleet_worker_model_load_seconds"
READY = "llmfleet_worker_ready"
MAX_NUM_SEQS = "llmfleet_worker_max_num_seqs"

#: Every metric family name the worker exposes (as written in the exposition format,
#: counters with their ``_total`` suffix).
METRIC_NAMES: tuple[str, ...] = (
    REQUESTS_WAITING,
    REQUESTS_RUNNING,
    TIME_TO_FIRST_TOKEN,
    INTER_TOKEN_LATENCY,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    PROMPT_TOKENS_TOTAL,
    GENERATION_TOKENS_TOTAL,
    BATCH_SIZE,
    TOKEN_BUDGET_UTILIZATION,
    KV_CACHE_UTILIZATION,
    KV_CACHE_BYTES,
    KV_CACHE_BUDGET_BYTES,
    MODEL_LOAD_SECONDS,
    READY,
    MAX_NUM_SEQS,
)

#: Values of the ``outcome`` label of ``llmfleet_worker_requests_total``.
OUTCOMES = ("success", "error", "rejected", "invalid", "cancelled", "aborted")

# LLM latencies: tens of milliseconds (a cached first token) to minutes (long generations).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The worker's metrics in a registry of their own (several apps can share a process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry

        def name(full: str) -> str:
            return full.removesuffix("_total")  # prometheus_client appends it to counters

        self.waiting = Gauge(name(REQUESTS_WAITING), "Requests in the waiting queue.", registry=r)
        self.running = Gauge(name(REQUESTS_RUNNING), "Requests in the running batch.", registry=r)
        self.ttft = Histogram(
            name(TIME_TO_FIRST_TOKEN),
            "Seconds from request arrival to its first generated token.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            name(INTER_TOKEN_LATENCY),
            "Seconds between consecutive generated tokens of one request.",
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            name(REQUEST_DURATION),
            "Seconds from request arrival to its last token.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            name(REQUESTS_TOTAL), "Finished requests by outcome.", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome=outcome)
        self.prompt_tokens = Counter(
            name(PROMPT_TOKENS_TOTAL), "Prompt tokens of admitted requests.", registry=r
        )
        self.generation_tokens = Counter(
            name(GENERATION_TOKENS_TOTAL), "Generated tokens.", registry=r
        )
        self.batch_size = Gauge(
            name(BATCH_SIZE), "Sequences in the most recent engine step.", registry=r
        )
        self.token_budget = Gauge(
            name(TOKEN_BUDGET_UTILIZATION),
            "Tokens of the most recent step over the per-step token budget.",
            registry=r,
        )
        self.kv_cache = Gauge(
            name(KV_CACHE_UTILIZATION),
            "Tokens held in the KV cache over its capacity (slots x max model length).",
            registry=r,
        )
        self.kv_cache_bytes = Gauge(
            name(KV_CACHE_BYTES),
            "Bytes of KV cache allocated at start-up (fixed for the life of the process).",
            registry=r,
        )
        self.kv_cache_budget_bytes = Gauge(
            name(KV_CACHE_BUDGET_BYTES),
            "Bytes the KV cache was allowed at start-up (--kv-cache-memory or derived).",
            registry=r,
        )
        self.load_seconds = Gauge(
            name(MODEL_LOAD_SECONDS), "Seconds it took to load the model.", registry=r
        )
        self.ready = Gauge(name(READY), "1 when the worker accepts requests.", registry=r)
        self.max_num_seqs = Gauge(
            name(MAX_NUM_SEQS),
            "Most sequences one engine step runs (the batch capacity the autoscaler sizes by).",
            registry=r,
        )

    def bind(self, engine: EngineClient) -> None:
        """Make the state gauges read ``engine`` at scrape time."""
        self.waiting.set_function(lambda: engine.num_waiting)
        self.running.set_function(lambda: engine.num_running)
        self.ready.set_function(lambda: 1.0 if engine.ready else 0.0)
        # Read at every scrape: an engine with lanes adds theirs up when asked.
        self.batch_size.set_function(lambda: engine.stats.batch_size)
        self.token_budget.set_function(lambda: engine.stats.token_budget_utilization)
        self.kv_cache.set_function(lambda: engine.stats.kv_cache_utilization)
        stats = engine.stats
        self.load_seconds.set(stats.load_seconds)
        self.kv_cache_bytes.set(stats.kv_cache_bytes)
        self.kv_cache_budget_bytes.set(stats.kv_cache_budget_bytes)
        self.max_num_seqs.set(stats.max_num_seqs)
