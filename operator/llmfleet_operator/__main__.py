"""Command line of the operator: ``llmfleet-operator``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from typing import TYPE_CHECKING, cast

from llmfleet_operator import __version__
from llmfleet_operator.settings import (
    OperatorSettings,
    add_connection_arguments,
    add_leader_election_arguments,
    add_run_arguments,
    from_args,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="llmfleet-operator",
        description="Kubernetes operator that runs fleets of LLM inference servers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the operator (in-cluster, or with KUBECONFIG / ~/.kube/config)",
        description="Watch LLMDeployments and reconcile them into GPU worker fleets.",
    )
    add_run_arguments(run)
    add_connection_arguments(run)
    add_leader_election_arguments(run)
    return parser


if TYPE_CHECKING:
    from kopf._core.engines.peering import Identity


def run(config: OperatorSettings) -> int:
    """Run the kopf operator until SIGINT/SIGTERM."""
    import kopf
    from prometheus_client import start_http_server

    # Importing the handlers registers them with kopf's default registry.
    from llmfleet_operator import handlers, metrics  # noqa: F401
    from llmfleet_operator.leader import default_identity

    kopf.configure(
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.PLAIN,
        verbose=config.log_level == "DEBUG",
    )
    logging.getLogger().setLevel(config.log_level)
    # kopf logs each handler run ("Handler ... succeeded") at INFO: one line per watch event.
    logging.getLogger("kopf.objects").setLevel(
        logging.DEBUG if config.log_level == "DEBUG" else logging.WARNING
    )
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.bind_address, registry=metrics.REGISTRY)
    # One identity for the Lease and for kopf, which otherwise derives its own from the
    # process's user name: a uid without a passwd entry (the image's 65532) makes that raise.
    config = dataclasses.replace(config, identity=config.identity or default_identity())
    memo = kopf.Memo(config=config)
    asyncio.run(
        kopf.operator(
            clusterwide=config.clusterwide,
            namespaces=list(config.namespaces),
            standalone=True,
            identity=cast("Identity", config.identity),
            liveness_endpoint=f"http://{config.bind_address}:{config.health_port}/healthz",
            memo=memo,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmfleet-operator`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "run":
        return run(from_args(args))
    return 0  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
