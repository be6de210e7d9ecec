"""Rollouts against the real control plane with kwok GPU nodes: surge or replace in place from
the free GPUs of a full pool, never below N-1 Ready, a single replica that waits for a GPU,
the progress deadline rolling a never-ready candidate back, and a canary driven by hand.

Each worker pod here asks for a whole node (8 GPUs), so "free GPUs" is a count of free nodes
that a blocker Deployment sets exactly. Readiness is kwok's (pods Ready once scheduled);
analysis needs real workers and Prometheus and is in tests/e2e.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llmfleet_dev.kube import Kubectl, gpu_blocker
from llmfleet_dev.localcluster import NEVER_READY_ANNOTATION
from llmfleet_dev.manifests import manual
from llmfleet_dev.processes import OperatorProcess
from llmfleet_dev.wait import wait_for
from llmfleet_operator import api

pytestmark = pytest.mark.usefixtures("operator", "models_pvc")

GPUS_PER_POD = 8


def llmd(name: str, replicas: int, version: str = "v1", **spec: Any) -> dict[str, Any]:
    """A fleet whose every pod takes a whole node: each surge or replacement is visible."""
    return manual(name, replicas, version, gpus=GPUS_PER_POD, **spec)


def status(kube: Kubectl, name: str) -> dict[str, Any]:
    return dict(kube.get("llmd", name).get("status", {}))


def cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


def worker_pods(kube: Kubectl, name: str) -> list[dict[str, Any]]:
    items = kube.get("pods", None, "-l", f"{api.LABEL_DEPLOYMENT}={name}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready_pods(kube: Kubectl, name: str, revision: str | None = None) -> int:
    def ready(p: dict[str, Any]) -> bool:
        conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}
        return conds.get("Ready") == "True"

    return sum(
        1
        for p in worker_pods(kube, name)
        if ready(p)
        and (revision is None or p["metadata"]["labels"].get(api.LABEL_REVISION) == revision)
    )


def free_nodes(kubectl: Kubectl) -> int:
    """Nodes with all their GPUs free (counted from every scheduled, unfinished pod)."""
    nodes = kubectl.get("nodes")["items"]
    pods = kubectl.get("pods", None, "--all-namespaces")["items"]
    used: dict[str, int] = {}
    for p in pods:
        if p.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        node = p.get("spec", {}).get("nodeName")
        for c in p["spec"]["containers"]:
            gpus = int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
            if node and gpus:
                used[node] = used.get(node, 0) + gpus
    return sum(
        1
        for n in nodes
        if int(n["status"].get("allocatable", {}).get("nvidia.com/gpu", 0)) >= GPUS_PER_POD
        and used.get(n["metadata"]["name"], 0) == 0
    )


@pytest.fixture
def leave_free(kubectl: Kubectl, kube: Kubectl) -> Iterator[Callable[[int], None]]:
    """``leave_free(n)``: fill the GPU pool with whole-node blocker pods until exactly ``n``
    nodes stay free for the test's workers."""
    made: list[str] = []

    def fill(n: int) -> None:
        # Earlier tests' namespaces are deleted without waiting: let their pods go first.
        total = gpu_nodes(kubectl)
        wait_for("every GPU to be free", lambda: free_nodes(kubectl) == total, timeout=120)
        if total > n:
            kube.apply(gpu_blocker(total - n, GPUS_PER_POD, BLOCKER))
            made.append(BLOCKER)
        wait_for(f"{n} free GPU nodes", lambda: free_nodes(kubectl) == n, timeout=60)

    yield fill
    for name in made:
        kube("delete", "deployment", name, "--wait=false", check=False)


def gpu_nodes(kubectl: Kubectl) -> int:
    return sum(
        1
        for n in kubectl.get("nodes")["items"]
        if int(n["status"].get("allocatable", {}).get("nvidia.com/gpu", 0)) >= GPUS_PER_POD
    )


BLOCKER = "blocker"


def release(kube: Kubectl) -> None:
    """Free the blocked GPU nodes."""
    kube("delete", "deployment", BLOCKER, "--wait=false")


def rolled_out(kube: Kubectl, name: str, revision_label: str) -> Callable[[], Any]:
    def probe() -> Any:
        st = status(kube, name)
        dep = kube.get("deployment", name)
        done = (
            cond(st, "Ready").get("status") == "True"
            and st.get("currentRevision") == st.get("updateRevision")
            and dep["spec"]["template"]["metadata"]["labels"][api.LABEL_REVISION]
            == st.get("updateRevision")
            and st.get("rollout", {}).get("phase") == "Stable"
        )
        return st if done else None

    return probe


