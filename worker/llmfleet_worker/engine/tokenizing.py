"""The real engine: a loaded model, its tokenizer, a runner and the batching loop.

:class:`TokenizingEngine` is the token engine (one or more
:class:`~llmfleet_worker.engine.core.Engine` lanes) with the model's tokenizer around it:
prompts are encoded here and every request's tokens are detokenized incrementally, which
makes it the :class:`~llmfleet_worker.engine.protocol.EngineClient` the serving layer runs
on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import statistics
import threading
from collections.abc import Callable
from typing import Any

import torch

from llmfleet_worker.engine.core import Engine, EngineStats, RequestHandle
from llmfleet_worker.engine.loader import LoadedModel, MemoryConfig, load_model, set_threads
from llmfleet_worker.engine.protocol import EngineClient
from llmfleet_worker.engine.runner import FastRunner, HFRunner, build_runner
from llmfleet_worker.engine.scheduler import SamplingParams
from llmfleet_worker.engine.source import ModelLoadError
from llmfleet_worker.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_MAX_MODEL_LEN = 2048


class _StreamDecoder:
    """Incremental detokenization (multi-byte characters split across tokens come out
    whole) with the Rust tokenizer's ``DecodeStream``."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        try:
            return self._stream.step(self._tokenizer, token_id) or ""
        except Exception:  # an id outside the tokenizer's vocabulary decodes to nothing
            return ""


