"""The reconciler's side effects against an in-memory stand-in for the API server.

Unit level: what is written, and above all what is not (a second reconcile of the same
state writes nothing). The real API server is in tests/integration."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from llmfleet_operator.api import LABEL_REVISION, LLMDeploymentSpec
from llmfleet_operator.cache import Cache
from llmfleet_operator.reconciler import (
    FOREIGN_RETRY_SECONDS,
    LEFTOVER_RETRY_SECONDS,
    PROGRESS_WRITE_SECONDS,
    SCALING_WRITE_SECONDS,
    Reconciler,
    _stable_of,
    observed_through_metadata,
    write_delay,
)
from llmfleet_operator.resources import (
    ANNOTATION_STABLE_REVISION,
    ANNOTATION_STABLE_SPEC,
    ANNOTATION_TEMPLATE_SPEC,
    spec_json,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class FakeKube:
    """Records writes; answers GETs from what was applied."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.gets: list[str] = []
        self.applies: list[tuple[str, str]] = []
        self.deletes: list[str] = []
        self.events: list[str] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        self.gets.append(path)
        return copy.deepcopy(self.objects.get(path))

    async def list(self, path: str, **_: Any) -> list[dict[str, Any]]:
        return []

    async def apply(
        self, obj: dict[str, Any], subresource: str | None = None, **_: Any
    ) -> dict[str, Any]:
        kind = obj["kind"] + (f"/{subresource}" if subresource else "")
        self.applies.append((kind, obj["metadata"]["name"]))
        stored = copy.deepcopy(obj)
        stored["metadata"].setdefault("uid", "child-uid")
        if subresource == "status":
            stored = {**copy.deepcopy(LLMD), "status": obj["status"]}
        self.objects[f"{kind}:{obj['metadata']['name']}"] = stored
        return stored

    async def delete(self, obj: dict[str, Any]) -> bool:
        self.deletes.append(obj["kind"])
        return True

    async def event(
        self, body: dict[str, Any], reason: str, message: str, type_: str = "Normal"
    ) -> None:
        self.events.append(reason)


LLMD: dict[str, Any] = {
    "apiVersion": "llmfleet.io/v1alpha1",
    "kind": "LLMDeployment",
    "metadata": {
        "name": "chat",
        "namespace": "ns",
        "uid": "u1",
        "generation": 1,
        "creationTimestamp": "2099-01-01T00:00:00Z",
    },
    "spec": {
        "model": {"uri": "pvc://models/tiny"},
        "autoscaling": {"mode": "Manual"},
        "replicas": 2,
    },
}


def echo_children(kube: FakeKube, cache: Cache) -> None:
    """What the watches deliver after our writes: every child as the API server stored it."""
    for obj in list(kube.objects.values()):
        if obj["kind"] != "LLMDeployment":
            cache.observe_child("MODIFIED", obj)


def setup() -> tuple[FakeKube, Cache, Reconciler]:
    kube = FakeKube()
    cache = Cache()
    cache.observe_llmd("ADDED", copy.deepcopy(LLMD))
    return kube, cache, Reconciler(kube, cache, clock=lambda: T0)  # type: ignore[arg-type]


async def test_first_reconcile_applies_children_and_status_then_nothing() -> None:
    kube, cache, rec = setup()
    result = await rec.reconcile(("ns", "chat"))
    kinds = sorted(k for k, _ in kube.applies)
    assert kinds == [
        "Deployment",
        "LLMDeployment/status",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
    ]
    assert result.status_written
    # A new fleet's children go unannounced: its Ready transition is the Event.
    assert kube.events == []
    # The watch echoes our writes back; the next reconcile of the same state writes nothing.
    for (kind, _), obj in zip(kube.applies, list(kube.objects.values()), strict=False):
        if kind != "LLMDeployment/status":
            cache.observe_child("MODIFIED", obj)
    kube.applies.clear()
    again = await rec.reconcile(("ns", "chat"))
    assert kube.applies == []
    assert not again.status_written


async def test_children_written_once_the_fleet_has_a_status_are_announced_in_one_event() -> None:
    kube, cache, rec = setup()
    await rec.reconcile(("ns", "chat"))
    echo_children(kube, cache)
    # Deleted by hand: the watch says so.
    cache.observe_child("DELETED", kube.objects["Service:chat"])
    kube.applies.clear()
    await rec.reconcile(("ns", "chat"))
    assert [k for k, _ in kube.applies] == ["Service"]
    assert kube.events == ["CreatedService"]