def event_messages(kube: Kubectl, name: str, reason: str) -> list[str]:
    items = kube.get(
        "events", None, "--field-selector", f"involvedObject.name={name},reason={reason}"
    )["items"]
    return [e["message"] for e in items]


def test_rolling_update_surges_when_a_gpu_node_is_free(
    kube: Kubectl, leave_free: Callable[[int], None]
) -> None:
    leave_free(3)  # two for the fleet, one for the surge pod
    kube.apply(llmd("surge", 2))
    kube("wait", "--for=condition=Ready", "llmd/surge", "--timeout=90s")
    old = status(kube, "surge")["currentRevision"]

    kube.apply(llmd("surge", 2, version="v2"))

    def done_and_never_short() -> Any:
        assert ready_pods(kube, "surge") >= 2, "a surge never drops below N Ready"
        return rolled_out(kube, "surge", "v2")()

    st = wait_for("the surge rollout to finish", done_and_never_short, timeout=120)
    assert st["updateRevision"] != old
    assert f"rolling out revision {st['updateRevision']} (Surge)" in event_messages(
        kube, "surge", "RolloutStarted"
    )
    revisions = [(r["revision"], r["phase"]) for r in st["revisions"]]
    assert revisions[:2] == [(st["updateRevision"], "Active"), (old, "Superseded")]
    # The new revision is the rollback target now: its template, recorded good by the status
    # write that saw it Ready (no write to the Deployment of its own).
    dep = kube.get("deployment", "surge")
    assert st["currentRevision"] == st["updateRevision"]
    template = dep["spec"]["template"]["metadata"]["labels"]["llmfleet.io/revision"]
    assert template == st["updateRevision"]
    assert json.loads(dep["metadata"]["annotations"]["llmfleet.io/template-spec"])["model"]


def test_full_pool_replaces_in_place_never_below_n_minus_one(
    kube: Kubectl, leave_free: Callable[[int], None]
) -> None:
    leave_free(3)
    kube.apply(llmd("inplace", 3))
    kube("wait", "--for=condition=Ready", "llmd/inplace", "--timeout=90s")
    assert free_nodes(kube) == 0

    kube.apply(llmd("inplace", 3, version="v2"))

    lowest = [3]

    def done() -> Any:
        lowest[0] = min(lowest[0], ready_pods(kube, "inplace"))
        assert lowest[0] >= 2, "never fewer than N-1 Ready"
        return rolled_out(kube, "inplace", "v2")()

    st = wait_for("the in-place rollout to finish", done, timeout=180)
    assert f"rolling out revision {st['updateRevision']} (InPlace)" in event_messages(
        kube, "inplace", "RolloutStarted"
    )
    assert cond(st, "Stalled")["status"] == "False"


def test_single_replica_without_a_free_gpu_waits_and_says_so(
    kube: Kubectl, leave_free: Callable[[int], None]
) -> None:
    leave_free(1)
    kube.apply(llmd("solo", 1))
    kube("wait", "--for=condition=Ready", "llmd/solo", "--timeout=90s")
    [pod] = worker_pods(kube, "solo")

    kube.apply(llmd("solo", 1, version="v2"))

    def stalled_for_gpu() -> Any:
        st = status(kube, "solo")
        return st if cond(st, "Stalled").get("reason") == "InsufficientGPU" else None

    st = wait_for("Stalled/InsufficientGPU", stalled_for_gpu)
    assert cond(st, "Stalled")["status"] == "True"
    assert "allowDowntime" in cond(st, "Stalled")["message"]
    total = gpu_nodes(kube) * GPUS_PER_POD
    assert f"asks for 8 nvidia.com/gpu; 0 free of {total}" in cond(st, "Stalled")["message"]
    assert st["rollout"]["phase"] == "WaitingForGPU"
    kube("wait", "--for=condition=Stalled", "llmd/solo", "--timeout=10s")
    # The only pod keeps serving: no surge pod piles up, nothing is taken down.
    [still] = worker_pods(kube, "solo")
    assert still["metadata"]["uid"] == pod["metadata"]["uid"]
    assert ready_pods(kube, "solo") == 1

    release(kube)  # a GPU node frees up: the rollout goes on by itself
    wait_for("the rollout once a GPU is free", rolled_out(kube, "solo", "v2"), timeout=120)


