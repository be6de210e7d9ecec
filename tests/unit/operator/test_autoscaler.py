"""Replays of load traces through the pure autoscaler: the replica curve is the assertion.

A tiny fleet model stands in for the cluster: each worker runs up to CAPACITY requests at
once, the rest wait; new replicas become ready one interval after they are asked for.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from llmfleet_dev.flaps import count_flaps
from llmfleet_operator.autoscaler import (
    MAX_SIGNAL_AGE,
    Decision,
    Fleet,
    History,
    Policy,
    Signals,
    Why,
    decide,
)

INTERVAL = 15.0
CAPACITY = 4  # sequences per worker


@dataclass
class Sim:
    policy: Policy
    replicas: int
    gpu_slots: int | None = None  # pods that fit on the cluster at all
    history: History = field(default_factory=History)
    ready: int = 0
    curve: list[int] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ready = self.replicas

    def step(self, t: float, load: float, metrics_up: bool = True) -> Decision:
        serving = self.ready
        running = min(load, serving * CAPACITY)
        signals = (
            Signals(
                at=t,
                waiting=max(0.0, load - serving * CAPACITY),
                running=running,
                capacity=float(serving * CAPACITY),
                reporting=serving,
            )
            if metrics_up
            else None
        )
        pending = 0
        headroom = None
        if self.gpu_slots is not None:
            pending = max(0, self.replicas - self.gpu_slots)
            headroom = max(0, self.gpu_slots - self.replicas)
        fleet = Fleet(self.replicas, self.ready, pending, headroom)
        d = decide(self.policy, fleet, signals, self.history, t)
        # Pods asked for last interval are ready now (bounded by GPUs that exist).
        self.ready = min(self.replicas, self.gpu_slots if self.gpu_slots is not None else 10**6)
        self.replicas = d.replicas
        self.curve.append(d.replicas)
        self.decisions.append(d)
        return d

    def run(
        self,
        seconds: float,
        load: Callable[[float], float],
        metrics_up: Callable[[float], bool] = lambda t: True,
    ) -> list[int]:
        t = 0.0
        while t < seconds:
            self.step(t, load(t), metrics_up(t))
            t += INTERVAL
        return self.curve


def policy(**kw: float | int | None) -> Policy:
    base: dict[str, float | int | None] = dict(
        min_replicas=1, max_replicas=16, target_queue_per_replica=4, stabilization_seconds=300
    )
    base.update(kw)
    return Policy(**base)  # type: ignore[arg-type]


def test_burst_scales_up_fast_doubling_at_most() -> None:
    sim = Sim(policy(), replicas=1)
    curve = sim.run(600, lambda t: 2 if t < 60 else 48)
    before, after = curve[:4], curve[4:]
    assert before == [1, 1, 1, 1]
    # Each step at most doubles, and the fleet reaches what 48 in flight needs
    # (a batch of 4 plus 4 waiting per replica).
    for a, b in itertools.pairwise(curve):
        assert b <= max(2 * a, a + 1)
    needed = 48 // (CAPACITY + 4)  # a full batch plus the target queue per replica
    assert max(after) == needed
    assert after.index(needed) <= 3  # within 3 intervals of the burst
    assert count_flaps(curve) == 0


def test_slow_ramp_is_monotonic() -> None:
    sim = Sim(policy(), replicas=1)
    curve = sim.run(1800, lambda t: min(40, t / 30))
    assert curve == sorted(curve)
    assert curve[-1] == 40 // (CAPACITY + 4)


def test_noisy_steady_load_never_flaps_over_an_hour() -> None:
    rng = random.Random(7)
    sim = Sim(policy(), replicas=4)
    curve = sim.run(3600, lambda t: 30 * (1 + rng.uniform(-0.25, 0.25)))
    assert count_flaps(curve) == 0
    settled = curve[8:]
    assert max(settled) - min(settled) <= 2


def test_scale_down_waits_for_the_window_and_respects_min() -> None:
    sim = Sim(policy(min_replicas=2, stabilization_seconds=300), replicas=8)
    curve = sim.run(1200, lambda t: 64 if t < 120 else 0)  # 64 in flight needs 8
    stop = int(120 / INTERVAL)
    # Nothing moves down within the window after the load stops.
    assert all(r == 8 for r in curve[: stop + int(300 / INTERVAL)])
    assert curve[-1] == 2
    assert min(curve) == 2
    # Bounded steps: at most halving per interval.
    for a, b in itertools.pairwise(curve):
        assert b >= a // 2


def test_metrics_outage_mid_burst_holds_then_resumes() -> None:
    sim = Sim(policy(), replicas=2)
    outage = (90.0, 180.0)
    curve = sim.run(600, lambda t: 40 if t >= 60 else 4, lambda t: not outage[0] <= t < outage[1])
    i0, i1 = int(outage[0] / INTERVAL), int(outage[1] / INTERVAL)
    during = curve[i0:i1]
    assert len(set(during)) == 1, "held at one size during the outage"
    assert all(
        d.reason == Why.METRICS_UNAVAILABLE and not d.metrics_ok for d in sim.decisions[i0:i1]
    )
    assert curve[-1] == 40 // (CAPACITY + 4), "scaling resumes when metrics return"
    assert count_flaps(curve) == 0


def test_missing_metrics_never_scale_to_zero_or_down() -> None:
    sim = Sim(policy(min_replicas=0), replicas=3)
    curve = sim.run(900, lambda t: 0, lambda t: False)
    assert set(curve) == {3}


def test_min_replicas_zero_reaches_zero_after_an_idle_window_and_stays() -> None:
    sim = Sim(policy(min_replicas=0, stabilization_seconds=300), replicas=3)
    curve = sim.run(1200, lambda t: 8 if t < 60 else 0)
    idle_from = int(60 / INTERVAL)
    assert all(r >= 1 for r in curve[: idle_from + int(300 / INTERVAL)]), "not before the window"
    assert curve[-1] == 0
    assert curve[curve.index(0) :] == [0] * (len(curve) - curve.index(0)), "it stays at zero"
    for a, b in itertools.pairwise(curve):
        assert b >= a // 2


def test_fewer_workers_reporting_than_ready_never_scales_down() -> None:
    history = History()
    fleet = Fleet(current=4, ready=4)
    pol = policy(stabilization_seconds=0)
    # Two of four ready workers missing from the scrape: their load is missing from the sums.
    partial = Signals(at=0, waiting=0, running=4, capacity=8.0, reporting=2)
    d = decide(pol, fleet, partial, history, now=0)
    assert (d.replicas, d.reason) == (4, Why.PARTIAL_METRICS)
    # The same numbers from every ready worker: a real lull, it shrinks.
    full = Signals(at=1, waiting=0, running=4, capacity=16.0, reporting=4)
    assert decide(pol, fleet, full, history, now=1).replicas < 4
    # An undercount may still grow the fleet.
    busy = Signals(at=2, waiting=60, running=8, capacity=8.0, reporting=2)
    assert decide(pol, fleet, busy, history, now=2).replicas > 4


def test_stale_signals_count_as_missing() -> None:
    d = decide(policy(), Fleet(3, 3), Signals(at=0, waiting=100, running=12), History(), now=300)
    assert (d.replicas, d.reason) == (3, Why.METRICS_UNAVAILABLE)
    assert not d.metrics_ok
    assert d.detail == ("the oldest worker's newest sample is at least 300s old (more than 60s)")


@pytest.mark.parametrize(
    ("age", "held", "shown"),
    [
        (MAX_SIGNAL_AGE - 1, False, None),
        (MAX_SIGNAL_AGE, False, None),  # exactly the limit is still usable
        (MAX_SIGNAL_AGE + 0.5, True, "at least 60s old"),
        (119.0, True, "at least 90s old"),  # rounded down in steps: no rewrite per tick
        (125.0, True, "at least 120s old"),
    ],
)
def test_signals_older_than_the_limit_hold_and_say_how_old(
    age: float, held: bool, shown: str | None
) -> None:
    # A load that asks for more replicas: fresh, the fleet grows; stale, it holds.
    signals = Signals(at=1000 - age, waiting=100, running=12, capacity=16.0, reporting=4)
    d = decide(policy(), Fleet(4, 4), signals, History(), now=1000)
    if held:
        assert (d.replicas, d.reason, d.metrics_ok) == (4, Why.METRICS_UNAVAILABLE, False)
        assert d.detail is not None
        assert shown is not None
        assert shown in d.detail
    else:
        assert d.metrics_ok
        assert d.detail is None
        assert d.replicas > 4


def test_gpu_exhaustion_caps_and_never_piles_up_pending() -> None:
    sim = Sim(policy(), replicas=2, gpu_slots=5)
    curve = sim.run(600, lambda t: 64)
    assert max(curve) == 5
    assert any(d.limited_by == Why.GPU_LIMITED for d in sim.decisions)


def test_pending_pods_block_further_scale_up() -> None:
    d = decide(
        policy(),
        Fleet(current=4, ready=3, pending_for_gpu=1),
        Signals(0, 40, 12, 12.0, reporting=3),
        History(),
        0,
    )
    assert (d.replicas, d.limited_by) == (4, Why.GPU_LIMITED)


@pytest.mark.parametrize(("ttft", "want"), [(1.0, 4), (4.0, 8)])
def test_ttft_objective_scales_up_only(ttft: float, want: int) -> None:
    p = policy(ttft_p95_seconds=2.0)
    s = Signals(at=0, waiting=0, running=16, capacity=16.0, ttft_p95=ttft, reporting=4)
    d = decide(p, Fleet(4, 4), s, History(), 0)
    assert d.replicas == want
    if want > 4:
        assert d.reason == Why.TTFT


def test_bounds_and_suspend() -> None:
    s = Signals(at=0, waiting=400, running=64, capacity=64.0, reporting=16)
    assert decide(policy(max_replicas=6), Fleet(5, 5), s, History(), 0).replicas == 6
    capped = decide(policy(max_replicas=6), Fleet(5, 5), s, History(), 0)
    assert (capped.reason, capped.limited_by) == (Why.QUEUE, Why.AT_MAX)
    assert decide(policy(min_replicas=3), Fleet(1, 1), None, History(), 0).replicas == 3
    assert decide(Policy(1, 4, 4, suspended=True), Fleet(3, 3), s, History(), 0).replicas == 0


def test_decision_explains_itself() -> None:
    s = Signals(at=0, waiting=40, running=8, capacity=8.0, ttft_p95=0.5, reporting=2)
    d = decide(policy(), Fleet(2, 2), s, History(), 0)
    assert d.replicas == 4  # at most double
    assert d.reason == Why.QUEUE
    assert d.signals == {
        "waiting": 40,
        "running": 8,
        "capacity": 8.0,
        "reportingReplicas": 2.0,
        "ttftP95Seconds": 0.5,
    }
    assert d.proposals[Why.QUEUE] == 6  # (40 + 8) / (4 + 4)
    assert d.direction(2) == "up"


def test_count_flaps() -> None:
    assert count_flaps([1, 2, 2, 3, 3]) == 0
    assert count_flaps([1, 2, 1]) == 1
    assert count_flaps([3, 2, 2, 3, 2]) == 2
    # A scale-down long after the scale-up is the load going away, not a flap.
    assert count_flaps([1, 4, 4, 4, 4, 1], interval=15, window=60) == 0
    assert count_flaps([1, 4, 4, 1], interval=15, window=60) == 1


def test_noisy_loads_of_many_sizes_never_flap() -> None:
    for seed in range(20):
        rng = random.Random(seed)
        base = rng.uniform(10, 60)
        sim = Sim(policy(), replicas=2)
        curve = sim.run(3600, lambda t, r=rng, b=base: b * r.uniform(0.7, 1.3))
        assert count_flaps(curve, INTERVAL, 600) == 0, (seed, curve)


def policy_of(target: float = 4.0) -> Policy:
    return Policy(min_replicas=1, max_replicas=16, target_queue_per_replica=target)


def test_running_requests_without_known_capacity_are_not_queue() -> None:
    # One vLLM-style worker batching 40 requests, nothing waiting, capacity not reported:
    # the fleet serves its load. (The old fallback divided running by the queue target and
    # asked for 10 replicas.)
    s = Signals(at=0, waiting=0, running=40, reporting=1)
    d = decide(policy_of(), Fleet(current=1, ready=1), s, History(), now=0)
    assert d.replicas == 1
    assert d.proposals == {Why.RUNNING: 1}


def test_a_queue_without_known_capacity_scales_on_the_observed_batch() -> None:
    # Batches are full while requests wait: 2 workers x 40 running, 40 waiting, target 4:
    # (80 + 40) / (40 + 4) = 2.7 -> 3 replicas, as with a reported capacity of 40 each.
    s = Signals(at=0, waiting=40, running=80, reporting=2)
    d = decide(policy_of(), Fleet(current=2, ready=2), s, History(), now=0)
    known = Signals(at=0, waiting=40, running=80, capacity=80.0, reporting=2)
    assert d.replicas == 3
    assert d.reason == Why.QUEUE
    assert decide(policy_of(), Fleet(current=2, ready=2), known, History(), now=0).replicas == 3


def test_only_waiting_requests_fall_back_to_the_queue_target() -> None:
    s = Signals(at=0, waiting=12, running=0, reporting=1)
    d = decide(policy_of(), Fleet(current=1, ready=1), s, History(), now=0)
    assert d.proposals == {Why.QUEUE: 3}
    assert d.replicas == 2  # at most doubling per decision
