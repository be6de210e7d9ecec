"""Reconcile one LLMDeployment: gather, plan, apply, evaluate status, write only if changed.

The watch streams (wired in ``handlers``) keep an in-memory ``Cache`` of LLMDeployments and
their children, like an informer; reconciling reads the cache, so a steady fleet causes no
API reads and, because plans and statuses are compared before writing, no writes either.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from llmfleet_operator import metrics, rollout
from llmfleet_operator.api import (
    ANNOTATION_ABORT,
    ANNOTATION_PROMOTE,
    API_VERSION,
    CANARY_TRACK,
    KIND,
    LABEL_REVISION,
    STABLE_TRACK,
    ConditionType,
    LLMDeploymentSpec,
)
from llmfleet_operator.cache import Cache, ChildKey, Key, controller_of
from llmfleet_operator.capacity import (
    CapacityUnknown,
    ContainerFailure,
    GpuCapacity,
    creating_since,
    free_gpus_text,
    volume_failure,
)
from llmfleet_operator.conditions import Condition, find, merge
from llmfleet_operator.fleet import FleetObservation, observe_fleet
from llmfleet_operator.free_gpus import FreeGpus
from llmfleet_operator.k8s import ApiError, Kube, resource_path
from llmfleet_operator.plan import Apply, child_key, plan_children
from llmfleet_operator.resources import (
    ANNOTATION_STABLE_REVISION,
    ANNOTATION_STABLE_SPEC,
    ANNOTATION_TEMPLATE_SPEC,
    DEFAULT_MONITORING_NAMESPACE,
    MANAGED_KINDS,
    Owner,
    deployment_name,
    desired_children,
    desired_replicas,
    endpoint,
    revision_of,
    selector_string,
    spec_json,
)
from llmfleet_operator.status import Observation, build_status, invalid_spec_conditions

log = logging.getLogger(__name__)

#: Status keys this reconciler owns; others (status.autoscaler) are carried over.
STATUS_KEYS = (
    "observedGeneration",
    "replicas",
    "readyReplicas",
    "updatedReplicas",
    "availableReplicas",
    "desiredReplicas",
    "selector",
    "endpoint",
    "updateRevision",
    "currentRevision",
    "conditions",
    "rollout",
    "revisions",
)
#: While pods wait for GPUs, look again this often to refresh the free-GPU figures.
GPU_RECHECK_SECONDS = 30.0
#: Answers that mean "not this object, as it is": bad request, forbidden (admission webhooks,
#: OwnerReferencesPermissionEnforcement), invalid (validation, ValidatingAdmissionPolicy).
REJECTION_STATUSES = frozenset({400, 403, 422})
#: How soon a refused write is tried again (a policy may be changed meanwhile).
REJECTED_RETRY_SECONDS = 30.0
#: How soon a child whose name a foreign object holds is looked at again (no watch tells us
#: when an object without our label or ownerReference goes away).
FOREIGN_RETRY_SECONDS = 10.0
#: How soon to look again at a namesake's leftover, which the garbage collector is removing.
LEFTOVER_RETRY_SECONDS = 5.0
#: How long a pod may stay in ContainerCreating before its Events are read, and how often
#: they are read again while it stays there.
VOLUME_CHECK_SECONDS = 20.0
#: Progress alone (counts, messages, phases) is written at most this often per object: pods
#: and the Deployment controller report a starting pod seconds apart (a pod is Ready some
#: seconds before its Deployment counts it, and that count is the Ready transition, written at
#: once), and each report would otherwise be a status write (and a watch event for every
#: GitOps tool). A transition (a condition's status, observedGeneration) is written at once.
PROGRESS_WRITE_SECONDS = 5.0
#: While a fleet is not Ready, what only the autoscaler has to say (a ScalingActive verdict,
#: a ScalingLimited) waits up to this long for the fleet's own next transition: a new fleet's
#: first verdict then rides on its Ready write instead of costing a status write (and a watch
#: event for every GitOps tool) of its own. A Ready fleet hears it at once.
SCALING_WRITE_SECONDS = 15.0
#: The conditions the autoscaler owns; the others are the fleet's own.
SCALING_CONDITIONS = frozenset({ConditionType.SCALING_ACTIVE, ConditionType.SCALING_LIMITED})


@dataclass
class ReconcileResult:
    """What one reconcile did (for tests, logs and requeueing)."""

    applied: list[ChildKey] = field(default_factory=list)
    deleted: list[ChildKey] = field(default_factory=list)
    status_written: bool = False
    requeue_after: float | None = None
    #: Writes the API server refused (admission, validation): "Kind name: message".
    rejected: list[str] = field(default_factory=list)
    #: Children not created because an object we do not control has the name: "Kind name".
    foreign: list[str] = field(default_factory=list)


class ScalingView(Protocol):
    """What the reconciler reads from the autoscaler (the autoscaler never writes)."""

    def wants(self, key: Key) -> int | None: ...
    def status_block(self, key: Key) -> dict[str, Any] | None: ...
    def conditions(self, key: Key) -> list[Condition]: ...


class AnalysisView(Protocol):
    """What the reconciler reads from the canary analysis loop."""

    def latest(self, key: Key, revision: str) -> Mapping[str, Any] | None: ...


class NoAnalysis:
    """The view when no analysis loop runs: canaries hold their step."""

    def latest(self, key: Key, revision: str) -> Mapping[str, Any] | None:
        return None


class NoAutoscaler:
    """The view when the built-in autoscaler is not running."""

    def wants(self, key: Key) -> int | None:
        return None

    def status_block(self, key: Key) -> dict[str, Any] | None:
        return None

    def conditions(self, key: Key) -> list[Condition]:
        return []


class Reconciler:
    """Turns the cached state of one LLMDeployment into API calls."""

    def __init__(
        self,
        kube: Kube,
        cache: Cache,
        scaling: ScalingView | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        analysis: AnalysisView | None = None,
        free_gpus: FreeGpus | None = None,
        monitoring_namespace: str = DEFAULT_MONITORING_NAMESPACE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.scaling: ScalingView = scaling or NoAutoscaler()
        self.analysis: AnalysisView = analysis or NoAnalysis()
        self._clock = clock
        self.free_gpus = free_gpus or FreeGpus(kube)
        #: Where Prometheus runs: the NetworkPolicies let it scrape the workers.
        self.monitoring_namespace = monitoring_namespace
        #: Per fleet, the pods stuck creating whose Events were read: uid -> (when, failure).
        self._volume_checks: dict[Key, dict[str, tuple[datetime, ContainerFailure | None]]] = {}
        #: Per fleet, when its status was last written (monotonic seconds).
        self._status_written: dict[Key, float] = {}
        self._monotonic = monotonic

    async def reconcile(self, key: Key) -> ReconcileResult:
        """Bring the children and status of ``key`` in line with its spec."""
        started = time.monotonic()
        body = self.cache.llmds.get(key)
        result = ReconcileResult()
        if body is None or body["metadata"].get("deletionTimestamp"):
            self._status_written.pop(key, None)
            return result  # garbage collection removes the children
        try:
            with metrics.RECONCILE_SECONDS.time():
                await self._reconcile(key, body, result)
        except ApiError as e:
            if e.status == 403 and "being terminated" in e.message:
                # The namespace is going away with everything in it; nothing to converge.
                log.debug("namespace of %s/%s is terminating", *key)
                return result
            metrics.RECONCILES.labels(result="error").inc()
            raise
        except Exception:
            metrics.RECONCILES.labels(result="error").inc()
            raise
        metrics.RECONCILES.labels(result="ok").inc()
        log.debug("reconciled %s/%s in %.3fs", *key, time.monotonic() - started)
        return result

    async def _reconcile(self, key: Key, body: dict[str, Any], result: ReconcileResult) -> None:
        owner = Owner.of(body)
        try:
            spec = self.cache.spec_of(key, body)
        except ValidationError as e:
            await self._write_invalid(owner, body, _validation_message(e), result)
            return
        revision = revision_of(spec)
        # Only what this very object controls: a namesake's leftovers (deleted and created
        # again) belong to the garbage collector.
        uid = body["metadata"].get("uid")
        observed = {
            ck: child
            for ck, child in self.cache.children.get(key, {}).items()
            if (controller_of(child) or {}).get("uid") == uid
        }
        stable_dep = observed.get(_deployment_key(owner, STABLE_TRACK))
        canary_dep = observed.get(_deployment_key(owner, CANARY_TRACK))
        sizes = [int(d["spec"].get("replicas", 0)) for d in (stable_dep, canary_dep) if d]
        current = sum(sizes) if sizes else None
        previous = body.get("status") or {}
        # Our own last decision, not the Deployments' fields: a hand-made `kubectl scale
        # deployment` must be reverted, not adopted.
        decided = previous.get("desiredReplicas")
        replicas = desired_replicas(
            spec, decided if decided is not None else current, self._wants(key, spec)
        )
        resource = spec.worker.resources.gpu_resource_name
        fleet = observe_fleet(self.cache.pods.get(key, {}).values(), resource)
        stable_rev, stable_spec, stable_raw = _stable_of(
            stable_dep, previous.get("currentRevision")
        )
        now = self._clock()
        fleet = await self._volume_failures(key, fleet, now, result)
        facts = await self._rollout_facts(
            key, body, spec, revision, replicas, fleet, stable_dep, canary_dep, stable_rev, now
        )
        decision = rollout.plan(facts)
        template_spec = (
            stable_spec if decision.stable.from_stable_spec and stable_spec is not None else spec
        )
        good: tuple[str, str] | None = None
        if decision.good == revision:
            good = (revision, spec_json(spec))
        elif decision.good is not None and decision.good == stable_rev and stable_raw:
            good = (stable_rev, stable_raw)
        desired = desired_children(
            owner,
            spec,
            decision.stable.replicas,
            decision.stable.revision,
            template_spec=template_spec,
            surge=decision.stable.surge,
            stable=good,
            canary=(decision.canary.replicas, decision.canary.revision)
            if decision.canary is not None
            else None,
            monitoring_namespace=self.monitoring_namespace,
        )
        plan = plan_children(desired, observed.values(), MANAGED_KINDS)
        done = [
            step
            for step in plan.apply
            if await self._apply_child(key, body, step, result) and not step.quiet
        ]
        if done and previous:
            # One Event for what one reconcile wrote, named after the first: the worker
            # Deployment when it is among them. A new fleet's children go unannounced: its
            # Ready transition (or the failure that stops it) is the Event that says more.
            await self.kube.event(
                body, f"{done[0].verb}{done[0].obj['kind']}", "; ".join(s.message for s in done)
            )
        for obj in plan.delete:
            if await self.kube.delete(obj):
                await self.kube.event(
                    body, "Deleted", f"deleted {obj['kind']} {obj['metadata']['name']}"
                )
                metrics.WRITES.labels(kind=obj["kind"], verb="delete").inc()
            self.cache.children.get(key, {}).pop(child_key(obj), None)
            result.deleted.append(child_key(obj))
        children = self.cache.children.get(key, {})
        await self._write_status(
            owner,
            spec,
            body,
            children.get(_deployment_key(owner, STABLE_TRACK)),
            children.get(_deployment_key(owner, CANARY_TRACK)),
            replicas,
            revision,
            fleet,
            decision,
            now,
            result,
        )
        for reason, message, type_ in decision.events:
            await self.kube.event(body, reason, message, type_)
        metrics.start_fleet_counters(key)
        if decision.rolled_back is not None:
            metrics.count_rollback(key, decision.rolled_back)
        if decision.requeue_after is not None:
            # A deadline, a pause or a GPU recheck is due then; events wake us before.
            wait = max(1.0, decision.requeue_after)
            result.requeue_after = min(result.requeue_after or wait, wait)

    async def _rollout_facts(
        self,
        key: Key,
        body: Mapping[str, Any],
        spec: LLMDeploymentSpec,
        revision: str,
        replicas: int,
        fleet: FleetObservation,
        stable_dep: Mapping[str, Any] | None,
        canary_dep: Mapping[str, Any] | None,
        stable_rev: str | None,
        now: datetime,
    ) -> rollout.Facts:
        previous = body.get("status") or {}
        rolled_back = rollout.rolled_back_revisions(previous.get("revisions") or [])
        headroom = None
        summary = ""
        gpus = spec.worker.resources.gpus
        prev_rollout = previous.get("rollout") or {}
        choosing = (
            prev_rollout.get("candidateRevision") != revision
            or prev_rollout.get("phase") == rollout.WAITING_FOR_GPU
        )
        if (
            choosing
            and stable_rev not in (None, revision)
            and revision not in rolled_back
            and gpus > 0
        ):
            # Surge or in place is decided once per candidate, on the watched free GPUs of
            # the nodes this pod template may use.
            cap = self._capacity(key, spec)
            summary = (
                f"one pod asks for {gpus} {spec.worker.resources.gpu_resource_name}; "
                f"{free_gpus_text(cap)}"
            )
            if isinstance(cap, GpuCapacity):
                # Pods asked for but not yet placed will take GPUs too.
                unplaced = max(0, len(fleet.live) - fleet.placed)
                headroom = max(0, cap.fits(gpus) - unplaced)
        annotations = body["metadata"].get("annotations") or {}
        canary = spec.rollout.canary_settings()
        template_rev = None
        if stable_dep is not None:
            labels = stable_dep["spec"]["template"]["metadata"].get("labels") or {}
            template_rev = labels.get(LABEL_REVISION)
        return rollout.Facts(
            strategy=spec.rollout.strategy,
            desired=revision,
            stable=stable_rev,
            stable_template=template_rev,
            replicas=replicas,
            now=now,
            progress_deadline_seconds=float(spec.rollout.progress_deadline_seconds),
            allow_downtime=spec.rollout.allow_downtime,
            paused=spec.rollout.paused,
            steps=tuple((s.weight, s.pause_seconds) for s in canary.steps),
            failure_limit=canary.analysis.failure_limit,
            rolled_back=rolled_back,
            previous=prev_rollout,
            analysis=self.analysis.latest(key, revision),
            promote_requested=annotations.get(ANNOTATION_PROMOTE) == revision,
            abort_requested=annotations.get(ANNOTATION_ABORT) == revision,
            ready=fleet.ready_by,
            waiting_for_gpu=fleet.waiting_by_track,
            gpu_headroom=headroom,
            gpu_summary=summary,
            stable_settled=_settled(stable_dep),
            stable_observed_replicas=_replicas_of(stable_dep),
            canary_observed_replicas=_replicas_of(canary_dep),
        )

    async def _apply_child(
        self, key: Key, body: dict[str, Any], step: Apply, result: ReconcileResult
    ) -> bool:
        """Apply one child; True when it was written."""
        if step.look_first:
            # Who holds the name, as the watches (primed by a full LIST) saw it: no GET per
            # creation. A predecessor's leftover is cached under our key with its own uid.
            meta = step.obj["metadata"]
            live = self.cache.children.get(key, {}).get(step.key) or self.cache.named(
                meta["namespace"], step.obj["apiVersion"], step.obj["kind"], meta["name"]
            )
            if live is not None and not _ours(live, body):
                self._hands_off(key, body, step, live, result)
                return False
            # Otherwise free, or ours without being its controller (our ownerReference as
            # non-controller): the apply below makes it ours.
        try:
            applied = await self.kube.apply(step.obj)
        except ApiError as e:
            if e.status not in REJECTION_STATUSES or "being terminated" in e.message:
                raise  # transient (conflict, throttling, server errors): the queue retries
            # A policy or validation said no: say so in status and an Event, keep what runs,
            # and try again later (the policy may change), not in a hot loop.
            what = f"{step.obj['kind']} {step.obj['metadata']['name']}"
            log.warning("%s/%s: the API server refused %s: %s", *key, what, e.message)
            result.rejected.append(f"{what}: {e.message}")
            result.requeue_after = min(
                result.requeue_after or REJECTED_RETRY_SECONDS, REJECTED_RETRY_SECONDS
            )
            return False
        if step.quiet:
            before = self.cache.children.get(key, {}).get(step.key)
            applied = observed_through_metadata(applied, before)
        self.cache.put_child(key, applied)
        result.applied.append(step.key)
        metrics.WRITES.labels(kind=step.obj["kind"], verb="apply").inc()
        return True

    async def _volume_failures(
        self, key: Key, fleet: FleetObservation, now: datetime, result: ReconcileResult
    ) -> FleetObservation:
        """Pods that stay in ContainerCreating: why, from their Events (a volume that cannot
        be attached, e.g. a ReadWriteOnce claim used on another node). Read once per pod
        every VOLUME_CHECK_SECONDS while it is stuck; nothing for pods that start."""
        pods = self.cache.pods.get(key, {})
        checks = self._volume_checks.get(key, {})
        kept: dict[str, tuple[datetime, ContainerFailure | None]] = {}
        infos = []
        for info in fleet.pods:
            pod = pods.get(info.name)
            since = creating_since(pod) if pod is not None and info.failure is None else None
            if pod is None or since is None or info.terminating:
                infos.append(info)
                continue
            waited = (now - datetime.fromisoformat(since.replace("Z", "+00:00"))).total_seconds()
            wait = VOLUME_CHECK_SECONDS - waited
            if wait <= 0:
                uid = str(pod["metadata"].get("uid", info.name))
                checked = checks.get(uid)
                if checked is None or (now - checked[0]).total_seconds() >= VOLUME_CHECK_SECONDS:
                    path = resource_path("v1", "Event", key[0])
                    events = await self.kube.list(path, field_selector=f"involvedObject.uid={uid}")
                    checked = (now, volume_failure(events))
                kept[uid] = checked
                if checked[1] is not None:
                    info = dataclasses.replace(info, failure=checked[1])
                wait = VOLUME_CHECK_SECONDS  # no watch says when it changes: look again
            infos.append(info)
            wait = max(1.0, wait)
            result.requeue_after = min(result.requeue_after or wait, wait)
        if kept:
            self._volume_checks[key] = kept
        else:
            self._volume_checks.pop(key, None)
        return dataclasses.replace(fleet, pods=tuple(infos))

    def _capacity(self, key: Key, spec: LLMDeploymentSpec) -> GpuCapacity | CapacityUnknown:
        """Free GPUs for this LLMDeployment's pod template (from memory, no API call); a
        failure to compute it makes it unknown for this object only."""
        try:
            return self.free_gpus.for_spec(spec)
        except Exception as e:
            log.exception("%s/%s: computing free GPUs failed", *key)
            return CapacityUnknown(f"free GPUs unknown: computing them failed ({e})")

    def _hands_off(
        self,
        key: Key,
        body: Mapping[str, Any],
        step: Apply,
        live: Mapping[str, Any],
        result: ReconcileResult,
    ) -> None:
        """``live`` has the name of a child but is not the owner's: never apply over it (a
        forced server-side apply would take it over), and look again later."""
        what = f"{step.obj['kind']} {step.obj['metadata']['name']}"
        controller = controller_of(live)
        if controller is not None and controller.get("name") == body["metadata"]["name"]:
            # An earlier LLMDeployment of this name (deleted, created again): the garbage
            # collector is removing its children, and the watch tells us when it is done.
            log.info("%s/%s: %s is a predecessor's, waiting for its removal", *key, what)
            wait = LEFTOVER_RETRY_SECONDS
        else:
            log.warning("%s/%s: %s exists and is not ours; leaving it untouched", *key, what)
            result.foreign.append(what)
            wait = FOREIGN_RETRY_SECONDS
        result.requeue_after = min(result.requeue_after or wait, wait)

    def _wants(self, key: Key, spec: LLMDeploymentSpec) -> int | None:
        return self.scaling.wants(key) if spec.autoscaling.mode == "Builtin" else None

    async def _write_status(
        self,
        owner: Owner,
        spec: LLMDeploymentSpec,
        body: dict[str, Any],
        deployment: Mapping[str, Any] | None,
        canary: Mapping[str, Any] | None,
        replicas: int,
        revision: str,
        fleet: FleetObservation,
        decision: rollout.RolloutPlan,
        now: datetime,
        result: ReconcileResult,
    ) -> None:
        resource = spec.worker.resources.gpu_resource_name
        waiting = fleet.waiting_for_gpu > 0
        capacity = self._capacity((owner.namespace, owner.name), spec) if waiting else None
        if waiting:
            result.requeue_after = GPU_RECHECK_SECONDS
        previous = body.get("status") or {}
        obs = Observation(
            generation=owner.generation,
            desired_replicas=replicas,
            revision=revision,
            selector=selector_string(owner),
            endpoint=endpoint(owner, spec),
            suspended=spec.suspend,
            gpus_per_pod=spec.worker.resources.gpus,
            gpu_resource=resource,
            deployment=deployment,
            pods=fleet.pods,
            capacity=capacity,
            rollout=decision.verdict,
            canary_deployment=canary,
            current_revision=decision.good,
            rollout_status=decision.status,
            revisions=rollout.record_revisions(
                previous.get("revisions") or [], decision.records, now
            ),
            rejected="; ".join(result.rejected) or None,
            foreign=tuple(result.foreign),
        )
        key = (owner.namespace, owner.name)
        extra = []
        block = None
        if spec.autoscaling.mode == "Builtin" and not spec.suspend:
            extra.extend(self.scaling.conditions(key))
            block = self.scaling.status_block(key)
        status = build_status(obs, previous, now, extra, block)
        await self._store_status(body, previous, status, result)

    async def _write_invalid(
        self, owner: Owner, body: dict[str, Any], message: str, result: ReconcileResult
    ) -> None:
        previous = body.get("status") or {}
        conds = invalid_spec_conditions(message)
        status = {k: v for k, v in previous.items() if k in STATUS_KEYS or k == "autoscaler"}
        status["observedGeneration"] = owner.generation
        status["conditions"] = merge(
            previous.get("conditions", []), conds, owner.generation, self._clock()
        )
        await self._store_status(body, previous, status, result)

    async def _store_status(
        self,
        body: dict[str, Any],
        previous: Mapping[str, Any],
        status: dict[str, Any],
        result: ReconcileResult,
    ) -> None:
        mine_before = {k: v for k, v in previous.items() if k in STATUS_KEYS or k == "autoscaler"}
        if mine_before == status:
            return
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        now = self._monotonic()
        since = now - self._status_written.get(key, -math.inf)
        if since < (allowed := write_delay(mine_before, status)):
            # The next reconcile writes whatever is true by then.
            wait = allowed - since
            result.requeue_after = min(result.requeue_after or wait, wait)
            return
        if log.isEnabledFor(logging.DEBUG):
            changed = sorted(
                k for k in {*mine_before, *status} if mine_before.get(k) != status.get(k)
            )
            log.debug("status of %s/%s changes: %s", meta["namespace"], meta["name"], changed)
        patch = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "status": status,
        }
        updated = await self.kube.apply(patch, subresource="status")
        self._status_written[key] = now
        metrics.WRITES.labels(kind=KIND, verb="status").inc()
        result.status_written = True
        # Keep the cache current so that a reconcile before the watch event sees our write.
        self.cache.llmds[key] = updated
        await self._announce_transitions(
            body, previous.get("conditions", []), status.get("conditions", [])
        )

    async def _announce_transitions(
        self,
        body: dict[str, Any],
        before: list[Mapping[str, Any]],
        after: list[Mapping[str, Any]],
    ) -> None:
        """An Event for each condition that flipped, or changed reason while True."""
        for cond in after:
            old = find(before, str(cond["type"]))
            flipped = old is None or old.get("status") != cond["status"]
            new_reason = old is not None and old.get("reason") != cond["reason"]
            if (
                cond["type"] == ConditionType.STALLED
                and cond["status"] == "True"
                and (flipped or new_reason)
            ):
                await self.kube.event(body, str(cond["reason"]), str(cond["message"]), "Warning")
            elif cond["type"] == ConditionType.READY and flipped and old is not None:
                state = "ready" if cond["status"] == "True" else "not ready"
                await self.kube.event(
                    body,
                    str(cond["reason"]),
                    f"{state}: {cond['message']}",
                    "Normal" if cond["status"] == "True" else "Warning",
                )


def write_delay(before: Mapping[str, Any], after: Mapping[str, Any]) -> float:
    """How long after the last status write the change from ``before`` to ``after`` may
    wait, so that what comes meanwhile shares one write.

    A transition of the fleet's own (another generation observed, one of its conditions
    appearing, going or changing status) is written at once; so is the autoscaler's once
    the fleet is Ready, and before that within ``SCALING_WRITE_SECONDS``; progress (counts,
    messages) within ``PROGRESS_WRITE_SECONDS``.
    """

    def states(status: Mapping[str, Any], scaling: bool) -> set[tuple[Any, Any]]:
        return {
            (c.get("type"), c.get("status"))
            for c in status.get("conditions") or []
            if (c.get("type") in SCALING_CONDITIONS) == scaling
        }

    if before.get("observedGeneration") != after.get("observedGeneration") or states(
        before, scaling=False
    ) != states(after, scaling=False):
        return 0.0
    if states(before, scaling=True) == states(after, scaling=True):
        return PROGRESS_WRITE_SECONDS
    if (ConditionType.READY.value, "True") in states(after, scaling=False):
        return 0.0

    def fleet_part(status: Mapping[str, Any]) -> dict[str, Any]:
        conditions = status.get("conditions") or []
        own = [c for c in conditions if c.get("type") not in SCALING_CONDITIONS]
        return {**status, "conditions": own, "autoscaler": None}

    progressed = fleet_part(before) != fleet_part(after)
    return PROGRESS_WRITE_SECONDS if progressed else SCALING_WRITE_SECONDS


def observed_through_metadata(
    applied: dict[str, Any], before: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``applied`` as its controller will report it after a metadata-only change.

    A Deployment's generation moves with its annotations too (the recorded good revision),
    and its controller then only copies the new generation into ``observedGeneration``.
    Waiting for that copy would show a settled fleet as rolling out for a moment (Ready
    False, then True again: one needless status write and a blip in every GitOps tool). When
    the generation before our write was observed, the new one is as good as observed.
    """
    if before is None or "generation" not in applied.get("metadata", {}):
        return applied
    gen = int(applied["metadata"]["generation"])
    seen = int((before.get("status") or {}).get("observedGeneration", -1))
    if gen != int(before.get("metadata", {}).get("generation", -2)) + 1 or seen != gen - 1:
        return applied
    out = copy.deepcopy(applied)
    out.setdefault("status", {})["observedGeneration"] = gen
    return out


