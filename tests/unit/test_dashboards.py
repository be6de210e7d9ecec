"""The Grafana dashboards: the committed JSON is the generator's output, every query names
only metrics that exist, is valid PromQL (promtool) and is scoped to the dashboard's
variables, and the layout is sound. That every query returns series against the real
Prometheus is tests/e2e/test_dashboard_queries.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmfleet_operator import dashboards, metrics
from llmfleet_operator.dashboards import definitions
from llmfleet_operator.dashboards.model import Dashboard
from llmfleet_worker import metrics as worker_metrics

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "charts" / "llmfleet" / "files" / "dashboards"
PROMTOOL = Path("/usr/bin/promtool")
#: What the e2e test and promtool put in for the variables.
VALUES = {"__rate_interval": "1m", "namespace": "team-a", "llmdeployment": "chat"}
METRIC = re.compile(r"\b(llmfleet_(?:worker|operator)_[a-z0-9_]+)")

ALL = list(dashboards.DASHBOARDS.values())


def test_committed_json_is_the_generated_json() -> None:
    wanted = dashboards.render_all()
    committed = {p.name: p.read_text() for p in COMMITTED.glob("*.json")}
    assert set(committed) == set(wanted), "run `make dashboards`"
    for name, text in wanted.items():
        assert committed[name] == text, (
            f"{name} differs from the generator's; run `make dashboards`"
        )


def operator_metric_names() -> set[str]:
    names = set(metrics.FAMILIES)
    for family in metrics.REGISTRY.collect():
        # Families without samples yet (labelled counters) by their exposition names.
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def worker_metric_names() -> set[str]:
    names = set(worker_metrics.METRIC_NAMES)
    histograms = {
        worker_metrics.TIME_TO_FIRST_TOKEN,
        worker_metrics.INTER_TOKEN_LATENCY,
        worker_metrics.REQUEST_DURATION,
    }
    for h in histograms:
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names


def test_worker_names_are_the_workers() -> None:
    assert set(definitions.WORKER_METRICS) <= set(worker_metrics.METRIC_NAMES)


@pytest.mark.parametrize("dashboard", ALL, ids=lambda d: d.uid)
def test_every_query_names_metrics_that_exist(dashboard: Dashboard) -> None:
    known = operator_metric_names() | worker_metric_names()
    for panel, target in dashboard.targets():
        used = set(METRIC.findall(target.expr))
        assert used, (panel.title, target.expr)
        assert used <= known, (panel.title, used - known)


@pytest.mark.parametrize("dashboard", ALL, ids=lambda d: d.uid)
def test_every_query_is_valid_promql(dashboard: Dashboard, tmp_path: Path) -> None:
    if not PROMTOOL.exists():
        pytest.fail(f"{PROMTOOL} is missing; run `make apt` (hack/apt.sh)")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": dashboards.expand(t.expr, VALUES)}
        for i, (_, t) in enumerate(dashboard.targets())
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": dashboard.uid, "rules": rules}]}))
    result = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for _, t in dashboard.targets():
        assert "$" not in dashboards.expand(t.expr, VALUES), t.expr


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, matchers) of every selector of a worker or per-fleet operator metric."""
    return [
        (m.group(1), m.group(2) or "")
        for m in re.finditer(METRIC.pattern + r"(?:\{([^}]*)\})?", expr)
    ]


FLEET_WIDE = {
    # Operator-wide and cluster-wide series: no LLMDeployment to scope them to.
    "llmfleet_operator_reconciles_total",
    "llmfleet_operator_reconcile_duration_seconds_bucket",
    "llmfleet_operator_workqueue_depth",
    "llmfleet_operator_workqueue_latency_seconds_bucket",
    "llmfleet_operator_api_writes_total",
    "llmfleet_operator_leader",
    "llmfleet_operator_leadership_changes_total",
    metrics.GPUS,
}


def test_per_llmdeployment_queries_are_scoped_to_the_variables() -> None:
    for panel, target in definitions.LLMDEPLOYMENT.targets():
        for metric, matchers in selectors(target.expr):
            assert metric not in FLEET_WIDE, (panel.title, metric)
            assert 'namespace="$namespace"' in matchers, (panel.title, metric)
            assert 'llmdeployment="$llmdeployment"' in matchers, (panel.title, metric)


def test_overview_queries_follow_the_namespace_picker() -> None:
    for panel, target in definitions.OVERVIEW.targets():
        for metric, matchers in selectors(target.expr):
            if metric not in FLEET_WIDE:
                assert 'namespace=~"$namespace"' in matchers, (panel.title, metric)


def test_worker_queries_count_each_pod_once() -> None:
    """As the autoscaler's queries: one value per pod before any sum (two scrape jobs)."""
    for dashboard in ALL:
        for panel, target in dashboard.targets():
            if "llmfleet_worker_" in target.expr and "max by (pod)" not in target.expr:
                assert "pod" in target.expr.split("llmfleet_worker_")[0], (panel.title, target.expr)


@pytest.mark.parametrize("dashboard", ALL, ids=lambda d: d.uid)
def test_rendered_json_uses_the_datasource_variable_and_a_sound_grid(dashboard: Dashboard) -> None:
    out: dict[str, Any] = json.loads(dashboards.to_json(dashboard))
    variables = {v["name"]: v for v in out["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = out["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert t["expr"]
    for v in out["templating"]["list"][1:]:
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_variables() -> None:
    overview = {v.name: v for v in definitions.OVERVIEW.variables}
    assert set(overview) == {"namespace"}
    assert overview["namespace"].include_all
    assert overview["namespace"].all_value == ".*"
    one = {v.name: v for v in definitions.LLMDEPLOYMENT.variables}
    assert set(one) == {"namespace", "llmdeployment"}
    assert one["llmdeployment"].query == (
        'label_values(llmfleet_operator_desired_replicas{namespace="$namespace"}, llmdeployment)'
    )


def test_the_issue_asks_for_these_panels() -> None:
    overview = {p.title for p in definitions.OVERVIEW.panels()}
    assert {
        "Requests/s by LLMDeployment",
        "Error ratio by LLMDeployment",
        "Time to first token p50 / p95",
        "Queue: waiting and running requests",
        "GPUs used vs free",
        "Scaling decisions",
    } <= overview
    one = {p.title for p in definitions.LLMDEPLOYMENT.panels()}
    assert {
        "Requests/s by outcome",
        "Time to first token",
        "Inter-token latency",
        "Tokens/s",
        "Queue depth",
        "Running and batch capacity",
        "Batch size by pod",
        "KV cache utilisation by pod",
        "Replicas desired vs ready",
        "Rollout phase",
        "Error ratio: canary vs stable",
        "TTFT p95: canary vs stable",
    } <= one


def test_expand_sets_every_spelling_of_a_variable() -> None:
    expr = 'rate(x{a="$namespace", b="${llmdeployment}"}[$__rate_interval])'
    assert dashboards.expand(expr, VALUES) == 'rate(x{a="team-a", b="chat"}[1m])'
