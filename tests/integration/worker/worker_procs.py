"""Start real ``llmfleet-worker serve`` processes on loopback and talk to them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from llmfleet_dev.net import free_port
from llmfleet_dev.wait import WaitTimeoutError, wait_for

WORKER = str(Path(sys.executable).parent / "llmfleet-worker")
API_KEY = "integration-test-key"
START_TIMEOUT = 180.0


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    api_key: str | None = None
    model_name: str = "tiny"
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, sample: str) -> float:
        """The value of one exact sample line prefix, e.g. ``name{outcome="success"}``."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{sample} not in /metrics")

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Poll ``predicate`` (a condition on the worker's state) until true or fail."""
        try:
            wait_for("a condition", predicate, timeout, 0.05, give_up=(Exception,))
        except WaitTimeoutError:
            raise AssertionError(f"condition not met in {timeout}s\n{self.log()[-3000:]}") from None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(10)
        return self.proc.returncode


def start_worker(
    model: Path,
    tmp: Path,
    *args: str,
    api_key: str | None = None,
    env: dict[str, str] | None = None,
    program: tuple[str, ...] = (WORKER,),
) -> WorkerProcess:
    """Start ``program serve`` (the real CLI unless a test wraps it) and wait for /ready."""
    port = free_port()
    log_path = tmp / f"worker-{port}.log"
    full_env = {**os.environ, "LLMFLEET_API_KEY": api_key or "", **(env or {})}
    cmd = [
        *program,
        "serve",
        "--model",
        str(model),
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # One thread per worker: the test machine is small and shared; OpenMP threads that
        # wait on each other under CPU contention are far slower than one.
        "--threads",
        "1",
        *args,
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    worker = WorkerProcess(proc, port, log_path, api_key)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{worker.log()}")
        try:
            if httpx.get(f"{worker.url}/ready", timeout=2).status_code == 200:
                return worker
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            worker.stop()
            raise AssertionError(f"worker not ready in {START_TIMEOUT}s:\n{worker.log()}")
        time.sleep(0.2)
