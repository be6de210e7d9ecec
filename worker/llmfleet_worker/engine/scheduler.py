"""Continuous batching scheduler: pure Python, no torch.

The scheduler decides, before every model step, which sequences run and how many of their
tokens are fed: one token for each decoding sequence, and chunks of prompts for sequences
still in prefill, all within ``max_num_batched_tokens``. Sequences join at a step boundary
when a slot is free and leave as soon as they finish or are cancelled, so nobody waits for
the slowest member of a static batch.

Slots are rows of the runner's KV cache. Running sequences always occupy rows
``0..num_running-1``: when one leaves, the last row moves into the hole (the plan says so),
which lets the runner attend over a contiguous view of the cache instead of gathering rows.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple


class QueueFullError(Exception):
    """The waiting queue is at ``max_queue``; the client should retry later."""


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


#: Below this temperature sampling is greedy: dividing logits by less only overflows, and the
#: distribution is already a point mass for any logit gap a model produces (as vLLM does).
MIN_TEMPERATURE = 1e-5
#: Below this top_p only the most likely token survives for any vocabulary under a million
#: tokens (its probability is at least 1/vocab), so sampling is greedy. Also keeps top_p
#: away from float32's underflow to 0.
MIN_TOP_P = 1e-6


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings (already validated by the API layer)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        """Whether sampling reduces to argmax (values too small to sample from do)."""
        return self.temperature < MIN_TEMPERATURE or self.top_p < MIN_TOP_P


_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    """One request's tokens and progress. Identity-compared; never copied."""

    prompt_ids: list[int]
    params: SamplingParams
    request_id: str = field(default_factory=lambda: f"seq-{next(_ids)}")
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose keys/values are in the cache
    slot: int | None = None
    status: SequenceStatus = SequenceStatus.WAITING
    cancelled: bool = False
    finish_reason: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < len(self.prompt_ids)

    def token_at(self, index: int) -> int:
        n = len(self.prompt_ids)
        return self.prompt_ids[index] if index < n else self.output_ids[index - n]

    def tokens(self, start: int, stop: int) -> list[int]:
        n = len(self.prompt_ids)
        if stop <= n:
            return self.prompt_ids[start:stop]
        return (self.prompt_ids + self.output_ids)[start:stop]


@dataclass(frozen=True)
class ScheduledChunk:
    """Feed ``seq`` tokens ``[start, start + length)``; sample a token after the last one if
    ``sample`` (the chunk reaches the end of the known tokens)."""

    seq: Sequence
    start: int
    length: int
    sample: bool

    @property
    def is_decode(self) -> bool:
        return self.length == 1 and self.start >= len(self.seq.prompt_ids)


class RowMove(NamedTuple):
    """Copy cache row ``src`` to ``dst``: its first ``length`` positions are all it holds."""

    src: int
    dst: int
    length: int


@dataclass
class StepPlan:
    """What the runner does in one step, in this order: move rows, then run ``chunks``.

    ``decodes`` come first in ``chunks`` (one token each), then prefill chunks.
    """

    moves: list[RowMove]  # copies of cache rows
    chunks: list[ScheduledChunk]
    num_rows: int  # rows 0..num_rows-1 are occupied after the moves

    @property
    def num_tokens(self) -> int:
        return sum(c.length for c in self.chunks)

    @property
    def num_decodes(self) -> int:
        return sum(1 for c in self.chunks if c.is_decode)


class Scheduler:
    """Admission, batching and slot bookkeeping. Not thread-safe: the engine thread owns it,
    except for :meth:`add` and :meth:`abort`, which the engine calls under its lock."""

    def __init__(
        self,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        max_queue: int,
    ) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1 or max_model_len < 2:
            raise ValueError(
                "need max_num_seqs >= 1, max_num_batched_tokens >= 1, max_model_len >= 2"
            )
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.max_queue = max_queue
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # index == cache row
        self._pending_moves: list[RowMove] = []

    # ---- admission -------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        """Queue ``seq``; raises :class:`QueueFullError` when the waiting queue is full."""
        if not seq.prompt_ids:
            raise ValueError("empty prompt")
        if seq.num_tokens >= self.max_model_len:
            raise ValueError("prompt does not fit max_model_len")
        if len(self.waiting) >= self.max_queue:
            raise QueueFullError(f"{len(self.waiting)} requests already waiting")
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> None:
        """Mark ``seq`` cancelled; it leaves at the next :meth:`schedule`."""
        seq.cancelled = True

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def tokens_in_cache(self) -> int:
        return sum(s.num_computed for s in self.running)

    # ---- leaving ---------------------------------------------------------------------
    def finish(self, seq: Sequence, reason: str) -> None:
        """Remove ``seq`` from the batch (or the queue) and free its row."""
        if seq.status is SequenceStatus.FINISHED:
            return
        seq.finish_reason = reason
        if seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        else:
            row = seq.slot
            assert row is not None
            assert self.running[row] is seq
            last = len(self.running) - 1
            if row != last:
                mover = self.running[last]
                self.running[row] = mover
                mover.slot = row
                self._pending_moves.append(RowMove(last, row, mover.num_computed))
            self.running.pop()
        seq.status = SequenceStatus.FINISHED
        seq.slot = None

    def collect_cancelled(self) -> list[Sequence]:
        """Finish every cancelled sequence; returns them."""
        gone = [s for s in itertools.chain(self.running, self.waiting) if s.cancelled]
        for seq in gone:
            self.finish(seq, seq.finish_reason or "cancelled")
        return gone

    # ---- the step ------------------------------------------------------------------
    def schedule(self) -> StepPlan | None:
        """Plan the next step, or ``None`` when there is nothing to run."""
        budget = self.max_num_batched_tokens
        decodes: list[ScheduledChunk] = []
        prefills: list[ScheduledChunk] = []
        for seq in self.running:
            if not seq.in_prefill and budget > 0:
                decodes.append(ScheduledChunk(seq, seq.num_computed, 1, True))
                budget -= 1
        for seq in self.running:
            if seq.in_prefill and budget > 0:
                prefills.append(self._prefill_chunk(seq, budget))
                budget -= prefills[-1].length
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            seq.slot = len(self.running)
            self.running.append(seq)
            prefills.append(self._prefill_chunk(seq, budget))
            budget -= prefills[-1].length
        chunks = decodes + prefills
        moves, self._pending_moves = self._pending_moves, []
        if not chunks:
            # Moves still matter to the runner's cache even on an empty step.
            return StepPlan(moves, [], len(self.running)) if moves else None
        return StepPlan(moves, chunks, len(self.running))

    def _prefill_chunk(self, seq: Sequence, budget: int) -> ScheduledChunk:
        # The prompt's last token is fed with the sampling step, so a preempted or resumed
        # sequence needs no special case: everything up to num_tokens is "known".
        remaining = seq.num_tokens - seq.num_computed
        length = min(remaining, budget)
        return ScheduledChunk(seq, seq.num_computed, length, length == remaining)

    def complete(self, plan: StepPlan) -> None:
        """Record that the runner computed ``plan``'s tokens."""
        for chunk in plan.chunks:
            chunk.seq.num_computed = chunk.start + chunk.length
