"""Soak test of one llmfleet worker process: sustained mixed load, exact accounting, memory.

One ``llmfleet-worker serve`` process (the tiny model from ``make-tiny-model``, built offline
into a temporary directory) listens on 127.0.0.1; ``--clients`` closed-loop clients (each
sends its next request as soon as the previous one ended) drive it for ``--duration``
seconds with a seeded mix of:

* ``completion-stream`` / ``completion``: ``/v1/completions``, streamed (SSE) and not;
* ``chat-stream`` / ``chat``: ``/v1/chat/completions``, streamed and not;
* ``cancel-stream``: a streamed request whose client disconnects after 1-4 text chunks;
* ``cancel-nonstream``: a non-streamed request whose client gives up after 0.1-1 s;

with ``max_tokens`` 1..64, greedy and sampled decoding (temperature, top_p, seed), stop
strings, ``ignore_eos``, text and token-id prompts of 1 to 200 words, system and multi-turn
chats. It stops by itself: no request starts after the deadline and every request has a
timeout (``--request-timeout``). Traffic goes to 127.0.0.1 only.

It measures and checks (exit status 1 when any check fails):

* every request's client-side outcome, per kind: completed (a well-formed 200 whose
  finish_reason, token count and stop strings are consistent), cancelled, HTTP status,
  error inside a stream, timeout, connection error, malformed answer. Required: no 5xx, no
  in-stream error, no timeout or connection error, and, since every request sent is valid
  and the queue cannot overflow (clients <= slots + queue), no other status or malformed
  answer either;
* the worker's own ``llmfleet_worker_requests_total{outcome}`` over the load (scraped before
  and after; after the load stopped and ``requests_running``/``requests_waiting`` drained to
  0): ``error``, ``aborted``, ``rejected`` and ``invalid`` must not move. Exact: every
  completed request is a worker ``success`` (counted before the answer's last byte), every
  streamed cancellation is a ``success`` or ``cancelled``. Not exact, and why: a streamed
  client that disconnects after the worker pulled the last token but before the client read
  the finishing chunk is a success for the worker and a cancellation for the client; and a
  non-streamed client that gives up before the worker read its request body is counted under
  no outcome at all (the framework answers such a request with a 400 that bypasses the
  counter). So ``success`` must lie in [completed, completed + cancelled], and
  ``success + cancelled`` in [completed + streamed cancels, completed + all cancels]; the
  report prints how many requests the worker never counted;
* generated tokens: the worker's ``llmfleet_worker_generation_tokens_total`` must be at least
  the ``usage.completion_tokens`` the completed requests report (equal without cancels);
* memory: the worker's RSS (``VmRSS`` of the serving process itself, from ``/proc``) every
  ``--rss-interval`` seconds; growth = (RSS at the deadline - RSS after ``--warmup`` seconds of
  load) / RSS after warm-up, required < ``--max-rss-growth`` (5 %); the maximum is reported;
* afterwards: a plain request succeeds, ``/health`` and ``/ready`` answer 200, the worker's
  log has no error or traceback, and it exits 0 on SIGTERM (a clean drain).

It prints the command line, a table of requests per kind and outcome, the worker's counters,
tokens/s, TTFT p50/p95 of the streamed requests (to the first text chunk), the RSS figures,
and every check with its verdict.

    .venv/bin/python bench/worker_soak.py                              # 64 clients, 300 s
    .venv/bin/python bench/worker_soak.py --duration 40 --warmup 15    # a short smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from llmfleet_dev.net import free_port
from llmfleet_dev.processes import parse_exposition
from llmfleet_worker import metrics as worker_metrics

ROOT = Path(__file__).resolve().parents[1]

BIN = Path(sys.executable).parent
MODEL_NAME = "soak"
HOST = "127.0.0.1"

# What the worker exposes.
REQUESTS_TOTAL = worker_metrics.REQUESTS_TOTAL
GENERATION_TOKENS = worker_metrics.GENERATION_TOKENS_TOTAL
PROMPT_TOKENS = worker_metrics.PROMPT_TOKENS_TOTAL
RUNNING = worker_metrics.REQUESTS_RUNNING
WAITING = worker_metrics.REQUESTS_WAITING
WORKER_OUTCOMES = worker_metrics.OUTCOMES

KINDS = (
    "completion-stream",
    "completion",
    "chat-stream",
    "chat",
    "cancel-stream",
    "cancel-nonstream",
)
DEFAULT_MIX = (
    "completion-stream=3,completion=2,chat-stream=3,chat=2,cancel-stream=2,cancel-nonstream=1"
)

# Client-side outcomes, in table order.
COMPLETED = "completed"
CANCELLED = "cancelled"
HTTP_4XX = "4xx"
HTTP_5XX = "5xx"
STREAM_ERROR = "stream error"
TIMEOUT = "timeout"
CONN_ERROR = "conn error"
BAD = "bad answer"
CLIENT_OUTCOMES = (COMPLETED, CANCELLED, HTTP_4XX, HTTP_5XX, STREAM_ERROR, TIMEOUT, CONN_ERROR, BAD)

_WORDS_TEXT = (
    "the fleet is only as good as pods it runs a worker loads causal language model serves "
    "many clients at once and reports how busy queue batch token slot node replica autoscaler "
    "reads depth time first adds when users would otherwise wait hello world how are you today "
    "numbers 0 1 2 3 42 100 café naïve Grüße 東京 привет 🙂 ka ri to na mi ko shi ra lu be de fa"
)
WORDS = tuple(_WORDS_TEXT.split())
STOPS: tuple[str | list[str], ...] = (".", "\n", " the", ["!", "?"], ["ka", "ri", "to"], "e")
SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer briefly.", "Reply in one word.")


class SetupError(Exception):
    """The setup failed (the worker did not start, a probe failed): no soak numbers."""


# ---- the worker process --------------------------------------------------------------
def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def serving_pid(pid: int) -> int:
    """The process that runs ``serve`` itself: ``pid`` unless it is a wrapper (a shell or a
    launcher) whose only job is a child running ``serve``."""
    for _ in range(5):
        if "serve" in _cmdline(pid)[1:] and not any(
            "serve" in _cmdline(k)[1:] for k in _children(pid)
        ):
            return pid
        kids = [k for k in _children(pid) if "serve" in _cmdline(k)[1:]]
        if len(kids) != 1:
            return pid
        pid = kids[0]
    return pid


def rss_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024  # always in kB
    return fields["VmRSS"], fields["VmHWM"]


class Worker:
    """``llmfleet-worker serve`` on loopback, its log in ``log_path``."""

    def __init__(self, model: Path, log_path: Path, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.cmd = [
            str(BIN / "llmfleet-worker"), "serve", "--model", str(model),
            "--served-model-name", MODEL_NAME, "--host", HOST, "--port", str(self.port),
            "--log-level", "warning", *extra,
        ]  # fmt: skip
        env = {**os.environ, "LLMFLEET_API_KEY": ""}  # no key: the soak is not about auth
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SetupError(f"worker exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SetupError(f"worker not ready in {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)
        self.pid = serving_pid(self.proc.pid)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return -9
        return self.proc.returncode


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    resp = await client.get("/metrics", timeout=10)
    resp.raise_for_status()
    return parse_exposition(resp.text)


def outcome_counts(samples: dict[str, float]) -> dict[str, float]:
    return {o: samples.get(f'{REQUESTS_TOTAL}{{outcome="{o}"}}', 0.0) for o in WORKER_OUTCOMES}


# ---- one request ---------------------------------------------------------------------
@dataclass
class Tally:
    """Everything the clients saw."""

    outcomes: dict[str, Counter[str]] = field(
        default_factory=lambda: {k: Counter[str]() for k in KINDS}
    )
    latency: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    ttft: list[float] = field(default_factory=list)
    completion_tokens: int = 0  # usage of completed requests
    prompt_tokens: int = 0
    problems: list[str] = field(default_factory=list)
    #: cancel-stream clients that saw the finishing chunk before their cut-off (so they read
    #: to the end and count as completed).
    cancel_finished_first: int = 0

    def total(self, outcome: str, kinds: tuple[str, ...] = KINDS) -> int:
        return sum(self.outcomes[k][outcome] for k in kinds)

    def problem(self, kind: str, what: str) -> None:
        self.problems.append(f"{kind}: {what}"[:400])


def prompt_text(rng: random.Random) -> str:
    n = rng.choice((1, 2, 5, 10, 20, 40, 80, 200))
    return " ".join(rng.choice(WORDS) for _ in range(n))


def sampling(rng: random.Random, kind: str) -> dict[str, Any]:
    long_run = kind.startswith("cancel")
    body: dict[str, Any] = {
        "model": MODEL_NAME,
        "max_tokens": rng.randint(24, 64) if long_run else rng.randint(1, 64),
    }
    body["temperature"] = rng.choice((0.0, 0.0, 0.3, 0.7, 1.0, 1.3, 2.0))
    if rng.random() < 0.5:
        body["top_p"] = rng.choice((1.0, 0.95, 0.8, 0.3, 1e-9))
    if rng.random() < 0.5:
        body["seed"] = rng.randint(-(2**63), 2**63 - 1)
    if not long_run and rng.random() < 0.3:
        body["stop"] = rng.choice(STOPS)
    if long_run or rng.random() < 0.3:
        body["ignore_eos"] = True
    return body


def request_body(rng: random.Random, kind: str) -> tuple[str, dict[str, Any]]:
    chat = kind.startswith("chat") or (kind.startswith("cancel") and rng.random() < 0.5)
    body = sampling(rng, kind)
    body["stream"] = kind.endswith("stream") and kind != "cancel-nonstream"
    if body["stream"]:
        body["stream_options"] = {"include_usage": True}
    if chat:
        messages: list[dict[str, Any]] = []
        if rng.random() < 0.4:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        messages.append({"role": "user", "content": prompt_text(rng)})
        if rng.random() < 0.25:
            messages.append({"role": "assistant", "content": prompt_text(rng)})
            content: Any = prompt_text(rng)
            if rng.random() < 0.5:
                content = [{"type": "text", "text": content}]
            messages.append({"role": "user", "content": content})
        body["messages"] = messages
        if rng.random() < 0.3:
            body["max_completion_tokens"] = body.pop("max_tokens")
        return "/v1/chat/completions", body
    if rng.random() < 0.1:
        body["prompt"] = [rng.randint(10, 4000) for _ in range(rng.randint(1, 64))]
    else:
        body["prompt"] = prompt_text(rng)
    return "/v1/completions", body


def _limit(body: dict[str, Any]) -> int:
    return int(body.get("max_tokens") or body["max_completion_tokens"])


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    return [] if stop is None else [stop] if isinstance(stop, str) else list(stop)


def check_answer(
    body: dict[str, Any], text: str, reason: Any, usage: Any, tally: Tally
) -> str | None:
    """What is wrong with a finished answer, or None; adds its usage to ``tally``."""
    if reason not in ("stop", "length"):
        return f"finish_reason {reason!r}"
    if not isinstance(usage, dict):
        return f"usage {usage!r}"
    tokens = usage.get("completion_tokens")
    prompt = usage.get("prompt_tokens")
    if not isinstance(tokens, int) or not isinstance(prompt, int) or prompt < 1:
        return f"usage {usage!r}"
    if usage.get("total_tokens") != tokens + prompt:
        return f"usage total {usage!r}"
    limit = _limit(body)
    if tokens > limit or (reason == "length" and tokens != limit):
        return f"{tokens} tokens, finish {reason}, max_tokens {limit}"
    if reason == "stop" and body.get("ignore_eos") and not _stops(body):
        return "finish_reason stop with ignore_eos and no stop string"
    for stop in _stops(body):
        if stop in text:
            return f"stop string {stop!r} in the output {text[:80]!r}"
    if isinstance(body.get("prompt"), list) and prompt != len(body["prompt"]):
        return f"prompt_tokens {prompt} for a {len(body['prompt'])}-token prompt"
    tally.completion_tokens += tokens
    tally.prompt_tokens += prompt
    return None


async def non_streamed(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], give_up: float | None
) -> tuple[str, dict[str, Any] | str]:
    """(outcome, parsed answer or problem); raises transport errors and the outer timeout."""
    if give_up is None:
        resp = await client.post(path, json=body)
    else:
        try:
            async with asyncio.timeout(give_up):
                resp = await client.post(path, json=body)
        except TimeoutError:
            return CANCELLED, "gave up"
    if resp.status_code != 200:
        return _status(resp.status_code), f"{resp.status_code} {resp.text[:200]}"
    try:
        answer: dict[str, Any] = resp.json()
    except ValueError:
        return BAD, f"not JSON: {resp.text[:200]}"
    return COMPLETED, answer


def _status(code: int) -> str:
    return HTTP_5XX if code >= 500 else HTTP_4XX if code >= 400 else BAD


async def one_request(
    client: httpx.AsyncClient, rng: random.Random, kind: str, args: argparse.Namespace, t: Tally
) -> None:
    path, body = request_body(rng, kind)
    chat = path.endswith("chat/completions")
    cut = rng.randint(1, 4) if kind == "cancel-stream" else None
    give_up = rng.uniform(0.1, 1.0) if kind == "cancel-nonstream" else None
    start = time.perf_counter()
    outcome: str
    detail: str | None
    try:
        async with asyncio.timeout(args.request_timeout):
            if body["stream"]:
                outcome, detail = await streamed(client, path, body, chat, cut, start, t)
            else:
                outcome, answer = await non_streamed(client, path, body, give_up)
                if isinstance(answer, str):
                    detail = answer
                else:
                    detail = check_non_streamed(body, answer, chat, t)
                    outcome = COMPLETED if detail is None else BAD
    except TimeoutError:
        outcome, detail = TIMEOUT, f"no answer in {args.request_timeout}s"
    except httpx.TimeoutException as exc:
        outcome, detail = TIMEOUT, repr(exc)
    except httpx.TransportError as exc:
        outcome, detail = CONN_ERROR, repr(exc)
    except Exception as exc:  # an answer this client cannot even parse; keep the loop going
        outcome, detail = BAD, repr(exc)
    t.outcomes[kind][outcome] += 1
    t.latency[kind].append(time.perf_counter() - start)
    if outcome not in (COMPLETED, CANCELLED):
        t.problem(kind, f"{outcome}: {detail} (request {json.dumps(body)[:200]})")


def check_non_streamed(
    body: dict[str, Any], answer: dict[str, Any], chat: bool, t: Tally
) -> str | None:
    want = "chat.completion" if chat else "text_completion"
    choices = answer.get("choices")
    if answer.get("object") != want or not isinstance(choices, list) or len(choices) != 1:
        return f"not a {want}: {json.dumps(answer)[:200]}"
    choice = choices[0]
    if chat:
        message = choice.get("message") or {}
        text = message.get("content")
        if message.get("role") != "assistant":
            return f"message {message!r}"
    else:
        text = choice.get("text")
    if not isinstance(text, str):
        return f"text {text!r}"
    return check_answer(body, text, choice.get("finish_reason"), answer.get("usage"), t)


async def streamed(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    chat: bool,
    cut: int | None,
    start: float,
    t: Tally,
) -> tuple[str, str | None]:
    """Read one SSE answer (or its first ``cut`` text chunks): (outcome, problem)."""
    async with client.stream("POST", path, json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return _status(resp.status_code), f"{resp.status_code} {resp.text[:200]}"
        pieces: list[str] = []
        reason: Any = None
        usage: Any = None
        done = False
        first = True
        async for line in resp.aiter_lines():
            if not line:
                continue
            if not line.startswith("data: "):
                return BAD, f"not an SSE data line: {line[:200]!r}"
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            if usage is not None:
                return BAD, f"data after the usage chunk: {data[:200]}"
            try:
                event = json.loads(data)
            except ValueError:
                return BAD, f"not JSON: {data[:200]}"
            if "error" in event:
                return STREAM_ERROR, data[:300]
            choices = event.get("choices")
            if choices == [] and "usage" in event:
                usage = event["usage"]
                continue
            if not isinstance(choices, list) or len(choices) != 1 or reason is not None:
                return BAD, f"unexpected chunk: {data[:200]}"
            choice = choices[0]
            if chat:
                delta = choice.get("delta") or {}
                if first and delta.get("role") != "assistant":
                    return BAD, f"first chat chunk without the role: {data[:200]}"
                piece = delta.get("content") or ""
            else:
                piece = choice.get("text") or ""
            first = False
            if piece:
                if not pieces:
                    t.ttft.append(time.perf_counter() - start)
                pieces.append(piece)
            reason = choice.get("finish_reason")
            if cut is not None and reason is None and len(pieces) >= cut:
                return CANCELLED, None  # leaving the block closes the connection
        if cut is not None and reason is not None:
            t.cancel_finished_first += 1
        if not done:
            return BAD, "the stream ended without [DONE]"
        problem = check_answer(body, "".join(pieces), reason, usage, t)
        return (COMPLETED, None) if problem is None else (BAD, problem)


# ---- the load ------------------------------------------------------------------------
def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for item in text.split(","):
        name, _, weight = item.partition("=")
        if name.strip() not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown kind {name!r}; kinds: {', '.join(KINDS)}")
        mix[name.strip()] = float(weight or 1)
    return mix


@dataclass
class Rss:
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds into load, bytes)
    warm: int | None = None
    end: int | None = None
    hwm: int = 0


async def sample_rss(pid: int, load_start: float, args: argparse.Namespace, rss: Rss) -> None:
    """Until cancelled: RSS every ``--rss-interval`` s; the first sample at or after the
    warm-up is the baseline."""
    while True:
        elapsed = time.monotonic() - load_start
        try:
            value, rss.hwm = rss_bytes(pid)
        except OSError:  # the worker is gone; the clients will say so
            return
        rss.samples.append((elapsed, value))
        if rss.warm is None and elapsed >= args.warmup:
            rss.warm = value
        until_warm = load_start + args.warmup - time.monotonic()
        wait = args.rss_interval
        if rss.warm is None and 0 < until_warm < wait:
            wait = until_warm
        await asyncio.sleep(wait)


async def run_load(
    url: str, pid: int, args: argparse.Namespace, tally: Tally, rss: Rss
) -> tuple[float, dict[str, float], dict[str, float], str | None]:
    """The soak: (load seconds, metrics before, metrics after the drain, drain problem)."""
    mix = args.mix
    kinds, weights = list(mix), list(mix.values())
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients)
    timeout = httpx.Timeout(args.request_timeout, connect=10)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        before = await scrape(client)
        load_start = time.monotonic()
        deadline = load_start + args.duration

        async def closed_loop(i: int) -> None:
            rng = random.Random(f"{args.seed}-{i}")
            while time.monotonic() < deadline:
                kind = rng.choices(kinds, weights)[0]
                await one_request(client, rng, kind, args, tally)

        sampler = asyncio.create_task(sample_rss(pid, load_start, args, rss))
        clients = [asyncio.create_task(closed_loop(i)) for i in range(args.clients)]
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(OSError):  # at the deadline: under load, like the warm sample
            rss.end = rss_bytes(pid)[0]
            rss.samples.append((time.monotonic() - load_start, rss.end))
        in_flight = sum(not c.done() for c in clients)
        print(f"deadline reached; waiting for {in_flight} clients in flight", flush=True)
        _, pending = await asyncio.wait(clients, timeout=args.request_timeout + 30)
        for task in pending:  # cannot happen unless a timeout does not fire: a client hang
            task.cancel()
        sampler.cancel()
        elapsed = time.monotonic() - load_start
        for task in clients:
            if task.done() and not task.cancelled() and task.exception() is not None:
                tally.problem("client", f"crashed: {task.exception()!r}")
        if pending:
            tally.problem("client", f"{len(pending)} clients hung past every timeout")
        # In-flight work drained: nothing running or waiting, and the counters settled.
        problem: str | None = None
        drain_deadline = time.monotonic() + args.drain_timeout
        last: dict[str, float] | None = None
        while True:
            after = await scrape(client)
            idle = after.get(RUNNING, -1) == 0 and after.get(WAITING, -1) == 0
            if idle and last is not None and outcome_counts(last) == outcome_counts(after):
                break
            if time.monotonic() > drain_deadline:
                problem = (
                    f"not drained {args.drain_timeout:.0f}s after the load: running "
                    f"{after.get(RUNNING)}, waiting {after.get(WAITING)}"
                )
                break
            last = after if idle else None
            await asyncio.sleep(0.5)
        with contextlib.suppress(OSError):
            rss.samples.append((time.monotonic() - load_start, rss_bytes(pid)[0]))
        return elapsed, before, after, problem


async def probe_after(url: str) -> list[str]:
    """A plain request, /health and /ready after the soak: what failed."""
    problems: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        body = {"model": MODEL_NAME, "prompt": "Hello, world!", "max_tokens": 8}
        try:
            resp = await client.post("/v1/completions", json=body)
            answer = resp.json() if resp.status_code == 200 else {}
            if resp.status_code != 200 or answer.get("usage", {}).get("completion_tokens", 0) < 1:
                problems.append(f"plain request: {resp.status_code} {resp.text[:200]}")
            for probe in ("/health", "/ready"):
                resp = await client.get(probe)
                if resp.status_code != 200:
                    problems.append(f"{probe}: {resp.status_code} {resp.text[:200]}")
        except httpx.HTTPError as exc:
            problems.append(f"after the soak: {exc!r}")
    return problems


async def warm_up(url: str) -> None:
    """One request of each endpoint before the counters' baseline (and a failure, if the
    worker cannot serve at all, before the soak starts)."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for path, extra in (
            ("/v1/completions", {"prompt": "Hello", "stream": True}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
        ):
            resp = await client.post(path, json={"model": MODEL_NAME, "max_tokens": 4, **extra})
            if resp.status_code != 200:
                raise SetupError(f"warm-up {path}: {resp.status_code} {resp.text[:300]}")


