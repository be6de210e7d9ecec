"""The chart's PrometheusRule: rendered by the real helm, checked and unit-tested by the real
promtool (Debian's prometheus package has it; hack/apt.sh installs it).

The rules are written once, in charts/llmfleet/templates/prometheusrule.yaml; the promtool
unit tests in tests/unit/alerts/ run against that template rendered with the chart's
defaults (release "llmfleet" in "llmfleet-system"). Every alert has a test where it fires and
one where it does not, and a section in docs/runbooks.md that its runbook_url points at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from llmfleet_dev.helm import CHART, Helm, HelmError, Manifest, find, one
from llmfleet_dev.localcluster import ensure_tools
from llmfleet_worker import metrics as worker_metrics

ROOT = CHART.parents[1]
ALERT_TESTS = Path(__file__).resolve().parent / "alerts"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
ON = {"monitoring.prometheusRule.enabled": True}

ALERTS = {
    "LLMFleetNoReadyReplicas",
    "LLMFleetScaleUpBlockedByGPUs",
    "LLMFleetRolloutStalled",
    "LLMFleetRolledBack",
    "LLMFleetCanaryAnalysisFailed",
    "LLMFleetTTFTBudgetBurn",
    "LLMFleetHighErrorRatio",
    "LLMFleetQueueSaturatedAtMaxReplicas",
    "LLMFleetWorkerMetricsStale",
    "LLMFleetReconcileErrors",
    "LLMFleetOperatorDown",
    "LLMFleetNoLeader",
}


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = ensure_tools() / "helm"
    assert binary.exists(), f"hack/tools.sh did not provide {binary}"
    return Helm(str(binary), tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def promtool() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if found is None:
        pytest.fail(
            "promtool is not installed: run `make apt` (hack/apt.sh installs Debian's "
            "prometheus package, which has promtool)"
        )
    return found


def numbers(values: dict[str, float]) -> list[str]:
    """``--set-json`` flags: ``helm --set`` passes 0.5 on as the string "0.5"."""
    return [
        a for key, value in values.items() for a in ("--set-json", f"{key}={json.dumps(value)}")
    ]


def rule_of(docs: list[Manifest]) -> Manifest:
    return one(docs, "PrometheusRule")


def rules(rule: Manifest) -> list[dict[str, Any]]:
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def alerts(rule: Manifest) -> list[dict[str, Any]]:
    return [r for r in rules(rule) if "alert" in r]


def expr_of(rule: Manifest, name: str) -> str:
    """The expressions of the rules that record or alert ``name``, joined."""
    return "\n".join(r["expr"] for r in rules(rule) if name in (r.get("alert"), r.get("record")))


def write_rules(rule: Manifest, directory: Path) -> Path:
    """The PrometheusRule's groups as a Prometheus rule file."""
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def run_promtool(promtool: str, *args: str, cwd: Path) -> str:
    result = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors = set()
    for heading in re.findall(r"^#+ +(.+?) *$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.fixture(scope="module")
def default_rule(helm: Helm) -> Manifest:
    return rule_of(helm.template(ON))


# --- rendering ---------------------------------------------------------------------------------


def test_off_by_default(helm: Helm) -> None:
    assert not find(helm.template(), "PrometheusRule")
    assert not find(helm.template({"monitoring.serviceMonitor.enabled": True}), "PrometheusRule")


def test_lint_strict_passes_with_every_monitor_on(helm: Helm) -> None:
    helm.run(
        "lint",
        "--strict",
        str(CHART),
        "--set",
        "monitoring.prometheusRule.enabled=true,monitoring.serviceMonitor.enabled=true",
        "--set",
        "monitoring.podMonitor.enabled=true,monitoring.prometheusRule.labels.release=kp",
    )


def test_on_renders_every_alert_with_severity_and_annotations(default_rule: Manifest) -> None:
    assert default_rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert default_rule["metadata"]["namespace"] == "llmfleet-system"
    assert default_rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "llmfleet"
    assert {a["alert"] for a in alerts(default_rule)} == ALERTS
    anchors = github_anchors(RUNBOOKS.read_text())
    for alert in alerts(default_rule):
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert set(alert["annotations"]) == {"summary", "description", "runbook_url"}, name
        url, _, anchor = alert["annotations"]["runbook_url"].partition("#")
        assert url == "https://github.com/llmfleet/llmfleet/blob/main/docs/runbooks.md", name
        assert anchor == name.lower(), name
        assert anchor in anchors, f"docs/runbooks.md has no section for {name}"
    # The recording rules the alerts use are in the same PrometheusRule.
    recorded = {r["record"] for r in rules(default_rule) if "record" in r}
    used = set(
        re.findall(r"namespace_llmdeployment:[a-z_]+:ratio_rate\w+", str(alerts(default_rule)))
    )
    assert used
    assert used <= recorded


def test_values_flow_into_the_rules(helm: Helm) -> None:
    rule = rule_of(
        helm.template(
            {
                **ON,
                "monitoring.prometheusRule.labels.release": "kp",
                "monitoring.prometheusRule.alertLabels.team": "ml-platform",
                "monitoring.prometheusRule.runbookURL": "https://wiki.example.com/llmfleet",
                "monitoring.prometheusRule.alerts.LLMFleetNoReadyReplicas.for": "3m",
                "monitoring.prometheusRule.alerts.LLMFleetHighErrorRatio.severity": "warning",
                "monitoring.prometheusRule.alerts.LLMFleetNoLeader.enabled": False,
            },
            *numbers(
                {
                    "monitoring.prometheusRule.ttftSLO.thresholdSeconds": 0.5,
                    "monitoring.prometheusRule.ttftSLO.objective": 0.995,
                    "monitoring.prometheusRule.errorRatio.threshold": 0.02,
                    "monitoring.prometheusRule.queueSaturation.waitingPerReplica": 16,
                }
            ),
            release="prod",
            namespace="ops",
        )
    )
    assert rule["metadata"]["labels"]["release"] == "kp"
    by_name = {a["alert"]: a for a in alerts(rule)}
    assert "LLMFleetNoLeader" not in by_name
    assert by_name["LLMFleetNoReadyReplicas"]["for"] == "3m"
    assert "for 3m:" in by_name["LLMFleetNoReadyReplicas"]["annotations"]["description"]
    assert by_name["LLMFleetHighErrorRatio"]["labels"]["severity"] == "warning"
    for alert in alerts(rule):
        assert alert["labels"]["team"] == "ml-platform"
        assert alert["annotations"]["runbook_url"].startswith("https://wiki.example.com/llmfleet#")
    slow = expr_of(rule, "namespace_llmdeployment:llmfleet_worker_ttft_slow:ratio_rate1h")
    assert 'llmfleet_worker_time_to_first_token_seconds_bucket{le="0.5"}[1h]' in slow
    burn = expr_of(rule, "LLMFleetTTFTBudgetBurn")
    assert "> (14.4 * (1 - 0.995))" in burn
    assert "> (1 * (1 - 0.995))" in burn
    assert expr_of(rule, "LLMFleetHighErrorRatio").rstrip().endswith("> 0.02")
    assert "> 16" in expr_of(rule, "LLMFleetQueueSaturatedAtMaxReplicas")
    # The operator's own alerts look at this release's ServiceMonitor target only.
    assert 'up{job="prod-llmfleet-metrics", namespace="ops"}' in expr_of(
        rule, "LLMFleetOperatorDown"
    )
    job = rule_of(
        helm.template({**ON, "monitoring.prometheusRule.operatorJob": "llmfleet-operator"})
    )
    assert 'job="llmfleet-operator"' in expr_of(job, "LLMFleetReconcileErrors")


def test_operator_job_is_the_service_monitors(helm: Helm) -> None:
    """prometheus-operator names a ServiceMonitor target's job after the Service."""
    docs = helm.template({**ON, "monitoring.serviceMonitor.enabled": True})
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    # The fleets' series keep their own `namespace` label (not exported_namespace).
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    want = f'job="{service["metadata"]["name"]}", namespace="{service["metadata"]["namespace"]}"'
    rule = rule_of(docs)
    for name in ("LLMFleetOperatorDown", "LLMFleetNoLeader", "LLMFleetReconcileErrors"):
        assert want in expr_of(rule, name), name


@pytest.mark.parametrize("bound", worker_metrics.TTFT_BUCKETS)
def test_ttft_threshold_selects_the_bucket_the_worker_exposes(helm: Helm, bound: float) -> None:
    """The rule's le matcher is spelt exactly as the worker's /metrics spells that bound."""
    exposition = generate_latest(worker_metrics.Metrics().registry).decode()
    threshold = {"monitoring.prometheusRule.ttftSLO.thresholdSeconds": bound}
    rule = rule_of(helm.template(ON, *numbers(threshold)))
    (le,) = set(re.findall(r'_bucket\{le="([^"]+)"\}', str(rules(rule))))
    assert f'{worker_metrics.TIME_TO_FIRST_TOKEN}_bucket{{le="{le}"}}' in exposition


def test_values_and_schema_name_every_alert() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["monitoring"]["prometheusRule"]["alerts"]) == ALERTS
    schema = json.loads((CHART / "values.schema.json").read_text())
    rule = schema["properties"]["monitoring"]["properties"]["prometheusRule"]
    assert set(rule["properties"]["alerts"]["properties"]) == ALERTS


