"""An operator killed mid-canary loses nothing: the rollout's state lives in the
LLMDeployment's status and the stable Deployment's annotations, so a new operator process
picks the canary up where it was and finishes it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from llmfleet_dev.kube import Kubectl
from llmfleet_dev.localcluster import LocalCluster
from llmfleet_dev.processes import OperatorProcess
from llmfleet_dev.wait import wait_for
from llmfleet_operator import api

pytestmark = pytest.mark.usefixtures("crd_installed", "models_pvc")


def canary(version: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "chat"},
        "spec": {
            "model": {"uri": "pvc://models/tiny", "revision": version},
            "worker": {"resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"}},
            "replicas": 4,
            "autoscaling": {"mode": "Manual"},
            "rollout": {"strategy": "Canary", "canary": {"steps": [{"weight": 25}]}},
        },
    }


def rollout(kube: Kubectl) -> dict[str, Any]:
    return dict(kube.get("llmd", "chat").get("status", {}).get("rollout", {}))


def test_a_killed_operator_resumes_the_canary_where_it_was(
    kube: Kubectl, cluster: LocalCluster, tmp_path: Path
) -> None:
    first = OperatorProcess(cluster.kubeconfig, tmp_path / "first.log").start()
    try:
        kube.apply(canary("v1"))
        kube("wait", "--for=condition=Ready", "llmd/chat", "--timeout=90s")
        kube.apply(canary("v2"))
        at_step = wait_for(
            "canary step 1 reached",
            lambda: (r := rollout(kube)).get("stepStartedTime") and r,
            timeout=90,
        )
    finally:
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL  # no clean shutdown
    candidate = at_step["candidateRevision"]
    kube("annotate", "llmd/chat", f"{api.ANNOTATION_PROMOTE}={candidate}")  # while none runs

    second = OperatorProcess(cluster.kubeconfig, tmp_path / "second.log").start()
    try:

        def promoted() -> Any:
            st = kube.get("llmd", "chat")["status"]
            gone = kube.get_or_none("deployment", "chat-canary") is None
            done = st["rollout"]["phase"] == "Stable" and st["currentRevision"] == candidate
            return st if done and gone else None

        st = wait_for("the new operator to finish the promotion", promoted, timeout=120)
    finally:
        assert second.stop() in (0, None), second.log_tail()
    # The same candidate, not a restarted rollout: one RolloutStarted for it, one CanaryStep.
    events = kube.get("events", None, "--field-selector", "involvedObject.name=chat")["items"]
    started = [e for e in events if e["reason"] == "RolloutStarted" and candidate in e["message"]]
    assert len(started) == 1
    assert st["revisions"][0] == {**st["revisions"][0], "revision": candidate, "phase": "Active"}


def test_a_restarted_operator_writes_nothing_for_a_healthy_fleet(
    kube: Kubectl, cluster: LocalCluster, tmp_path: Path
) -> None:
    # Each watches this namespace only, so that its write counter is about this fleet alone.
    only_here = f"--namespace={kube.namespace}"
    first = OperatorProcess(cluster.kubeconfig, tmp_path / "first.log", only_here).start()
    try:
        kube.apply(canary("v1"))
        kube("wait", "--for=condition=Ready", "llmd/chat", "--timeout=90s")
    finally:
        assert first.stop() in (0, None), first.log_tail()
    before = kube.get("llmd", "chat")
    second = OperatorProcess(
        cluster.kubeconfig, tmp_path / "second.log", only_here, "--log-level=DEBUG"
    ).start()
    try:
        # Its first reconciles ran on a cache that one full LIST of every kind had filled.
        wait_for(
            "the new operator's first reconciles",
            lambda: second.metrics().get('llmfleet_operator_reconciles_total{result="ok"}', 0) >= 1,
            timeout=60,
        )
        writes = {
            k: v
            for k, v in second.metrics().items()
            if k.startswith("llmfleet_operator_api_writes_total")
        }
    finally:
        assert second.stop() in (0, None), second.log_tail()
    after = kube.get("llmd", "chat")
    # Not even a Ready=False-then-True flap: the object was not written at all.
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["status"]["conditions"] == before["status"]["conditions"]
    assert all(v == 0 for v in writes.values()), writes
