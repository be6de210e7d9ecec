"""Fixtures shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmfleet_operator import api, crdgen
from support.kube import Kubectl
from support.wait import wait_for

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / crdgen.FILE_NAME


@pytest.fixture(scope="session")
def crd_installed(kubectl: Kubectl) -> str:
    """The committed LLMDeployment CRD, applied and served; returns its name.

    Server-side apply makes this idempotent (a no-op when the cluster already has it, e.g.
    with LLMFLEET_REUSE_CLUSTER=1), and --force-conflicts takes over fields another manager
    (a Helm install) may own. The CRD stays: the session's cluster goes away anyway.
    """
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=llmfleet-tests",
        "-f",
        str(CRD_FILE),
    )
    kubectl("wait", "--for=condition=Established", f"crd/{api.CRD_NAME}", "--timeout=60s")
    # Established is the server's view; kubectl's discovery must also know the short name.
    wait_for(
        "`kubectl get llmd` to work",
        lambda: kubectl("get", "llmd", "--all-namespaces", check=False).returncode == 0,
        timeout=30,
    )
    return api.CRD_NAME