def test_schema_allows_exactly_the_worker_ttft_buckets() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    slo = schema["properties"]["monitoring"]["properties"]["prometheusRule"]["properties"][
        "ttftSLO"
    ]
    assert slo["properties"]["thresholdSeconds"]["enum"] == list(worker_metrics.TTFT_BUCKETS)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"monitoring.prometheusRule.ttftSLO.thresholdSeconds": 1.5},
            "at '/monitoring/prometheusRule/ttftSLO/thresholdSeconds': value must be one of",
        ),
        (
            {"monitoring.prometheusRule.ttftSLO.objective": 99},
            "at '/monitoring/prometheusRule/ttftSLO/objective'",
        ),
        (
            {"monitoring.prometheusRule.alerts.LLMFleetNoLeader.for": "five minutes"},
            "at '/monitoring/prometheusRule/alerts/LLMFleetNoLeader/for'",
        ),
        (
            {"monitoring.prometheusRule.alerts.LLMFleetNoLeaders.enabled": False},
            "additional properties 'LLMFleetNoLeaders' not allowed",
        ),
        (
            {"monitoring.prometheusRule.alertLabels.severity": "page"},
            "invalid propertyName 'severity'",
        ),
    ],
)
def test_bad_values_fail_against_the_schema(
    helm: Helm, values: dict[str, object], expected: str
) -> None:
    plain = {
        k: v for k, v in values.items() if not isinstance(v, float | int) or isinstance(v, bool)
    }
    json_values = {k: v for k, v in values.items() if k not in plain}
    with pytest.raises(HelmError) as failure:
        helm.template({**ON, **plain}, *numbers(json_values))
    assert expected in failure.value.stderr, failure.value.stderr


