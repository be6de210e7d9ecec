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
    )
