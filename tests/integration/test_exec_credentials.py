"""The operator runs from a kubeconfig whose user is an exec credential plugin, as EKS, GKE, AKS
and OIDC kubeconfigs are: its watches and its writes authenticate as that user, and it runs the
plugin again when the credential it printed expires."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmfleet_dev.kube import Kubectl
from llmfleet_dev.processes import OperatorProcess
from llmfleet_dev.wait import wait_for

# Prints an ExecCredential with the token in argv[1] that expires in argv[3] seconds, and
# counts its runs in the file argv[2].
PLUGIN = """\
import json, sys, time
from datetime import datetime, timedelta, timezone
token_file, runs_file, lifetime = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(runs_file, "a") as f:
    f.write(f"{time.time()}\\n")
expires = datetime.now(timezone.utc) + timedelta(seconds=lifetime)
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {
        "token": open(token_file).read().strip(),
        "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
    },
}))
"""
LIFETIME_SECONDS = 20


@pytest.fixture
def exec_kubeconfig(kubectl: Kubectl, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig whose user runs a plugin printing a ServiceAccount's token; that account
    may do what the operator does (bound to cluster-admin for the test's length)."""
    sa = "exec-operator"
    kubectl("create", "serviceaccount", sa, f"--namespace={namespace}")
    binding = f"{namespace}-exec-operator"
    kubectl(
        "create",
        "clusterrolebinding",
        binding,
        "--clusterrole=cluster-admin",
        f"--serviceaccount={namespace}:{sa}",
    )
    token = tmp_path / "token"
    token.write_text(
        kubectl("create", "token", sa, f"--namespace={namespace}", "--duration=1h").stdout
    )
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN)
    config = json.loads(
        kubectl("config", "view", "--raw", "--minify", "--flatten", "-o=json").stdout
    )
    user = config["contexts"][0]["context"]["user"]
    exec_user = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": sys.executable,
        "args": [str(plugin), str(token), str(tmp_path / "runs"), str(LIFETIME_SECONDS)],
        "interactiveMode": "Never",
    }
    config["users"] = [{"name": user, "user": {"exec": exec_user}}]
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    try:
        yield path
    finally:
        kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found", check=False)


def ready(kube: Kubectl) -> bool:
    status = kube.get("llmd", "chat").get("status", {})
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def plugin_runs(kubeconfig: Path) -> list[float]:
    """When the plugin ran (seconds since the epoch)."""
    runs = kubeconfig.with_name("runs")
    return [float(t) for t in runs.read_text().split()] if runs.exists() else []


@pytest.mark.usefixtures("crd_installed")
def test_operator_authenticates_through_an_exec_plugin(
    kubectl: Kubectl, kube: Kubectl, namespace: str, exec_kubeconfig: Path, tmp_path: Path
) -> None:
    as_plugin = Kubectl(kubectl.binary, exec_kubeconfig)
    whoami = json.loads(as_plugin("auth", "whoami", "-o=json").stdout)
    assert whoami["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{namespace}:exec-operator"
    )
    operator = OperatorProcess(
        exec_kubeconfig,
        tmp_path / "operator.log",
        f"--namespace={namespace}",
        "--log-level=DEBUG",
        "--log-format=plain",
    ).start()
    try:
        kube.apply(
            {
                "apiVersion": "llmfleet.io/v1alpha1",
                "kind": "LLMDeployment",
                "metadata": {"name": "chat"},
                "spec": {
                    "model": {"uri": "pvc://models/tiny"},
                    "autoscaling": {"mode": "Manual", "minReplicas": 1, "maxReplicas": 3},
                },
            }
        )
        # The watch saw the object and the writes were accepted: the Deployment, the status.
        wait_for(
            "chat Ready", lambda: ready(kube) or kube.get("llmd", "chat").get("status"), timeout=90
        )
        managers = {
            m["manager"]
            for m in kube.get("deployment", "chat", "--show-managed-fields")["metadata"][
                "managedFields"
            ]
        }
        assert "llmfleet-operator" in managers
        # Once the credential the plugin printed last has expired, the next write runs the
        # plugin again (an idle operator sends nothing, so nothing runs it before), and goes
        # through with the new one.
        expires = max(plugin_runs(exec_kubeconfig)) + LIFETIME_SECONDS
        wait_for(
            "the last credential to expire",
            lambda: time.time() > expires,
            timeout=LIFETIME_SECONDS + 5,
        )
        before = len(plugin_runs(exec_kubeconfig))
        kube("patch", "llmd", "chat", "--type=merge", "-p", '{"spec":{"replicas":2}}')
        wait_for(
            "the new replica count applied",
            lambda: kube.get("deployment", "chat")["spec"]["replicas"] == 2,
            timeout=60,
        )
        assert len(plugin_runs(exec_kubeconfig)) > before
        log = operator.log_path.read_text()
        # A refused call logs its status, 403; a port such as :40383 is no refusal.
        assert not re.search(r"\b403\b", log), log[-3000:]
        assert "system:anonymous" not in operator.log_path.read_text()
    finally:
        assert operator.stop() in (0, None), operator.log_tail()