async def test_scaling_to_one_deletes_the_pdb() -> None:
    kube, cache, rec = setup()
    await rec.reconcile(("ns", "chat"))
    echo_children(kube, cache)
    one = copy.deepcopy(cache.llmds[("ns", "chat")])
    one["spec"]["replicas"] = 1
    one["metadata"]["generation"] = 2
    cache.observe_llmd("MODIFIED", one)
    result = await rec.reconcile(("ns", "chat"))
    assert kube.deletes == ["PodDisruptionBudget"]
    assert ("policy/v1", "PodDisruptionBudget", "chat") in result.deleted


async def test_a_spec_the_operator_cannot_read_is_reported_not_acted_on() -> None:
    kube, cache, rec = setup()
    broken = copy.deepcopy(LLMD)
    broken["spec"]["model"]["uri"] = "s3://bucket/model"  # older CRD, newer rules
    cache.observe_llmd("MODIFIED", broken)
    result = await rec.reconcile(("ns", "chat"))
    assert [k for k, _ in kube.applies] == ["LLMDeployment/status"]
    status = kube.objects["LLMDeployment/status:chat"]["status"]
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidSpec")
    assert "spec.model.uri" in stalled["message"]
    assert result.status_written


async def test_a_deleted_object_is_left_to_garbage_collection() -> None:
    kube, cache, rec = setup()
    gone = copy.deepcopy(LLMD)
    gone["metadata"]["deletionTimestamp"] = "2026-03-01T00:00:00Z"
    cache.observe_llmd("MODIFIED", gone)
    await rec.reconcile(("ns", "chat"))
    assert kube.applies == []


def users_service(**meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "chat", "namespace": "ns", "uid": "theirs", **meta},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "their-own"}},
    }


def conditions_of(kube: FakeKube) -> dict[str, dict[str, Any]]:
    status = kube.objects["LLMDeployment/status:chat"]["status"]
    return {c["type"]: c for c in status["conditions"]}


async def test_a_foreign_object_with_a_childs_name_is_never_applied_over() -> None:
    kube, cache, rec = setup()
    theirs = users_service(labels={"llmfleet.io/deployment": "chat"})
    cache.observe_child("ADDED", theirs)  # the watches see every Service, ours or not
    result = await rec.reconcile(("ns", "chat"))
    assert kube.gets == []  # known from the watch: no GET before creating
    assert ("Service", "chat") not in kube.applies
    # What can be applied is.
    assert {"Deployment", "NetworkPolicy", "PodDisruptionBudget"} <= {k for k, _ in kube.applies}
    assert result.foreign == ["Service chat"]
    assert result.requeue_after == FOREIGN_RETRY_SECONDS
    conds = conditions_of(kube)
    assert (conds["Stalled"]["status"], conds["Stalled"]["reason"]) == ("True", "ForeignObject")
    assert conds["Stalled"]["message"].startswith("Service chat exists and is not this ")
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "ForeignObject")
    assert kube.events.count("ForeignObject") == 1
    assert ("v1", "Service", "chat") not in cache.children.get(("ns", "chat"), {})

    # Looking again changes nothing: no write, no second Event.
    echo_children(kube, cache)
    kube.applies.clear()
    again = await rec.reconcile(("ns", "chat"))
    assert kube.applies == []
    assert not again.status_written
    assert kube.events.count("ForeignObject") == 1

    # The user's Service goes away: ours is created and the stall clears.
    cache.observe_child("DELETED", theirs)
    after = await rec.reconcile(("ns", "chat"))
    assert ("Service", "chat") in kube.applies
    assert after.foreign == []
    assert conditions_of(kube)["Stalled"]["status"] == "False"


async def test_a_child_with_our_owner_reference_is_taken_as_today() -> None:
    kube, cache, rec = setup()
    ours = {"apiVersion": "llmfleet.io/v1alpha1", "kind": "LLMDeployment", "name": "chat"}
    # Our ownerReference, but not as controller (e.g. added by hand): applied over, which
    # makes us its controller.
    cache.observe_child("ADDED", users_service(ownerReferences=[{**ours, "uid": "u1"}]))
    result = await rec.reconcile(("ns", "chat"))
    assert ("Service", "chat") in kube.applies
    assert result.foreign == []
    assert conditions_of(kube)["Stalled"]["status"] == "False"


async def test_a_predecessors_leftover_is_left_to_the_garbage_collector_quietly() -> None:
    kube, cache, rec = setup()
    ref = {"apiVersion": "llmfleet.io/v1alpha1", "kind": "LLMDeployment", "name": "chat"}
    cache.observe_child(
        "ADDED", users_service(ownerReferences=[{**ref, "uid": "u0", "controller": True}])
    )
    result = await rec.reconcile(("ns", "chat"))
    assert ("Service", "chat") not in kube.applies
    assert result.foreign == []
    assert result.requeue_after == LEFTOVER_RETRY_SECONDS
    assert conditions_of(kube)["Stalled"]["status"] == "False"