def _ours(child: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    """Whether ``child`` carries an ownerReference to ``owner`` (its uid), controller or not.

    Every operator version set one on what it created; an object without one is someone
    else's, whatever its name or labels say.
    """
    uid = owner["metadata"].get("uid")
    refs = child.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def _deployment_key(owner: Owner, track: str) -> ChildKey:
    return ("apps/v1", "Deployment", deployment_name(owner, track))


def _replicas_of(dep: Mapping[str, Any] | None) -> int | None:
    return int(dep["spec"].get("replicas", 0)) if dep else None


def _settled(dep: Mapping[str, Any] | None) -> bool:
    """The Deployment controller has acted on the latest spec and every pod runs its template."""
    if not dep:
        return False
    st = dep.get("status", {})
    want = int(dep["spec"].get("replicas", 0))
    return (
        int(st.get("observedGeneration", 0)) >= int(dep["metadata"].get("generation", 0))
        and int(st.get("updatedReplicas", 0)) == want
        and int(st.get("replicas", 0)) == want
    )


def _stable_of(
    dep: Mapping[str, Any] | None, current_revision: str | None
) -> tuple[str | None, LLMDeploymentSpec | None, str | None]:
    """(revision, spec, spec JSON) of the last good revision: the stable Deployment's template
    when ``status.currentRevision`` names it (the status write that saw it Ready recorded it:
    no write of its own), else the one the Deployment recorded while its template moved on."""
    meta = (dep or {}).get("metadata") or {}
    annotations = meta.get("annotations") or {}
    template = (((dep or {}).get("spec") or {}).get("template") or {}).get("metadata") or {}
    template_rev = (template.get("labels") or {}).get(LABEL_REVISION)
    if current_revision and current_revision == template_rev:
        revision, raw = template_rev, annotations.get(ANNOTATION_TEMPLATE_SPEC)
        if not raw and annotations.get(ANNOTATION_STABLE_REVISION) == template_rev:
            raw = annotations.get(ANNOTATION_STABLE_SPEC)  # written by an older operator
    else:
        revision, raw = (
            annotations.get(ANNOTATION_STABLE_REVISION),
            annotations.get(ANNOTATION_STABLE_SPEC),
        )
    if not revision or not raw:
        return None, None, None
    try:
        return str(revision), LLMDeploymentSpec.model_validate(json.loads(raw)), str(raw)
    except (ValueError, ValidationError):
        log.warning("unreadable spec annotation on %s; no rollback target", meta.get("name"))
        return None, None, None


def _validation_message(error: ValidationError) -> str:
    parts = []
    for err in error.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"spec.{loc}: {err['msg']}")
    return "; ".join(parts)