# ---- report --------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def log_errors(log: str) -> list[str]:
    marks = (" ERROR ", " CRITICAL ", "Traceback", "Exception in ASGI")
    return [line for line in log.splitlines() if any(m in line for m in marks)]


def evaluate(
    tally: Tally,
    before: dict[str, float],
    after: dict[str, float],
    drain_problem: str | None,
    rss: Rss,
    args: argparse.Namespace,
) -> list[Check]:
    w0, w1 = outcome_counts(before), outcome_counts(after)
    worker = {o: round(w1[o] - w0[o]) for o in WORKER_OUTCOMES}
    completed = tally.total(COMPLETED)
    stream_cancels = tally.total(CANCELLED, ("cancel-stream",))
    cancels = tally.total(CANCELLED)
    counted = worker["success"] + worker["cancelled"]
    gen = round(after.get(GENERATION_TOKENS, 0) - before.get(GENERATION_TOKENS, 0))
    checks = [
        Check(
            "no 5xx, no error inside a stream",
            tally.total(HTTP_5XX) + tally.total(STREAM_ERROR) == 0,
            f"5xx {tally.total(HTTP_5XX)}, in-stream errors {tally.total(STREAM_ERROR)}",
        ),
        Check(
            "no timeout, no connection error",
            tally.total(TIMEOUT) + tally.total(CONN_ERROR) == 0,
            f"timeouts {tally.total(TIMEOUT)}, connection errors {tally.total(CONN_ERROR)}",
        ),
        Check(
            "no other status, no malformed answer, no client crash",
            tally.total(HTTP_4XX) + tally.total(BAD) == 0
            and not any(p.startswith("client:") for p in tally.problems),
            f"4xx {tally.total(HTTP_4XX)}, malformed {tally.total(BAD)}",
        ),
        Check(
            "worker counted no error/aborted/rejected/invalid",
            all(worker[o] == 0 for o in ("error", "aborted", "rejected", "invalid")),
            ", ".join(f"{o} {worker[o]}" for o in ("error", "aborted", "rejected", "invalid")),
        ),
        Check(
            "worker success + cancelled = client completed + cancelled",
            completed + stream_cancels <= counted <= completed + cancels,
            f"worker {counted} (success {worker['success']} + cancelled "
            f"{worker['cancelled']}); clients {completed} completed + {cancels} cancelled "
            f"({stream_cancels} streamed) = {completed + cancels}; never counted by the worker: "
            f"{completed + cancels - counted} (allowed: up to the {cancels - stream_cancels} "
            "non-streamed give-ups, which can leave before the worker read their body)",
        ),
        Check(
            "worker success in [completed, completed + cancelled]",
            completed <= worker["success"] <= completed + cancels,
            f"success {worker['success']}, completed {completed}, cancelled {cancels}",
        ),
        Check(
            "worker generated >= tokens the completed answers report",
            gen >= tally.completion_tokens,
            f"worker {gen}, completed answers {tally.completion_tokens} "
            f"(+{gen - tally.completion_tokens} for cancelled requests)",
        ),
        Check(
            "drained after the load (running 0, waiting 0)",
            drain_problem is None,
            drain_problem or "yes",
        ),
    ]
    if rss.warm is None or rss.end is None:
        checks.append(Check("RSS growth", False, "no warm-up sample (--warmup >= --duration?)"))
    else:
        growth = (rss.end - rss.warm) / rss.warm * 100
        checks.append(
            Check(
                f"RSS growth < {args.max_rss_growth:g} %",
                growth < args.max_rss_growth,
                f"{growth:+.2f} % ({mib(rss.warm)} -> {mib(rss.end)})",
            )
        )
    return checks


