"""A real Prometheus server (Debian's package) on loopback, for e2e tests and benchmarks.

It scrapes the worker processes that the pod backer (``llmfleet_dev.podbacker``) lists in its
file-based service discovery file, every second, and optionally static targets (the
operator's own metrics). ``stop()`` and ``start()`` again reuse the same port and the same
TSDB, so a test can take Prometheus away mid-run and bring it back at the same address.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmfleet_dev.localcluster import _die_with_parent
from llmfleet_dev.net import free_port
from llmfleet_dev.wait import wait_for

BINARY = "/usr/bin/prometheus"
WORKERS_JOB = "llmfleet-workers"

Series = dict[str, Any]


class PrometheusError(AssertionError):
    """Prometheus did not start, or answered a query with an error."""


class PrometheusServer:
    """``prometheus`` as a child process with a generated configuration.

    ``static_jobs`` maps a job name to ``host:port`` targets (e.g. ``{"llmfleet-operator":
    ["127.0.0.1:9100"]}``); :meth:`set_static_jobs` changes them on a running server.
    ``scrape_configs`` are further jobs as Prometheus's configuration spells them (target
    labels, ``honor_timestamps``, a second job scraping the same targets, ...).
    """

    def __init__(
        self,
        workdir: Path,
        sd_file: Path,
        *,
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        static_jobs: Mapping[str, Sequence[str]] | None = None,
        scrape_configs: Sequence[Mapping[str, Any]] = (),
        lookback_delta: str | None = None,
        binary: str = BINARY,
        port: int | None = None,
        tie_to_parent: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.sd_file = Path(sd_file).resolve()
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.static_jobs = {k: list(v) for k, v in (static_jobs or {}).items()}
        self.extra_scrape_configs = [dict(c) for c in scrape_configs]
        self.lookback_delta = lookback_delta
        self.binary = binary
        self.port = port or free_port()
        self.config_file = self.workdir / "prometheus.yml"
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "prometheus.log"
        # True: it gets SIGTERM when this process dies (tests). False: it outlives us in its
        # own process group (``make demo``; register its pid with the cluster to stop it).
        self.tie_to_parent = tie_to_parent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- configuration -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The configuration (written as JSON, which YAML readers accept)."""
        scrape_configs: list[dict[str, Any]] = [
            {
                "job_name": WORKERS_JOB,
                "honor_labels": False,
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "metrics_path": "/metrics",
                # The file is watched; the refresh interval is only a safety net.
                "file_sd_configs": [{"files": [str(self.sd_file)], "refresh_interval": "5s"}],
            }
        ]
        for job, targets in sorted(self.static_jobs.items()):
            scrape_configs.append(
                {
                    "job_name": job,
                    "scrape_interval": self.scrape_interval,
                    "scrape_timeout": self.scrape_interval,
                    "static_configs": [{"targets": list(targets)}],
                }
            )
        scrape_configs.extend(self.extra_scrape_configs)
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "scrape_configs": scrape_configs,
        }

    def _write_config(self) -> None:
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config(), indent=2))
        tmp.replace(self.config_file)

    def set_static_jobs(self, static_jobs: Mapping[str, Sequence[str]]) -> None:
        """Replace the static jobs; a running server reloads its configuration."""
        self.static_jobs = {k: list(v) for k, v in static_jobs.items()}
        self._write_config()
        if self.running:
            self._post("/-/reload")

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        """Start (or start again, on the same port and data) and wait for ``/-/ready``."""
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self.sd_file.parent.mkdir(parents=True, exist_ok=True)
        if not self.sd_file.exists():
            self.sd_file.write_text("[]\n")
        self._write_config()
        args = [
            self.binary,
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.data_dir}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=info",
        ]
        if self.lookback_delta:
            args.append(f"--query.lookback-delta={self.lookback_delta}")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=_die_with_parent if self.tie_to_parent else None,
                start_new_session=not self.tie_to_parent,
            )
        wait_for(f"Prometheus /-/ready (log: {self.log_path})", self._ready, timeout=timeout)
        return self

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise PrometheusError(f"prometheus exited with {code}: {self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return int(r.status) == 200
        except OSError:
            return False

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait, reap; returns the exit code (None when it was not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # --- HTTP API -----------------------------------------------------------------------------
    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
            e.close()
        if body.get("status") != "success":
            raise PrometheusError(f"GET {path} {params}: {body.get('error', body)}")
        return body["data"]

    def _post(self, path: str) -> None:
        request = urllib.request.Request(f"{self.url}{path}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as r:
            r.read()

    def query(self, promql: str) -> list[Series]:
        """An instant query: ``[{"metric": {...}, "value": [ts, "1"]}, ...]``."""
        data = self._get("/api/v1/query", {"query": promql})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[Series] = data["result"]
        return result

    def values(self, promql: str, *by: str) -> dict[tuple[str, ...], float]:
        """An instant query as ``{(label values in ``by`` order): value}``."""
        return {
            tuple(s["metric"].get(label, "") for label in by): float(s["value"][1])
            for s in self.query(promql)
        }

    def value(self, promql: str) -> float | None:
        """The single value of a query that returns at most one series."""
        series = self.query(promql)
        if len(series) > 1:
            raise PrometheusError(f"{promql} returned {len(series)} series: {series}")
        return float(series[0]["value"][1]) if series else None

    def targets(self, job: str | None = WORKERS_JOB, health: str | None = None) -> list[Series]:
        """Active targets (of ``job``; with ``health`` "up"/"down"/"unknown" only those)."""
        data = self._get("/api/v1/targets", {"state": "active"})
        return [
            t
            for t in data["activeTargets"]
            if job in (None, t["labels"].get("job")) and health in (None, t["health"])
        ]


def prometheus_available(binary: str = BINARY) -> bool:
    return os.access(binary, os.X_OK)
