"""``llmfleet-worker`` with a fault injected into the model runner's step, for fault-isolation
tests (request-level faults through pod env are dev/llmfleet_dev/faulty_worker.py).

Run as ``python step_fault_worker.py KIND serve ...``: every step that holds a sequence with seed
``TRIGGER_SEED`` raises the exception named by KIND from the runner, as a real device would;
every other step runs the real model. The worker itself is unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from llmfleet_worker.__main__ import main
from llmfleet_worker.engine import runner
from llmfleet_worker.engine.scheduler import StepPlan

TRIGGER_SEED = 4242
FAULTS: dict[str, Callable[[], BaseException]] = {
    # What torch raises when an allocation on the GPU fails: the device is fine afterwards.
    "oom": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    # A sticky CUDA error: every later kernel on this device fails too.
    "device": lambda: torch.AcceleratorError("CUDA error: device-side assert triggered"),
}


def inject(kind: str) -> None:
    make = FAULTS[kind]
    for cls in (runner.FastRunner, runner.HFRunner):
        real: Any = cls.step

        def step(self: Any, plan: StepPlan, real: Any = real) -> Any:
            if any(c.seq.params.seed == TRIGGER_SEED for c in plan.chunks):
                raise make()
            return real(self, plan)

        cls.step = step  # type: ignore[method-assign]  # the injected fault


if __name__ == "__main__":
    inject(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
