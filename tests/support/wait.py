"""Wait for a condition with a timeout and a failure message that says what was seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class GiveUpError(AssertionError):
    """Raised by a probe when waiting longer cannot help (e.g. the process died)."""


class WaitTimeoutError(AssertionError):
    """The condition did not hold in time; the message carries the last observation."""


def wait_for(
    description: str,
    probe: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.2,
) -> T:
    """Call ``probe`` until it returns something truthy and return that.

    ``probe`` may raise; the last exception or falsy value is reported on timeout, so a
    failing test says what it was waiting for and what it saw instead.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except GiveUpError:
            raise
        except Exception as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(
                f"timed out after {timeout:.0f}s waiting for {description}; "
                f"last observation: {last!r}"
            )
        time.sleep(interval)
