"""The failure classification table (no torch: exception classes are matched by name)."""

from __future__ import annotations

import pytest

from llmfleet_worker.engine.failures import FailureScope, classify_step_error

STEP, FATAL = FailureScope.STEP, FailureScope.FATAL


# Stand-ins named like torch's exception classes (both subclass RuntimeError there).
class OutOfMemoryError(RuntimeError):
    pass


class AcceleratorError(RuntimeError):
    pass


@pytest.mark.parametrize(
    ("exc", "scope"),
    [
        (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), STEP),
        (MemoryError(), STEP),
        (RuntimeError("CUDA error: out of memory"), STEP),  # allocation failed, context fine
        (AcceleratorError("CUDA error: out of memory"), STEP),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (3x4 and 5x6)"), STEP),
        (ValueError("anything else from the forward pass"), STEP),
        (IndexError("index 7 is out of bounds"), STEP),
        (AcceleratorError("CUDA error: unknown error"), FATAL),
        (RuntimeError("CUDA error: device-side assert triggered"), FATAL),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), FATAL),
        (RuntimeError("CUDA error: misaligned address"), FATAL),
        (RuntimeError("CUDA error: unspecified launch failure"), FATAL),
        (RuntimeError("CUDA error: uncorrectable ECC error encountered"), FATAL),
        (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasSgemm"), FATAL),
        (RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1191, unhandled cuda error"), FATAL),
        (KeyboardInterrupt(), FATAL),
        (SystemExit(1), FATAL),
    ],
)
def test_classify_step_error(exc: BaseException, scope: FailureScope) -> None:
    assert classify_step_error(exc) is scope