class _ThreadShare:
    """The CPU threads of a worker with several lanes, split between the lanes that have
    work before each of their steps: a lane stepping alone gets them all (a lone request
    runs as fast as without lanes), busy lanes get an equal share. A thread's intra-op
    thread count is its own (OpenMP's per-thread setting), so each lane sets only its own.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.lanes: list[Engine] = []
        self._mine = threading.local()

    def before_step(self, lane: Engine) -> None:
        busy = sum(1 for other in self.lanes if other is lane or other.has_work)
        share = max(1, self.threads // busy)
        if getattr(self._mine, "threads", None) != share:
            torch.set_num_threads(share)
            self._mine.threads = share


class TokenizingEngine(EngineClient):
    """The model's tokenizer in front of one or more engine lanes.

    A lane is an :class:`Engine` (scheduler, batch, engine thread) with a share of the KV
    cache rows; the lanes share the weights. With one lane (the default) this is the plain
    continuous-batching engine. With more (``--lanes``, CPU only) each request goes to the
    lane holding the fewest, and the lanes step side by side on their own threads: no lane
    waits for another's Python work or OpenMP barriers, which on a small model and a few
    cores is most of what a step costs beyond its matmuls (see docs/worker.md).
    """

    def __init__(
        self, loaded: LoadedModel, settings: Settings, max_model_len: int, threads: int = 1
    ) -> None:
        self.tokenizer = loaded.tokenizer
        raw = loaded.tokenizer._tokenizer
        runner = build_runner(
            loaded,
            max_num_seqs=settings.max_num_seqs,
            max_model_len=max_model_len,
            max_num_batched_tokens=settings.max_num_batched_tokens,
            memory=MemoryConfig(
                kv_cache_memory=settings.kv_cache_memory,
                gpu_memory_utilization=settings.gpu_memory_utilization,
            ),
            lanes=settings.lanes,
        )
        if runner.kv_plan is not None and runner.kv_plan.lowered_from is not None:
            log.warning("%s", runner.kv_plan.describe())
        self.kv_plan = runner.kv_plan
        self.load_seconds = loaded.load_seconds
        runners: list[FastRunner | HFRunner] = (
            list(runner.split_lanes()) if isinstance(runner, FastRunner) else [runner]
        )
        share = _ThreadShare(threads) if len(runners) > 1 else None
        max_queue = -(-settings.max_queue // len(runners))  # ceil: the lanes queue apart
        self.lanes: list[Engine] = []
        for lane_runner in runners:
            lane = Engine(
                runner=lane_runner,
                make_decoder=lambda: _StreamDecoder(raw),
                eos_token_ids=loaded.eos_token_ids,
                max_num_seqs=lane_runner.max_num_seqs,
                max_num_batched_tokens=settings.max_num_batched_tokens,
                max_model_len=max_model_len,
                max_queue=max_queue,
            )
            if share is not None:
                lane.before_step = functools.partial(share.before_step, lane)
            self.lanes.append(lane)
        if share is not None:
            share.lanes = self.lanes
            log.info("%d lanes of %s sequences", len(self.lanes), runners[0].max_num_seqs)
            if len(self.lanes) > threads:
                # Measured on 2 threads: 3 lanes 0.87x, 4 lanes 0.80x the tokens/s of 2.
                log.warning(
                    "%d lanes on %d threads: lanes beyond one per thread only take turns",
                    len(self.lanes),
                    threads,
                )
        self.max_model_len = max_model_len
        self.vocab_size = int(loaded.vocab_size)
        # Upper bound on characters per token: a longer text can never fit the context.
        self.max_chars_per_token = max(
            (len(t) for t in raw.get_vocab(with_added_tokens=True)), default=1
        )

    # ---- the lanes, seen as one engine ----------------------------------------------
    @property
    def stats(self) -> EngineStats:
        """The lanes' statistics together (the metrics read this at every scrape)."""
        lanes = [lane.stats for lane in self.lanes]
        seqs = sum(s.max_num_seqs for s in lanes)
        return EngineStats(
            batch_size=sum(s.batch_size for s in lanes),
            step_tokens=sum(s.step_tokens for s in lanes),
            token_budget_utilization=statistics.fmean(s.token_budget_utilization for s in lanes),
            kv_cache_utilization=sum(s.kv_cache_utilization * s.max_num_seqs for s in lanes) / seqs,
            steps=sum(s.steps for s in lanes),
            load_seconds=self.load_seconds,
            max_num_seqs=seqs,
            kv_cache_bytes=self.kv_plan.allocated_bytes if self.kv_plan else 0,
            kv_cache_budget_bytes=self.kv_plan.budget_bytes if self.kv_plan else 0,
        )

    @property
    def ready(self) -> bool:
        return all(lane.ready for lane in self.lanes)

    @property
    def healthy(self) -> bool:
        return all(lane.healthy for lane in self.lanes)

    @property
    def failed(self) -> BaseException | None:
        """The fatal error that stopped a lane (the worker then exits), else None."""
        return next((lane.failed for lane in self.lanes if lane.failed is not None), None)

    @property
    def num_waiting(self) -> int:
        return sum(lane.num_waiting for lane in self.lanes)

    @property
    def num_running(self) -> int:
        return sum(lane.num_running for lane in self.lanes)

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> RequestHandle:
        lane = min(self.lanes, key=lambda e: e.num_requests)
        return lane.submit(prompt_ids, params)

    def start(self, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        """Start every lane's thread; a fatal error in any calls ``on_fatal``."""
        for lane in self.lanes:
            lane.start(on_fatal)

    def shutdown(self, timeout: float = 10.0) -> None:
        for lane in self.lanes:
            lane.shutdown(timeout)

    def start_draining(self) -> None:
        for lane in self.lanes:
            lane.start_draining()

    async def drain(self, grace_seconds: float) -> bool:
        """:meth:`Engine.drain` for every lane at once; True when all finished in time."""
        done = await asyncio.gather(*(lane.drain(grace_seconds) for lane in self.lanes))
        return all(done)

    # ---- the tokenizer ----------------------------------------------------------------
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return ids

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("the model has no chat template; use /v1/completions")
        try:
            text: str = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja raises its own errors for bad conversations
            raise ValueError(str(exc)) from exc
        return text


def resolve_max_model_len(asked: int | None, model_limit: int | None) -> int:
    """The longest sequence to serve: what was asked, else the model's own context length
    (DEFAULT_MAX_MODEL_LEN when the model does not say); more than the model allows is an
    error, never silently capped."""
    if asked is None:
        return model_limit or DEFAULT_MAX_MODEL_LEN
    if model_limit and asked > model_limit:
        raise ModelLoadError(
            f"max model length {asked} (--max-model-len / LLMFLEET_MAX_MODEL_LEN, "
            f"spec.model.maxModelLen) exceeds the model's {model_limit} positions"
        )
    return asked


def build_engine(settings: Settings) -> TokenizingEngine:
    """Load the model named by ``settings`` and build the engine (not started)."""
    threads = set_threads(settings.threads)
    loaded = load_model(
        settings.model,
        dtype=settings.dtype,
        quantization=settings.quantization,
        device=settings.device,
        num_gpus=settings.num_gpus,
    )
    max_len = resolve_max_model_len(settings.max_model_len, loaded.max_position_embeddings)
    log.info(
        "loaded %s in %.1fs on %s (%s, quantization %s, %d threads), max_model_len %d",
        settings.model_name,
        loaded.load_seconds,
        loaded.device,
        str(loaded.dtype).removeprefix("torch."),
        loaded.quantization,
        threads,
        max_len,
    )
    return TokenizingEngine(loaded, settings, max_len, threads)