def print_report(
    args: argparse.Namespace,
    tally: Tally,
    elapsed: float,
    before: dict[str, float],
    after: dict[str, float],
    rss: Rss,
    checks: list[Check],
) -> None:
    print()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"{args.clients} clients, {args.duration:g} s (+{elapsed - args.duration:.1f} s to "
        f"finish in-flight requests), warm-up {args.warmup:g} s, seed {args.seed}, "
        f"load average after: {os.getloadavg()}"
    )
    print()
    header = " | ".join(CLIENT_OUTCOMES)
    print(f"| kind | sent | {header} | latency p50 ms | p95 ms |")
    print("|---|" + "---:|" * (len(CLIENT_OUTCOMES) + 3))
    for kind in [*KINDS, "all"]:
        kinds = KINDS if kind == "all" else (kind,)
        counts = [tally.total(o, kinds) for o in CLIENT_OUTCOMES]
        lat = [x for k in kinds for x in tally.latency[k]]
        cells = " | ".join(str(c) for c in counts)
        print(
            f"| {kind} | {sum(counts)} | {cells} | {pct(lat, 0.5) * 1000:.0f} | "
            f"{pct(lat, 0.95) * 1000:.0f} |"
        )
    w0, w1 = outcome_counts(before), outcome_counts(after)
    print()
    print(
        "worker llmfleet_worker_requests_total over the soak: "
        + ", ".join(f"{o} {round(w1[o] - w0[o])}" for o in WORKER_OUTCOMES)
    )
    print(
        f"cancel-stream clients that saw the finish before their cut-off (counted completed): "
        f"{tally.cancel_finished_first}"
    )
    gen = after.get(GENERATION_TOKENS, 0) - before.get(GENERATION_TOKENS, 0)
    prompt = after.get(PROMPT_TOKENS, 0) - before.get(PROMPT_TOKENS, 0)
    requests = sum(sum(c.values()) for c in tally.outcomes.values())
    print(
        f"requests/s {requests / elapsed:.1f}; tokens/s generated (worker counter) "
        f"{gen / elapsed:.1f}, delivered in completed answers "
        f"{tally.completion_tokens / elapsed:.1f}; prompt tokens/s {prompt / elapsed:.1f}"
    )
    print(
        f"TTFT of streamed requests (to the first text chunk, n={len(tally.ttft)}): "
        f"p50 {pct(tally.ttft, 0.5) * 1000:.0f} ms, p95 {pct(tally.ttft, 0.95) * 1000:.0f} ms"
    )
    peak = max((v for _, v in rss.samples), default=0)
    print(
        f"worker RSS: after warm-up {mib(rss.warm)}, at the deadline {mib(rss.end)}, "
        f"after the drain {mib(rss.samples[-1][1] if rss.samples else None)}, max sampled "
        f"{mib(peak)} (VmHWM {mib(rss.hwm)}), {len(rss.samples)} samples"
    )
    print("RSS samples (s: MiB): " + ", ".join(f"{s:.0f}: {v / 2**20:.1f}" for s, v in rss.samples))
    if tally.problems:
        print()
        print(f"problems ({len(tally.problems)}, first 20):")
        for p in tally.problems[:20]:
            print(f"  {p}")
    print()
    for c in checks:
        print(f"[{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.detail}")


