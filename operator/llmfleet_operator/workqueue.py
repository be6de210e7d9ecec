"""A deduplicating work queue with per-key serialisation and retry backoff.

Watch events for an LLMDeployment and for everything it owns all say the same thing: "look
at this LLMDeployment again". The queue collapses a burst of them into one reconcile, never
runs two reconciles of the same key at once, and retries failures with exponential backoff
(as client-go's rate-limited work queue does). No kopf, no client: it is plain asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from llmfleet_operator import metrics

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)


class WorkQueue(Generic[K]):
    """Keys to reconcile; ``run`` drives ``handler`` with ``workers`` concurrent tasks."""

    def __init__(
        self,
        handler: Callable[[K], Awaitable[None]],
        workers: int = 4,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
    ) -> None:
        self._handler = handler
        self._workers = workers
        self._base = base_delay
        self._max = max_delay
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()  # re-added while active: run again when done
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        #: When each queued key became due (monotonic): its wait is the latency metric.
        self._due_since: dict[K, float] = {}
        self.processed = 0

    def __len__(self) -> int:
        return len(self._queued) + len(self._timers)

    def add(self, key: K) -> None:
        """Reconcile ``key`` soon (at most once however often it is added meanwhile)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._active:
            self._dirty.add(key)
            return
        if key not in self._queued:
            self._queued.add(key)
            self._due_since[key] = time.monotonic()
            self._ready.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Reconcile ``key`` after ``delay`` seconds unless something adds it sooner.

        Of two pending deadlines the earlier wins: a child's change due in a second is not
        held back by a progress deadline due in ten minutes.
        """
        if key in self._queued:
            return
        loop = asyncio.get_running_loop()
        pending = self._timers.get(key)
        if pending is not None:
            if pending.when() <= loop.time() + delay:
                return
            pending.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: K) -> None:
        """Drop retry state for a key that no longer exists."""
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def run(self) -> None:
        """Process keys until cancelled."""
        tasks = [asyncio.create_task(self._worker()) for _ in range(self._workers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            for timer in self._timers.values():
                timer.cancel()

    async def _worker(self) -> None:
        while True:
            key = await self._ready.get()
            self._queued.discard(key)
            self._active.add(key)
            started = time.monotonic()
            due = self._due_since.pop(key, None)
            if due is not None:
                metrics.QUEUE_LATENCY.observe(started - due)
            try:
                await self._handler(key)
            except asyncio.CancelledError:
                # Stopped mid-reconcile (leadership lost, shutdown): the key is not done,
                # so the next ``run`` reconciles it again.
                self._active.discard(key)
                self._dirty.discard(key)
                self.add(key)
                raise
            except Exception:
                n = self._failures.get(key, 0) + 1
                self._failures[key] = n
                delay = min(self._max, self._base * 2 ** (n - 1))
                log.exception(
                    "reconcile of %s failed (attempt %d); retrying in %.1fs", key, n, delay
                )
                self._active.discard(key)
                self._dirty.discard(key)
                self.add_after(key, delay)
                continue
            finally:
                self.processed += 1
            self._failures.pop(key, None)
            self._active.discard(key)
            log.debug("reconciled %s in %.3fs", key, time.monotonic() - started)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
