"""A bounded, closed-loop load generator for OpenAI-compatible endpoints on loopback.

``concurrency`` clients each send one ``/v1/completions`` request, wait for the answer, and
send the next (after an optional think time), until ``duration`` seconds have passed or
``max_requests`` requests were sent, whichever comes first. It always ends by itself:
``duration`` is required and capped, and every request has a socket timeout. Threads and
``http.client`` keep it independent of any event loop, so tests and benchmarks can run it
beside anything else.

    with LoadGenerator(url, model="tiny", concurrency=8, duration=20) as load:
        ...                       # watch the fleet react
    result = load.result          # per-request status and latency
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MAX_DURATION = 900.0
DEFAULT_PROMPT = "The quick brown fox jumps over the lazy dog. Tell me a story about it:"


@dataclass(frozen=True)
class RequestRecord:
    """One request: when it started (seconds into the run), how long it took, the outcome."""

    started: float
    latency: float
    status: int  # the HTTP status; 0 when no response came (refused, reset, timed out)
    error: str | None  # None for a well-formed 200 answer
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass
class LoadResult:
    """Every request of one run, in completion order."""

    records: list[RequestRecord] = field(default_factory=list)
    duration: float = 0.0

    @property
    def total(self) -> int:
        return len(self.records)

    @property
    def ok(self) -> list[RequestRecord]:
        return [r for r in self.records if r.ok]

    @property
    def failed(self) -> list[RequestRecord]:
        return [r for r in self.records if not r.ok]

    def statuses(self) -> Counter[int]:
        return Counter(r.status for r in self.records)

    def errors(self) -> Counter[str]:
        return Counter(r.error for r in self.records if r.error is not None)

    def latency_quantile(self, q: float) -> float:
        """Nearest-rank quantile of the successful requests' latency (nan when none)."""
        latencies = sorted(r.latency for r in self.ok)
        if not latencies:
            return math.nan
        return latencies[min(len(latencies) - 1, max(0, math.ceil(q * len(latencies)) - 1))]

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return len(self.ok) / self.duration if self.duration > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.total} requests in {self.duration:.1f}s, {len(self.ok)} ok "
            f"({self.throughput:.1f}/s), p50 {self.latency_quantile(0.5):.3f}s, "
            f"p95 {self.latency_quantile(0.95):.3f}s, statuses {dict(self.statuses())}"
        )


