"""The chart's Grafana dashboards (monitoring.dashboards), rendered by the real helm binary:
off by default; on, one ConfigMap per dashboard carrying the Grafana sidecar's label and the
committed JSON verbatim."""

from __future__ import annotations

import json

import pytest

from llmfleet_dev.helm import CHART, Helm, HelmError, Manifest, find
from llmfleet_dev.localcluster import ensure_tools
from llmfleet_operator import dashboards

NAMESPACE = "llmfleet-system"
ON = {"monitoring.dashboards.enabled": True}


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = ensure_tools() / "helm"
    assert binary.exists(), f"hack/tools.sh did not provide {binary}"
    return Helm(str(binary), tmp_path_factory.mktemp("helm-home"))


def config_maps(docs: list[Manifest]) -> dict[str, Manifest]:
    return {d["metadata"]["name"]: d for d in find(docs, "ConfigMap")}


def test_off_by_default(helm: Helm) -> None:
    assert not config_maps(helm.template())
    assert not config_maps(helm.template({"monitoring.dashboards.enabled": False}))


def test_on_one_config_map_per_dashboard_for_the_grafana_sidecar(helm: Helm) -> None:
    maps = config_maps(helm.template(ON, namespace=NAMESPACE))
    assert set(maps) == {"llmfleet-dashboard-overview", "llmfleet-dashboard-llmdeployment"}
    wanted = dashboards.render_all()
    for name, cm in maps.items():
        assert cm["metadata"]["namespace"] == NAMESPACE
        labels = cm["metadata"]["labels"]
        assert labels["grafana_dashboard"] == "1"  # kube-prometheus-stack's sidecar default
        assert labels["app.kubernetes.io/instance"] == "llmfleet"
        assert "annotations" not in cm["metadata"]
        [(key, text)] = cm["data"].items()
        file = name.removeprefix("llmfleet-dashboard-") + ".json"
        assert key == f"llmfleet-{file}"
        # The committed file verbatim (the generator's output, see test_dashboards.py).
        assert text.rstrip("\n") == wanted[file].rstrip("\n")
        assert json.loads(text)["uid"] in ("llmfleet-overview", "llmfleet-llmdeployment")


def test_label_namespace_and_annotations_are_configurable(helm: Helm) -> None:
    maps = config_maps(
        helm.template(
            {
                **ON,
                "monitoring.dashboards.label": "grafana.example.com/dashboard",
                "monitoring.dashboards.labelValue": "llm",
                "monitoring.dashboards.namespace": "monitoring",
                "monitoring.dashboards.labels.team": "ml-platform",
                "monitoring.dashboards.annotations.grafana_folder": "LLM",
            },
            release="prod",
        )
    )
    assert set(maps) == {
        "prod-llmfleet-dashboard-overview",
        "prod-llmfleet-dashboard-llmdeployment",
    }
    for cm in maps.values():
        meta = cm["metadata"]
        assert meta["namespace"] == "monitoring"
        assert meta["labels"]["grafana.example.com/dashboard"] == "llm"
        assert "grafana_dashboard" not in meta["labels"]
        assert meta["labels"]["team"] == "ml-platform"
        assert meta["annotations"] == {"grafana_folder": "LLM"}


def test_lint_strict_with_dashboards(helm: Helm) -> None:
    helm.run("lint", "--strict", str(CHART), "--set", "monitoring.dashboards.enabled=true")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"monitoring.dashboards.enabeld": True},
            "at '/monitoring/dashboards': additional properties 'enabeld' not allowed",
        ),
        ({"monitoring.dashboards.label": "not a label"}, "at '/monitoring/dashboards/label'"),
        ({"monitoring.dashboards.namespace": "Mon_NS"}, "at '/monitoring/dashboards/namespace'"),
    ],
)
def test_typos_fail_against_the_schema(
    helm: Helm, values: dict[str, object], expected: str
) -> None:
    with pytest.raises(HelmError) as failure:
        helm.template(values)
    assert expected in failure.value.stderr, failure.value.stderr
