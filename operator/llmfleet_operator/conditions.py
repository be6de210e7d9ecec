"""Kubernetes-style conditions: a list keyed by ``type``.

Pure helpers, as in cert-manager's ``pkg/api/util/conditions.go``: a condition's
``lastTransitionTime`` moves only when its ``status`` flips, so that re-evaluating the same
state yields a byte-identical status and the operator writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Condition:
    """One evaluated condition, before it is merged with what the object already has."""

    type: str
    status: Status
    reason: str
    message: str = ""


def rfc3339(moment: datetime) -> str:
    """The second-precision UTC timestamp Kubernetes uses in status."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(
    previous: Iterable[Mapping[str, Any]],
    evaluated: Iterable[Condition],
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """The new condition list: ``evaluated`` stamped with times and ``generation``.

    A condition keeps its previous ``lastTransitionTime`` unless its status changed; types
    that are no longer evaluated are dropped. The order follows ``evaluated``.
    """
    before = {str(c.get("type")): c for c in previous}
    merged: list[dict[str, Any]] = []
    for cond in evaluated:
        old = before.get(cond.type)
        flipped = old is None or old.get("status") != cond.status
        merged.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message,
                "lastTransitionTime": rfc3339(now)
                if flipped or not old or not old.get("lastTransitionTime")
                else str(old["lastTransitionTime"]),
                "observedGeneration": generation,
            }
        )
    return merged


def find(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    """The condition of ``type_`` or None."""
    for c in conditions:
        if c.get("type") == type_:
            return c
    return None