# ---- main ----------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument(
        "--warmup", type=float, default=30.0, help="seconds before the RSS baseline"
    )
    parser.add_argument("--mix", type=parse_mix, default=parse_mix(DEFAULT_MIX))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--rss-interval", type=float, default=3.0)
    parser.add_argument("--max-rss-growth", type=float, default=5.0, help="percent")
    parser.add_argument(
        "--model", type=Path, help="model dir (default: build the tiny model, offline)"
    )
    parser.add_argument("--size", choices=("tiny", "bench"), default="tiny")
    parser.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        help="extra flag(s) for `llmfleet-worker serve`, e.g. --worker-arg='--max-num-seqs 16'",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (model, log)")
    args = parser.parse_args()
    if not 0 <= args.warmup < args.duration:
        parser.error("--warmup must be in [0, --duration)")
    if args.clients < 1:
        parser.error("--clients must be >= 1")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}", flush=True)
    # Turn SIGTERM into an exception so that the worker is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    workdir = Path(tempfile.mkdtemp(prefix="llmfleet-soak-"))
    model = args.model
    if model is None:
        model = workdir / f"model-{args.size}"
        subprocess.run(
            [str(BIN / "llmfleet-worker"), "make-tiny-model", str(model), "--size", args.size],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    extra = [a for arg in args.worker_arg for a in shlex.split(arg)]
    worker = Worker(model, workdir / "worker.log", extra)
    print(f"worker: {shlex.join(worker.cmd)}\nlog: {worker.log_path}", flush=True)
    tally, rss = Tally(), Rss()
    try:
        worker.wait_ready(timeout=300)
        print(f"ready; serving pid {worker.pid}; warming up", flush=True)
        asyncio.run(warm_up(worker.url))
        print(f"soak: {args.clients} clients for {args.duration:g} s", flush=True)
        elapsed, before, after, drain_problem = asyncio.run(
            run_load(worker.url, worker.pid, args, tally, rss)
        )
        checks = evaluate(tally, before, after, drain_problem, rss, args)
        after_problems = asyncio.run(probe_after(worker.url))
        checks.append(
            Check(
                "plain request, /health and /ready after the soak",
                not after_problems,
                "; ".join(after_problems) or "200",
            )
        )
    except SetupError as exc:
        print(f"FAIL: {exc}")
        return 1
    finally:
        exit_code = worker.stop()
    errors = log_errors(worker.log_path.read_text(errors="replace"))
    checks.append(
        Check(
            "worker log has no error or traceback",
            not errors,
            f"{len(errors)} lines" + (f", first: {errors[0][:300]}" if errors else ""),
        )
    )
    checks.append(Check("worker exits 0 on SIGTERM", exit_code == 0, f"exit status {exit_code}"))
    print_report(args, tally, elapsed, before, after, rss, checks)
    failed = [c for c in checks if not c.ok]
    print()
    if failed:
        print(f"FAIL: {len(failed)} of {len(checks)} checks; worker log {worker.log_path}")
        print(worker.log_tail(2000))
        return 1
    print(f"PASS: all {len(checks)} checks")
    if not args.keep:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
