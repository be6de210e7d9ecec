"""Pure: the two dashboards the chart ships, panel by panel.

Worker series carry the ``namespace``, ``llmdeployment``, ``revision`` and ``pod`` labels the
scrape attaches (the chart's PodMonitor). As the autoscaler's queries do (``promql.per_pod``),
every worker query first takes one value per pod, so a pod that two scrape jobs scrape counts
once. Operator series of one LLMDeployment are exported by the leader only; ``max by`` over
the fleet's labels still keeps a failover's overlap from doubling them.

Canary against stable: worker series are split by their ``revision`` label and joined with
``llmfleet_operator_llmdeployment_revision``, which says each revision's role (``stable`` or
``candidate``) from status.rollout, as the canary analysis tells them apart.
"""

from __future__ import annotations

from typing import Final

from llmfleet_operator import metrics
from llmfleet_operator.dashboards.model import Dashboard, Panel, Row, Target, Variable
from llmfleet_operator.promql import GROUP_BY, per_pod

#: Grafana's rate window for the panel's resolution (at least four scrape intervals).
RATE: Final = "$__rate_interval"

# Worker metric names (a unit test checks them against the worker's own list).
REQUESTS: Final = "llmfleet_worker_requests_total"
WAITING: Final = "llmfleet_worker_requests_waiting"
RUNNING: Final = "llmfleet_worker_requests_running"
MAX_NUM_SEQS: Final = "llmfleet_worker_max_num_seqs"
TTFT: Final = "llmfleet_worker_time_to_first_token_seconds"
ITL: Final = "llmfleet_worker_inter_token_latency_seconds"
DURATION: Final = "llmfleet_worker_request_duration_seconds"
PROMPT_TOKENS: Final = "llmfleet_worker_prompt_tokens_total"
GENERATION_TOKENS: Final = "llmfleet_worker_generation_tokens_total"
BATCH_SIZE: Final = "llmfleet_worker_batch_size"
KV_CACHE: Final = "llmfleet_worker_kv_cache_utilization_ratio"
TOKEN_BUDGET: Final = "llmfleet_worker_token_budget_utilization_ratio"  # noqa: S105
WORKER_READY: Final = "llmfleet_worker_ready"
WORKER_METRICS: Final = (
    REQUESTS,
    WAITING,
    RUNNING,
    MAX_NUM_SEQS,
    TTFT,
    ITL,
    DURATION,
    PROMPT_TOKENS,
    GENERATION_TOKENS,
    BATCH_SIZE,
    KV_CACHE,
    TOKEN_BUDGET,
    WORKER_READY,
)

FLEET: Final = GROUP_BY  # "namespace, llmdeployment"
REVISION_BY: Final = f"{FLEET}, revision"
#: The per-LLMDeployment view's selector, and the overview's (every namespace picked).
ONE_FLEET: Final = 'namespace="$namespace", llmdeployment="$llmdeployment"'
PICKED_NAMESPACES: Final = 'namespace=~"$namespace"'
ERROR: Final = 'outcome="error"'


def sel(metric: str, matchers: str, *extra: str) -> str:
    return f"{metric}{{{', '.join([matchers, *extra])}}}"


def worker_sum(metric: str, matchers: str, by: str = "", *extra: str) -> str:
    """A worker gauge summed over pods (one value per pod first)."""
    inner = per_pod(sel(metric, matchers, *extra))
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def worker_rate(metric: str, matchers: str, by: str = "", *extra: str, also: str = "") -> str:
    """A worker counter's per-second rate summed over pods; ``also``: labels kept per pod."""
    inner = per_pod(f"rate({sel(metric, matchers, *extra)}[{RATE}])", FLEET, also)
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def quantile(q: float, histogram: str, matchers: str, by: str = "", labels: str = FLEET) -> str:
    """``histogram_quantile`` of a worker histogram over ``RATE``, grouped ``by``."""
    rate = f"rate({sel(histogram + '_bucket', matchers)}[{RATE}])"
    inner = per_pod(rate, labels, ", le")
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({q:g}, sum by ({group}) ({inner}))"


def error_ratio(matchers: str, by: str, labels: str = FLEET) -> str:
    errors = per_pod(f"rate({sel(REQUESTS, matchers, ERROR)}[{RATE}])", labels, ", outcome")
    total = per_pod(f"rate({sel(REQUESTS, matchers)}[{RATE}])", labels, ", outcome")
    return f"sum by ({by}) ({errors}) / sum by ({by}) ({total})"


