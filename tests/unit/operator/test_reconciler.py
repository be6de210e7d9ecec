"""The reconciler's side effects against an in-memory stand-in for the API server.

Unit level: what is written, and above all what is not (a second reconcile of the same
state writes nothing). The real API server is in tests/integration."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from llmfleet_operator.cache import Cache
from llmfleet_operator.reconciler import Reconciler

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class FakeKube:
    """Records writes; answers GETs from what was applied."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.applies: list[tuple[str, str]] = []
        self.deletes: list[str] = []
        self.events: list[str] = []

    async def get(self, path: str) -> dict[str, Any] | None:
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


def setup() -> tuple[FakeKube, Cache, Reconciler]:
    kube = FakeKube()
    cache = Cache()
    cache.observe_llmd("ADDED", copy.deepcopy(LLMD))
    return kube, cache, Reconciler(kube, cache, clock=lambda: T0)  # type: ignore[arg-type]


async def test_first_reconcile_applies_children_and_status_then_nothing() -> None:
    kube, cache, rec = setup()
    result = await rec.reconcile(("ns", "chat"))
    kinds = sorted(k for k, _ in kube.applies)
    assert kinds == ["Deployment", "LLMDeployment/status", "PodDisruptionBudget", "Service"]
    assert result.status_written
    assert "CreatedDeployment" in kube.events
    # The watch echoes our writes back; the next reconcile of the same state writes nothing.
    for (kind, _), obj in zip(kube.applies, list(kube.objects.values()), strict=False):
        if kind != "LLMDeployment/status":
            cache.observe_child("MODIFIED", obj)
    kube.applies.clear()
    again = await rec.reconcile(("ns", "chat"))
    assert kube.applies == []
    assert not again.status_written


async def test_scaling_to_one_deletes_the_pdb() -> None:
    kube, cache, rec = setup()
    await rec.reconcile(("ns", "chat"))
    for obj in list(kube.objects.values()):
        if obj["kind"] != "LLMDeployment":
            cache.observe_child("MODIFIED", obj)
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
