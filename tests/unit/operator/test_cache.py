"""The informer cache takes watch events and our own writes' answers; an event from before
our write must not move an object back in time."""

from __future__ import annotations

from typing import Any

from llmfleet_operator.cache import Cache

KEY = ("ns", "chat")
OWNER = {
    "apiVersion": "llmfleet.io/v1alpha1",
    "kind": "LLMDeployment",
    "name": "chat",
    "uid": "owner-uid",
    "controller": True,
}


def dep(rv: str, replicas: int, uid: str = "u1") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "chat",
            "namespace": "ns",
            "uid": uid,
            "resourceVersion": rv,
            "labels": {"llmfleet.io/deployment": "chat"},
            "ownerReferences": [OWNER],
        },
        "spec": {"replicas": replicas},
    }


def cached(cache: Cache) -> dict[str, Any]:
    return cache.children[KEY][("apps/v1", "Deployment", "chat")]


def test_a_late_watch_event_does_not_undo_our_write() -> None:
    cache = Cache()
    cache.observe_child("ADDED", dep("100", 2))
    cache.put_child(KEY, dep("120", 3))  # what our apply returned
    cache.observe_child("MODIFIED", dep("110", 2))  # the watch catches up late
    assert cached(cache)["spec"]["replicas"] == 3
    cache.observe_child("MODIFIED", dep("130", 3))
    assert cached(cache)["metadata"]["resourceVersion"] == "130"


def test_a_recreated_object_replaces_the_old_one_and_its_late_delete_is_ignored() -> None:
    cache = Cache()
    cache.observe_child("ADDED", dep("500", 1, uid="old"))
    cache.put_child(KEY, dep("90", 1, uid="new"))  # another object: versions do not compare
    assert cached(cache)["metadata"]["uid"] == "new"
    cache.observe_child("DELETED", dep("501", 1, uid="old"))
    assert cached(cache)["metadata"]["uid"] == "new"
    cache.observe_child("DELETED", dep("95", 1, uid="new"))
    assert ("apps/v1", "Deployment", "chat") not in cache.children[KEY]


def test_a_late_llmdeployment_event_does_not_undo_our_status_write() -> None:
    cache = Cache()
    body = {"metadata": {"name": "chat", "namespace": "ns", "uid": "x", "resourceVersion": "7"}}
    cache.observe_llmd("ADDED", {**body, "status": {"phase": "new"}})
    stale = {**body, "metadata": {**body["metadata"], "resourceVersion": "6"}, "status": {}}
    cache.observe_llmd("MODIFIED", stale)
    assert cache.llmds[KEY]["status"] == {"phase": "new"}


def test_children_are_ours_by_controller_reference_and_pods_by_label() -> None:
    cache = Cache()
    theirs = dep("1", 1)
    theirs["kind"], theirs["apiVersion"] = "Service", "v1"
    theirs["metadata"]["ownerReferences"] = []  # the user's own, with our label
    assert cache.observe_child("ADDED", theirs) is None
    not_controller = dep("2", 1)
    not_controller["metadata"]["ownerReferences"] = [{**OWNER, "controller": False}]
    assert cache.observe_child("ADDED", not_controller) is None
    assert cache.observe_child("ADDED", dep("3", 1)) == KEY
    pod = {
        "kind": "Pod",
        "metadata": {
            "name": "chat-1",
            "namespace": "ns",
            "labels": {"llmfleet.io/deployment": "chat"},
        },
    }
    assert cache.observe_child("ADDED", pod) == KEY
