"""Operator settings: command-line flags with environment-variable fallbacks."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator runs; the Helm chart sets these through env vars."""

    namespaces: tuple[str, ...] = ()  # empty: every namespace
    health_port: int = 8080
    metrics_port: int = 8081
    bind_address: str = "0.0.0.0"  # noqa: S104 - probes and scrapes come from outside the pod
    log_format: str = "json"
    log_level: str = "INFO"
    workers: int = 4
    prometheus_url: str = ""
    #: Other Prometheus URLs a spec's autoscaling.prometheusURL may name.
    allowed_prometheus_urls: tuple[str, ...] = ()
    autoscale_interval_seconds: float = 15.0
    #: Window of the TTFT rate() in the autoscaler's query (short in tests).
    rate_window: str = "1m"
    #: Shortest PromQL range of a canary analysis: a few scrape intervals (short in tests).
    analysis_min_window_seconds: int = 60
    #: "cluster": watch nodes and pods cluster-wide to count free GPUs; "none": no
    #: cluster-wide reads (namespaced installs), free GPUs unknown.
    gpu_capacity_view: str = "cluster"
    #: Namespace whose pods (Prometheus) each LLMDeployment's NetworkPolicy lets scrape the
    #: workers; empty: none.
    monitoring_namespace: str = "monitoring"
    #: Run as one of several replicas: only the holder of the Lease writes.
    leader_election: bool = False
    #: Namespace and name of that Lease (the namespace defaults to the pod's own).
    leader_election_namespace: str = ""
    leader_election_id: str = "llmfleet-operator"
    #: This replica's name in the Lease (the pod name in-cluster).
    identity: str = ""
    #: The kubeconfig (empty: $KUBECONFIG, in-cluster, ~/.kube/config) and its context.
    kubeconfig: str = ""
    context: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def clusterwide(self) -> bool:
        """Watching every namespace (a ClusterRole) rather than a list (Roles)."""
        return not self.namespaces


def _env(name: str, default: str) -> str:
    return os.environ.get(f"LLMFLEET_{name}", default)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``llmfleet-operator run``."""
    ns_env = [n for n in _env("WATCH_NAMESPACES", "").replace(",", " ").split() if n]
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        dest="namespaces",
        default=ns_env or None,
        help="watch this namespace (repeatable; env LLMFLEET_WATCH_NAMESPACES)",
    )
    scope.add_argument(
        "--all-namespaces",
        "-A",
        action="store_true",
        help="watch every namespace (the default when no --namespace is given)",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=int(_env("HEALTH_PORT", "8080")),
        help="liveness endpoint port (/healthz)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "8081")),
        help="Prometheus metrics port (/metrics); 0 disables",
    )
    parser.add_argument(
        "--bind-address",
        default=_env("BIND_ADDRESS", "0.0.0.0"),  # noqa: S104
        help="address the health and metrics endpoints listen on",
    )
    parser.add_argument(
        "--log-format", choices=["json", "plain"], default=_env("LOG_FORMAT", "json")
    )
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    parser.add_argument(
        "--workers", type=int, default=int(_env("WORKERS", "4")), help="concurrent reconciles"
    )
    parser.add_argument(
        "--prometheus-url",
        default=_env("PROMETHEUS_URL", ""),
        help="Prometheus base URL for the built-in autoscaler",
    )
    parser.add_argument(
        "--allowed-prometheus-urls",
        default=_env("ALLOWED_PROMETHEUS_URLS", ""),
        help="comma-separated Prometheus URLs that spec.autoscaling.prometheusURL may name "
        "(default: none besides --prometheus-url)",
    )
    parser.add_argument(
        "--autoscale-interval",
        type=float,
        default=float(_env("AUTOSCALE_INTERVAL", "15")),
        help="seconds between autoscaler evaluations",
    )
    parser.add_argument(
        "--rate-window",
        default=_env("RATE_WINDOW", "1m"),
        help="PromQL range for rate() in the TTFT query, e.g. 1m or 30s",
    )
    parser.add_argument(
        "--analysis-min-window",
        type=int,
        default=int(_env("ANALYSIS_MIN_WINDOW", "60")),
        help="shortest PromQL range (seconds) of a canary analysis; at least a few scrapes",
    )
    parser.add_argument(
        "--gpu-capacity-view",
        choices=["cluster", "none"],
        default=_env("GPU_CAPACITY_VIEW", "cluster"),
        help="cluster: watch nodes and pods cluster-wide to count free GPUs; none: no "
        "cluster-wide reads, free GPUs unknown (env LLMFLEET_GPU_CAPACITY_VIEW)",
    )
    parser.add_argument(
        "--monitoring-namespace",
        default=_env("MONITORING_NAMESPACE", "monitoring"),
        help="namespace whose pods (Prometheus) the worker NetworkPolicies admit to the "
        "metrics port; empty: none",
    )


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the API server is and who we are to it, as kubectl's flags say it."""
    parser.add_argument(
        "--kubeconfig",
        default="",
        help="kubeconfig file(s) (default: $KUBECONFIG; in a pod, its service account; "
        "else ~/.kube/config); exec credential plugins, token files and proxies work as in "
        "kubectl",
    )
    parser.add_argument(
        "--context",
        default=_env("KUBE_CONTEXT", ""),
        help="kubeconfig context (default: its current-context; env LLMFLEET_KUBE_CONTEXT)",
    )


def add_leader_election_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for running several replicas, one of them active."""
    parser.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=_env("LEADER_ELECT", "false").lower() in ("1", "true", "yes"),
        help="take part in leader election on a coordination.k8s.io Lease; only the leader "
        "writes (env LLMFLEET_LEADER_ELECT)",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=_env("LEADER_ELECTION_NAMESPACE", ""),
        help="namespace of the Lease (default: the pod's namespace, else 'default')",
    )
    parser.add_argument(
        "--leader-election-id",
        default=_env("LEADER_ELECTION_ID", "llmfleet-operator"),
        help="name of the Lease; replicas with the same name elect one leader",
    )
    parser.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME", ""),
        help="this replica's holder identity (env POD_NAME; default: host name and a random "
        "suffix)",
    )


def from_args(args: argparse.Namespace) -> OperatorSettings:
    """Settings from parsed ``run`` arguments."""
    namespaces = () if args.all_namespaces else tuple(args.namespaces or ())
    return OperatorSettings(
        namespaces=namespaces,
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        bind_address=args.bind_address,
        log_format=args.log_format,
        log_level=args.log_level,
        workers=args.workers,
        prometheus_url=args.prometheus_url,
        allowed_prometheus_urls=tuple(
            u.strip() for u in args.allowed_prometheus_urls.split(",") if u.strip()
        ),
        autoscale_interval_seconds=args.autoscale_interval,
        rate_window=args.rate_window,
        analysis_min_window_seconds=args.analysis_min_window,
        gpu_capacity_view=args.gpu_capacity_view,
        monitoring_namespace=args.monitoring_namespace,
        leader_election=args.leader_elect,
        leader_election_namespace=args.leader_election_namespace,
        leader_election_id=args.leader_election_id,
        identity=args.identity,
        kubeconfig=args.kubeconfig,
        context=args.context,
    )
