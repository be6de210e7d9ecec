"""Plan, then execute: from desired and observed children, what to apply and what to delete.

Pure. The comparison is "desired is a subset of observed": the API server adds defaults and
other writers add fields we do not declare, so an observed object that contains every field
we declare, with our values, needs no write. Anything else (a manual edit of a field we own,
a deleted child) is re-applied, which reverts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Fields the API server owns or rewrites; never compared.
_IGNORED_METADATA = {
    "resourceVersion",
    "uid",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
}


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
    if isinstance(desired, int | float) and isinstance(observed, int | float):
        return float(desired) == float(observed)
    return bool(desired == observed)


@dataclass
class Plan:
    """What to do to the children of one LLMDeployment."""

    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when the observed children already are what is desired."""
        return not self.apply and not self.delete


def plan_children(
    desired: Sequence[Mapping[str, Any]],
    observed: Iterable[Mapping[str, Any]],
    managed_kinds: Iterable[tuple[str, str]],
) -> Plan:
    """Apply the desired children that differ; delete observed children of a managed kind
    that are no longer desired (e.g. the PodDisruptionBudget when one replica is left)."""
    by_key = {child_key(o): o for o in observed}
    want = {child_key(d) for d in desired}
    managed = set(managed_kinds)
    plan = Plan()
    for obj in desired:
        current = by_key.get(child_key(obj))
        if current is not None and is_subset(obj, current):
            plan.unchanged.append(child_key(obj))
        else:
            plan.apply.append(dict(obj))
    for key, obj in sorted(by_key.items()):
        if key not in want and (key[0], key[1]) in managed:
            plan.delete.append(dict(obj))
    return plan
