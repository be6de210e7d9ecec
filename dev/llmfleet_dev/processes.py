"""Run the operator as a real process against a test cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from llmfleet_dev.localcluster import operator_command
from llmfleet_dev.net import free_port
from llmfleet_dev.wait import GiveUpError, wait_for


def scrape(url: str) -> dict[str, float]:
    """The samples at ``url`` (see :func:`parse_exposition`)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        return parse_exposition(r.read().decode())


def parse_exposition(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {"name{labels}": value} (comments skipped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


class OperatorProcess:
    """``llmfleet-operator run`` as a subprocess, with its health and metrics ports."""

    def __init__(self, kubeconfig: Path, log_path: Path, *extra_args: str) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_args = extra_args
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        args = operator_command(
            "--autoscale-interval=2",
            *self.extra_args,
            health_port=self.health_port,
            metrics_port=self.metrics_port,
        )
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for(f"the operator's /healthz (log: {self.log_path})", self.healthy, timeout=60)
        except BaseException:
            self.stop(signal.SIGKILL)  # never leave a half-started operator behind
            raise
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise GiveUpError(f"operator exited with {self.proc.returncode}: {self.log_tail()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as r:
                return int(r.status) == 200
        except OSError:
            return False

    def metrics(self) -> dict[str, float]:
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def writes(self) -> float:
        """Total writes the operator sent (applies, deletes, status)."""
        return sum(
            v
            for k, v in self.metrics().items()
            if k.startswith("llmfleet_operator_api_writes_total{")
        )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@contextlib.contextmanager
def operator_reading(
    kubeconfig: Path, prometheus_url: str, log_path: Path, *args: str
) -> Iterator[OperatorProcess]:
    """The operator reading Prometheus at ``prometheus_url`` (autoscaler, canary analysis),
    with ``args``; it must exit cleanly."""
    proc = OperatorProcess(kubeconfig, log_path, f"--prometheus-url={prometheus_url}", *args)
    proc.start()
    try:
        yield proc
    finally:
        assert proc.stop() in (0, None), proc.log_tail()
