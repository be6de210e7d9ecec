"""The Helm chart rendered by the real helm binary, one test per main values toggle.

No cluster: ``helm template`` renders and validates against values.schema.json offline.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
import yaml

from llmfleet_dev.helm import CHART, Helm, HelmError, Manifest, find, one
from llmfleet_dev.localcluster import ensure_tools
from llmfleet_operator import __version__, api, crdgen, resources

RELEASE, NAMESPACE = "llmfleet", "llmfleet-system"
FULLNAME = "llmfleet"  # the release name contains the chart name, so it is used as is
CHART_CRD = CHART / "files" / "crds" / crdgen.FILE_NAME
RBAC_KINDS = ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")

# (apiGroup, resource, verb) the operator needs in the namespaces it watches.
CRUD = ("get", "list", "watch", "create", "update", "patch", "delete")
NAMESPACED_RULES = {
    *(("llmfleet.io", "llmdeployments", v) for v in ("get", "list", "watch")),
    *(("llmfleet.io", "llmdeployments/status", v) for v in ("get", "patch", "update")),
    ("llmfleet.io", "llmdeployments/finalizers", "update"),
    *(("apps", "deployments", v) for v in CRUD),
    *(("", "services", v) for v in CRUD),
    *(("policy", "poddisruptionbudgets", v) for v in CRUD),
    *(("networking.k8s.io", "networkpolicies", v) for v in CRUD),
    *(("", "pods", v) for v in ("get", "list", "watch")),
    *(("", "events", v) for v in ("create", "patch", "list")),
}
NODE_READ = {("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "watch")}
GPU_CAPACITY_RULES = {*NODE_READ, ("", "pods", "list"), ("", "pods", "watch")}


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """The pinned helm that hack/tools.sh builds (first use) and prints the directory of."""
    binary = ensure_tools() / "helm"
    assert binary.exists(), f"hack/tools.sh did not provide {binary}"
    return Helm(str(binary), tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def defaults(helm: Helm) -> list[Manifest]:
    return helm.template(release=RELEASE, namespace=NAMESPACE)


def rules_of(role: Manifest) -> set[tuple[str, str, str]]:
    """A Role's or ClusterRole's rules flattened to (apiGroup, resource, verb)."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def all_rbac_strings(docs: Iterable[Manifest]) -> set[str]:
    """Every apiGroup, resource and verb any (Cluster)Role of ``docs`` grants."""
    return {
        s
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
        for rule in d["rules"]
        for key in ("apiGroups", "resources", "verbs", "nonResourceURLs", "resourceNames")
        for s in rule.get(key, [])
    }


def env_of(deployment: Manifest) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {
        e["name"]: e["value"]
        if "value" in e
        else f"fieldRef:{e['valueFrom']['fieldRef']['fieldPath']}"
        for e in container["env"]
    }


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """What Pod Security "restricted" (v1.30+) would refuse in ``pod_spec``; [] when none."""
    problems: list[str] = []
    pod_sc = pod_spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            problems.append(flag)
    allowed_volumes = {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
    for volume in pod_spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            problems.append(f"volume {volume['name']} uses {kinds - allowed_volumes}")
    for c in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {seccomp}")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities not dropped")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        if c.get("ports") and any(p.get("hostPort") for p in c["ports"]):
            problems.append(f"{name}: hostPort")
    return problems


# --- lint and schema ----------------------------------------------------------------------------