class LoadGenerator:
    """Closed-loop clients against ``base_url`` (``http://127.0.0.1:PORT``), in threads."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        concurrency: int = 4,
        duration: float = 10.0,
        max_requests: int | None = None,
        prompt: str = DEFAULT_PROMPT,
        max_tokens: int = 32,
        temperature: float = 0.0,
        stream: bool = False,
        think_time: float = 0.0,
        request_timeout: float = 30.0,
        api_key: str | None = None,
    ) -> None:
        if not 0 < duration <= MAX_DURATION:
            raise ValueError(f"duration must be in (0, {MAX_DURATION}] seconds, not {duration}")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"want an http://HOST:PORT base URL, not {base_url!r}")
        self.host = url.hostname
        self.port = url.port or 80
        self.path = url.path.rstrip("/").removesuffix("/v1") + "/v1/completions"
        self.concurrency = concurrency
        self.duration = duration
        self.max_requests = max_requests
        self.think_time = think_time
        self.request_timeout = request_timeout
        self.stream = stream
        self.body = json.dumps(
            {
                "model": model,
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "stream": stream,
            }
        ).encode()
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._records: list[RequestRecord] = []
        self._sent = 0
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0
        self._ended: float | None = None

    # --- control ------------------------------------------------------------------------------
    def start(self) -> LoadGenerator:
        if self._threads:
            raise RuntimeError("a LoadGenerator runs once")
        self._t0 = time.monotonic()
        self._threads = [
            threading.Thread(target=self._client, name=f"loadgen-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for t in self._threads:
            t.start()
        return self

    def join(self, timeout: float | None = None) -> LoadResult:
        """Wait for the run to end by itself (duration or request budget reached)."""
        if not self._threads:
            raise RuntimeError("the load generator was not started")
        limit = self.duration + self.request_timeout + 5.0
        deadline = time.monotonic() + (limit if timeout is None else timeout)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            raise TimeoutError("load generator clients did not finish")
        return self.result

    def stop(self, timeout: float | None = None) -> LoadResult:
        """Stop sending; wait for the requests in flight; return the result."""
        self._stop.set()
        return self.join(self.request_timeout + 5.0 if timeout is None else timeout)

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def done(self) -> bool:
        return bool(self._threads) and not any(t.is_alive() for t in self._threads)

    @property
    def completed(self) -> int:
        """Requests answered (or failed) so far."""
        with self._lock:
            return len(self._records)

    @property
    def result(self) -> LoadResult:
        with self._lock:
            records = list(self._records)
        end = self._ended if self._ended is not None else time.monotonic()
        return LoadResult(records, end - self._t0)

    # --- clients ------------------------------------------------------------------------------
    def _take_slot(self) -> bool:
        if self._stop.is_set() or time.monotonic() - self._t0 >= self.duration:
            return False
        with self._lock:
            if self.max_requests is not None and self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _client(self) -> None:
        conn: http.client.HTTPConnection | None = None
        try:
            while self._take_slot():
                if conn is None:
                    conn = http.client.HTTPConnection(
                        self.host, self.port, timeout=self.request_timeout
                    )
                record, reusable = self._one(conn)
                with self._lock:
                    self._records.append(record)
                if not reusable:
                    conn.close()
                    conn = None
                if self.think_time and self._stop.wait(self.think_time):
                    break
        finally:
            if conn is not None:
                conn.close()
            with self._lock:
                self._ended = time.monotonic()

    def _one(self, conn: http.client.HTTPConnection) -> tuple[RequestRecord, bool]:
        """Send one request; return its record and whether the connection can be reused."""
        started = time.monotonic()
        status = 0
        try:
            conn.request("POST", self.path, body=self.body, headers=self.headers)
            response = conn.getresponse()
            status = response.status
            raw = response.read()
            error, tokens = self._check(status, raw)
            reusable = not response.will_close
        except (OSError, http.client.HTTPException) as e:
            error, tokens, reusable = f"{type(e).__name__}: {e}", 0, False
        return (
            RequestRecord(
                started=started - self._t0,
                latency=time.monotonic() - started,
                status=status,
                error=error,
                completion_tokens=tokens,
            ),
            reusable,
        )

    def _check(self, status: int, raw: bytes) -> tuple[str | None, int]:
        """(error or None, completion tokens) for one answer."""
        if status != 200:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                return f"HTTP {status}: {json.loads(raw)['error']['message']}", 0
            return f"HTTP {status}: {raw[:200]!r}", 0
        try:
            if self.stream:
                chunks = [
                    line.removeprefix(b"data: ")
                    for line in raw.splitlines()
                    if line.startswith(b"data: ")
                ]
                if not chunks or chunks[-1] != b"[DONE]":
                    return "stream did not end with [DONE]", 0
                events = [json.loads(c) for c in chunks[:-1]]
                if not events or any(e.get("object") != "text_completion" for e in events):
                    return "stream chunks are not text_completion objects", 0
                return None, sum(1 for e in events if e["choices"] and e["choices"][0]["text"])
            body = json.loads(raw)
            if body.get("object") != "text_completion" or not body.get("choices"):
                return f"not a completion: {raw[:200]!r}", 0
            return None, int(body.get("usage", {}).get("completion_tokens", 0))
        except (ValueError, KeyError, TypeError, IndexError) as e:
            return f"malformed answer ({type(e).__name__}): {raw[:200]!r}", 0


def run_load(base_url: str, **kwargs: Any) -> LoadResult:
    """Run a load to its end (duration or ``max_requests``); ``kwargs`` as LoadGenerator's."""
    return LoadGenerator(base_url, **kwargs).start().join()
