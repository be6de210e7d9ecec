"""Plan, then execute: from desired and observed children, what to apply and what to delete.

Pure. The comparison is "desired is a subset of observed": the API server adds defaults and
other writers add fields we do not declare, so an observed object that contains every field
we declare, with our values, needs no write. Resource quantities compare by value: the
server stores ``1.5Gi`` as ``1536Mi``. Anything else (a manual edit of a field we own,
a deleted child) is re-applied, which reverts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmfleet_operator.api import LABEL_REVISION
from llmfleet_operator.quantity import same_quantity

# Fields the API server owns or rewrites; never compared.
_IGNORED_METADATA = {
    "resourceVersion",
    "uid",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
}


def _is_quantity_field(path: str) -> bool:
    # The fields the API server stores as resource.Quantity (container resources, emptyDir
    # and volume claim sizes); elsewhere "1k" and "1000" are different strings.
    return ".resources." in path or path.endswith((".sizeLimit", ".storage"))


def child_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """Identity of a child: (apiVersion, kind, name)."""
    return (str(obj["apiVersion"]), str(obj["kind"]), str(obj["metadata"]["name"]))


def is_subset(desired: Any, observed: Any, path: str = "") -> bool:
    """Whether every field of ``desired`` appears in ``observed`` with the same value."""
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return False
        for key, value in desired.items():
            if path == ".metadata" and key in _IGNORED_METADATA:
                continue
            if key not in observed:
                if value in (None, {}, [], False, ""):
                    continue  # the server drops empty values; absent equals empty
                return False
            if not is_subset(value, observed[key], f"{path}.{key}"):
                return False
        return True
    if isinstance(desired, list):
        if not isinstance(observed, list) or len(desired) != len(observed):
            return False
        return all(is_subset(d, o, f"{path}[]") for d, o in zip(desired, observed, strict=True))
    if isinstance(desired, bool) or isinstance(observed, bool):
        return desired is observed
    if desired != observed and _is_quantity_field(path):
        return same_quantity(desired, observed)
    if isinstance(desired, int | float) and isinstance(observed, int | float):
        return float(desired) == float(observed)
    return bool(desired == observed)


@dataclass(frozen=True)
class Apply:
    """One server-side apply, with everything the executor needs to do and announce it."""

    obj: dict[str, Any]
    #: ``Created`` or ``Updated`` (the Event reason is verb + kind).
    verb: str
    #: The Event message.
    message: str
    #: The child is not in the cache as ours, yet its name may be taken: by an object we do
    #: not control (a user's own, a namesake's leftovers: never to be applied over), or by
    #: ours that the watch has not delivered (made by an earlier operator process). GET it
    #: first; skip the write when it already is what we want.
    look_first: bool = False
    #: Only metadata changes (bookkeeping annotations, labels): written without an Event.
    quiet: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return child_key(self.obj)


@dataclass
class Plan:
    """What to do to the children of one LLMDeployment."""

    apply: list[Apply] = field(default_factory=list)
    delete: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when the observed children already are what is desired."""
        return not self.apply and not self.delete


def _announcement(obj: Mapping[str, Any], verb: str, current: Mapping[str, Any] | None) -> str:
    kind, name = obj["kind"], obj["metadata"]["name"]
    message = f"{verb.lower()} {kind} {name}"
    if kind == "Deployment":
        want = obj["spec"]["replicas"]
        before = (current or {}).get("spec", {}).get("replicas")
        if before is not None and before != want:
            message += f" (replicas {before} -> {want})"
        else:
            labels = obj["spec"]["template"]["metadata"].get("labels") or {}
            revision = labels.get(LABEL_REVISION)
            message += f" (replicas {want}, revision {revision})"
    return message


def _same_but_metadata(obj: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    return is_subset({k: v for k, v in obj.items() if k != "metadata"}, current)


def plan_children(
    desired: Sequence[Mapping[str, Any]],
    observed: Iterable[Mapping[str, Any]],
    managed_kinds: Iterable[tuple[str, str]],
) -> Plan:
    """Apply the desired children that differ; delete observed children of a managed kind
    that are no longer desired (e.g. the PodDisruptionBudget when one replica is left).

    ``observed`` holds only the children the owner controls; one missing from it may still
    exist under the same name, so its creation looks first (``Apply.look_first``).
    """
    by_key = {child_key(o): o for o in observed}
    want = {child_key(d) for d in desired}
    managed = set(managed_kinds)
    plan = Plan()
    for obj in desired:
        current = by_key.get(child_key(obj))
        if current is not None and is_subset(obj, current):
            plan.unchanged.append(child_key(obj))
            continue
        verb = "Updated" if current is not None else "Created"
        plan.apply.append(
            Apply(
                dict(obj),
                verb,
                _announcement(obj, verb, current),
                look_first=current is None,
                quiet=current is not None and _same_but_metadata(obj, current),
            )
        )
    for key, obj in sorted(by_key.items()):
        if key not in want and (key[0], key[1]) in managed:
            plan.delete.append(dict(obj))
    return plan
