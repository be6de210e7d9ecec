"""Reconcile one LLMDeployment: gather, plan, apply, evaluate status, write only if changed.

The watch streams (wired in ``handlers``) keep an in-memory ``Cache`` of LLMDeployments and
their children, like an informer; reconciling reads the cache, so a steady fleet causes no
API reads and, because plans and statuses are compared before writing, no writes either.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from llmfleet_operator import metrics
from llmfleet_operator.api import (
    API_VERSION,
    KIND,
    LABEL_DEPLOYMENT,
    LABEL_REVISION,
    ConditionType,
    LLMDeploymentSpec,
    parse_spec,
)
from llmfleet_operator.capacity import GpuCapacity, gpu_capacity, pod_info
from llmfleet_operator.conditions import Condition, find, merge
from llmfleet_operator.k8s import ApiError, Kube, object_path, resource_path
from llmfleet_operator.plan import child_key, is_subset, plan_children
from llmfleet_operator.resources import (
    MANAGED_KINDS,
    Owner,
    desired_children,
    desired_replicas,
    endpoint,
    revision_of,
    selector_string,
)
from llmfleet_operator.status import Observation, build_status, invalid_spec_conditions

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, LLMDeployment name)
ChildKey = tuple[str, str, str]  # (apiVersion, kind, name)

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
)
#: While pods wait for GPUs, look again this often to refresh the free-GPU figures.
GPU_RECHECK_SECONDS = 30.0


def owner_key_of_child(obj: Mapping[str, Any]) -> Key | None:
    """The LLMDeployment a child belongs to (by controller ownerReference, then label)."""
    meta = obj.get("metadata", {})
    for ref in meta.get("ownerReferences", []) or []:
        if ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION:
            return (meta["namespace"], ref["name"])
    name = (meta.get("labels") or {}).get(LABEL_DEPLOYMENT)
    return (meta["namespace"], name) if name else None


@dataclass
class Cache:
    """What the watches have told us, keyed by owner."""

    llmds: dict[Key, dict[str, Any]] = field(default_factory=dict)
    children: dict[Key, dict[ChildKey, dict[str, Any]]] = field(default_factory=dict)
    pods: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # Parsed specs by (key, generation): the spec changes only with the generation, and the
    # autoscaler looks at every object each interval.
    _specs: dict[Key, tuple[int, LLMDeploymentSpec]] = field(default_factory=dict)

    def spec_of(self, key: Key, body: Mapping[str, Any]) -> LLMDeploymentSpec:
        """The typed spec of ``body`` (raises pydantic's ValidationError)."""
        generation = int(body["metadata"].get("generation", 0))
        cached = self._specs.get(key)
        if cached is not None and cached[0] == generation:
            return cached[1]
        spec = parse_spec(body)
        self._specs[key] = (generation, spec)
        return spec

    def observe_llmd(self, event: str | None, body: Mapping[str, Any]) -> Key:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event == "DELETED":
            self.llmds.pop(key, None)
            self._specs.pop(key, None)
        else:
            self.llmds[key] = copy.deepcopy(dict(body))
        return key

    def observe_child(self, event: str | None, body: Mapping[str, Any]) -> Key | None:
        key = owner_key_of_child(body)
        if key is None:
            return None
        if body.get("kind") == "Pod":
            pods = self.pods.setdefault(key, {})
            name = body["metadata"]["name"]
            if event == "DELETED":
                pods.pop(name, None)
            else:
                pods[name] = copy.deepcopy(dict(body))
            return key
        children = self.children.setdefault(key, {})
        ck = child_key(body)
        if event == "DELETED":
            children.pop(ck, None)
        else:
            children[ck] = copy.deepcopy(dict(body))
        return key

    def put_child(self, key: Key, body: Mapping[str, Any]) -> None:
        self.children.setdefault(key, {})[child_key(body)] = copy.deepcopy(dict(body))


@dataclass
class ReconcileResult:
    """What one reconcile did (for tests, logs and requeueing)."""

    applied: list[ChildKey] = field(default_factory=list)
    deleted: list[ChildKey] = field(default_factory=list)
    status_written: bool = False
    requeue_after: float | None = None


class ScalingView(Protocol):
    """What the reconciler reads from the autoscaler (the autoscaler never writes)."""

    def wants(self, key: Key) -> int | None: ...
    def status_block(self, key: Key) -> dict[str, Any] | None: ...
    def conditions(self, key: Key) -> list[Condition]: ...


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
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.scaling: ScalingView = scaling or NoAutoscaler()
        self._clock = clock
        self._capacity: dict[str, tuple[float, GpuCapacity | None]] = {}
        self._started_at = time.time()

    async def reconcile(self, key: Key) -> ReconcileResult:
        """Bring the children and status of ``key`` in line with its spec."""
        started = time.monotonic()
        body = self.cache.llmds.get(key)
        result = ReconcileResult()
        if body is None or body["metadata"].get("deletionTimestamp"):
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
        observed = self.cache.children.get(key, {})
        deployment = observed.get(("apps/v1", "Deployment", owner.name))
        current = deployment["spec"].get("replicas") if deployment else None
        # Our own last decision, not the Deployment's field: a hand-made `kubectl scale
        # deployment` must be reverted, not adopted.
        decided = (body.get("status") or {}).get("desiredReplicas")
        replicas = desired_replicas(
            spec, decided if decided is not None else current, self._wants(key, spec)
        )
        desired = desired_children(owner, spec, replicas, revision)
        plan = plan_children(desired, observed.values(), MANAGED_KINDS)
        for obj in plan.apply:
            await self._apply_child(key, body, obj, current, result)
        for obj in plan.delete:
            if await self.kube.delete(obj):
                await self.kube.event(
                    body, "Deleted", f"deleted {obj['kind']} {obj['metadata']['name']}"
                )
                metrics.WRITES.labels(kind=obj["kind"], verb="delete").inc()
            self.cache.children.get(key, {}).pop(child_key(obj), None)
            result.deleted.append(child_key(obj))
        deployment = self.cache.children.get(key, {}).get(("apps/v1", "Deployment", owner.name))
        await self._write_status(owner, spec, body, deployment, replicas, revision, result)

    async def _apply_child(
        self,
        key: Key,
        body: dict[str, Any],
        obj: dict[str, Any],
        current_replicas: int | None,
        result: ReconcileResult,
    ) -> None:
        ck = child_key(obj)
        if ck not in self.cache.children.get(key, {}) and self._may_predate_us(body):
            # Created before this operator started, so the child may exist although the
            # watch has not delivered it yet: look before writing.
            live = await self.kube.get(object_path(obj))
            if live is not None:
                self.cache.put_child(key, live)
                if is_subset(obj, live):
                    return
            verb = "Created" if live is None else "Updated"
        else:
            verb = "Updated" if ck in self.cache.children.get(key, {}) else "Created"
        applied = await self.kube.apply(obj)
        self.cache.put_child(key, applied)
        result.applied.append(ck)
        metrics.WRITES.labels(kind=obj["kind"], verb="apply").inc()
        kind, name = obj["kind"], obj["metadata"]["name"]
        message = f"{verb.lower()} {kind} {name}"
        if kind == "Deployment":
            want = obj["spec"]["replicas"]
            if current_replicas is not None and current_replicas != want:
                message += f" (replicas {current_replicas} -> {want})"
            else:
                message += (
                    f" (replicas {want}, revision {obj['metadata']['labels'][LABEL_REVISION]})"
                )
        await self.kube.event(body, f"{verb}{kind}", message)

    def _wants(self, key: Key, spec: LLMDeploymentSpec) -> int | None:
        return self.scaling.wants(key) if spec.autoscaling.mode == "Builtin" else None

    def _may_predate_us(self, body: Mapping[str, Any]) -> bool:
        created = body["metadata"].get("creationTimestamp")
        if not created:
            return True
        born = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
        # Children of an object created after we started were created by us, and every
        # write of ours goes into the cache; a margin covers clock granularity.
        return born.timestamp() < self._started_at - 5.0

    async def gpu_capacity(self, resource: str, max_age: float = 10.0) -> GpuCapacity | None:
        """Free GPUs, cached up to ``max_age`` seconds; None when RBAC does not allow the
        cluster-wide look."""
        now = time.monotonic()
        cached = self._capacity.get(resource)
        if cached and now - cached[0] < max_age:
            return cached[1]
        try:
            nodes = await self.kube.list(resource_path("v1", "Node"))
            pods = await self.kube.list(
                resource_path("v1", "Pod"),
                field_selector="status.phase!=Succeeded,status.phase!=Failed",
            )
            capacity: GpuCapacity | None = gpu_capacity(nodes, pods, resource)
        except ApiError as e:
            if e.status != 403:
                raise
            if resource not in self._capacity:
                log.warning(
                    "cannot list nodes and pods cluster-wide (%s); InsufficientGPU messages "
                    "will not say how many GPUs are free. Grant nodes get/list and pods list.",
                    e.message,
                )
            capacity = None
        self._capacity[resource] = (now, capacity)
        return capacity

    async def _write_status(
        self,
        owner: Owner,
        spec: LLMDeploymentSpec,
        body: dict[str, Any],
        deployment: Mapping[str, Any] | None,
        replicas: int,
        revision: str,
        result: ReconcileResult,
    ) -> None:
        resource = spec.worker.resources.gpu_resource_name
        pods = [
            pod_info(p, resource, LABEL_REVISION)
            for p in self.cache.pods.get((owner.namespace, owner.name), {}).values()
        ]
        waiting = any(p.waiting_for_gpu and not p.terminating for p in pods)
        capacity = await self.gpu_capacity(resource) if waiting else None
        if waiting:
            result.requeue_after = GPU_RECHECK_SECONDS
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
            pods=pods,
            capacity=capacity,
        )
        previous = body.get("status") or {}
        key = (owner.namespace, owner.name)
        extra = []
        block = None
        if spec.autoscaling.mode == "Builtin" and not spec.suspend:
            extra.extend(self.scaling.conditions(key))
            block = self.scaling.status_block(key)
        status = build_status(obs, previous, self._clock(), extra, block)
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
        patch = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "status": status,
        }
        updated = await self.kube.apply(patch, subresource="status")
        metrics.WRITES.labels(kind=KIND, verb="status").inc()
        result.status_written = True
        # Keep the cache current so that a reconcile before the watch event sees our write.
        self.cache.llmds[(meta["namespace"], meta["name"])] = updated
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


def _validation_message(error: ValidationError) -> str:
    parts = []
    for err in error.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"spec.{loc}: {err['msg']}")
    return "; ".join(parts)
