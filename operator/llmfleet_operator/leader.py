"""Leader election: one operator replica writes, the others stand by with warm caches.

Every replica watches and keeps its cache (so a takeover needs no LIST); only the holder of
the Lease runs the work queue, the canary analysis and the autoscaler's writes. The rules
are in :mod:`llmfleet_operator.lease`; this module does the API calls and the timing.

Timing (seconds): the Lease lasts ``lease_seconds`` (10), the holder renews every
``retry_seconds`` (2) and stops leading when it could not renew for ``renew_deadline`` (7).
A standby polls every ``retry_seconds`` and takes an unrenewed Lease ``lease_seconds`` after
it last saw it change, so after a ``kill -9`` of the leader a standby leads within
``lease_seconds + retry_seconds`` (12 s); after a clean stop, within ``retry_seconds``.

A renewal counts from when its request was *sent*, and each renewal attempt may only use the
time left before the deadline: however slow the API server, the leader stops leading before a
standby may take the Lease (which counts from when it *saw* the renewal). A campaign attempt
may take up to ``lease_seconds``: an API server that commits writes in 5 s is slow, not down,
and a candidate that cut every write off after 4 s would never lead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from llmfleet_operator import lease, metrics
from llmfleet_operator.analysis_loop import AnalysisLoop
from llmfleet_operator.autoscale_loop import AutoscaleLoop
from llmfleet_operator.cache import Cache, Key
from llmfleet_operator.k8s import ApiError, Kube
from llmfleet_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

_PATH = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


class LeaderElector:
    """Campaigns for one Lease; calls ``on_started`` / ``on_stopped`` around each term."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: float = 10.0,
        renew_deadline: float = 7.0,
        retry_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not retry_seconds < renew_deadline < lease_seconds:
            raise ValueError("need retry_seconds < renew_deadline < lease_seconds")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._wall = wall
        self.leading = False
        # The last Lease we read or wrote, and when (our clock) its record last changed.
        self._lease: dict[str, Any] | None = None
        self._observed: lease.LeaseRecord | None = None
        self._observed_at = 0.0

    @property
    def _collection(self) -> str:
        return _PATH.format(namespace=self.namespace)

    def _observe(self, obj: dict[str, Any] | None) -> lease.LeaseRecord:
        record = lease.LeaseRecord.of(obj)
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()
        self._lease = obj
        return record

    async def try_take(self) -> bool:
        """One attempt to acquire or renew the Lease; True when we hold it afterwards."""
        current = self._lease
        if not self.leading or current is None:
            current = await self.kube.get(f"{self._collection}/{self.name}")
        if current is None:
            body = {
                "apiVersion": lease.API_VERSION,
                "kind": lease.KIND,
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": lease.taken_spec(
                    lease.LeaseRecord(), self.identity, self._wall(), self.lease_seconds
                ),
            }
            try:
                self._observe(await self.kube.request("POST", self._collection, body=body))
            except ApiError as e:
                if e.status == 409:  # another replica created it first
                    return False
                raise
            return True
        record = self._observe(current)
        if not lease.may_take(
            record, self.identity, self._observed_at, self._clock(), self.lease_seconds
        ):
            return False
        body = {
            **current,
            "spec": lease.taken_spec(record, self.identity, self._wall(), self.lease_seconds),
        }
        try:
            # The resourceVersion in the body makes this a compare-and-swap: when another
            # replica wrote in between, the API server answers 409 and we read again.
            updated = await self.kube.request("PUT", f"{self._collection}/{self.name}", body=body)
        except ApiError as e:
            if e.status == 409:
                self._lease = None
                return False
            raise
        self._observe(updated)
        return True

    async def _attempt(self, within: float) -> bool:
        try:
            return await asyncio.wait_for(self.try_take(), timeout=within)
        except (ApiError, TimeoutError, aiohttp.ClientError, OSError) as e:
            self._lease = None
            log.warning(
                "leader election: could not read or write Lease %s/%s: %s",
                self.namespace,
                self.name,
                e or type(e).__name__,
            )
            return False
        except Exception:
            # Anything else (a garbled answer) is one failed attempt too: an election task
            # that died would leave this replica a silent standby for good.
            self._lease = None
            log.exception("leader election: unexpected error on Lease %s", self.name)
            return False

    async def run(
        self,
        on_started: Callable[[], Awaitable[None]],
        on_stopped: Callable[[], Awaitable[None]],
    ) -> None:
        """Campaign, lead, and campaign again after a lost term, until cancelled."""
        while True:
            taken = await self._campaign()
            self.leading = True
            metrics.LEADER.set(1)
            metrics.LEADERSHIP_CHANGES.labels(change="acquired").inc()
            log.info(
                "leader election: %s leads (Lease %s/%s)", self.identity, self.namespace, self.name
            )
            try:
                await on_started()
                await self._renew_until_lost(taken)
            finally:
                self.leading = False
                metrics.LEADER.set(0)
            metrics.LEADERSHIP_CHANGES.labels(change="lost").inc()
            log.error(
                "leader election: %s could not renew Lease %s/%s for %.0fs; standing by",
                self.identity,
                self.namespace,
                self.name,
                self.renew_deadline,
            )
            await on_stopped()

    async def _campaign(self) -> float:
        """Try until the Lease is ours; when (our clock) the winning request was sent."""
        while True:
            sent = self._clock()
            if await self._attempt(within=self.lease_seconds):
                return sent
            await asyncio.sleep(self.retry_seconds)

    async def _renew_until_lost(self, renewed: float) -> None:
        """Renew every retry period; return once ``renew_deadline`` passed since the last
        renewal was sent, or another replica holds the Lease."""
        while True:
            await asyncio.sleep(self.retry_seconds)
            sent = self._clock()
            left = self.renew_deadline - (sent - renewed)
            if left <= 0:
                return
            if await self._attempt(within=left):
                renewed = sent
            elif self._clock() - renewed >= self.renew_deadline or self._held_by_other():
                return

    def _held_by_other(self) -> bool:
        return self._observed is not None and self._observed.holder not in ("", self.identity)

    async def release(self) -> None:
        """Hand the Lease back (on a clean stop), so that a standby takes it at once."""
        # The election task is cancelled by now (so ``leading`` is False): what counts is
        # whether the last record we saw names us.
        if self._lease is None or lease.LeaseRecord.of(self._lease).holder != self.identity:
            return
        self.leading = False
        metrics.LEADER.set(0)
        record = lease.LeaseRecord.of(self._lease)
        body = {**self._lease, "spec": lease.released_spec(record, self._wall())}
        try:
            await asyncio.wait_for(
                self.kube.request("PUT", f"{self._collection}/{self.name}", body=body),
                timeout=self.retry_seconds * 2,
            )
            log.info(
                "leader election: %s released Lease %s/%s", self.identity, self.namespace, self.name
            )
        except (ApiError, TimeoutError, aiohttp.ClientError, OSError) as e:
            log.warning("leader election: could not release the Lease: %s", e)