def test_lint_strict_passes(helm: Helm) -> None:
    helm.run("lint", "--strict", str(CHART))
    helm.run(
        "lint",
        "--strict",
        str(CHART),
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "monitoring.serviceMonitor.enabled=true,monitoring.podMonitor.enabled=true",
        "--set",
        "crds.keep=false,serviceAccount.create=false,serviceAccount.name=ops",
    )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"replicas": 2}, "at '': additional properties 'replicas' not allowed"),
        (
            {"leaderElection.enable": True},
            "at '/leaderElection': additional properties 'enable' not allowed",
        ),
        ({"replicaCount": 0}, "at '/replicaCount'"),
        ({"image.tagg": "x"}, "at '/image': additional properties 'tagg' not allowed"),
        ({"crds.enable": False}, "at '/crds': additional properties 'enable' not allowed"),
        (
            {"monitoring.podMonitor.enabeld": True},
            "at '/monitoring/podMonitor': additional properties 'enabeld' not allowed",
        ),
        ({"log.level": "verbose"}, "at '/log/level': value must be one of"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "at '/watchNamespaces/0'"),
        ({"workers": 0}, "at '/workers'"),
        ({"monitoring.namespace": "Prometheus_NS"}, "at '/monitoring/namespace'"),
    ],
)
def test_values_typos_fail_against_the_schema(
    helm: Helm, values: dict[str, object], expected: str
) -> None:
    with pytest.raises(HelmError) as failure:
        helm.template(values)
    message = failure.value.stderr
    assert "values don't meet the specifications of the schema" in message, message
    assert expected in message, message


def test_chart_crd_is_the_generated_crd() -> None:
    """files/crds holds `make crds` output verbatim: one source of truth, no drift."""
    assert CHART_CRD.read_text() == crdgen.render(), (
        f"{CHART_CRD.relative_to(CHART.parents[1])} differs from what api.py generates; "
        "run `make crds`"
    )


# --- defaults: every namespace, CRD kept --------------------------------------------------------


def test_defaults_render_the_expected_objects(defaults: list[Manifest]) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in defaults)
    assert kinds == sorted(
        [
            ("ClusterRole", FULLNAME),
            ("ClusterRoleBinding", FULLNAME),
            ("CustomResourceDefinition", api.CRD_NAME),
            ("Deployment", FULLNAME),
            ("PodDisruptionBudget", FULLNAME),
            ("Role", f"{FULLNAME}-leader-election"),
            ("RoleBinding", f"{FULLNAME}-leader-election"),
            ("Service", f"{FULLNAME}-metrics"),
            ("ServiceAccount", FULLNAME),
        ]
    )
    for d in defaults:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert d["metadata"]["namespace"] == NAMESPACE
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["helm.sh/chart"] == "llmfleet-0.1.0"


def test_defaults_cluster_role_has_exactly_the_needed_rules(defaults: list[Manifest]) -> None:
    role = one(defaults, "ClusterRole")
    assert rules_of(role) == NAMESPACED_RULES | NODE_READ
    granted = all_rbac_strings(defaults)
    assert "*" not in granted
    assert "secrets" not in granted
    binding = one(defaults, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]


def test_defaults_operator_deployment(defaults: list[Manifest]) -> None:
    deployment = one(defaults, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["automountServiceAccountToken"] is True
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/llmfleet/operator:0.1.0"
    assert container["args"] == ["run"]
    assert env_of(deployment) == {
        "LLMFLEET_WATCH_NAMESPACES": "",
        "LLMFLEET_PROMETHEUS_URL": "",
        "LLMFLEET_ALLOWED_PROMETHEUS_URLS": "",
        "LLMFLEET_MONITORING_NAMESPACE": "monitoring",
        "LLMFLEET_AUTOSCALE_INTERVAL": "15",
        "LLMFLEET_GPU_CAPACITY_VIEW": "cluster",
        "LLMFLEET_LOG_FORMAT": "json",
        "LLMFLEET_LOG_LEVEL": "INFO",
        "LLMFLEET_WORKERS": "4",
        "LLMFLEET_HEALTH_PORT": "8080",
        "LLMFLEET_METRICS_PORT": "8081",
        "LLMFLEET_LEADER_ELECT": "true",
        "LLMFLEET_LEADER_ELECTION_ID": FULLNAME,
        "LLMFLEET_LEADER_ELECTION_NAMESPACE": "fieldRef:metadata.namespace",
        "POD_NAME": "fieldRef:metadata.name",
    }
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == spec["selector"]["matchLabels"]
    )
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert container["resources"]["limits"]["memory"] == "512Mi"