async def test_the_monitoring_namespace_reaches_the_network_policy() -> None:
    kube = FakeKube()
    cache = Cache()
    cache.observe_llmd("ADDED", copy.deepcopy(LLMD))
    rec = Reconciler(kube, cache, clock=lambda: T0, monitoring_namespace="prom")  # type: ignore[arg-type]
    await rec.reconcile(("ns", "chat"))
    policy = kube.objects["NetworkPolicy:chat"]
    selector = policy["spec"]["ingress"][1]["from"][0]["namespaceSelector"]
    assert selector == {"matchLabels": {"kubernetes.io/metadata.name": "prom"}}


def _deployment(generation: int, observed: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "chat", "generation": generation, "resourceVersion": "9"},
        "status": {"observedGeneration": observed, "readyReplicas": 2},
    }


def test_a_metadata_only_write_keeps_an_observed_deployment_observed() -> None:
    # The recorded good revision moved generation 3 -> 4; 3 had been observed.
    after = observed_through_metadata(_deployment(4, 3), _deployment(3, 3))
    assert after["status"]["observedGeneration"] == 4
    assert after["status"]["readyReplicas"] == 2


def test_a_metadata_only_write_does_not_hide_a_pending_spec_change() -> None:
    # Generation 3 (a spec change) was not observed yet: nothing is as good as observed.
    assert observed_through_metadata(_deployment(4, 2), _deployment(3, 2))["status"] == {
        "observedGeneration": 2,
        "readyReplicas": 2,
    }
    # Another writer moved the generation too (3 -> 5): not ours alone to vouch for.
    assert (
        observed_through_metadata(_deployment(5, 3), _deployment(3, 3))["status"][
            "observedGeneration"
        ]
        == 3
    )
    # A creation has nothing before it.
    assert observed_through_metadata(_deployment(1, 0), None)["status"]["observedGeneration"] == 0


async def test_a_pod_stuck_creating_is_explained_from_its_events_once_it_waited() -> None:
    kube, cache, rec = setup()
    listed: list[str] = []

    async def events(path: str, **query: Any) -> list[dict[str, Any]]:
        listed.append(query["field_selector"])
        return [{"reason": "FailedAttachVolume", "message": 'Multi-Attach error for "pvc-1"'}]

    kube.list = events  # type: ignore[method-assign]
    await rec.reconcile(("ns", "chat"))
    template = kube.objects["Deployment:chat"]["spec"]["template"]

    def stuck_for(seconds: int) -> dict[str, Any]:
        scheduled = (T0 - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
        waiting = {"waiting": {"reason": "ContainerCreating"}}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "p0",
                "uid": "pod-uid",
                "namespace": "ns",
                "labels": template["metadata"]["labels"],
            },
            "spec": template["spec"],
            "status": {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled}
                ],
                "containerStatuses": [{"name": "worker", "state": waiting}],
            },
        }

    cache.observe_child("ADDED", stuck_for(5))
    early = await rec.reconcile(("ns", "chat"))
    assert listed == []  # a pod that just started creating is not looked into
    assert early.requeue_after == 15.0  # but looked at when it has waited long enough

    cache.observe_child("MODIFIED", stuck_for(30))
    late = await rec.reconcile(("ns", "chat"))
    assert listed == ["involvedObject.uid=pod-uid"]
    stalled = conditions_of(kube)["Stalled"]
    assert (stalled["status"], stalled["reason"]) == ("True", "VolumeAttachFailed")
    assert stalled["message"] == (
        '1 pod VolumeAttachFailed: p0: FailedAttachVolume: Multi-Attach error for "pvc-1"'
    )
    assert late.requeue_after == 20.0  # no watch tells when it is attached: look again
    await rec.reconcile(("ns", "chat"))
    assert len(listed) == 1  # the Events are read again only after that


def _stable_dep(template_rev: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "chat", "annotations": annotations},
        "spec": {"template": {"metadata": {"labels": {LABEL_REVISION: template_rev}}}},
    }


