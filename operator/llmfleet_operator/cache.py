"""The informer cache: what the watch streams have told us about LLMDeployments and their
children, keyed by owner. Reconciling and the autoscaler read it; only watch events and the
reconciler's own writes change it."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmfleet_operator.api import API_VERSION, KIND, LABEL_DEPLOYMENT, LLMDeploymentSpec, parse_spec
from llmfleet_operator.plan import child_key

Key = tuple[str, str]  # (namespace, LLMDeployment name)
ChildKey = tuple[str, str, str]  # (apiVersion, kind, name)
NameKey = tuple[str, str, str, str]  # (namespace, apiVersion, kind, name)


def _name_key(obj: Mapping[str, Any]) -> NameKey:
    meta = obj["metadata"]
    return (meta["namespace"], str(obj.get("apiVersion")), str(obj.get("kind")), meta["name"])


def slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What deciding "is this name ours to apply over" needs of an object we do not keep."""
    meta = obj.get("metadata", {})
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "ownerReferences", "labels", "deletionTimestamp")
            if k in meta
        },
    }


def _is_stale(cached: Mapping[str, Any] | None, incoming: Mapping[str, Any]) -> bool:
    """Whether ``incoming`` is not newer than what the cache holds for the same object.

    The cache takes both watch events and the answers to our own writes, and a watch can
    deliver an event from before our write after it: taking that would move the object back
    in time (a status we already wrote, a Deployment before our change). resourceVersions
    are etcd revisions; where one is not a number we cannot tell, and take the event.
    """
    if cached is None:
        return False
    old, new = cached.get("metadata", {}), incoming.get("metadata", {})
    if old.get("uid") != new.get("uid"):
        return False
    try:
        # Equal: the same object (e.g. the watch echoing our own write); keep what we hold,
        # which may carry what we know about it (see reconciler.observed_through_metadata).
        return int(new.get("resourceVersion", "")) <= int(old.get("resourceVersion", ""))
    except ValueError:
        return False


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The LLMDeployment ownerReference with ``controller: true`` of ``obj``, if any."""
    for ref in obj.get("metadata", {}).get("ownerReferences", []) or []:
        if (
            ref.get("kind") == KIND
            and ref.get("apiVersion") == API_VERSION
            and ref.get("controller")
        ):
            return dict(ref)
    return None


def owner_key_of_child(obj: Mapping[str, Any]) -> Key | None:
    """The LLMDeployment a child belongs to: its controller ownerReference, never a label
    (a user's own Service may carry ours). Pods are the exception: their controller is a
    ReplicaSet, and we only read them, so the fleet label groups them."""
    meta = obj.get("metadata", {})
    ref = controller_of(obj)
    if ref is not None:
        return (meta["namespace"], str(ref["name"]))
    if obj.get("kind") != "Pod":
        return None
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
    #: Every other object of a kind we create, slimmed, by name: a child about to be created
    #: whose name one of these holds is someone else's, and is never applied over.
    others: dict[NameKey, dict[str, Any]] = field(default_factory=dict)

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
        elif not _is_stale(self.llmds.get(key), body):
            self.llmds[key] = copy.deepcopy(dict(body))
        return key

    def named(
        self, namespace: str, api_version: str, kind: str, name: str
    ) -> dict[str, Any] | None:
        """The object we do not control that holds this name, if the watches saw one."""
        return self.others.get((namespace, api_version, kind, name))

    def _observe_other(self, event: str | None, body: Mapping[str, Any]) -> None:
        nk = _name_key(body)
        meta = body["metadata"]
        cached = self.others.get(nk)
        if event == "DELETED":
            if cached is None or cached["metadata"].get("uid") == meta.get("uid"):
                self.others.pop(nk, None)
        else:
            self.others[nk] = slim(body)

    def observe_child(self, event: str | None, body: Mapping[str, Any]) -> Key | None:
        """A watched object of a managed kind (or a fleet's pod): returns the LLMDeployment
        it belongs to; objects of nobody's fleet are remembered by name only."""
        key = owner_key_of_child(body)
        if key is None:
            if body.get("kind") != "Pod":
                self._observe_other(event, body)
            return None
        if body.get("kind") != "Pod":
            # Controlled by an LLMDeployment now: no longer someone else's.
            self.others.pop(_name_key(body), None)
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
        cached = children.get(ck)
        if event == "DELETED":
            if cached is None or cached["metadata"].get("uid") == body["metadata"].get("uid"):
                children.pop(ck, None)  # not a newer object of the same name
        elif not _is_stale(cached, body):
            children[ck] = copy.deepcopy(dict(body))
        return key

    def put_child(self, key: Key, body: Mapping[str, Any]) -> None:
        """An object as our own write (or a GET) returned it."""
        children = self.children.setdefault(key, {})
        if not _is_stale(children.get(child_key(body)), body):
            children[child_key(body)] = copy.deepcopy(dict(body))