class LeaderDuties:
    """What only the leader runs: the work queue (every write) and the canary analysis; and
    the switch that lets the autoscaler act on its decisions. A standby keeps the autoscaler
    evaluating in the shadow, so its scale-down windows are full when it takes over."""

    def __init__(
        self,
        queue: WorkQueue[Key],
        analysis: AnalysisLoop,
        autoscaler: AutoscaleLoop,
        cache: Cache,
    ) -> None:
        self.queue = queue
        self.analysis = analysis
        self.autoscaler = autoscaler
        self.cache = cache
        self._tasks: list[asyncio.Task[None]] = []
        #: True during a term: only then does this replica export per-fleet metrics.
        self.leading = False

    async def start(self) -> None:
        """Begin a term: everything the cache knows gets a reconcile."""
        self.autoscaler.active = True
        self.leading = True
        for key in self.cache.llmds:
            self.queue.add(key)
        self._tasks = [
            asyncio.create_task(self.queue.run(), name="llmfleet-workqueue"),
            asyncio.create_task(self.analysis.run(), name="llmfleet-analysis"),
        ]

    async def stop(self) -> None:
        """End a term: no write leaves this replica after this returns."""
        self.autoscaler.active = False
        self.leading = False
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


_OWN_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def own_namespace() -> str:
    """The pod's namespace in-cluster; ``default`` elsewhere."""
    try:
        return _OWN_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def default_identity() -> str:
    """Host name plus a random suffix: two processes on one host are two candidates."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