def test_single_replica_with_allow_downtime_is_replaced_in_place(
    kube: Kubectl, leave_free: Callable[[int], None]
) -> None:
    leave_free(1)
    kube.apply(llmd("gap", 1, rollout={"allowDowntime": True}))
    kube("wait", "--for=condition=Ready", "llmd/gap", "--timeout=90s")
    kube.apply(llmd("gap", 1, version="v2", rollout={"allowDowntime": True}))
    wait_for("the in-place rollout", rolled_out(kube, "gap", "v2"), timeout=120)
    st = status(kube, "gap")
    assert cond(st, "Stalled")["status"] == "False"


def test_progress_deadline_rolls_a_never_ready_candidate_back(
    kube: Kubectl, operator: OperatorProcess
) -> None:
    kube.apply(llmd("deadline", 2, rollout={"progressDeadlineSeconds": 10}))
    kube("wait", "--for=condition=Ready", "llmd/deadline", "--timeout=90s")
    good = status(kube, "deadline")["currentRevision"]
    bad_spec = llmd(
        "deadline",
        2,
        version="v2",
        rollout={"progressDeadlineSeconds": 10},
        worker={"podAnnotations": {NEVER_READY_ANNOTATION: "true"}},
    )
    kube.apply(bad_spec)
    kube("wait", "--for=condition=Stalled", "llmd/deadline", "--timeout=90s")
    st = status(kube, "deadline")
    bad = st["updateRevision"]
    stalled = cond(st, "Stalled")
    assert stalled["reason"] == "RolledBack"
    assert bad in stalled["message"]
    assert good in stalled["message"]
    assert "progressDeadlineSeconds" in stalled["message"]
    assert cond(st, "Ready")["status"] == "False"
    assert cond(st, "Reconciling")["status"] == "False"
    assert st["currentRevision"] == good
    assert st["rollout"]["phase"] == "RolledBack"
    assert st["revisions"][0]["revision"] == bad
    assert st["revisions"][0]["phase"] == "RolledBack"
    assert st["revisions"][0]["reason"] == "ProgressDeadlineExceeded"
    # The old pod template comes back at full size.
    wait_for(
        "the old template at full size",
        lambda: (
            kube.get("deployment", "deadline")["spec"]["template"]["metadata"]["labels"][
                api.LABEL_REVISION
            ]
            == good
            and ready_pods(kube, "deadline", good) == 2
            and len(worker_pods(kube, "deadline")) == 2
        ),
        timeout=60,
    )
    metrics = operator.metrics()
    fleet = f'llmdeployment="deadline",namespace="{kube.namespace}"'
    assert metrics[f'llmfleet_operator_rollbacks_total{{{fleet},reason="RolledBack"}}'] >= 1
    phase = f"llmfleet_operator_rollout_phase{{{fleet}"
    assert metrics[f'{phase},phase="RolledBack"}}'] == 1
    assert metrics[f'{phase},phase="Progressing"}}'] == 0
    events = kube.get(
        "events", None, "--field-selector", "involvedObject.name=deadline,reason=RolledBack"
    )["items"]
    assert events
    assert events[0]["type"] == "Warning"

    # Not retried while the spec asks for it: still stalled after another reconcile.
    kube("annotate", "llmd/deadline", "touch=1")
    assert cond(status(kube, "deadline"), "Stalled")["reason"] == "RolledBack"
    assert ready_pods(kube, "deadline", bad) == 0

    # A new spec is a new revision: it rolls out.
    kube.apply(llmd("deadline", 2, version="v3", rollout={"progressDeadlineSeconds": 10}))
    st = wait_for("the next revision", rolled_out(kube, "deadline", "v3"), timeout=120)
    assert cond(st, "Stalled")["status"] == "False"


def canary_spec(version: str) -> dict[str, Any]:
    return llmd(
        "canary",
        4,
        version=version,
        worker={"resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"}},
        rollout={
            "strategy": "Canary",
            "canary": {"steps": [{"weight": 25, "pauseSeconds": 0}, {"weight": 50}]},
        },
    )