def test_the_rollback_target_is_the_template_once_status_names_it_good() -> None:
    a, b = spec_json(LLMDeploymentSpec.model_validate(LLMD["spec"])), "{}"
    fresh = _stable_dep("A", {ANNOTATION_TEMPLATE_SPEC: a})
    # Never Ready yet: nothing to roll back to.
    assert _stable_of(fresh, None)[0] is None
    # The status write that saw it Ready recorded it: no write to the Deployment needed.
    assert _stable_of(fresh, "A")[::2] == ("A", a)
    # A rollout moved the template to B: the apply that moved it recorded A.
    rolling = _stable_dep(
        "B",
        {ANNOTATION_TEMPLATE_SPEC: b, ANNOTATION_STABLE_REVISION: "A", ANNOTATION_STABLE_SPEC: a},
    )
    assert _stable_of(rolling, "A")[::2] == ("A", a)
    # An older operator recorded the good revision in the stable pair alone.
    older = _stable_dep("A", {ANNOTATION_STABLE_REVISION: "A", ANNOTATION_STABLE_SPEC: a})
    assert _stable_of(older, "A")[::2] == ("A", a)
    # An unreadable spec is no rollback target.
    assert _stable_of(_stable_dep("A", {ANNOTATION_TEMPLATE_SPEC: "{"}), "A")[0] is None


async def test_progress_is_written_at_most_every_5s_and_a_transition_at_once() -> None:
    kube, cache, _ = setup()
    now = [100.0]
    rec = Reconciler(kube, cache, clock=lambda: T0, monotonic=lambda: now[0])  # type: ignore[arg-type]
    await rec.reconcile(("ns", "chat"))
    echo_children(kube, cache)
    statuses = lambda: [k for k, _ in kube.applies].count("LLMDeployment/status")  # noqa: E731
    assert statuses() == 1

    def deployment_reports(replicas: int, ready: int) -> None:
        dep = copy.deepcopy(kube.objects["Deployment:chat"])
        dep["metadata"]["generation"] = 1
        dep["status"] = {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        cache.observe_child("MODIFIED", dep)

    # The Deployment controller made the pods: progress, 2 s after the last write.
    deployment_reports(2, 0)
    now[0] += 2.0
    result = await rec.reconcile(("ns", "chat"))
    assert statuses() == 1
    assert result.requeue_after == pytest.approx(PROGRESS_WRITE_SECONDS - 2.0)
    # Due: the latest progress is written.
    now[0] += PROGRESS_WRITE_SECONDS - 2.0
    assert (await rec.reconcile(("ns", "chat"))).status_written
    assert statuses() == 2
    # A new generation 0.1 s later (a spec this operator cannot read: Stalled turns True):
    # a transition, written at once.
    broken = copy.deepcopy(cache.llmds[("ns", "chat")])
    broken["spec"]["model"]["uri"] = "s3://bucket/model"
    broken["metadata"]["generation"] = 2
    cache.observe_llmd("MODIFIED", broken)
    now[0] += 0.1
    assert (await rec.reconcile(("ns", "chat"))).status_written
    assert statuses() == 3


def test_a_transition_is_written_at_once_and_progress_within_5s() -> None:
    def status(generation: int, ready: str, message: str) -> dict[str, Any]:
        conds = [{"type": "Ready", "status": ready, "reason": "R", "message": message}]
        return {"observedGeneration": generation, "conditions": conds, "readyReplicas": 1}

    at_once, progress = 0.0, PROGRESS_WRITE_SECONDS
    assert write_delay(status(1, "False", "0/2 ready"), status(1, "False", "1/2 ready")) == progress
    assert write_delay(status(1, "False", "1/2 ready"), status(1, "True", "2/2 ready")) == at_once
    assert write_delay(status(1, "False", "x"), status(2, "False", "x")) == at_once
    assert write_delay({}, status(1, "False", "x")) == at_once


def test_the_autoscalers_verdict_on_a_fleet_not_yet_ready_waits_for_the_fleets_next_write() -> None:
    def status(ready: str, scaling: str | None, ready_replicas: int = 0) -> dict[str, Any]:
        conds = [{"type": "Ready", "status": ready, "reason": "R", "message": "m"}]
        if scaling is not None:
            conds.append(
                {"type": "ScalingActive", "status": scaling, "reason": "S", "message": "m"}
            )
        return {"observedGeneration": 1, "conditions": conds, "readyReplicas": ready_replicas}

    # A new fleet's first verdict: it rides on the Ready write, or waits 15 s at most.
    assert write_delay(status("False", None), status("False", "True")) == SCALING_WRITE_SECONDS
    # ... unless the fleet's own progress is written anyway within a second.
    assert write_delay(status("False", None), status("False", "True", 1)) == PROGRESS_WRITE_SECONDS
    # A Ready fleet hears at once that its metrics went (or came back).
    assert write_delay(status("True", "True"), status("True", "False")) == 0.0
    assert write_delay(status("True", None), status("True", "False")) == 0.0
    # The fleet's own transition is written at once, with the verdict.
    assert write_delay(status("False", None), status("True", "True", 1)) == 0.0