def test_defaults_pass_pod_security_restricted(defaults: list[Manifest]) -> None:
    pod = one(defaults, "Deployment")["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsUser"] == 65532
    tmp = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/tmp"]
    assert {"name": tmp, "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]


def test_defaults_leader_election_lease_role_and_pdb(defaults: list[Manifest]) -> None:
    role = one(defaults, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [FULLNAME],
            "verbs": ["get", "update"],
        },
    ]
    binding = one(defaults, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]
    pdb = one(defaults, "PodDisruptionBudget")
    deployment = one(defaults, "Deployment")
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
    }


def test_without_leader_election_one_replica_recreates(helm: Helm) -> None:
    docs = helm.template({"leaderElection.enabled": False, "replicaCount": 1})
    spec = one(docs, "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert "affinity" not in spec["template"]["spec"]
    assert "LLMFLEET_LEADER_ELECT" not in env_of(one(docs, "Deployment"))
    kinds = {d["kind"] for d in docs}
    assert "PodDisruptionBudget" not in kinds
    assert "Role" not in kinds


def test_two_replicas_without_leader_election_are_refused(helm: Helm) -> None:
    with pytest.raises(HelmError) as failure:
        helm.template({"leaderElection.enabled": False})
    assert "replicaCount > 1 needs leaderElection.enabled" in failure.value.stderr


def test_restricted_check_catches_violations() -> None:
    """The checker above is not vacuous."""
    pod = {
        "containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]
    }
    problems = restricted_violations(pod)
    assert len(problems) == 5, problems


def test_defaults_crd_is_templated_and_kept(defaults: list[Manifest]) -> None:
    crd = one(defaults, "CustomResourceDefinition")
    generated = crdgen.crd()
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/part-of"] == "llmfleet"
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_defaults_metrics_service(defaults: list[Manifest]) -> None:
    service = one(defaults, "Service")
    pod_labels = one(defaults, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert not find(defaults, "ServiceMonitor")
    assert not find(defaults, "PodMonitor")


# --- toggles ------------------------------------------------------------------------------------


def test_crds_disabled_renders_no_crd(helm: Helm) -> None:
    docs = helm.template({"crds.enabled": False})
    assert not find(docs, "CustomResourceDefinition")
    assert find(docs, "Deployment")


def test_crds_not_kept_has_no_keep_policy(helm: Helm) -> None:
    crd = one(helm.template({"crds.keep": False}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_watch_namespaces_use_roles_and_a_read_only_cluster_role(helm: Helm) -> None:
    docs = helm.template({"watchNamespaces": ["team-a", "team-b"]})
    assert env_of(one(docs, "Deployment"))["LLMFLEET_WATCH_NAMESPACES"] == "team-a,team-b"

    lease_role = f"{FULLNAME}-leader-election"
    roles = [r for r in find(docs, "Role") if r["metadata"]["name"] != lease_role]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert rules_of(role) == NAMESPACED_RULES
    bindings = [b for b in find(docs, "RoleBinding") if b["metadata"]["name"] != lease_role]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
        ]

    cluster_role = one(docs, "ClusterRole")
    assert rules_of(cluster_role) == GPU_CAPACITY_RULES
    cluster_binding = one(docs, "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    granted = all_rbac_strings(docs)
    assert "*" not in granted
    assert "secrets" not in granted


def test_gpu_capacity_without_cluster_wide_reads(helm: Helm) -> None:
    """Teams that may not read other namespaces: no node or cluster-wide pod rules at all,
    and the operator is told so (it then reports free GPUs as unknown)."""
    docs = helm.template({"watchNamespaces": ["team-a"], "gpuCapacity.clusterWideReads": False})
    assert env_of(one(docs, "Deployment"))["LLMFLEET_GPU_CAPACITY_VIEW"] == "none"
    assert not find(docs, "ClusterRole")
    assert not find(docs, "ClusterRoleBinding")
    assert "nodes" not in all_rbac_strings(docs)
    # Every namespace: the one ClusterRole keeps what kopf's watches need, but no nodes.
    docs = helm.template({"gpuCapacity.clusterWideReads": False})
    assert rules_of(one(docs, "ClusterRole")) == NAMESPACED_RULES
    assert env_of(one(docs, "Deployment"))["LLMFLEET_GPU_CAPACITY_VIEW"] == "none"


def test_rbac_disabled_renders_no_rbac(helm: Helm) -> None:
    for values in ({}, {"watchNamespaces": ["team-a"]}):
        docs = helm.template({"rbac.create": False, **values})
        assert not [d for d in docs if d["kind"] in RBAC_KINDS]
        assert find(docs, "ServiceAccount")


def test_existing_service_account(helm: Helm) -> None:
    docs = helm.template({"serviceAccount.create": False, "serviceAccount.name": "ops"})
    assert not find(docs, "ServiceAccount")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ops"
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "ops", "namespace": NAMESPACE}
    ]


def test_service_account_name_and_annotations(helm: Helm) -> None:
    docs = helm.template(
        {
            "serviceAccount.name": "llmfleet-operator",
            "serviceAccount.annotations.example\\.com/role": "operator",
        }
    )
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["name"] == "llmfleet-operator"
    assert sa["metadata"]["annotations"] == {"example.com/role": "operator"}
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "llmfleet-operator"


def test_operator_settings_and_scheduling_values(helm: Helm) -> None:
    docs = helm.template(
        {
            "image.tag": "0.2.0-rc1",
            "prometheus.url": "http://prometheus.monitoring.svc:9090",
            "autoscaler.intervalSeconds": 30,
            "log.level": "DEBUG",
            "log.format": "plain",
            "priorityClassName": "system-cluster-critical",
            "nodeSelector.kubernetes\\.io/os": "linux",
            "podAnnotations.example\\.com/a": "b",
            "podLabels.team": "platform",
            "tolerations[0].key": "dedicated",
            "tolerations[0].operator": "Exists",
        }
    )
    deployment = one(docs, "Deployment")
    env = env_of(deployment)
    assert env["LLMFLEET_PROMETHEUS_URL"] == "http://prometheus.monitoring.svc:9090"
    assert env["LLMFLEET_AUTOSCALE_INTERVAL"] == "30"
    assert env["LLMFLEET_LOG_LEVEL"] == "DEBUG"
    assert env["LLMFLEET_LOG_FORMAT"] == "plain"
    template = deployment["spec"]["template"]
    pod = template["spec"]
    assert pod["containers"][0]["image"] == "ghcr.io/llmfleet/operator:0.2.0-rc1"
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert template["metadata"]["annotations"] == {"example.com/a": "b"}
    assert template["metadata"]["labels"]["team"] == "platform"
    # Pod labels never leak into the (immutable) selector.
    assert "team" not in deployment["spec"]["selector"]["matchLabels"]


DIGEST = "sha256:" + "0123456789abcdef" * 4


def operator_image(docs: list[Manifest]) -> str:
    image: str = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    return image


def test_image_digest_pins_the_image_and_ignores_the_tag(helm: Helm) -> None:
    docs = helm.template({"image.digest": DIGEST})
    assert operator_image(docs) == f"ghcr.io/llmfleet/operator@{DIGEST}"
    docs = helm.template(
        {
            "image.repository": "registry.example/ops/operator",
            "image.tag": "9.9.9",
            "image.digest": DIGEST,
        }
    )
    assert operator_image(docs) == f"registry.example/ops/operator@{DIGEST}"


def test_image_without_digest_uses_the_tag(helm: Helm) -> None:
    assert operator_image(helm.template({"image.digest": ""})) == (
        f"ghcr.io/llmfleet/operator:{__version__}"
    )
    docs = helm.template({"image.digest": "", "image.tag": "0.2.0-rc1"})
    assert operator_image(docs) == "ghcr.io/llmfleet/operator:0.2.0-rc1"


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "0" * 63,  # too short
        "sha256:" + "0" * 65,  # too long
        "sha256:" + "A" * 64,  # OCI digests are lower-case hex
        "sha256:" + "g" * 64,  # not hex
        "0" * 64,  # no algorithm
        "sha512:" + "0" * 128,  # another algorithm
        "@" + DIGEST,  # the `@` belongs to the chart
        "0.2.0",  # a tag
    ],
)
def test_malformed_image_digest_is_refused_by_the_schema(helm: Helm, digest: str) -> None:
    with pytest.raises(HelmError) as failure:
        helm.template({"image.digest": digest})
    message = failure.value.stderr
    assert "values don't meet the specifications of the schema" in message, message
    assert "at '/image/digest'" in message, message


