"""Leader election rules (pure) and the standby's shadow autoscaler.

The election against a real API server, with ``kill -9`` of the leader, is in
tests/integration/test_leader_election.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfleet_dev.events import EventRecorder
from llmfleet_dev.stand_in_prometheus import StandIn, by_query, stand_in_prometheus
from llmfleet_operator import promql
from llmfleet_operator.autoscale_loop import AutoscaleLoop
from llmfleet_operator.cache import Cache
from llmfleet_operator.k8s import ApiError
from llmfleet_operator.leader import LeaderElector
from llmfleet_operator.lease import LeaseRecord, may_take, released_spec, taken_spec
from llmfleet_operator.prometheus import client

LEASE = 10.0


def test_a_free_or_own_lease_may_be_taken_at_once() -> None:
    assert may_take(LeaseRecord(), "b", observed_at=100.0, now=100.0, lease_seconds=LEASE)
    own = LeaseRecord(holder="b", duration_seconds=10)
    assert may_take(own, "b", observed_at=100.0, now=100.0, lease_seconds=LEASE)


def test_another_holders_lease_is_taken_only_after_it_went_unchanged_for_its_duration() -> None:
    held = LeaseRecord(holder="a", duration_seconds=10)
    assert not may_take(held, "b", observed_at=100.0, now=109.9, lease_seconds=LEASE)
    assert may_take(held, "b", observed_at=100.0, now=110.0, lease_seconds=LEASE)
    # The holder's longer lease counts, not the candidate's shorter one.
    longer = LeaseRecord(holder="a", duration_seconds=30)
    assert not may_take(longer, "b", observed_at=100.0, now=120.0, lease_seconds=LEASE)


@given(
    observed=st.floats(0, 1e6),
    waited=st.floats(0, 100),
    duration=st.integers(1, 60),
)
def test_no_candidate_takes_a_lease_its_holder_may_still_renew(
    observed: float, waited: float, duration: int
) -> None:
    """Whatever the numbers: while less than the lease duration passed since the record
    last changed, nobody but the holder may write it."""
    held = LeaseRecord(holder="a", duration_seconds=duration)
    allowed = may_take(held, "b", observed, observed + waited, LEASE)
    assert allowed == (waited >= max(duration, LEASE))


def test_taking_counts_a_transition_and_renewing_keeps_the_acquire_time() -> None:
    first = taken_spec(LeaseRecord(holder="a", transitions=3), "b", 1000.0, LEASE)
    assert first["holderIdentity"] == "b"
    assert first["leaseTransitions"] == 4
    assert first["leaseDurationSeconds"] == 10
    again = taken_spec(LeaseRecord.of({"spec": first}), "b", 1005.0, LEASE)
    assert again["leaseTransitions"] == 4
    assert again["acquireTime"] == first["acquireTime"]
    assert again["renewTime"] > first["renewTime"]
    assert again["renewTime"].endswith("Z")
    assert "." in again["renewTime"]


def test_a_released_lease_is_free_for_anyone() -> None:
    held = LeaseRecord.of({"spec": taken_spec(LeaseRecord(), "a", 1000.0, LEASE)})
    released = LeaseRecord.of({"spec": released_spec(held, 1001.0)})
    assert released.holder == ""
    assert may_take(released, "b", observed_at=1001.0, now=1001.0, lease_seconds=LEASE)


# --- the elector against a slow API server -----------------------------------------------------


class SlowLeaseStore:
    """One Lease, as an API server keeps it: a write commits at once (resourceVersion
    compare-and-swap) and is answered ``delay`` seconds later; ``hang`` answers nothing."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.hang = False
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.committed_at = 0.0  # monotonic time of the last committed write

    async def get(self, path: str) -> dict[str, Any] | None:
        return await self.request("GET", path)

    async def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> Any:
        if self.hang:
            await asyncio.Event().wait()
        if method == "GET":
            return copy.deepcopy(self.lease)
        current = (self.lease or {}).get("metadata", {}).get("resourceVersion")
        if (method == "POST" and self.lease is not None) or (
            method == "PUT" and body["metadata"].get("resourceVersion") != current
        ):
            raise ApiError(409, method, path, '{"message": "conflict"}')
        self.version += 1
        self.lease = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": str(self.version)},
        }
        self.committed_at = time.monotonic()
        await asyncio.sleep(self.delay)
        return copy.deepcopy(self.lease)


def elector(store: SlowLeaseStore) -> LeaderElector:
    # The real timing (10/7/2 s) scaled by a quarter; the store answers writes after 1.2 s,
    # beyond the 1 s (2 retry periods) that once capped each attempt.
    return LeaderElector(
        store,  # type: ignore[arg-type]
        "ns",
        "lease",
        "a",
        lease_seconds=5.0,
        renew_deadline=3.5,
        retry_seconds=0.5,
    )


