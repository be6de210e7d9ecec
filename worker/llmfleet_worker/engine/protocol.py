"""The engine's contracts, in one place: what callers may use, what the engine may use.

* :class:`EngineClient`: everything the serving layer, the app and the metrics may call on an
  engine. The real one is :class:`~llmfleet_worker.engine.tokenizing.TokenizingEngine`; tests
  and the fault-injecting worker implement it too, so nothing above the engine needs torch.
* :class:`ModelRunner`: what the engine loop (:class:`~llmfleet_worker.engine.core.Engine`)
  calls on a model runner, one step at a time, from its own thread.
* :class:`IncrementalDecoder`: what the engine loop calls to turn one request's tokens into
  text as they come.

Implementations subclass these protocols explicitly, so that mypy checks each one against
the contract where it is defined rather than where it is first passed in.

Importing this module loads nothing (the types it names are for the type checker only), so
the torch-free modules and the tests' fakes can depend on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from llmfleet_worker.engine.core import EngineStats, RequestHandle
    from llmfleet_worker.engine.failures import SampleFailure
    from llmfleet_worker.engine.scheduler import SamplingParams, Sequence, StepPlan


class EngineClient(Protocol):
    """A text-in, tokens-out engine, as the serving layer sees it.

    Thread model: every member is called from the asyncio event loop's thread.
    """

    #: Longest sequence (prompt plus output) the engine serves, in tokens.
    max_model_len: int
    #: Token ids are ``[0, vocab_size)``; the serving layer refuses others up front.
    vocab_size: int
    #: No token decodes to more characters than this, so longer text cannot fit the context.
    max_chars_per_token: int

    @property
    def stats(self) -> EngineStats:
        """Step statistics, which the metrics' gauges read at every scrape."""

    @property
    def ready(self) -> bool:
        """True while the engine accepts requests (loaded, not failed, not draining)."""

    @property
    def healthy(self) -> bool:
        """False once a fatal error stopped the engine."""

    @property
    def num_waiting(self) -> int:
        """Requests queued and not yet running."""

    @property
    def num_running(self) -> int:
        """Requests in the running batch."""

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (may run off the event loop: it must be thread-safe)."""

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied to ``messages`` (``role``, ``content``), ready
        for the assistant's turn; ``ValueError`` when the model has none or it refuses them."""

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> RequestHandle:
        """Queue a request and return its handle (iterate it for outputs, cancel it to
        abort). Raises :class:`~llmfleet_worker.engine.scheduler.QueueFullError` when the
        queue is full, :class:`~llmfleet_worker.engine.core.DrainingError` while draining,
        ``ValueError`` for a prompt the engine cannot hold, ``RuntimeError`` once it failed."""


class ModelRunner(Protocol):
    """The model, its KV cache and sampling, driven one scheduled step at a time.

    Called from the engine thread only, never concurrently.
    """

    def step(self, plan: StepPlan) -> list[int | SampleFailure]:
        """Run ``plan``; return one sampled token (or why that sequence could not be
        sampled) per chunk with ``sample`` set, in order. Raises when the whole step failed
        (the engine then classifies the error: see :mod:`~llmfleet_worker.engine.failures`)."""

    def release(self, seq: Sequence) -> None:
        """Forget per-sequence state (sampling generator, private caches)."""


class IncrementalDecoder(Protocol):
    """One request's detokenizer: fed its generated tokens in order."""

    def step(self, token_id: int) -> str:
        """Text that ``token_id`` completes (may be empty mid-character)."""