def test_service_monitor_scrapes_the_operator(helm: Helm) -> None:
    docs = helm.template(
        {
            "monitoring.serviceMonitor.enabled": True,
            "monitoring.serviceMonitor.labels.release": "kp",
        }
    )
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kp"
    service = one(docs, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "honorLabels": True}
    ]
    assert not find(docs, "PodMonitor")


def test_pod_monitor_attaches_the_labels_the_operator_queries(helm: Helm) -> None:
    docs = helm.template({"monitoring.podMonitor.enabled": True})
    monitor = one(docs, "PodMonitor")
    spec = monitor["spec"]
    assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/name": "llmfleet-worker"}}
    assert spec["namespaceSelector"] == {"any": True}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    # Prometheus turns a pod label's dots and slashes into underscores.
    assert targets == {
        "namespace": ["__meta_kubernetes_namespace"],
        "llmdeployment": ["__meta_kubernetes_pod_label_llmfleet_io_deployment"],
        "revision": ["__meta_kubernetes_pod_label_llmfleet_io_revision"],
        "pod": ["__meta_kubernetes_pod_name"],
    }
    assert api.LABEL_DEPLOYMENT == "llmfleet.io/deployment"
    assert api.LABEL_REVISION == "llmfleet.io/revision"
    assert not find(docs, "ServiceMonitor")

    scoped = helm.template(
        {"monitoring.podMonitor.enabled": True, "watchNamespaces": ["team-a", "team-b"]}
    )
    assert one(scoped, "PodMonitor")["spec"]["namespaceSelector"] == {
        "matchNames": ["team-a", "team-b"]
    }