@dataclass
class Terms:
    """The elector's calls back: set when a term started, and when it ended."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_started(self) -> None:
        self.started.set()

    async def on_stopped(self) -> None:
        self.stopped.set()


@contextlib.asynccontextmanager
async def campaigning(candidate: LeaderElector) -> AsyncIterator[Terms]:
    """``candidate`` campaigns (and leads) for the block's duration."""
    terms = Terms()
    task = asyncio.create_task(candidate.run(terms.on_started, terms.on_stopped))
    try:
        yield terms
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_candidate_leads_and_keeps_leading_when_each_write_is_answered_slowly() -> None:
    store = SlowLeaseStore(delay=1.2)
    async with campaigning(elector(store)) as terms:
        await asyncio.wait_for(terms.started.wait(), timeout=5.0)
        renewals = store.version
        # Three renew periods at 1.7 s each: still leading, and renewing.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(terms.stopped.wait(), timeout=5.0)
        assert store.version >= renewals + 2
        assert (store.lease or {})["spec"]["holderIdentity"] == "a"


async def test_a_leader_cut_off_from_the_api_server_stops_within_the_renew_deadline() -> None:
    """However the attempts time out, the leader stops leading ``renew_deadline`` after its
    last renewal was sent: before a standby may take the Lease (``lease_seconds`` after it
    saw that renewal)."""
    store = SlowLeaseStore(delay=0.0)
    candidate = elector(store)
    async with campaigning(candidate) as terms:
        await asyncio.wait_for(terms.started.wait(), timeout=5.0)
        await asyncio.sleep(1.2)  # a renewal or two
        store.hang = True
        await asyncio.wait_for(terms.stopped.wait(), timeout=10.0)
        held_for = time.monotonic() - store.committed_at
        assert held_for <= candidate.renew_deadline + 0.5
        assert held_for < candidate.lease_seconds
        assert not candidate.leading


async def test_a_garbled_answer_is_one_failed_attempt_not_the_end_of_the_campaign() -> None:
    store = SlowLeaseStore(delay=0.0)
    garbled = [ValueError("Expecting value: line 1 column 1 (char 0)")]
    real_request = store.request

    async def request(method: str, path: str, **kw: Any) -> Any:
        if garbled:
            raise garbled.pop()
        return await real_request(method, path, **kw)

    store.request = request  # type: ignore[method-assign]
    async with campaigning(elector(store)) as terms:
        await asyncio.wait_for(terms.started.wait(), timeout=5.0)
        assert garbled == []


# --- the standby's autoscaler -------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fleet_at_four() -> dict[str, Any]:
    return {
        "apiVersion": "llmfleet.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": "a", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {
            "model": {"uri": "pvc://m/x"},
            "autoscaling": {
                "mode": "Builtin",
                "minReplicas": 1,
                "maxReplicas": 8,
                "targetQueueDepthPerReplica": 4,
                "scaleDownStabilizationSeconds": 60,
            },
        },
        "status": {"desiredReplicas": 4},
    }


CLOCK = Clock(1000.0)
# A quiet fleet: 2 requests in flight over 4 workers of 8 sequences each needs 1 replica.
QUIET = {"waiting": 0.0, "running": 2.0, "capacity": 32.0, "reporting": 0.0}


def _value(name: str) -> list[dict[str, Any]]:
    # "reporting" follows the fleet; any timestamp-like signal is "just scraped".
    value = {**QUIET, "reporting": 4.0}.get(name, CLOCK.now)
    return [{"metric": {"namespace": "ns", "llmdeployment": "a"}, "value": [0, str(value)]}]


@pytest.fixture
async def prometheus() -> AsyncIterator[StandIn]:
    table = {q: (lambda n=name: _value(n)) for name, q in promql.queries("llmfleet", "1m").items()}
    async with stand_in_prometheus(by_query(table), clock=CLOCK) as stand_in:
        yield stand_in


def _loop(cache: Cache, url: str, enqueued: list[Any], kube: EventRecorder) -> AutoscaleLoop:
    return AutoscaleLoop(cache, enqueued.append, kube, url, clock=CLOCK)  # type: ignore[arg-type]


async def test_a_standby_fills_its_window_in_the_shadow_and_acts_on_it_after_takeover(
    prometheus: StandIn,
) -> None:
    CLOCK.now = 1000.0
    cache = Cache()
    cache.observe_llmd("ADDED", fleet_at_four())
    enqueued: list[Any] = []
    kube = EventRecorder()
    standby = _loop(cache, prometheus.url, enqueued, kube)
    standby.active = False
    async with client(10.0) as session:
        for _ in range(5):  # 70 s of a quiet fleet, watched from the standby
            await standby.tick(session)
            CLOCK.now += 17.5
        assert enqueued == []
        assert kube.reasons == []
        assert standby.wants(("ns", "a")) is None
        assert standby.conditions(("ns", "a")) == []

        # The leader dies; this replica leads. A fresh process would have to wait a whole
        # window from now; the standby's window already covers the quiet minute.
        standby.active = True
        await standby.tick(session)
        cold = _loop(cache, prometheus.url, [], EventRecorder())
        await cold.tick(session)

    assert standby.wants(("ns", "a")) == 2  # halving, at once
    block = standby.status_block(("ns", "a"))
    assert block is not None
    assert block["lastDecision"]["from"] == 4
    assert kube.reasons == ["ScaledDown"]
    assert ("ns", "a") in enqueued
    assert cold.wants(("ns", "a")) == 4
    assert cold.state[("ns", "a")].last_decision is None  # held: the window starts now
