"""The chart installed, upgraded and uninstalled by the real helm into the test cluster.

kwok marks scheduled pods Running and Ready (nothing really runs), so ``helm install --wait``
waits for what it would wait for on a real cluster: an available operator Deployment whose
pod passed admission (Pod Security "restricted" included) and was scheduled.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmfleet_dev.helm import CHART, Helm
from llmfleet_dev.kube import Kubectl
from llmfleet_dev.localcluster import LocalCluster
from llmfleet_dev.manifests import from_hub
from llmfleet_dev.processes import OperatorProcess
from llmfleet_dev.wait import wait_for
from llmfleet_operator import api

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chat-small.yaml"


@pytest.fixture(scope="module")
def helm(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(cluster.bin("helm"), tmp_path_factory.mktemp("helm-home"), cluster.kubeconfig)


@pytest.fixture
def release(helm: Helm, namespace: str) -> Iterator[str]:
    """A release name unique in the session (its ClusterRoles are cluster-wide), uninstalled
    afterwards even when the test failed halfway."""
    name = f"fleet-{secrets.token_hex(3)}"
    yield name
    helm.run("uninstall", name, f"--namespace={namespace}", "--ignore-not-found", check=False)


@pytest.fixture
def restricted(kubectl: Kubectl, namespace: str) -> str:
    """The test namespace with Pod Security "restricted" enforced, as production runs it."""
    kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    return namespace


def can_i(kubectl: Kubectl, sa: str, verb: str, resource: str, *where: str) -> bool:
    """``kubectl auth can-i`` as the ServiceAccount ``sa`` ("NAMESPACE:NAME")."""
    result = kubectl(
        "auth", "can-i", verb, resource, f"--as=system:serviceaccount:{sa}", *where, check=False
    )
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    """The operator container's env; the API server drops empty values."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def service_account_kubeconfig(kubectl: Kubectl, sa: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount ``sa`` ("NAMESPACE:NAME") with a
    short-lived token: what the operator's pod would use in-cluster."""
    namespace, name = sa.split(":")
    token = kubectl("create", "token", name, f"--namespace={namespace}", "--duration=15m")
    config = json.loads(
        kubectl("config", "view", "--raw", "--minify", "--flatten", "-o=json").stdout
    )
    user = config["contexts"][0]["context"]["user"]
    config["users"] = [{"name": user, "user": {"token": token.stdout.strip()}}]
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def revision(helm: Helm, release: str, namespace: str) -> int:
    """The deployed revision of ``release``."""
    status = json.loads(
        helm.run("status", release, f"--namespace={namespace}", "-o", "json").stdout
    )
    assert status["info"]["status"] == "deployed"
    return int(status["version"])


def install(helm: Helm, release: str, namespace: str, *flags: str) -> str:
    """``helm install --wait``; returns helm's output (the rendered NOTES.txt)."""
    return helm.run(
        "install",
        release,
        str(CHART),
        f"--namespace={namespace}",
        "--wait",
        "--timeout=120s",
        *flags,
    ).stdout


