"""Pure: the leader-election rules over a ``coordination.k8s.io/v1`` Lease.

The same rules as client-go's ``leaderelection`` package, so that anyone who knows how a
kube-controller-manager fails over knows how llmfleet does:

- a candidate may take the Lease when nobody holds it, when it already holds it, or when the
  record has not changed for ``leaseDurationSeconds`` *as measured on the candidate's own
  clock* from when it last saw the record change (never from ``renewTime``, so that clock skew
  between nodes cannot shorten a lease);
- the holder renews every retry period and gives up leading when it could not renew for the
  renew deadline, which is shorter than the lease duration: the old leader stops before any
  standby may start;
- a holder that stops cleanly hands the Lease back (empty holder), and a standby takes it at
  its next retry instead of waiting out the duration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

API_VERSION: Final = "coordination.k8s.io/v1"
KIND: Final = "Lease"


def micro_time(moment: float) -> str:
    """A ``metav1.MicroTime`` as the API server writes it."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease's spec that the election reads."""

    holder: str = ""
    duration_seconds: int = 0
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0

    @classmethod
    def of(cls, lease: Mapping[str, Any] | None) -> LeaseRecord:
        spec = (lease or {}).get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=str(spec.get("acquireTime") or ""),
            renew_time=str(spec.get("renewTime") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
        )


def may_take(
    record: LeaseRecord,
    identity: str,
    observed_at: float,
    now: float,
    lease_seconds: float,
) -> bool:
    """Whether ``identity`` may write itself into the Lease now.

    ``observed_at`` is when (on this process's monotonic clock) the record was last seen to
    change. The holder's own ``leaseDurationSeconds`` counts when it is longer than ours: a
    leader configured with a longer lease is not cut short by a standby with a shorter one.
    """
    if not record.holder or record.holder == identity:
        return True
    duration = max(float(record.duration_seconds), lease_seconds)
    return now - observed_at >= duration


def taken_spec(
    record: LeaseRecord, identity: str, now: float, lease_seconds: float
) -> dict[str, Any]:
    """The Lease spec that makes ``identity`` the holder as of ``now`` (epoch seconds)."""
    renewing = record.holder == identity
    stamp = micro_time(now)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(lease_seconds)),
        "acquireTime": record.acquire_time if renewing and record.acquire_time else stamp,
        "renewTime": stamp,
        "leaseTransitions": record.transitions if renewing else record.transitions + 1,
    }


def released_spec(record: LeaseRecord, now: float) -> dict[str, Any]:
    """The spec a holder writes when it stops: nobody holds it, a standby takes it at once."""
    return {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": record.acquire_time or micro_time(now),
        "renewTime": micro_time(now),
        "leaseTransitions": record.transitions,
    }