def test_canary_runs_beside_the_stable_and_holds_without_analysis_then_promotes_on_request(
    kube: Kubectl,
) -> None:
    kube.apply(canary_spec("v1"))
    kube("wait", "--for=condition=Ready", "llmd/canary", "--timeout=90s")
    stable = status(kube, "canary")["currentRevision"]
    kube.apply(canary_spec("v2"))

    def at_step_one() -> Any:
        st = status(kube, "canary")
        ro = st.get("rollout", {})
        return st if ro.get("phase") == "Canary" and ro.get("stepStartedTime") else None

    st = wait_for("canary step 1 to be reached", at_step_one, timeout=90)
    candidate = st["updateRevision"]
    assert st["rollout"]["candidateRevision"] == candidate
    assert (st["rollout"]["step"], st["rollout"]["canaryWeight"]) == (1, 25)
    assert cond(st, "Reconciling")["reason"] == "CanaryInProgress"
    canary_dep = kube.get("deployment", "canary-canary")
    assert canary_dep["spec"]["replicas"] == 1
    assert canary_dep["spec"]["template"]["metadata"]["labels"][api.LABEL_TRACK] == "canary"
    assert canary_dep["spec"]["template"]["metadata"]["labels"][api.LABEL_REVISION] == candidate
    assert kube.get("deployment", "canary")["spec"]["replicas"] == 3
    # One Service spans both tracks: traffic splits by Ready replicas.
    assert kube.get("service", "canary")["spec"]["selector"] == {api.LABEL_DEPLOYMENT: "canary"}
    assert ready_pods(kube, "canary", stable) == 3
    assert ready_pods(kube, "canary", candidate) == 1
    table = kube("get", "llmd", "canary").stdout
    assert "Canary" in table
    assert "25" in table

    # No Prometheus behind this operator: no verdict, the step holds (never promote blind).
    kube("annotate", "llmd/canary", "touch=1")
    st = status(kube, "canary")
    assert st["rollout"]["step"] == 1
    assert kube.get("deployment", "canary-canary")["spec"]["replicas"] == 1

    # A stale request (another revision) does nothing; the candidate's own promotes.
    kube("annotate", "llmd/canary", f"{api.ANNOTATION_PROMOTE}=not-{candidate}")
    assert status(kube, "canary")["rollout"]["phase"] == "Canary"
    kube("annotate", "--overwrite", "llmd/canary", f"{api.ANNOTATION_PROMOTE}={candidate}")

    def promoted() -> Any:
        assert ready_pods(kube, "canary") >= 4, "promotion never drops ready capacity"
        st = status(kube, "canary")
        gone = kube.get_or_none("deployment", "canary-canary") is None
        return st if gone and st.get("rollout", {}).get("phase") == "Stable" else None

    st = wait_for("the promotion", promoted, timeout=120)
    assert st["currentRevision"] == candidate
    assert ready_pods(kube, "canary", candidate) == 4
    # The promotion started no pod of the revision it replaced: the old ReplicaSet was
    # scaled up once, when the fleet was created.
    [old_rs] = kube.get(
        "replicasets", None, "-l", f"{api.LABEL_DEPLOYMENT}=canary,{api.LABEL_REVISION}={stable}"
    )["items"]
    scaled_up = [
        m
        for m in event_messages(kube, "canary", "ScalingReplicaSet")
        if m.startswith(f"Scaled up replica set {old_rs['metadata']['name']} ")
    ]
    assert len(scaled_up) == 1, scaled_up
    # Ready stayed True from the promotion on: no flap as the canary went away.
    assert not event_messages(kube, "canary", "PodsNotReady")
    reasons = {
        e["reason"]
        for e in kube.get("events", None, "--field-selector", "involvedObject.name=canary")["items"]
    }
    assert {"RolloutStarted", "CanaryStep", "PromotionRequested", "Promoted"} <= reasons


def test_canary_abort_returns_every_pod_to_the_stable_revision(kube: Kubectl) -> None:
    kube.apply(canary_spec("v1"))
    kube("wait", "--for=condition=Ready", "llmd/canary", "--timeout=90s")
    stable = status(kube, "canary")["currentRevision"]
    kube.apply(canary_spec("v2"))
    st = wait_for(
        "the canary Deployment",
        lambda: (s := status(kube, "canary")).get("rollout", {}).get("candidateRevision") and s,
    )
    candidate = st["rollout"]["candidateRevision"]
    kube("annotate", "llmd/canary", f"{api.ANNOTATION_ABORT}={candidate}")
    kube("wait", "--for=condition=Stalled", "llmd/canary", "--timeout=60s")
    st = status(kube, "canary")
    assert cond(st, "Stalled")["reason"] == "RolledBack"
    assert "aborted" in cond(st, "Stalled")["message"]
    wait_for(
        "the canary gone and the stable at full size",
        lambda: (
            kube.get_or_none("deployment", "canary-canary") is None
            and ready_pods(kube, "canary", stable) == 4
        ),
        timeout=60,
    )
    assert json.dumps(st["revisions"][0]).count("Aborted") == 1
