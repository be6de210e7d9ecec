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
    *,
    backoff: float = 1.0,
    max_interval: float | None = None,
    give_up: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``probe`` until it returns something truthy and return that.

    ``probe`` may raise; the last exception or falsy value is reported on timeout, so a
    failing test says what it was waiting for and what it saw instead. :class:`GiveUpError`
    and the exceptions in ``give_up`` end the wait at once. The pause between calls starts at
    ``interval`` and grows by ``backoff`` each time, up to ``max_interval``.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    delay = interval
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except (GiveUpError, *give_up):
            raise
        except Exception as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(
                f"timed out after {timeout:.0f}s waiting for {description}; "
                f"last observation: {last!r}"
            )
        time.sleep(delay)
        delay = delay * backoff
        if max_interval is not None:
            delay = min(delay, max_interval)
