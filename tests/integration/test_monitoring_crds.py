"""The chart's PrometheusRule, ServiceMonitor and PodMonitor against prometheus-operator's own
CRDs (the pinned release's published files, hack/prometheus-operator-crds.sh): installed into
the test cluster, the rendered objects are applied with ``--dry-run=server``, so the real API
server validates them against the real schemas (strict field validation: an unknown or
misspelt field fails too). Nothing is stored.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmfleet_dev.helm import CHART, Helm
from llmfleet_dev.kube import Kubectl
from llmfleet_dev.localcluster import LocalCluster
from llmfleet_dev.wait import wait_for

SCRIPT = CHART.parents[1] / "hack" / "prometheus-operator-crds.sh"
KINDS = ("PrometheusRule", "ServiceMonitor", "PodMonitor")
MONITORING_ON = {
    "monitoring.prometheusRule.enabled": True,
    "monitoring.prometheusRule.labels.release": "kube-prometheus-stack",
    "monitoring.prometheusRule.alertLabels.team": "ml-platform",
    "monitoring.serviceMonitor.enabled": True,
    "monitoring.serviceMonitor.labels.release": "kube-prometheus-stack",
    "monitoring.podMonitor.enabled": True,
    "monitoring.podMonitor.labels.release": "kube-prometheus-stack",
}


@pytest.fixture(scope="module")
def helm(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(cluster.bin("helm"), tmp_path_factory.mktemp("helm-home"), cluster.kubeconfig)


@pytest.fixture(scope="module")
def monitoring_crds(kubectl: Kubectl) -> Iterator[list[str]]:
    """prometheus-operator's PrometheusRule, ServiceMonitor and PodMonitor CRDs, served.

    Removed afterwards unless the cluster had them before (LLMFLEET_REUSE_CLUSTER=1 with a
    cluster someone installed them into): no other test expects them.
    """
    out = subprocess.run(
        ["bash", str(SCRIPT)], check=True, stdout=subprocess.PIPE, text=True, timeout=600
    )
    files = sorted(Path(out.stdout.strip().splitlines()[-1]).glob("monitoring.coreos.com_*.yaml"))
    assert len(files) == len(KINDS), files
    names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
    existed = {n for n in names if kubectl.get_or_none("crd", n) is not None}
    # Server-side: the CRDs are too large for client-side apply's last-applied annotation.
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=llmfleet-tests",
        *(f"--filename={f}" for f in files),
    )
    try:
        for name in names:
            kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
        wait_for(
            "kubectl to discover the monitoring.coreos.com kinds",
            lambda: all(
                kubectl("get", kind.lower(), "--all-namespaces", check=False).returncode == 0
                for kind in KINDS
            ),
            timeout=30,
        )
        yield names
    finally:
        for name in names:
            if name not in existed:
                kubectl("delete", "crd", name, "--wait=false", check=False)


def dry_run(kube: Kubectl, objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """``kubectl apply --dry-run=server`` with strict field validation; nothing is stored."""
    return kube.run(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-o=json",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
        check=False,
    )


def monitors(helm: Helm, namespace: str, **values: object) -> list[dict[str, Any]]:
    docs = helm.template({**MONITORING_ON, **values}, namespace=namespace)
    found = [d for d in docs if d["kind"] in KINDS]
    assert sorted(d["kind"] for d in found) == sorted(KINDS)
    return found


def test_rendered_monitors_meet_the_prometheus_operator_schemas(
    helm: Helm, kube: Kubectl, namespace: str, monitoring_crds: list[str]
) -> None:
    objects = monitors(helm, namespace)
    result = dry_run(kube, objects)
    assert result.returncode == 0, result.stderr
    # What the API server would store: the rules, defaulted and pruned by the schema, intact
    # (a field the schema does not know would be gone).
    applied = json.loads(result.stdout)
    items = applied["items"] if applied.get("kind") == "List" else [applied]
    stored = {i["kind"]: i for i in items}
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    assert stored["PrometheusRule"]["spec"]["groups"] == rule["spec"]["groups"]
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    assert stored["ServiceMonitor"]["spec"]["endpoints"] == monitor["spec"]["endpoints"]

    # The namespace-scoped variant (the PodMonitor lists namespaces) and other rule values.
    scoped = monitors(
        helm,
        namespace,
        watchNamespaces=["team-a", "team-b"],
        **{"monitoring.prometheusRule.alerts.LLMFleetNoLeader.enabled": False},
    )
    result = dry_run(kube, scoped)
    assert result.returncode == 0, result.stderr


def test_the_schemas_really_are_checked(
    helm: Helm, kube: Kubectl, namespace: str, monitoring_crds: list[str]
) -> None:
    """The same objects, broken as a hand edit might break them, are refused."""
    objects = monitors(helm, namespace)
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    rule["spec"]["groups"][1]["rules"][0]["for"] = "ten minutes"
    result = dry_run(kube, [rule])
    assert result.returncode != 0
    assert "spec.groups[1].rules[0].for" in result.stderr, result.stderr

    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["honourLabels"] = True
    result = dry_run(kube, [monitor])
    assert result.returncode != 0
    assert "honourLabels" in result.stderr, result.stderr
