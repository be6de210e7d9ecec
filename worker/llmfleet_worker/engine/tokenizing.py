"""The real engine: a loaded model, its tokenizer, a runner and the batching loop.

:class:`TokenizingEngine` is the token engine (:class:`~llmfleet_worker.engine.core.Engine`)
with the model's tokenizer around it: prompts are encoded here and every request's tokens
are detokenized incrementally, which makes it the
:class:`~llmfleet_worker.engine.protocol.EngineClient` the serving layer runs on.
"""

from __future__ import annotations

import logging
from typing import Any

from llmfleet_worker.engine.core import Engine
from llmfleet_worker.engine.loader import LoadedModel, MemoryConfig, load_model, set_threads
from llmfleet_worker.engine.protocol import EngineClient
from llmfleet_worker.engine.runner import build_runner
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


class TokenizingEngine(Engine, EngineClient):
    """:class:`Engine` plus the tokenizer operations the serving layer needs."""

    def __init__(self, loaded: LoadedModel, settings: Settings, max_model_len: int) -> None:
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
        )
        if runner.kv_plan is not None and runner.kv_plan.lowered_from is not None:
            log.warning("%s", runner.kv_plan.describe())
        super().__init__(
            runner=runner,
            make_decoder=lambda: _StreamDecoder(raw),
            eos_token_ids=loaded.eos_token_ids,
            max_num_seqs=runner.max_num_seqs,
            max_num_batched_tokens=settings.max_num_batched_tokens,
            max_model_len=max_model_len,
            max_queue=settings.max_queue,
            load_seconds=loaded.load_seconds,
        )
        if runner.kv_plan is not None:
            self.stats.kv_cache_bytes = runner.kv_plan.allocated_bytes
            self.stats.kv_cache_budget_bytes = runner.kv_plan.budget_bytes
        self.vocab_size = int(loaded.vocab_size)
        # Upper bound on characters per token: a longer text can never fit the context.
        self.max_chars_per_token = max(
            (len(t) for t in raw.get_vocab(with_added_tokens=True)), default=1
        )

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
    return TokenizingEngine(loaded, settings, max_len)