# --- promtool ---------------------------------------------------------------------------------


def test_promtool_checks_the_rendered_rules(
    helm: Helm, promtool: str, tmp_path: Path, default_rule: Manifest
) -> None:
    out = run_promtool(
        promtool, "check", "rules", str(write_rules(default_rule, tmp_path)), cwd=tmp_path
    )
    assert f"SUCCESS: {len(rules(default_rule))} rules found" in out
    # Non-default values render valid rules too.
    other = rule_of(
        helm.template(
            {**ON, "monitoring.prometheusRule.operatorJob": 'odd"job'},
            *numbers(
                {
                    "monitoring.prometheusRule.ttftSLO.thresholdSeconds": 10,
                    "monitoring.prometheusRule.ttftSLO.objective": 0.9,
                }
            ),
        )
    )
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    run_promtool(promtool, "check", "rules", str(write_rules(other, other_dir)), cwd=other_dir)


def test_promtool_unit_tests_pass(promtool: str, tmp_path: Path, default_rule: Manifest) -> None:
    write_rules(default_rule, tmp_path)
    tests = sorted(ALERT_TESTS.glob("*.yaml"))
    assert tests
    for test in tests:
        shutil.copy(test, tmp_path / test.name)
    out = run_promtool(promtool, "test", "rules", *(t.name for t in tests), cwd=tmp_path)
    assert "FAILED" not in out, out


def test_every_alert_has_a_firing_and_a_quiet_case(default_rule: Manifest) -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in ALERT_TESTS.glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["rules.yaml"], path
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                expected = case.get("exp_alerts") or []
                (fires if expected else quiet).add(case["alertname"])
                for alert in expected:
                    # Firing cases state the labels and every annotation.
                    assert alert["exp_labels"].get("severity"), (path.name, group["name"])
                    assert set(alert["exp_annotations"]) == {
                        "summary",
                        "description",
                        "runbook_url",
                    }, (path.name, group["name"])
    names = {a["alert"] for a in alerts(default_rule)}
    assert names - fires == set(), "alerts without a test where they fire"
    assert names - quiet == set(), "alerts without a test where they stay quiet"
