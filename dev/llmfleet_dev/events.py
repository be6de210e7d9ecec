"""A stand-in for the operator's client where a test only needs the Events it posts."""

from __future__ import annotations

from typing import Any


class EventRecorder:
    """Has ``Kube.event``'s signature; keeps (reason, message, type) of every Event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    async def event(
        self, body: dict[str, Any], reason: str, message: str, type_: str = "Normal"
    ) -> None:
        self.events.append((reason, message, type_))

    @property
    def reasons(self) -> list[str]:
        return [reason for reason, _, _ in self.events]
