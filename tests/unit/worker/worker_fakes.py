"""Torch-free stand-ins: a scripted runner and a one-character-per-token tokenizer.

The engine under test is the real :class:`~llmfleet_worker.engine.core.Engine`; only the
model (the runner) and the tokenizer are fake.
"""

from __future__ import annotations

import threading
import time

from llmfleet_worker.engine.core import Engine
from llmfleet_worker.engine.failures import SampleFailure
from llmfleet_worker.engine.protocol import EngineClient, IncrementalDecoder, ModelRunner
from llmfleet_worker.engine.scheduler import Sequence, StepPlan

EOS = 0
FAILING_SEED = 666
ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def token_for(char: str) -> int:
    return ALPHABET.index(char) + 1


class FakeRunner(ModelRunner):
    """Emits ``script`` (cycled) per sequence, or the next letter after the last token.

    ``gate`` (when cleared) holds every step, which keeps requests in the queue. Faults to
    inject: ``raise_next`` is raised from the next step (once), and a sequence with seed
    ``FAILING_SEED`` is reported as not sampleable, as a broken row of logits would be.
    """

    def __init__(self, script: list[int] | None = None, step_seconds: float = 0.0) -> None:
        self.script = script
        self.step_seconds = step_seconds  # simulated compute time per step
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set once a step has started
        self.raise_next: BaseException | None = None
        self.plans: list[StepPlan] = []
        self.released: list[Sequence] = []

    def step(self, plan: StepPlan) -> list[int | SampleFailure]:
        self.entered.set()
        self.gate.wait()
        if self.raise_next is not None:
            exc, self.raise_next = self.raise_next, None
            raise exc
        if self.step_seconds:
            time.sleep(self.step_seconds)
        self.plans.append(plan)
        out: list[int | SampleFailure] = []
        for chunk in plan.chunks:
            if not chunk.sample:
                continue
            seq = chunk.seq
            if seq.params.seed == FAILING_SEED:
                out.append(SampleFailure("injected"))
            elif self.script is not None:
                out.append(self.script[len(seq.output_ids) % len(self.script)])
            else:
                last = seq.output_ids[-1] if seq.output_ids else seq.prompt_ids[-1]
                out.append(last % len(ALPHABET) + 1)
        return out

    def release(self, seq: Sequence) -> None:
        self.released.append(seq)


class CharDecoder(IncrementalDecoder):
    def step(self, token_id: int) -> str:
        return "" if token_id == EOS else ALPHABET[(token_id - 1) % len(ALPHABET)]


class FakeEngine(Engine, EngineClient):
    """The real engine loop over :class:`FakeRunner` with a character tokenizer."""

    vocab_size = len(ALPHABET) + 1
    max_chars_per_token = 1

    def __init__(
        self,
        runner: FakeRunner | None = None,
        *,
        max_num_seqs: int = 4,
        max_num_batched_tokens: int = 64,
        max_model_len: int = 128,
        max_queue: int = 8,
    ) -> None:
        self.fake_runner = runner or FakeRunner()
        super().__init__(
            runner=self.fake_runner,
            make_decoder=CharDecoder,
            eos_token_ids=frozenset({EOS}),
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len,
            max_queue=max_queue,
        )

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return [token_for(c) for c in text.lower() if c in ALPHABET]

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"{m['role']}{m['content']}" for m in messages) + "assistant"
