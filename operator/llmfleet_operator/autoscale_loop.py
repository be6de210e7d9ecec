"""The fleet-wide autoscaler loop: query Prometheus, decide, hand decisions to the reconciler.

One loop for every LLMDeployment in Builtin mode. Each interval it asks each Prometheus a
constant number of queries (one per signal and engine, grouped by namespace and
LLMDeployment), calls the pure ``autoscaler.decide`` per object, and, when the size should
change, records the decision and enqueues a reconcile: the reconciler, the single writer,
applies the Deployment's replicas and the status. Holding steady writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import ValidationError

from llmfleet_operator import metrics, promql
from llmfleet_operator.api import ConditionType, LLMDeploymentSpec, Reason
from llmfleet_operator.autoscaler import Decision, Fleet, History, Policy, Signals, Why, decide
from llmfleet_operator.cache import Cache, Key
from llmfleet_operator.capacity import CapacityUnknown, GpuCapacity
from llmfleet_operator.conditions import Condition, rfc3339
from llmfleet_operator.fleet import FleetObservation, observe_fleet
from llmfleet_operator.k8s import Kube
from llmfleet_operator.prometheus import PrometheusError, client, pick_url, query_all
from llmfleet_operator.resources import max_num_seqs

log = logging.getLogger(__name__)

#: How long a fleet's workers may be Ready without a single series in Prometheus before that
#: counts as MetricsUnavailable: a new worker is not scraped yet (Prometheus's default scrape
#: interval is a minute). Until then the size is held and nothing is reported: a Warning for
#: every new fleet would teach people to ignore the one that matters.
METRICS_GRACE_SECONDS = 90.0


@dataclass
class ScaleState:
    """What the autoscaler knows and decided about one LLMDeployment."""

    history: History = field(default_factory=History)
    wants: int | None = None
    last_decision: dict[str, Any] | None = None
    last_scale_time: str | None = None
    condition: Condition | None = None
    limited: Condition | None = None
    #: Why free GPUs are unknown for this fleet's pod template (None: known, or not looked).
    capacity_unknown: str | None = None
    #: The signals of the last evaluation and when it ran (None: no usable answer then).
    signals: Signals | None = None
    evaluated_at: float = 0.0
    #: When (the loop's clock) a worker of this fleet was first seen Ready; None: none is.
    ready_since: float | None = None


class AutoscaleLoop:
    """Owns the per-object scale state; the reconciler reads it through the view methods."""

    def __init__(
        self,
        cache: Cache,
        enqueue: Callable[[Key], None],
        kube: Kube,
        prometheus_url: str,
        interval: float = 15.0,
        rate_window: str = "1m",
        capacity: Callable[[LLMDeploymentSpec], GpuCapacity | CapacityUnknown] | None = None,
        clock: Callable[[], float] = time.time,
        allowed_urls: tuple[str, ...] = (),
    ) -> None:
        self.cache = cache
        self.enqueue = enqueue
        self.kube = kube
        self.prometheus_url = prometheus_url
        #: Prometheus URLs a spec's ``prometheusURL`` may name (besides ``prometheus_url``).
        self.allowed_urls = allowed_urls
        self.interval = interval
        self.rate_window = rate_window
        self._capacity = capacity
        self._clock = clock
        self.state: dict[Key, ScaleState] = {}
        self.queries_sent = 0
        #: False on a standby replica: evaluate (so the stabilization windows stay full for a
        #: takeover) but decide nothing, post nothing, enqueue nothing.
        self.active = True

    # --- the reconciler's view ---------------------------------------------------------------
    def wants(self, key: Key) -> int | None:
        """The replica count last decided for ``key`` (None: no decision yet)."""
        st = self.state.get(key)
        return st.wants if st else None

    def status_block(self, key: Key) -> dict[str, Any] | None:
        """``status.autoscaler`` for ``key``."""
        st = self.state.get(key)
        if st is None or st.last_decision is None:
            return None
        block: dict[str, Any] = {"lastDecision": st.last_decision}
        if st.last_scale_time:
            block["lastScaleTime"] = st.last_scale_time
        return block

    def conditions(self, key: Key) -> list[Condition]:
        """``ScalingActive`` and ``ScalingLimited`` for ``key``."""
        st = self.state.get(key)
        if st is None:
            return []
        return [c for c in (st.condition, st.limited) if c is not None]

    def last_signals(self, key: Key) -> tuple[Signals, float] | None:
        """The signals the last evaluation of ``key`` used, and when it ran (for metrics)."""
        st = self.state.get(key)
        if st is None or st.signals is None:
            return None
        return st.signals, st.evaluated_at

    def forget(self, key: Key) -> None:
        """Drop the state of a deleted LLMDeployment."""
        self.state.pop(key, None)

    # --- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Evaluate every ``interval`` seconds until cancelled."""
        timeout = max(2.0, min(10.0, self.interval / 2))
        async with client(timeout) as session:
            while True:
                started = time.monotonic()
                try:
                    await self.tick(session)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("autoscaler evaluation failed; holding every fleet's size")
                elapsed = time.monotonic() - started
                await asyncio.sleep(max(0.0, self.interval - elapsed))

    def _builtin(self) -> dict[Key, tuple[dict[str, Any], LLMDeploymentSpec]]:
        out = {}
        for key, body in list(self.cache.llmds.items()):
            if body["metadata"].get("deletionTimestamp"):
                continue
            try:
                spec = self.cache.spec_of(key, body)
            except ValidationError:
                continue
            if spec.autoscaling.mode == "Builtin":
                out[key] = (body, spec)
        for gone in set(self.state) - set(out):
            del self.state[gone]
        return out

    async def _fetch(
        self, session: httpx.AsyncClient, url: str, engine: str
    ) -> dict[str, dict[tuple[str, ...], promql.Sample]] | PrometheusError:
        qs = promql.queries(engine, self.rate_window)
        self.queries_sent += len(qs)
        return await query_all(session, url, qs)

    async def tick(self, session: httpx.AsyncClient) -> None:
        """One evaluation of the whole fleet."""
        fleet = self._builtin()
        groups: dict[tuple[str, str], list[Key]] = {}
        unusable: list[tuple[Key, PrometheusError]] = []
        for key, (_, spec) in fleet.items():
            url = pick_url(spec.autoscaling.prometheus_url, self.prometheus_url, self.allowed_urls)
            if isinstance(url, PrometheusError):
                unusable.append((key, url))
            else:
                groups.setdefault((url, str(spec.worker.engine)), []).append(key)
        now = self._clock()
        # Every Prometheus at once, each with its own timeout: one unreachable URL holds
        # only the fleets that use it.
        fetched = await asyncio.gather(*(self._fetch(session, u, e) for u, e in groups))
        for key, error in unusable:
            body, spec = fleet[key]
            await self._evaluate(key, body, spec, None, str(error), "", now, unscraped=False)
        for ((url, _), keys), answers in zip(groups.items(), fetched, strict=True):
            for key in keys:
                body, spec = fleet[key]
                signals = None
                problem = None
                if isinstance(answers, PrometheusError):
                    problem = f"Prometheus at {url} unavailable: {answers}"
                else:
                    signals = self._signals(answers, key, now, max_num_seqs(spec))
                    if signals is None:
                        problem = f"no worker metrics for this LLMDeployment in {url}"
                unscraped = signals is None and not isinstance(answers, PrometheusError)
                await self._evaluate(
                    key, body, spec, signals, problem, url, now, unscraped=unscraped
                )

    @staticmethod
    def _signals(
        answers: Mapping[str, Mapping[tuple[str, ...], promql.Sample]],
        key: Key,
        now: float,
        per_worker: int | None = None,
    ) -> Signals | None:
        """The signals of one LLMDeployment; ``per_worker`` is one worker's batch size as the
        spec sets it (vLLM exports none): the capacity when the workers report none."""

        def value(name: str) -> float | None:
            sample = answers.get(name, {}).get(key)
            return sample.value if sample is not None else None

        waiting, running = value("waiting"), value("running")
        sampled = answers.get("sampled_at", {}).get(key)
        if waiting is None or running is None or sampled is None or sampled.value is None:
            return None
        # The samples' own age by Prometheus's clock (the operator's may differ), as of now
        # by ours. A sample stamped after the query (an exporter's clock ahead) is fresh.
        age = max(0.0, sampled.evaluated_at - sampled.value)
        reporting = int(value("reporting") or 0)
        capacity = value("capacity")
        if capacity is None and per_worker is not None and reporting > 0:
            capacity = float(per_worker * reporting)
        return Signals(
            at=now - age,
            waiting=waiting,
            running=running,
            capacity=capacity,
            ttft_p95=value("ttft_p95"),
            reporting=reporting,
        )

    def _fleet_of(
        self, key: Key, body: Mapping[str, Any], spec: LLMDeploymentSpec, st: ScaleState
    ) -> tuple[Fleet, FleetObservation]:
        deps = [
            d
            for (_, kind, _), d in self.cache.children.get(key, {}).items()
            if kind == "Deployment"
        ]
        decided = (body.get("status") or {}).get("desiredReplicas")
        current = st.wants if st.wants is not None else decided
        if current is None:
            current = (
                sum(int(d["spec"].get("replicas", 0)) for d in deps)
                if deps
                else spec.autoscaling.min_replicas
            )
        observed = observe_fleet(
            self.cache.pods.get(key, {}).values(), spec.worker.resources.gpu_resource_name
        )
        # Every track counts: during a canary the fleet is stable + candidate pods.
        fleet = Fleet(
            current=current, ready=observed.ready, pending_for_gpu=observed.waiting_for_gpu
        )
        return fleet, observed

    async def _evaluate(
        self,
        key: Key,
        body: dict[str, Any],
        spec: LLMDeploymentSpec,
        signals: Signals | None,
        problem: str | None,
        url: str,
        now: float,
        *,
        unscraped: bool = False,
    ) -> None:
        """``unscraped``: Prometheus answered, without a series of this fleet."""
        st = self.state.setdefault(key, ScaleState())
        st.signals, st.evaluated_at = signals, now
        a = spec.autoscaling
        policy = Policy(
            min_replicas=a.min_replicas,
            max_replicas=a.max_replicas,
            target_queue_per_replica=a.target_queue_depth_per_replica,
            ttft_p95_seconds=a.ttft_seconds_p95,
            stabilization_seconds=float(a.scale_down_stabilization_seconds),
            suspended=spec.suspend,
        )
        fleet, observed = self._fleet_of(key, body, spec, st)
        if observed.ready == 0:
            st.ready_since = None
        elif st.ready_since is None:
            st.ready_since = now
        # A fleet without a verdict yet whose workers are not Ready (or not for long): no
        # series is what Prometheus should have. A fleet that had one hears of a loss at once.
        awaiting = (
            unscraped
            and st.condition is None
            and (st.ready_since is None or now - st.ready_since < METRICS_GRACE_SECONDS)
        )
        # A scale-up must fit on the free GPUs of the nodes this pod template may use: a
        # lookup in the watched view (no API call), memoised per template until it changes.
        gpus = spec.worker.resources.gpus
        st.capacity_unknown = None
        if signals is not None and self._capacity is not None and gpus > 0:
            try:
                cap = self._capacity(spec)
            except Exception:
                # This fleet holds its size; the others' evaluations go on.
                log.exception("autoscaler %s/%s: free GPUs failed; holding the size", *key)
                return
            if isinstance(cap, CapacityUnknown):
                st.capacity_unknown = cap.why
            elif signals.waiting > 0 or fleet.current < a.min_replicas:
                # Pods asked for but not yet placed will take GPUs too.
                unplaced = max(0, fleet.current - observed.placed)
                headroom = max(0, cap.fits(gpus) - unplaced)
                fleet = Fleet(fleet.current, fleet.ready, fleet.pending_for_gpu, headroom)
        decision = decide(policy, fleet, signals, st.history, now)
        if not self.active:
            # The leader's size (status.desiredReplicas) is the current one; on takeover the
            # first decision adopts it with this window's history.
            st.wants = st.condition = st.limited = None
            return
        if not awaiting:
            await self._set_condition(key, body, st, decision, problem, url)
        if decision.replicas != fleet.current or st.wants is None:
            await self._record(key, body, st, fleet.current, decision, now)

    async def _set_condition(
        self,
        key: Key,
        body: dict[str, Any],
        st: ScaleState,
        decision: Decision,
        problem: str | None,
        url: str,
    ) -> None:
        if decision.metrics_ok:
            cond = Condition(
                ConditionType.SCALING_ACTIVE,
                "True",
                Reason.METRICS_AVAILABLE,
                f"scaling on worker metrics from {url}",
            )
        else:
            cond = Condition(
                ConditionType.SCALING_ACTIVE,
                "False",
                Reason.METRICS_UNAVAILABLE,
                f"{problem or _stale(decision, url) or 'metrics unavailable'}; "
                "holding the current size",
            )
        flipped = st.condition is None or st.condition.status != cond.status
        if st.condition != cond:
            st.condition = cond
            self.enqueue(key)
        limited = self._limited(decision, st.limited, st.capacity_unknown)
        if limited != st.limited:
            st.limited = limited
            self.enqueue(key)
        if flipped and not decision.metrics_ok:
            await self.kube.event(body, Reason.METRICS_UNAVAILABLE, cond.message, "Warning")

    @staticmethod
    def _limited(
        decision: Decision, before: Condition | None, capacity_unknown: str | None = None
    ) -> Condition | None:
        """``ScalingLimited`` (as HPA names it): whether a bound or the GPUs cap the size.

        Messages carry no live numbers, so a steady limit writes nothing. When free GPUs are
        unknown (``capacity_unknown`` says why), scale-ups are not checked against them and
        the message says so.
        """
        t = ConditionType.SCALING_LIMITED
        if not decision.metrics_ok:
            return before  # nothing new is known
        if decision.reason == Why.GPU_LIMITED:
            return Condition(
                t,
                "True",
                Reason.INSUFFICIENT_GPU,
                "more replicas are wanted than the free GPUs can hold; "
                "holding until capacity appears",
            )
        if decision.reason == Why.AT_MAX:
            return Condition(
                t,
                "True",
                Reason.TOO_MANY_REPLICAS,
                "the load asks for more than spec.autoscaling.maxReplicas",
            )
        if capacity_unknown is not None:
            return Condition(
                t,
                "False",
                Reason.DESIRED_WITHIN_RANGE,
                f"the desired size is within bounds; {capacity_unknown}, so scale-ups are "
                "not checked against them",
            )
        return Condition(
            t,
            "False",
            Reason.DESIRED_WITHIN_RANGE,
            "the desired size is within bounds and fits on free GPUs",
        )

    async def _record(
        self,
        key: Key,
        body: dict[str, Any],
        st: ScaleState,
        current: int,
        decision: Decision,
        now: float,
    ) -> None:
        first = st.wants is None
        st.wants = decision.replicas
        if decision.replicas == current:
            if first:
                self.enqueue(key)  # adopt the current size as ours; nothing to announce
            return
        moment = rfc3339(datetime.fromtimestamp(now, UTC))
        st.last_scale_time = moment
        st.last_decision = {
            "from": current,
            "to": decision.replicas,
            "reason": decision.reason,
            "signals": decision.signals,
            "time": moment,
        }
        direction = decision.direction(current)
        metrics.count_scaling_decision(key, direction, decision.reason)
        detail = ", ".join(f"{k}={v:g}" for k, v in decision.signals.items())
        message = f"{current} -> {decision.replicas} replicas: {decision.reason} ({detail})"
        if decision.limited_by == Why.GPU_LIMITED:
            message += "; capped by free GPUs"
        elif decision.limited_by == Why.AT_MAX:
            message += "; capped by maxReplicas"
        log.info("autoscaler %s/%s: %s", *key, message)
        await self.kube.event(body, "ScaledUp" if direction == "up" else "ScaledDown", message)
        self.enqueue(key)


def _stale(decision: Decision, url: str) -> str | None:
    """The condition's words for signals that came but were too old."""
    return f"worker metrics in {url} are stale: {decision.detail}" if decision.detail else None
