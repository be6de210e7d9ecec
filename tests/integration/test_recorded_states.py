"""The recorder: drives the real operator on the test cluster into each state GitOps tools must
tell apart, checks what Argo CD's health script and kstatus (Flux) say of the live object, and,
with LLMFLEET_RECORD_STATES=1, writes the object to tests/fixtures/states/STATE.json for the
fast unit tests (tests/unit/test_gitops_health.py).

    LLMFLEET_RECORD_STATES=1 .venv/bin/python -m pytest tests/integration/test_recorded_states.py

Readiness is kwok's (pods Ready once scheduled; never with NEVER_READY_ANNOTATION), and no
Prometheus runs behind this operator, so a canary holds at its first step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from llmfleet_dev.gitops import EXPECTED, argocd_health, check_state, clean, kstatus, write_state
from llmfleet_dev.kube import FIELD_MANAGER, Kubectl
from llmfleet_dev.localcluster import NEVER_READY_ANNOTATION, apply_crd
from llmfleet_dev.manifests import manual
from llmfleet_dev.processes import OperatorProcess
from llmfleet_dev.wait import wait_for
from llmfleet_operator import api

pytestmark = pytest.mark.usefixtures("operator", "models_pvc")

RECORD = os.environ.get("LLMFLEET_RECORD_STATES") == "1"
GPUS_PER_NODE_POD = 8  # a pod that takes a whole simulated node


def cond(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def observed(obj: dict[str, Any]) -> bool:
    return bool(obj.get("status", {}).get("observedGeneration") == obj["metadata"]["generation"])


def settled(kube: Kubectl, name: str, test: Callable[[dict[str, Any]], bool]) -> Callable[[], Any]:
    """A probe: the object once the operator has observed its generation and ``test`` holds."""

    def probe() -> Any:
        obj = kube.get("llmd", name)
        return obj if observed(obj) and test(obj) else None

    return probe


def record(state: str, obj: dict[str, Any]) -> None:
    """Check both verdicts on the live object; with LLMFLEET_RECORD_STATES=1, keep it."""
    recorded = clean(obj)
    check_state(state, obj)
    check_state(state, recorded)  # the cleaning takes nothing the verdicts read
    if RECORD:
        write_state(state, recorded)


def ready(kube: Kubectl, name: str) -> dict[str, Any]:
    kube("wait", "--for=condition=Ready", f"llmd/{name}", "--timeout=90s")
    obj: dict[str, Any] = wait_for(
        f"{name} Ready and settled",
        settled(kube, name, lambda o: cond(o, "Reconciling").get("status") == "False"),
    )
    return obj


@contextmanager
def operator_frozen(operator: OperatorProcess) -> Iterator[None]:
    """The operator process stopped (SIGSTOP) for a moment: what clients see before it looks."""
    assert operator.proc is not None
    assert operator.proc.poll() is None
    os.kill(operator.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(operator.proc.pid, signal.SIGCONT)


@contextmanager
def watching(kube: Kubectl, name: str) -> Iterator[list[dict[str, Any]]]:
    """Every version of the LLMDeployment the API server sends a watch (``kubectl get -w``),
    so that a transition is checked at each status write, not only where a poll lands."""
    assert kube.namespace is not None
    cmd = [kube.binary, f"--kubeconfig={kube.kubeconfig}", f"--namespace={kube.namespace}"]
    proc = subprocess.Popen(
        [*cmd, "get", "llmd", name, "--watch", "--output=json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen: list[dict[str, Any]] = []

    def pump() -> None:
        assert proc.stdout is not None
        decoder, buf = json.JSONDecoder(), ""
        for line in proc.stdout:
            buf += line
            try:
                obj, end = decoder.raw_decode(buf.lstrip())
            except ValueError:
                continue
            seen.append(obj)
            buf = buf.lstrip()[end:]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        wait_for(f"the watch on {name} to start", lambda: seen)
        yield seen
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def check_transition(
    seen: list[dict[str, Any]], since: int, argo: set[str], flux: set[str]
) -> list[tuple[str, str]]:
    """Each version from generation ``since`` on: the conditions never contradict each other
    and both tools say only what ``argo`` and ``flux`` allow (no Healthy blip mid-rollout)."""
    verdicts: list[tuple[str, str]] = []
    for obj in seen:
        if int(obj["metadata"]["generation"]) < since:
            continue
        status = {t: cond(obj, t).get("status") for t in ("Ready", "Reconciling", "Stalled")}
        shown = json.dumps(obj.get("status"))
        assert not (status["Ready"] == "True" and status["Reconciling"] == "True"), shown
        assert not (status["Stalled"] == "True" and status["Reconciling"] == "True"), shown
        a, k = argocd_health(obj), kstatus(obj)
        assert a.status in argo, f"Argo CD said {a} mid-transition: {shown}"
        assert k.status in flux, f"kstatus said {k} mid-transition: {shown}"
        if not verdicts or verdicts[-1] != (a.status, k.status):
            verdicts.append((a.status, k.status))
    return verdicts


def test_ready(kube: Kubectl) -> None:
    kube.apply(manual("chat", 2))
    record("ready", ready(kube, "chat"))


NEVER_READY = {"podAnnotations": {NEVER_READY_ANNOTATION: "true"}}
#: What the tools may say while a new revision rolls out (until it ends one way or the other).
ROLLING_ARGO, ROLLING_FLUX = {"Progressing"}, {"InProgress"}


def test_rolling(kube: Kubectl) -> None:
    kube.apply(manual("chat", 2))
    ready(kube, "chat")
    with watching(kube, "chat") as seen:
        kube.apply(manual("chat", 2, version="v2", worker=NEVER_READY))
        obj = wait_for(
            "a RollingUpdate in progress",
            settled(
                kube,
                "chat",
                lambda o: (
                    cond(o, "Reconciling").get("status") == "True"
                    and o["status"].get("rollout", {}).get("phase") == "Progressing"
                    and (o["status"].get("updatedReplicas") or 0) >= 1
                ),
            ),
        )
    check_transition(seen, 2, ROLLING_ARGO, ROLLING_FLUX)
    record("rolling", obj)


def canary_spec(version: str, **rollout: Any) -> dict[str, Any]:
    return manual(
        "chat",
        4,
        version=version,
        rollout={
            "strategy": "Canary",
            "canary": {"steps": [{"weight": 25, "pauseSeconds": 0}, {"weight": 50}]},
            **rollout,
        },
    )


def test_canary_then_paused(kube: Kubectl) -> None:
    kube.apply(canary_spec("v1"))
    ready(kube, "chat")
    with watching(kube, "chat") as seen:
        kube.apply(canary_spec("v2"))
        obj = wait_for(
            "canary step 1 reached",
            settled(
                kube,
                "chat",
                lambda o: (
                    o["status"].get("rollout", {}).get("phase") == "Canary"
                    and bool(o["status"]["rollout"].get("stepStartedTime"))
                ),
            ),
            timeout=90,
        )
        check_transition(seen, 2, ROLLING_ARGO, ROLLING_FLUX)
        record("canary", obj)

        kube.apply(canary_spec("v2", paused=True))
        obj = wait_for(
            "the canary paused",
            settled(
                kube, "chat", lambda o: o["status"].get("rollout", {}).get("phase") == "Paused"
            ),
        )
    check_transition(seen, 3, {"Progressing", "Suspended"}, ROLLING_FLUX)
    record("canary-paused", obj)


def test_rolled_back(kube: Kubectl) -> None:
    deadline = {"progressDeadlineSeconds": 10}
    kube.apply(manual("chat", 1, rollout=deadline))
    ready(kube, "chat")
    with watching(kube, "chat") as seen:
        kube.apply(manual("chat", 1, version="v2", rollout=deadline, worker=NEVER_READY))
        obj = wait_for(
            "Stalled/RolledBack",
            settled(kube, "chat", lambda o: cond(o, "Stalled").get("reason") == "RolledBack"),
            timeout=90,
        )
    verdicts = check_transition(seen, 2, {"Progressing", "Degraded"}, {"InProgress", "Failed"})
    assert verdicts[-1] == ("Degraded", "Failed"), verdicts
    record("rolled-back", obj)


def test_suspended(kube: Kubectl) -> None:
    kube.apply(manual("chat", 2))
    ready(kube, "chat")
    with watching(kube, "chat") as seen:
        kube.apply(manual("chat", 2, suspend=True))
        obj = wait_for(
            "suspended and scaled to zero",
            settled(
                kube,
                "chat",
                lambda o: (
                    cond(o, "Ready").get("reason") == "Suspended"
                    and cond(o, "Reconciling").get("status") == "False"
                ),
            ),
            timeout=60,
        )
    # Argo CD: Suspended from the first status of the new generation; Flux: done once at zero.
    check_transition(seen, 2, {"Progressing", "Suspended"}, {"InProgress", "Current"})
    record("suspended", obj)


def test_unobserved_generation_and_no_status(kube: Kubectl, operator: OperatorProcess) -> None:
    kube.apply(manual("chat", 1))
    ready(kube, "chat")
    with operator_frozen(operator):
        kube.apply(manual("chat", 2))
        kube.apply(manual("fresh", 1))
        before = kube.get("llmd", "chat")
        fresh = kube.get("llmd", "fresh")
    assert before["metadata"]["generation"] == 2
    assert before["status"]["observedGeneration"] == 1
    assert "status" not in fresh
    record("unobserved-generation", before)
    record("no-status", fresh)
    # Thawed, the operator catches up: both end Healthy and Current.
    check_state("ready", ready(kube, "chat"))
    check_state("ready", ready(kube, "fresh"))


def test_invalid_spec(kubectl: Kubectl, kube: Kubectl, crd_installed: str) -> None:
    """A spec the API server takes and the operator refuses. The committed CRD states every
    rule of the Python models (tests/integration/test_crd_validation.py), so that takes a CRD
    older than the operator: here, one without spec.model.uri's rule, for a moment."""
    rule = (
        "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/model"
        "/properties/uri/x-kubernetes-validations"
    )
    older = json.dumps([{"op": "remove", "path": rule}])
    bad = manual("chat", 1)
    bad["spec"]["model"]["uri"] = "s3://bucket/tiny"
    kubectl("patch", "crd", crd_installed, "--type=json", "-p", older)
    try:
        wait_for(
            "the older CRD to take the spec",
            lambda: kube.apply(bad, check=False).returncode == 0,
            timeout=30,
            interval=0.5,
        )
        obj = wait_for(
            "Stalled/InvalidSpec",
            settled(kube, "chat", lambda o: cond(o, "Stalled").get("reason") == "InvalidSpec"),
        )
    finally:
        apply_crd(kubectl, field_manager=FIELD_MANAGER)
    assert "spec.model.uri" in cond(obj, "Stalled")["message"]
    record("invalid-spec", obj)
    kube("delete", "llmd", "chat", "--wait=true")


