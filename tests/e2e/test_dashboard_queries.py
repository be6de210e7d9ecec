"""Every query of every panel of the shipped Grafana dashboards returns series, run against
the real Prometheus scraping real workers and the operator.

One LLMDeployment under steady load shows everything the panels need: the built-in
autoscaler's signals and a scaling decision (minReplicas raised from 1 to 2), and a canary
held at its step (``rollout.paused``), so that the canary-vs-stable panels have both a
candidate and a stable revision serving. The dashboards' variables are set as Grafana would:
``$namespace`` and ``$llmdeployment`` to the test's, ``$__rate_interval`` to 1m.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llmfleet_dev.kube import Kubectl
from llmfleet_dev.loadgen import LoadGenerator
from llmfleet_dev.localcluster import LocalCluster
from llmfleet_dev.podbacker import PodBacker
from llmfleet_dev.processes import OperatorProcess, operator_reading
from llmfleet_dev.prometheus import PrometheusServer
from llmfleet_dev.wait import wait_for
from llmfleet_operator import dashboards
from llmfleet_operator.dashboards.model import Dashboard

OPERATOR_JOB = "llmfleet-operator"


@pytest.fixture(scope="module")
def dashboard_operator(
    cluster: LocalCluster,
    crd_installed: str,
    prometheus_server: PrometheusServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The operator autoscaling and analysing from the test Prometheus, short windows."""
    with operator_reading(
        cluster.kubeconfig,
        prometheus_server.url,
        tmp_path_factory.mktemp("operator") / "operator.log",
        "--autoscale-interval=1",
        "--rate-window=15s",
        "--analysis-min-window=6",
    ) as proc:
        yield proc


@pytest.fixture
def scraped_operator(
    dashboard_operator: OperatorProcess, prometheus: PrometheusServer
) -> Iterator[OperatorProcess]:
    """The operator's /metrics scraped by the test Prometheus, as the chart's ServiceMonitor
    does in a cluster (for this test only: the Prometheus is the session's)."""
    prometheus.set_static_jobs({OPERATOR_JOB: [f"127.0.0.1:{dashboard_operator.metrics_port}"]})
    try:
        wait_for(
            "the operator scraped",
            lambda: any(t["health"] == "up" for t in prometheus.targets(OPERATOR_JOB)),
            timeout=30,
        )
        yield dashboard_operator
    finally:
        prometheus.set_static_jobs({})


def spec(min_replicas: int, revision: str = "v1") -> dict[str, Any]:
    return {
        "model": {"revision": revision},
        "autoscaling": {
            "mode": "Builtin",
            "minReplicas": min_replicas,
            "maxReplicas": 2,
            "targetQueueDepthPerReplica": 4,
            "scaleDownStabilizationSeconds": 600,
        },
        "worker": {"resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"}},
        "rollout": {
            "strategy": "Canary",
            "paused": True,  # hold the canary at its step: both revisions serve
            "progressDeadlineSeconds": 600,
            "canary": {
                "steps": [{"weight": 50, "pauseSeconds": 5}],
                "analysis": {"intervalSeconds": 2, "minRequests": 2, "maxTtftRatio": 10},
            },
        },
    }


def status(kube: Kubectl) -> dict[str, Any]:
    return dict(kube.get("llmd", "chat").get("status", {}))


def serving(backer: PodBacker, kube: Kubectl, revision: str | None = None) -> int:
    workers = backer.ready_workers(kube.namespace or "", "chat")
    return sum(1 for w in workers if revision is None or w.revision == revision)


def empty_queries(
    prometheus: PrometheusServer, dashboard: Dashboard, values: dict[str, str]
) -> list[str]:
    """The panel queries (as Grafana sends them) that return no series."""
    return [
        f"{panel.title}: {expr}"
        for panel, target in dashboard.targets()
        if not prometheus.query(expr := dashboards.expand(target.expr, values))
    ]


def roles(prometheus: PrometheusServer, values: dict[str, str], title: str) -> set[str]:
    [panel] = [p for p in dashboards.LLMDEPLOYMENT.panels() if p.title == title]
    [target] = panel.targets
    return {s["metric"]["role"] for s in prometheus.query(dashboards.expand(target.expr, values))}


@pytest.mark.usefixtures("scraped_operator")
def test_every_panel_query_returns_series(
    kube: Kubectl,
    apply_llmd: Callable[..., dict[str, Any]],
    pod_backer: PodBacker,
    prometheus: PrometheusServer,
) -> None:
    assert kube.namespace
    values = {"namespace": kube.namespace, "llmdeployment": "chat", "__rate_interval": "1m"}
    apply_llmd("chat", **spec(min_replicas=1))
    wait_for("one worker serving", lambda: serving(pod_backer, kube) == 1, timeout=120)
    url = pod_backer.endpoint(kube.namespace, "chat")
    assert url, "no balancer for this LLMDeployment"
    gen = LoadGenerator(
        url, model="chat", concurrency=2, duration=400, max_tokens=8, think_time=0.1
    ).start()
    try:
        wait_for("traffic", lambda: gen.completed >= 5, timeout=60)
        # A scaling decision: the autoscaler takes the fleet to the new lower bound.
        apply_llmd("chat", **spec(min_replicas=2))
        wait_for("two workers serving", lambda: serving(pod_backer, kube) == 2, timeout=120)
        # The backer's view can run ahead of the operator's status write.
        stable = str(
            wait_for("a current revision", lambda: status(kube).get("currentRevision"), timeout=60)
        )
        # A new model revision: the canary stops (paused) at its 50 % step.
        apply_llmd("chat", **spec(min_replicas=2, revision="v2"))

        def at_step() -> Any:
            st = status(kube)
            ro = st.get("rollout", {})
            held = ro.get("phase") == "Paused" and ro.get("stepStartedTime")
            return ro.get("candidateRevision") if held else None

        candidate = wait_for("the canary held at its step", at_step, timeout=180)
        wait_for(
            "canary and stable both serving",
            lambda: (
                serving(pod_backer, kube, candidate) >= 1 and serving(pod_backer, kube, stable) >= 1
            ),
            timeout=120,
        )
        # Both revisions in the canary-vs-stable panels once each has a rate (two scrapes
        # of its traffic inside the window).
        for title in ("Error ratio: canary vs stable", "TTFT p95: canary vs stable"):
            wait_for(
                f"{title}: candidate and stable",
                lambda title=title: roles(prometheus, values, title) == {"candidate", "stable"},
                timeout=90,
            )
        missing: dict[str, list[str]] = {}

        def every_query_answers() -> bool:
            missing.clear()
            for name, dashboard in dashboards.DASHBOARDS.items():
                if empty := empty_queries(prometheus, dashboard, values):
                    missing[name] = empty
            return not missing

        try:
            wait_for("every panel query answering", every_query_answers, timeout=60)
        except AssertionError as e:
            raise AssertionError(f"panel queries without series: {missing}") from e
        # The variables' queries (label_values) list this namespace and LLMDeployment.
        for dashboard in dashboards.DASHBOARDS.values():
            for variable in dashboard.variables:
                found = prometheus.query(dashboards.expand(variable.selector, values))
                assert values[variable.name] in {
                    s["metric"].get(variable.label_name) for s in found
                }
    finally:
        result = gen.stop()
    assert result.total > 20, result.summary()
