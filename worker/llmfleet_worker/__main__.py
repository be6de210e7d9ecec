"""Command line of the worker: ``llmfleet-worker serve`` and ``make-tiny-model``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from llmfleet_worker import __version__
from llmfleet_worker.settings import add_serve_arguments, settings_from_args

log = logging.getLogger("llmfleet_worker")

#: Exit status after a fatal engine error (2 is a start-up error, 1 a server that never
#: started), so that Kubernetes restarts the container and its logs say why.
EXIT_ENGINE_FAILED = 3
#: After a fatal engine error the server gets this long to send the error responses it owes
#: and close; then the process exits regardless (a broken device can hang a clean shutdown).
FATAL_EXIT_SECONDS = 10.0


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="llmfleet-worker",
        description="OpenAI-compatible LLM inference server (PyTorch/transformers).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="serve a model over the OpenAI API",
        description="Serve a causal LM. Every flag can also be set as LLMFLEET_<FLAG>; "
        "the API key comes from LLMFLEET_API_KEY or --api-key-file.",
    )
    add_serve_arguments(serve, env)
    tiny = sub.add_parser(
        "make-tiny-model",
        help="build a small random model with a real tokenizer, offline",
        description="Write a small causal LM (random weights) with a byte-level BPE "
        "tokenizer and a chat template to DIR. Deterministic for a given seed.",
    )
    tiny.add_argument("dir", type=Path, metavar="DIR")
    tiny.add_argument("--arch", choices=("llama", "gpt2"), default="llama")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--size",
        choices=("tiny", "bench"),
        default="tiny",
        help="tiny: ~3.5M parameters (tests); bench: ~34M parameters (benchmarks)",
    )
    return parser


class _DrainingServer:
    """uvicorn's server with Kubernetes-friendly SIGTERM handling: stop admission and turn
    /ready false at once, let in-flight requests finish (up to the drain timeout), then exit
    0. A second signal skips the wait."""

    def __init__(self, app: Any, engine: Any, settings: Any) -> None:
        import uvicorn

        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=False,
            timeout_graceful_shutdown=5,
            lifespan="off",
        )
        outer = self

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                # Not calling super(): uvicorn would stop at once and re-raise the signal
                # after shutdown, which turns a clean drain into exit status -15.
                outer.on_signal(sig)

        self.server = Server(config)
        self.engine = engine
        self.settings = settings
        self.loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    def on_signal(self, sig: int) -> None:
        if self._drain_task is not None or self.loop is None:
            self.server.should_exit = True  # second signal, or none of ours running yet
            return
        log.info("received %s: draining", signal.Signals(sig).name)
        self.engine.start_draining()
        self._drain_task = self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        clean = await self.engine.drain(self.settings.drain_timeout)
        if not clean:
            log.warning("drain timeout (%ss) passed; aborted the rest", self.settings.drain_timeout)
        else:
            log.info("drained; shutting down")
        self.server.should_exit = True

    def on_engine_failure(self, exc: BaseException) -> None:
        """The engine stopped for good (called on its thread): exit non-zero, promptly."""
        log.critical("exiting with status %d: the engine failed: %s", EXIT_ENGINE_FAILED, exc)
        watchdog = threading.Timer(FATAL_EXIT_SECONDS, _exit_now)
        watchdog.daemon = True
        watchdog.start()
        # uvicorn polls this flag; setting a bool from another thread is safe.
        self.server.should_exit = True

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()


def _exit_now() -> None:
    log.critical("shutdown after the engine failure took over %ss; exiting", FATAL_EXIT_SECONDS)
    logging.shutdown()
    os._exit(EXIT_ENGINE_FAILED)


def _serve(args: argparse.Namespace) -> int:
    # Waiting OpenMP threads sleep instead of spinning. The HTTP thread and any neighbour
    # share the cores with torch's threads, and spinning waiters starve the very thread
    # they wait for: measured on 2 cores with one busy neighbour, 2-7x more tokens/s, and no
    # loss on an idle machine. Must be set before torch starts its thread pool; an explicit
    # setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        settings = settings_from_args(args, os.environ)
    except ValueError as exc:
        print(f"llmfleet-worker: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from llmfleet_worker.engine.source import ModelLoadError, resolve_uri

    try:
        resolve_uri(settings.model)  # fail fast, before importing torch
    except ModelLoadError as exc:
        print(f"llmfleet-worker: error: {exc}", file=sys.stderr)
        return 2
    # Heavy imports only for serving: --help and make-tiny-model stay fast.
    from llmfleet_worker.app import build_app
    from llmfleet_worker.engine.tokenizing import build_engine
    from llmfleet_worker.metrics import Metrics

    try:
        engine = build_engine(settings)
    except ModelLoadError as exc:
        print(f"llmfleet-worker: error: {exc}", file=sys.stderr)
        return 2
    app = build_app(engine, settings, Metrics())
    server = _DrainingServer(app, engine, settings)
    engine.start(on_fatal=server.on_engine_failure)
    try:
        asyncio.run(server.serve())
    finally:
        engine.shutdown()
    if engine.failed is not None:
        return EXIT_ENGINE_FAILED
    return 0 if server.server.started else 1


def _make_tiny_model(args: argparse.Namespace) -> int:
    from llmfleet_worker.tinymodel import make_tiny_model

    out = make_tiny_model(args.dir, arch=args.arch, seed=args.seed, size=args.size)
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmfleet-worker`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "serve":
        return _serve(args)
    return _make_tiny_model(args)


if __name__ == "__main__":
    sys.exit(main())