@pytest.mark.usefixtures("crd_installed")
def test_install_upgrade_uninstall(
    helm: Helm, kubectl: Kubectl, restricted: str, release: str
) -> None:
    kube = kubectl.in_namespace(restricted)
    fullname = f"{release}-llmfleet"
    # The session's CRD is not Helm's to manage: test_crd_adoption_and_keep covers that path.
    notes = install(helm, release, restricted, "--set", "crds.enabled=false")
    assert f'is installed as release "{release}"' in notes
    assert "Watching:   every namespace" in notes
    assert "kubectl wait --for=condition=Ready llmd/chat-small" in notes

    deployment = kube.get("deployment", fullname)
    assert deployment["status"]["availableReplicas"] == 2  # a leader and a standby
    env = env_of(deployment)
    assert env["LLMFLEET_LOG_LEVEL"] == "INFO"
    pods = kube.get("pods", None, f"--selector=app.kubernetes.io/instance={release}")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] == "cpu-node-0"  # no GPU toleration: not on a GPU node
        assert pod["spec"]["serviceAccountName"] == fullname
    assert kube.get("pdb", fullname)["spec"]["maxUnavailable"] == 1
    assert kube.get("service", f"{fullname}-metrics")["spec"]["ports"][0]["port"] == 8081

    # The ServiceAccount may do what the operator does, and nothing more.
    sa = f"{restricted}:{fullname}"
    allowed = [
        ("list", "llmdeployments.llmfleet.io", "--all-namespaces"),
        ("watch", "llmdeployments.llmfleet.io", "-n", "default"),
        ("patch", "llmdeployments.llmfleet.io", "--subresource=status", "-n", "default"),
        ("create", "deployments.apps", "-n", "default"),
        ("delete", "poddisruptionbudgets.policy", "-n", "default"),
        ("patch", "networkpolicies.networking.k8s.io", "-n", "default"),
        ("create", "events", "-n", "default"),
        ("list", "nodes"),
        ("create", "leases.coordination.k8s.io", "-n", restricted),
        ("update", f"leases.coordination.k8s.io/{fullname}", "-n", restricted),
    ]
    denied = [
        ("update", "leases.coordination.k8s.io/kube-scheduler", "-n", restricted),
        ("update", f"leases.coordination.k8s.io/{fullname}", "-n", "default"),
        ("get", "secrets", "-n", "default"),
        ("list", "secrets", "--all-namespaces"),
        ("patch", "llmdeployments.llmfleet.io", "-n", "default"),  # GitOps owns spec
        ("delete", "llmdeployments.llmfleet.io", "-n", "default"),
        ("delete", "nodes"),
        ("create", "pods", "-n", "default"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ]
    assert [a for a in allowed if not can_i(kubectl, sa, *a)] == []
    assert [d for d in denied if can_i(kubectl, sa, *d)] == []

    # upgrade: a changed value reaches the Deployment; other values are kept.
    helm.run(
        "upgrade",
        release,
        str(CHART),
        f"--namespace={restricted}",
        "--reuse-values",
        "--set",
        "log.level=DEBUG",
        "--wait",
        "--timeout=120s",
    )
    upgraded = kube.get("deployment", fullname)
    env = env_of(upgraded)
    assert env["LLMFLEET_LOG_LEVEL"] == "DEBUG"
    assert env["LLMFLEET_LOG_FORMAT"] == "json"
    kept = json.loads(
        helm.run("get", "values", release, f"--namespace={restricted}", "-o", "json").stdout
    )
    assert kept == {"crds": {"enabled": False}, "log": {"level": "DEBUG"}}
    assert upgraded["metadata"]["generation"] > deployment["metadata"]["generation"]
    assert revision(helm, release, restricted) == 2

    # A typo is refused by the schema, and the release is left as it was.
    typo = helm.run(
        "upgrade",
        release,
        str(CHART),
        f"--namespace={restricted}",
        "--set",
        "log.levle=DEBUG",
        check=False,
    )
    assert typo.returncode != 0
    assert "at '/log': additional properties 'levle' not allowed" in typo.stderr
    assert revision(helm, release, restricted) == 2

    # uninstall: every operator object goes; the CRD (not the release's) stays.
    helm.run("uninstall", release, f"--namespace={restricted}", "--wait", "--timeout=120s")
    for kind, name in [
        ("deployment", fullname),
        ("serviceaccount", fullname),
        ("service", f"{fullname}-metrics"),
    ]:
        assert kube.get_or_none(kind, name) is None, f"{kind}/{name} survived the uninstall"
    for kind in ("clusterrole", "clusterrolebinding"):
        assert kubectl.get_or_none(kind, fullname) is None, f"{kind}/{fullname} survived"
    assert kubectl.get_or_none("crd", api.CRD_NAME) is not None


@pytest.mark.usefixtures("crd_installed")
def test_namespace_scoped_install(
    helm: Helm, kubectl: Kubectl, restricted: str, release: str, tmp_path: Path
) -> None:
    watched = f"{restricted}-w"
    kubectl("create", "namespace", watched)
    try:
        notes = install(
            helm,
            release,
            restricted,
            "--set",
            "crds.enabled=false",
            "--set",
            f"watchNamespaces={{{watched}}}",
        )
        assert f"Watching:   namespaces {watched}" in notes
        fullname = f"{release}-llmfleet"
        env = env_of(kubectl.in_namespace(restricted).get("deployment", fullname))
        assert env["LLMFLEET_WATCH_NAMESPACES"] == watched
        assert kubectl.in_namespace(watched).get("role", fullname)["rules"]

        sa = f"{restricted}:{fullname}"
        allowed = [
            ("watch", "llmdeployments.llmfleet.io", "-n", watched),
            ("patch", "llmdeployments.llmfleet.io", "--subresource=status", "-n", watched),
            ("create", "deployments.apps", "-n", watched),
            ("watch", "pods", "-n", watched),
            # Read-only GPU accounting, from watches.
            ("list", "nodes"),
            ("watch", "nodes"),
            ("list", "pods", "--all-namespaces"),
            ("watch", "pods", "--all-namespaces"),
        ]
        denied = [
            ("list", "llmdeployments.llmfleet.io", "--all-namespaces"),
            ("list", "llmdeployments.llmfleet.io", "-n", "default"),
            ("create", "deployments.apps", "-n", "default"),
            ("get", "pods", "-n", "default"),
            ("get", "secrets", "-n", watched),
            ("delete", "nodes"),
        ]
        assert [a for a in allowed if not can_i(kubectl, sa, *a)] == []
        assert [d for d in denied if can_i(kubectl, sa, *d)] == []

        # The real operator, with nothing but the release's ServiceAccount, brings an
        # LLMDeployment in the watched namespace to Ready and is never refused.
        config = service_account_kubeconfig(kubectl, sa, tmp_path / "sa.kubeconfig")
        log = tmp_path / "operator.log"
        # As the chart runs it: electing a leader on the release's Lease, with the Role the
        # chart grants for it.
        proc = OperatorProcess(
            config,
            log,
            f"--namespace={watched}",
            "--leader-elect",
            f"--leader-election-namespace={restricted}",
            f"--leader-election-id={fullname}",
        ).start()
        try:
            kube = kubectl.in_namespace(watched)
            # hf:// needs no volume in the namespace; kwok never runs the worker.
            kube.apply(from_hub("rbac-check"))
            kube("wait", "--for=condition=Ready", "llmd/rbac-check", "--timeout=90s")
            assert kube.get("deployment", "rbac-check")["metadata"]["ownerReferences"]
            assert kube.get("service", "rbac-check")["metadata"]["ownerReferences"]
            assert kube.get("networkpolicy", "rbac-check")["metadata"]["ownerReferences"]
            lease = kubectl.in_namespace(restricted).get("lease", fullname)
            assert lease["spec"]["holderIdentity"]
        finally:
            print(proc.log_tail(60))  # shown when the test fails
            print(
                kubectl.in_namespace(watched)(
                    "get", "llmd,deploy,pods", "-o", "yaml", check=False
                ).stdout[-6000:]
            )
            assert proc.stop() in (0, None), proc.log_tail()
        forbidden = [line for line in log.read_text().splitlines() if "forbidden" in line.lower()]
        assert forbidden == []

        helm.run("uninstall", release, f"--namespace={restricted}", "--wait", "--timeout=120s")
        assert kubectl.in_namespace(watched).get_or_none("role", fullname) is None
        assert kubectl.get_or_none("clusterrole", f"{fullname}-gpu-capacity") is None
    finally:
        kubectl("delete", "namespace", watched, "--wait=false", check=False)


@pytest.mark.usefixtures("crd_installed")
def test_namespace_scoped_install_without_cluster_wide_reads(
    helm: Helm, kubectl: Kubectl, restricted: str, release: str, tmp_path: Path
) -> None:
    """gpuCapacity.clusterWideReads=false: no node or cluster-wide pod access at all, the
    operator as the chart runs it is never refused, and status says free GPUs are unknown."""
    watched = f"{restricted}-w"
    kubectl("create", "namespace", watched)
    try:
        install(
            helm,
            release,
            restricted,
            "--set",
            "crds.enabled=false",
            "--set",
            f"watchNamespaces={{{watched}}}",
            "--set",
            "gpuCapacity.clusterWideReads=false",
        )
        fullname = f"{release}-llmfleet"
        env = env_of(kubectl.in_namespace(restricted).get("deployment", fullname))
        assert env["LLMFLEET_GPU_CAPACITY_VIEW"] == "none"
        assert kubectl.get_or_none("clusterrole", f"{fullname}-gpu-capacity") is None
        sa = f"{restricted}:{fullname}"
        assert can_i(kubectl, sa, "watch", "pods", "-n", watched)
        for denied in (("list", "nodes"), ("list", "pods", "--all-namespaces")):
            assert not can_i(kubectl, sa, *denied), denied

        config = service_account_kubeconfig(kubectl, sa, tmp_path / "sa.kubeconfig")
        log = tmp_path / "operator.log"
        proc = OperatorProcess(
            config,
            log,
            f"--namespace={watched}",
            f"--gpu-capacity-view={env['LLMFLEET_GPU_CAPACITY_VIEW']}",
            "--leader-elect",
            f"--leader-election-namespace={restricted}",
            f"--leader-election-id={fullname}",
        ).start()
        try:
            kube = kubectl.in_namespace(watched)
            # More GPUs than any node has: Pending for GPUs.
            kube.apply(from_hub("too-big", gpus=64))

            def stalled() -> Any:
                conds = kube.get("llmd", "too-big").get("status", {}).get("conditions", [])
                found = [c for c in conds if c["type"] == "Stalled"]
                return found and found[0]["reason"] == "InsufficientGPU" and found[0]

            message = wait_for("Stalled=InsufficientGPU", stalled, timeout=90)["message"]
            assert message == (
                "1 pod Pending: each asks for 64 nvidia.com/gpu; free GPUs unknown: the "
                "operator does not read pods outside its namespaces "
                "(gpuCapacity.clusterWideReads=false)"
            )
        finally:
            assert proc.stop() in (0, None), proc.log_tail()
        forbidden = [line for line in log.read_text().splitlines() if "forbidden" in line.lower()]
        assert forbidden == []
        helm.run("uninstall", release, f"--namespace={restricted}", "--wait", "--timeout=120s")
    finally:
        kubectl("delete", "namespace", watched, "--wait=false", check=False)


@pytest.fixture
def crd_ownership(kubectl: Kubectl) -> Iterator[str]:
    """The session's CRD, handed back afterwards: the Helm ownership metadata a test adds
    is removed again, so every later test (and a rerun on a reused cluster) finds the CRD
    as `kubectl apply` left it. Skips when a live Helm release owns it already."""
    annotations = kubectl.get("crd", api.CRD_NAME)["metadata"].get("annotations") or {}
    owner = annotations.get("meta.helm.sh/release-name")
    if owner is not None:
        pytest.skip(f"the CRD belongs to Helm release {owner}; not taking it over")
    yield api.CRD_NAME
    kubectl(
        "annotate",
        "crd",
        api.CRD_NAME,
        "meta.helm.sh/release-name-",
        "meta.helm.sh/release-namespace-",
        "helm.sh/resource-policy-",
    )
    kubectl("label", "crd", api.CRD_NAME, "app.kubernetes.io/managed-by-")


@pytest.mark.usefixtures("crd_installed")
def test_crd_adoption_and_keep(
    helm: Helm, kubectl: Kubectl, namespace: str, release: str, crd_ownership: str
) -> None:
    """A CRD applied before Helm (here by the session's fixture, elsewhere by `kubectl apply`
    or a GitOps tool) is refused, then adopted the documented way, and kept on uninstall."""
    uid = kubectl.get("crd", crd_ownership)["metadata"]["uid"]
    # Helm refuses to take over an object it did not create, and creates nothing.
    refused = helm.run("install", release, str(CHART), f"--namespace={namespace}", check=False)
    assert refused.returncode != 0
    assert f'CustomResourceDefinition "{crd_ownership}"' in refused.stderr
    assert "exists and cannot be imported into the current release" in refused.stderr
    assert helm.run("status", release, f"--namespace={namespace}", check=False).returncode != 0
    assert kubectl.in_namespace(namespace).get("deployments")["items"] == []

    # Adoption, as docs/helm.md tells users to do it.
    kubectl(
        "annotate",
        "--overwrite",
        "crd",
        crd_ownership,
        f"meta.helm.sh/release-name={release}",
        f"meta.helm.sh/release-namespace={namespace}",
    )
    kubectl("label", "--overwrite", "crd", crd_ownership, "app.kubernetes.io/managed-by=Helm")
    install(helm, release, namespace, "--set", "crds.keep=true")
    adopted = kubectl.get("crd", crd_ownership)
    assert adopted["metadata"]["uid"] == uid
    assert adopted["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert adopted["metadata"]["labels"]["app.kubernetes.io/instance"] == release
    assert (
        helm.run("get", "manifest", release, f"--namespace={namespace}").stdout.count(
            "kind: CustomResourceDefinition"
        )
        == 1
    )

    # An LLMDeployment made while the release owns the CRD survives the uninstall.
    kube = kubectl.in_namespace(namespace)
    kube("apply", "-f", str(EXAMPLE))
    uninstall = helm.run("uninstall", release, f"--namespace={namespace}", "--wait")
    assert "kept due to the resource policy" in uninstall.stdout, uninstall.stdout
    assert f"[CustomResourceDefinition] {crd_ownership}" in uninstall.stdout, uninstall.stdout
    kept = kubectl.get("crd", crd_ownership)
    assert kept["metadata"]["uid"] == uid
    assert kept["metadata"].get("deletionTimestamp") is None
    assert kube.get_or_none("llmd", "chat-small") is not None
    assert kube.get_or_none("deployment", f"{release}-llmfleet") is None