def op(metric: str, matchers: str, by: str = FLEET, *extra: str) -> str:
    """A per-LLMDeployment operator gauge, once per ``by`` group."""
    return f"max by ({by}) ({sel(metric, matchers, *extra)})"


def increase(counter: str, matchers: str, by: str) -> str:
    return f"sum by ({by}) (increase({sel(counter, matchers)}[{RATE}]))"


def with_role(expr: str, matchers: str) -> str:
    """Series by revision, labelled with the revision's role (stable, candidate)."""
    roles = f"max by ({REVISION_BY}, role) ({sel(metrics.REVISION, matchers)})"
    return f"({expr}) * on ({REVISION_BY}) group_left (role) {roles}"


def gpus(state: str) -> str:
    return f'sum by (resource) (max by (resource, state) ({metrics.GPUS}{{state="{state}"}}))'


# --- the fleet overview --------------------------------------------------------------------------

ALL: Final = PICKED_NAMESPACES
READY_BY_STATUS: Final = op(metrics.CONDITION, ALL, f"{FLEET}, status", 'type="Ready"')
FLEET_LEGEND: Final = "{{namespace}}/{{llmdeployment}}"

OVERVIEW: Final = Dashboard(
    uid="llmfleet-overview",
    title="llmfleet / Fleet overview",
    description="Every LLMDeployment: traffic, errors, latency, queues, GPUs and scaling.",
    variables=(
        Variable(
            "namespace",
            "Namespace",
            metrics.DESIRED_REPLICAS,
            "namespace",
            multi=True,
            include_all=True,
            all_value=".*",
        ),
    ),
    rows=(
        Row(
            "Fleet",
            (
                Panel(
                    "LLMDeployments",
                    "LLMDeployments the operator manages in the picked namespaces.",
                    (Target(f"count({op(metrics.DESIRED_REPLICAS, ALL)})", "LLMDeployments"),),
                    kind="stat",
                    width=6,
                    height=4,
                ),
                Panel(
                    "Ready condition",
                    "LLMDeployments by their Ready condition's status (kstatus summary).",
                    (
                        Target(
                            f"count by (status) ({READY_BY_STATUS})",
                            "Ready={{status}}",
                        ),
                    ),
                    kind="stat",
                    width=6,
                    height=4,
                ),
                Panel(
                    "Requests/s",
                    "Finished requests per second, every outcome, all LLMDeployments.",
                    (Target(worker_rate(REQUESTS, ALL, "", also=", outcome"), "requests/s"),),
                    kind="stat",
                    unit="reqps",
                    width=6,
                    height=4,
                ),
                Panel(
                    "Free GPUs",
                    "GPUs free on Ready, schedulable nodes (the operator's watch of nodes and "
                    "pods).",
                    (Target(gpus("free"), "{{resource}}"),),
                    kind="stat",
                    width=6,
                    height=4,
                ),
            ),
        ),
        Row(
            "Traffic",
            (
                Panel(
                    "Requests/s by LLMDeployment",
                    "Finished requests per second (every outcome).",
                    (Target(worker_rate(REQUESTS, ALL, FLEET, also=", outcome"), FLEET_LEGEND),),
                    unit="reqps",
                    stacked=True,
                ),
                Panel(
                    "Error ratio by LLMDeployment",
                    "Share of finished requests whose outcome is error (engine failures).",
                    (Target(error_ratio(ALL, FLEET), FLEET_LEGEND),),
                    unit="percentunit",
                    minimum=0,
                ),
                Panel(
                    "Time to first token p50 / p95",
                    "From request arrival to the first generated token.",
                    (
                        Target(quantile(0.5, TTFT, ALL, FLEET), f"{FLEET_LEGEND} p50"),
                        Target(quantile(0.95, TTFT, ALL, FLEET), f"{FLEET_LEGEND} p95"),
                    ),
                    unit="s",
                ),
                Panel(
                    "Queue: waiting and running requests",
                    "Requests waiting for a batch slot, and requests in the running batch.",
                    (
                        Target(worker_sum(WAITING, ALL, FLEET), f"{FLEET_LEGEND} waiting"),
                        Target(worker_sum(RUNNING, ALL, FLEET), f"{FLEET_LEGEND} running"),
                    ),
                ),
            ),
        ),
        Row(
            "Capacity and scaling",
            (
                Panel(
                    "GPUs used vs free",
                    "GPUs the LLMDeployments request at their desired size, GPUs any pod holds "
                    "(allocatable minus free) and free GPUs, on Ready, schedulable nodes.",
                    (
                        Target(
                            f"sum({op(metrics.REQUESTED_GPUS, ALL)})",
                            "requested by LLMDeployments",
                        ),
                        Target(f"{gpus('allocatable')} - {gpus('free')}", "{{resource}} in use"),
                        Target(gpus("free"), "{{resource}} free"),
                    ),
                    minimum=0,
                ),
                Panel(
                    "Replicas desired vs ready",
                    "status.desiredReplicas and status.readyReplicas of each LLMDeployment.",
                    (
                        Target(op(metrics.DESIRED_REPLICAS, ALL), f"{FLEET_LEGEND} desired"),
                        Target(op(metrics.READY_REPLICAS, ALL), f"{FLEET_LEGEND} ready"),
                    ),
                    minimum=0,
                    decimals=0,
                ),
                Panel(
                    "Scaling decisions",
                    "Replica changes the built-in autoscaler decided, by direction and reason.",
                    (
                        Target(
                            increase(
                                "llmfleet_operator_scaling_decisions_total",
                                ALL,
                                f"{FLEET}, direction, reason",
                            ),
                            f"{FLEET_LEGEND} {{{{direction}}}} {{{{reason}}}}",
                        ),
                    ),
                    bars=True,
                    stacked=True,
                    decimals=0,
                ),
                Panel(
                    "Rollout phase",
                    "status.rollout.phase of each LLMDeployment.",
                    (
                        Target(
                            f"{op(metrics.ROLLOUT_PHASE, ALL, f'{FLEET}, phase')} == 1",
                            f"{FLEET_LEGEND} {{{{phase}}}}",
                        ),
                    ),
                    kind="state-timeline",
                    mappings={"1": "in phase"},
                ),
            ),
        ),
        Row(
            "Operator",
            (
                Panel(
                    "Reconciles/s by result",
                    "Reconciles of LLMDeployments per second, ok and error.",
                    (
                        Target(
                            f"sum by (result) (rate(llmfleet_operator_reconciles_total[{RATE}]))",
                            "{{result}}",
                        ),
                    ),
                    unit="ops",
                    width=8,
                ),
                Panel(
                    "Reconcile duration p50 / p95",
                    "How long one reconcile takes.",
                    tuple(
                        Target(
                            f"histogram_quantile({q:g}, sum by (le) (rate("
                            f"llmfleet_operator_reconcile_duration_seconds_bucket[{RATE}])))",
                            f"p{int(q * 100)}",
                        )
                        for q in (0.5, 0.95)
                    ),
                    unit="s",
                    width=8,
                ),
                Panel(
                    "Work queue",
                    "LLMDeployments waiting to be reconciled, and the p95 of how long one "
                    "waited before its reconcile started.",
                    (
                        Target("sum(llmfleet_operator_workqueue_depth)", "depth"),
                        Target(
                            "histogram_quantile(0.95, sum by (le) (rate("
                            f"llmfleet_operator_workqueue_latency_seconds_bucket[{RATE}])))",
                            "latency p95 (s)",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "API writes/s",
                    "Writes to the API server by kind and verb (an idle fleet writes nothing).",
                    (
                        Target(
                            "sum by (kind, verb) (rate(llmfleet_operator_api_writes_total"
                            f"[{RATE}]))",
                            "{{verb}} {{kind}}",
                        ),
                    ),
                    unit="wps",
                    width=8,
                ),
                Panel(
                    "Leader",
                    "Operator replicas that lead (exactly 1 is healthy), and changes of leader.",
                    (
                        Target("sum(llmfleet_operator_leader)", "leading replicas"),
                        Target(
                            "sum by (change) (increase("
                            f"llmfleet_operator_leadership_changes_total[{RATE}]))",
                            "{{change}}",
                        ),
                    ),
                    width=8,
                    decimals=0,
                ),
                Panel(
                    "Canary analyses and rollbacks",
                    "Canary analyses by verdict and rollbacks by reason, all LLMDeployments.",
                    (
                        Target(
                            increase("llmfleet_operator_canary_analyses_total", ALL, "verdict"),
                            "analysis {{verdict}}",
                        ),
                        Target(
                            increase("llmfleet_operator_rollbacks_total", ALL, "reason"),
                            "rollback {{reason}}",
                        ),
                    ),
                    width=8,
                    bars=True,
                    decimals=0,
                ),
            ),
        ),
    ),
)

# --- one LLMDeployment ---------------------------------------------------------------------------

F: Final = ONE_FLEET
QUANTILES: Final = (0.5, 0.95, 0.99)


def quantiles(histogram: str) -> tuple[Target, ...]:
    return tuple(Target(quantile(q, histogram, F), f"p{int(q * 100)}") for q in QUANTILES)


LLMDEPLOYMENT: Final = Dashboard(
    uid="llmfleet-llmdeployment",
    title="llmfleet / LLMDeployment",
    description="One LLMDeployment: traffic, latency, batching, replicas and its rollouts.",
    variables=(
        Variable("namespace", "Namespace", metrics.DESIRED_REPLICAS, "namespace"),
        Variable(
            "llmdeployment",
            "LLMDeployment",
            f'{metrics.DESIRED_REPLICAS}{{namespace="$namespace"}}',
            "llmdeployment",
        ),
    ),
    rows=(
        Row(
            "Traffic and latency",
            (
                Panel(
                    "Requests/s by outcome",
                    "Finished requests per second: success, error (engine failure), rejected "
                    "(queue full, 429), invalid (400), cancelled (client gone), aborted (drain).",
                    (Target(worker_rate(REQUESTS, F, "outcome", also=", outcome"), "{{outcome}}"),),
                    unit="reqps",
                    stacked=True,
                ),
                Panel(
                    "Tokens/s",
                    "Prompt tokens admitted and tokens generated per second.",
                    (
                        Target(worker_rate(PROMPT_TOKENS, F), "prompt"),
                        Target(worker_rate(GENERATION_TOKENS, F), "generated"),
                    ),
                    unit="short",
                ),
                Panel(
                    "Time to first token",
                    "From request arrival to its first generated token: p50, p95, p99.",
                    quantiles(TTFT),
                    unit="s",
                    width=8,
                ),
                Panel(
                    "Inter-token latency",
                    "Between two generated tokens of one request: p50, p95, p99.",
                    quantiles(ITL),
                    unit="s",
                    width=8,
                ),
                Panel(
                    "Request duration",
                    "From request arrival to its last token: p50, p95, p99.",
                    quantiles(DURATION),
                    unit="s",
                    width=8,
                ),
            ),
        ),
        Row(
            "Batching and queue",
            (
                Panel(
                    "Queue depth",
                    "Requests waiting for a batch slot, all workers.",
                    (Target(worker_sum(WAITING, F), "waiting"),),
                    width=8,
                ),
                Panel(
                    "Running and batch capacity",
                    "Requests in the running batch, and the most sequences the workers run at "
                    "once (max-num-seqs summed).",
                    (
                        Target(worker_sum(RUNNING, F), "running"),
                        Target(worker_sum(MAX_NUM_SEQS, F), "batch capacity"),
                    ),
                    width=8,
                ),
                Panel(
                    "Batch size by pod",
                    "Sequences in each worker's most recent engine step.",
                    (Target(f"max by (pod) ({sel(BATCH_SIZE, F)})", "{{pod}}"),),
                    width=8,
                ),
                Panel(
                    "KV cache utilisation by pod",
                    "Tokens held in each worker's KV cache over its capacity.",
                    (Target(f"max by (pod) ({sel(KV_CACHE, F)})", "{{pod}}"),),
                    unit="percentunit",
                    minimum=0,
                    maximum=1,
                ),
                Panel(
                    "Token budget utilisation by pod",
                    "Tokens of each worker's most recent step over its per-step token budget.",
                    (Target(f"max by (pod) ({sel(TOKEN_BUDGET, F)})", "{{pod}}"),),
                    unit="percentunit",
                    minimum=0,
                    maximum=1,
                ),
            ),
        ),
        Row(
            "Replicas and autoscaling",
            (
                Panel(
                    "Replicas desired vs ready",
                    "status.desiredReplicas and status.readyReplicas (every track), workers "
                    "whose /ready says yes, and the autoscaler's bounds (Builtin mode).",
                    (
                        Target(op(metrics.DESIRED_REPLICAS, F), "desired"),
                        Target(op(metrics.READY_REPLICAS, F), "ready"),
                        Target(worker_sum(WORKER_READY, F), "workers ready"),
                        Target(op(metrics.MIN_REPLICAS, F), "min"),
                        Target(op(metrics.MAX_REPLICAS, F), "max"),
                    ),
                    minimum=0,
                    decimals=0,
                ),
                Panel(
                    "Autoscaler signals",
                    "What the built-in autoscaler's last evaluation used (Builtin mode).",
                    (
                        Target(
                            op(metrics.AUTOSCALER_SIGNAL, F, "signal", 'signal!~".*_seconds"'),
                            "{{signal}}",
                        ),
                    ),
                    width=6,
                ),
                Panel(
                    "Autoscaler latency signals",
                    "TTFT p95 the autoscaler scaled on, and the age of its newest samples.",
                    (
                        Target(
                            op(metrics.AUTOSCALER_SIGNAL, F, "signal", 'signal=~".*_seconds"'),
                            "{{signal}}",
                        ),
                    ),
                    unit="s",
                    width=6,
                ),
                Panel(
                    "Scaling decisions",
                    "Replica changes the built-in autoscaler decided, by direction and reason.",
                    (
                        Target(
                            increase(
                                "llmfleet_operator_scaling_decisions_total",
                                F,
                                "direction, reason",
                            ),
                            "{{direction}} {{reason}}",
                        ),
                    ),
                    bars=True,
                    decimals=0,
                    width=8,
                ),
                Panel(
                    "Requested GPUs",
                    "GPUs the worker pods request at the desired size.",
                    (Target(f"sum({op(metrics.REQUESTED_GPUS, F)})", "GPUs"),),
                    kind="stat",
                    width=4,
                ),
                Panel(
                    "Conditions",
                    "status.conditions: type, status and reason.",
                    (
                        Target(
                            op(metrics.CONDITION, F, "type, status, reason"),
                            "{{type}}",
                            instant=True,
                        ),
                    ),
                    kind="table",
                ),
            ),
        ),
        Row(
            "Rollouts: canary vs stable",
            (
                Panel(
                    "Rollout phase",
                    "status.rollout.phase over time.",
                    (Target(f"{op(metrics.ROLLOUT_PHASE, F, 'phase')} == 1", "{{phase}}"),),
                    kind="state-timeline",
                    mappings={"1": "in phase"},
                    width=24,
                    height=5,
                ),
                Panel(
                    "Error ratio: canary vs stable",
                    "Share of requests whose outcome is error, per revision and its role "
                    "(candidate: the revision rolling out; stable: the last fully Ready one).",
                    (
                        Target(
                            with_role(error_ratio(F, REVISION_BY, REVISION_BY), F),
                            "{{role}} {{revision}}",
                        ),
                    ),
                    unit="percentunit",
                    minimum=0,
                ),
                Panel(
                    "TTFT p95: canary vs stable",
                    "Time to first token p95 per revision and its role; the canary analysis "
                    "compares the two.",
                    (
                        Target(
                            with_role(quantile(0.95, TTFT, F, REVISION_BY, REVISION_BY), F),
                            "{{role}} {{revision}}",
                        ),
                    ),
                    unit="s",
                ),
                Panel(
                    "Requests/s by revision",
                    "Traffic each revision serves (a canary's share follows its Ready pods).",
                    (
                        Target(
                            with_role(
                                worker_rate(REQUESTS, F, REVISION_BY, also=", revision, outcome"),
                                F,
                            ),
                            "{{role}} {{revision}}",
                        ),
                    ),
                    unit="reqps",
                    stacked=True,
                    width=8,
                ),
                Panel(
                    "Canary analyses",
                    "Analyses of the candidate by verdict (Passed, Failed, Inconclusive).",
                    (
                        Target(
                            increase("llmfleet_operator_canary_analyses_total", F, "verdict"),
                            "{{verdict}}",
                        ),
                    ),
                    bars=True,
                    decimals=0,
                    width=8,
                ),
                Panel(
                    "Rollbacks",
                    "Candidate revisions rolled back, by Stalled reason.",
                    (
                        Target(
                            increase("llmfleet_operator_rollbacks_total", F, "reason"),
                            "{{reason}}",
                        ),
                    ),
                    bars=True,
                    decimals=0,
                    width=8,
                ),
            ),
        ),
    ),
)

#: File name (under charts/llmfleet/files/dashboards) -> dashboard.
DASHBOARDS: Final = {"overview.json": OVERVIEW, "llmdeployment.json": LLMDEPLOYMENT}