def test_monitoring_namespace_reaches_the_worker_network_policies(helm: Helm) -> None:
    """The operator admits this namespace to the workers' port in every LLMDeployment's
    NetworkPolicy: the port the PodMonitor scrapes."""
    docs = helm.template({"monitoring.namespace": "kube-prometheus"})
    assert env_of(one(docs, "Deployment"))["LLMFLEET_MONITORING_NAMESPACE"] == "kube-prometheus"
    off = one(helm.template({"monitoring.namespace": ""}), "Deployment")
    assert env_of(off)["LLMFLEET_MONITORING_NAMESPACE"] == ""
    monitor = one(helm.template({"monitoring.podMonitor.enabled": True}), "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == resources.WORKER_PORT_NAME


def test_full_name_override(helm: Helm) -> None:
    docs = helm.template({"fullnameOverride": "fleet"}, release="prod")
    assert one(docs, "Deployment")["metadata"]["name"] == "fleet"
    assert one(docs, "ClusterRole")["metadata"]["name"] == "fleet"
    assert one(docs, "Service")["metadata"]["name"] == "fleet-metrics"


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"]) == ("v2", "llmfleet")
    assert chart["version"] == "0.1.0"
    # The default image tag is the appVersion: it must be the operator release it deploys.
    assert chart["appVersion"] == __version__
