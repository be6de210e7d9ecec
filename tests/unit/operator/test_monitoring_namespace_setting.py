"""--monitoring-namespace: the namespace the worker NetworkPolicies admit Prometheus from."""

from __future__ import annotations

import pytest

from llmfleet_operator.__main__ import build_parser
from llmfleet_operator.settings import OperatorSettings, from_args


def settings(*argv: str) -> OperatorSettings:
    return from_args(build_parser().parse_args(["run", *argv]))


def test_monitoring_namespace_defaults_to_monitoring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMFLEET_MONITORING_NAMESPACE", raising=False)
    assert settings().monitoring_namespace == "monitoring"
    assert OperatorSettings().monitoring_namespace == "monitoring"


def test_monitoring_namespace_from_the_environment_and_the_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMFLEET_MONITORING_NAMESPACE", "kube-prometheus")  # the chart's way
    assert settings().monitoring_namespace == "kube-prometheus"
    assert settings("--monitoring-namespace=prom").monitoring_namespace == "prom"
    assert settings("--monitoring-namespace=").monitoring_namespace == ""  # none admitted
