"""How big the KV cache is, decided once at start-up from a memory budget.

Pure arithmetic (no torch): the loader measures the devices, this module decides. The cache
is ``max_num_seqs`` slots of ``max_model_len`` positions, allocated whole before the worker
reports ready, so a worker that passed readiness never allocates cache memory under load.

Two kinds of budget, two behaviours:

* an **explicit** size (``--kv-cache-memory``) is a contract: a batch that does not fit is a
  start-up error naming the numbers and the three ways out;
* a **derived** budget (a fraction of GPU memory, or what the pod's memory limit leaves on
  CPU) adapts: the worker lowers ``max_num_seqs`` to what fits and says so in its log and
  its ``llmfleet_worker_max_num_seqs`` metric. Less than one full-length sequence is an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from llmfleet_worker.engine.source import ModelLoadError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class KvCacheError(ModelLoadError):
    """The configured batch cannot be served from the memory there is (exit 2 at start-up)."""


def parse_size(text: str) -> int:
    """Bytes from ``4GiB``, ``512Mi``, ``1.5G``, ``1073741824`` (Kubernetes quantity units,
    with or without a trailing ``B``). Raises :class:`ValueError` with the accepted forms."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size; write e.g. 4GiB, 512Mi, 2G or a byte count")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{text!r}: a size must be more than 0 bytes")
    return size


def human(n: float) -> str:
    """``1.5 GiB``: binary units, three significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Budget:
    """Bytes one device may give its KV cache, and where that number came from."""

    bytes: int
    explicit: bool
    source: str  # for messages: "--kv-cache-memory 1GiB", "0.90 of cuda:0's 80 GiB", ...


@dataclass(frozen=True)
class KvPlan:
    """The cache to allocate: ``max_num_seqs`` slots of ``max_model_len`` positions."""

    max_num_seqs: int
    max_model_len: int
    #: Bytes of one cached token in each device's layers (K and V of all its layers).
    bytes_per_token: tuple[int, ...]
    budgets: tuple[Budget, ...]
    #: The ``max_num_seqs`` asked for, when the plan had to lower it (else ``None``).
    lowered_from: int | None = None

    @property
    def allocated_bytes(self) -> int:
        return sum(self.max_num_seqs * self.max_model_len * b for b in self.bytes_per_token)

    @property
    def budget_bytes(self) -> int:
        return sum(b.bytes for b in self.budgets)

    def describe(self) -> str:
        text = (
            f"KV cache {human(self.allocated_bytes)} for {self.max_num_seqs} sequences x "
            f"{self.max_model_len} tokens (budget {human(self.budget_bytes)}: "
            + "; ".join(b.source for b in self.budgets)
            + ")"
        )
        if self.lowered_from is not None:
            text += f"; max_num_seqs lowered from {self.lowered_from} to {self.max_num_seqs} to fit"
        return text


def plan_kv_cache(
    *,
    layer_token_bytes: int,
    layers_per_device: Sequence[int],
    budgets: Sequence[Budget],
    max_num_seqs: int,
    max_model_len: int,
) -> KvPlan:
    """Slots for ``max_num_seqs`` full-length sequences if every device's budget holds its
    layers' share, else what the tightest device holds (see the module docstring).

    ``layer_token_bytes``: K and V of one token in one layer (2 x kv_heads x head_dim x dtype).
    """
    if len(layers_per_device) != len(budgets):
        raise ValueError("one budget per device")
    per_token = tuple(n * layer_token_bytes for n in layers_per_device)
    fits = max_num_seqs
    for tokens_bytes, budget in zip(per_token, budgets, strict=True):
        if tokens_bytes:
            fits = min(fits, budget.bytes // (tokens_bytes * max_model_len))
    if fits >= max_num_seqs:
        return KvPlan(max_num_seqs, max_model_len, per_token, tuple(budgets))
    need = KvPlan(max_num_seqs, max_model_len, per_token, tuple(budgets)).allocated_bytes
    seq_bytes = sum(per_token) * max_model_len
    numbers = (
        f"{max_num_seqs} sequences x {max_model_len} tokens x {human(sum(per_token))} per token "
        f"need {human(need)} of KV cache, the budget is {human(sum(b.bytes for b in budgets))} ("
        + "; ".join(b.source for b in budgets)
        + ")"
    )
    if fits < 1:
        raise KvCacheError(
            f"{numbers}, which holds no sequence of {max_model_len} tokens "
            f"({human(seq_bytes)} each): raise the budget or lower --max-model-len"
        )
    if any(b.explicit for b in budgets):
        raise KvCacheError(
            f"{numbers}, which holds {fits}: set --max-num-seqs {fits}, lower --max-model-len, "
            f"or raise --kv-cache-memory to {human(need)}"
        )
    return KvPlan(fits, max_model_len, per_token, tuple(budgets), lowered_from=max_num_seqs)


def activation_reserve(
    *,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    hidden_size: int,
    intermediate_size: int,
    qkv_size: int,
    vocab_size: int,
    dtype_bytes: int,
) -> int:
    """Bytes a step's activations may take at most, kept out of a derived KV budget.

    An upper estimate rather than a profile: the residual stream, normed input, fused q/k/v,
    attention output and the fused gate/up projection live at once for every token of a step
    (x2 for the allocator's reuse slack); sampling holds a few float32 copies of the logits.
    """
    per_token = hidden_size * 3 + qkv_size + intermediate_size * 3
    step = 2 * max_num_batched_tokens * per_token * dtype_bytes
    sampling = 4 * max_num_seqs * vocab_size * 4
    return step + sampling
