"""``llmfleet-operator run`` hands kopf the same identity it holds the Lease with, so kopf never
derives one from the process's user name: the image runs as uid 65532, which has no passwd
entry, and ``getpass.getuser()`` raises there (found on a real node; python:3.11-slim has no
such entry either)."""

from __future__ import annotations

import getpass
import logging
from typing import Any

import kopf
import pytest

from llmfleet_operator.__main__ import run
from llmfleet_operator.settings import OperatorSettings


def run_capturing_kopf(monkeypatch: pytest.MonkeyPatch, config: OperatorSettings) -> dict[str, Any]:
    """What ``run`` passes to ``kopf.operator``, with no user name to be had."""
    captured: dict[str, Any] = {}

    async def operator(**kwargs: Any) -> None:
        captured.update(kwargs)

    def no_passwd_entry() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(kopf, "operator", operator)
    monkeypatch.setattr(kopf, "configure", lambda **_: None)
    monkeypatch.setattr(getpass, "getuser", no_passwd_entry)
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)  # run() sets it; put it back afterwards
    assert run(config) == 0
    return captured


def test_kopf_gets_the_lease_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    captured = run_capturing_kopf(
        monkeypatch, OperatorSettings(metrics_port=0, identity="llmfleet-7d9f-abcde")
    )
    assert captured["identity"] == "llmfleet-7d9f-abcde"
    assert captured["memo"].config.identity == "llmfleet-7d9f-abcde"


def test_without_one_the_operator_makes_one_up_for_both(monkeypatch: pytest.MonkeyPatch) -> None:
    captured = run_capturing_kopf(monkeypatch, OperatorSettings(metrics_port=0))
    assert captured["identity"]
    assert captured["identity"] == captured["memo"].config.identity