def test_insufficient_gpu(kubectl: Kubectl, kube: Kubectl) -> None:
    """One whole-node pod more than there are GPU nodes: the last one stays Pending."""
    nodes = sum(
        1
        for n in kubectl.get("nodes")["items"]
        if int(n["status"].get("allocatable", {}).get("nvidia.com/gpu", 0)) >= GPUS_PER_NODE_POD
    )
    gpus = {"resources": {"gpus": GPUS_PER_NODE_POD, "cpu": "1", "memory": "1Gi"}}
    kube.apply(manual("chat", nodes + 1, worker=gpus))
    obj = wait_for(
        "Stalled/InsufficientGPU",
        settled(kube, "chat", lambda o: cond(o, "Stalled").get("reason") == "InsufficientGPU"),
        timeout=90,
    )
    record("insufficient-gpu", obj)
    # Give the GPUs back before the next module runs.
    kube("delete", "llmd", "chat", "--wait=true")
    wait_for(
        "the whole-node pods gone",
        lambda: not kube.get("pods", None, "-l", f"{api.LABEL_DEPLOYMENT}=chat")["items"],
        timeout=60,
    )


def test_every_state_is_recorded_here() -> None:
    names = {"ready", "rolling", "canary", "canary-paused", "rolled-back", "suspended"}
    names |= {"unobserved-generation", "no-status", "invalid-spec", "insufficient-gpu"}
    assert names == set(EXPECTED)
