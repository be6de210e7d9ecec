"""How far a failure in an engine step reaches: one request, one step, or the whole process.

Pure Python (no torch import): the classification works on exception types by name and on
messages, so it is table-tested without a device.

* **request**: a runner reports :class:`SampleFailure` for one sequence (its sampling raised,
  or its logits were not finite). That request ends with an error; the batch goes on.
* **step**: the runner's ``step`` raised something the device survives (out of memory, a
  shape bug, anything from the forward pass). The requests in that step end with an error,
  their cache rows are freed, the engine keeps serving.
* **fatal**: the device is unusable (CUDA's sticky errors: after a device-side assert or an
  illegal memory access every later kernel fails too), or the engine loop's own bookkeeping
  raised (its state can no longer be trusted). The engine stops and the process exits non-zero
  so that Kubernetes restarts it: a process that answers 503 forever helps nobody.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FailureScope(enum.Enum):
    REQUEST = "request"
    STEP = "step"
    FATAL = "fatal"


@dataclass(frozen=True)
class SampleFailure:
    """In a runner's step result, in place of a token: this sequence could not be sampled."""

    reason: str


# Exception class names (anywhere in the MRO) and message fragments, checked in this order.
# Out of memory comes first: CUDA reports it as "CUDA error: out of memory" too, and it is not
# sticky (the allocation failed, the context is fine).
_OUT_OF_MEMORY_TYPES = frozenset({"OutOfMemoryError", "MemoryError"})
_OUT_OF_MEMORY_MESSAGES = ("out of memory",)
#: torch >= 2.8 raises CUDA (and other accelerator) runtime errors as ``torch.AcceleratorError``.
_DEVICE_TYPES = frozenset({"AcceleratorError"})
#: What older torch versions, cuBLAS, cuDNN and NCCL put in a RuntimeError's message when the
#: device (or its context) is gone for good.
_DEVICE_MESSAGES = (
    "cuda error",
    "device-side assert",
    "illegal memory access",
    "misaligned address",
    "illegal instruction",
    "unspecified launch failure",
    "uncorrectable ecc",
    "cublas_status_execution_failed",
    "cudnn_status_execution_failed",
    "nccl error",
    "hip error",
)


def classify_step_error(exc: BaseException) -> FailureScope:
    """Scope of an exception raised by a runner's ``step`` (never ``REQUEST``: a runner
    reports per-request failures as :class:`SampleFailure` values, not by raising)."""
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: stop, do not retry
        return FailureScope.FATAL
    names = {cls.__name__ for cls in type(exc).__mro__}
    message = str(exc).lower()
    if names & _OUT_OF_MEMORY_TYPES or any(m in message for m in _OUT_OF_MEMORY_MESSAGES):
        return FailureScope.STEP
    if names & _DEVICE_TYPES or any(m in message for m in _DEVICE_MESSAGES):
        return FailureScope.FATAL
    return FailureScope.STEP
