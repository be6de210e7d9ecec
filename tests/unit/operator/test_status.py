"""Status evaluation: kstatus conditions from observed children."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from llmfleet_dev.capacity import gpu_capacity
from llmfleet_operator.capacity import GpuCapacity, PodInfo, pod_info
from llmfleet_operator.status import Observation, build_status

NOW = datetime(2026, 5, 1, tzinfo=UTC)


def deployment(
    replicas: int,
    ready: int,
    updated: int | None = None,
    total: int | None = None,
    progressing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    total = replicas if total is None else total
    updated = replicas if updated is None else updated
    return {
        "metadata": {"generation": 2},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 2,
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [progressing] if progressing else [],
        },
    }


def pod(name: str, ready: bool = True, waiting: bool = False, rev: str = "r1") -> PodInfo:
    return PodInfo(
        name,
        rev,
        "Pending" if waiting else "Running",
        ready,
        False,
        waiting,
        "0/5 nodes are available: 4 Insufficient nvidia.com/gpu" if waiting else "",
        4,
    )


def observe(**kw: Any) -> Observation:
    base: dict[str, Any] = dict(
        generation=5,
        desired_replicas=2,
        revision="r1",
        selector="llmfleet.io/deployment=x",
        endpoint="http://x.ns.svc:8000/v1",
        suspended=False,
        gpus_per_pod=4,
        gpu_resource="nvidia.com/gpu",
        deployment=deployment(2, 2),
        pods=[pod("a"), pod("b")],
    )
    base.update(kw)
    return Observation(**base)


def conds(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_rolled_out_fleet_is_ready() -> None:
    status = build_status(observe(), None, NOW)
    assert conds(status) == {
        "Ready": ("True", "Available"),
        "Reconciling": ("False", "Reconciled"),
        "Stalled": ("False", "Reconciled"),
    }
    assert status["observedGeneration"] == 5
    assert status["currentRevision"] == status["updateRevision"] == "r1"
    assert status["readyReplicas"] == 2


def test_scaling_up_is_reconciling() -> None:
    status = build_status(
        observe(deployment=deployment(2, 1, total=2), pods=[pod("a"), pod("b", ready=False)]),
        None,
        NOW,
    )
    assert conds(status)["Ready"] == ("False", "PodsNotReady")
    assert conds(status)["Reconciling"][0] == "True"


def test_pods_waiting_for_gpus_stall_with_counts() -> None:
    cap = GpuCapacity("nvidia.com/gpu", total=32, free=3, free_per_node={"n0": 3}, nodes=4)
    obs = observe(
        deployment=deployment(2, 1),
        pods=[pod("a"), pod("b", ready=False, waiting=True)],
        capacity=cap,
    )
    status = build_status(obs, None, NOW)
    assert conds(status)["Stalled"] == ("True", "InsufficientGPU")
    assert conds(status)["Reconciling"][0] == "False"
    assert conds(status)["Ready"] == ("False", "InsufficientGPU")
    msg = next(c["message"] for c in status["conditions"] if c["type"] == "Stalled")
    assert "asks for 4 nvidia.com/gpu" in msg
    assert "3 free of 32" in msg


def test_progress_deadline_stalls() -> None:
    prog = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "x-1" has timed out progressing.',
    }
    obs = observe(revision="r2", deployment=deployment(2, 2, updated=1, total=3, progressing=prog))
    status = build_status(obs, {"currentRevision": "r1"}, NOW)
    assert conds(status)["Stalled"] == ("True", "ProgressDeadlineExceeded")
    assert status["currentRevision"] == "r1"
    assert status["updateRevision"] == "r2"


def test_suspended_fleet_is_ready_at_zero() -> None:
    status = build_status(
        observe(desired_replicas=0, suspended=True, deployment=deployment(0, 0), pods=[]), None, NOW
    )
    assert conds(status)["Ready"] == ("True", "Suspended")


def test_same_observation_gives_identical_status_later() -> None:
    first = build_status(observe(), None, NOW)
    again = build_status(observe(), first, datetime(2027, 1, 1, tzinfo=UTC))
    assert again == first


def test_autoscaler_status_is_carried_over() -> None:
    prev = {"autoscaler": {"lastDecision": {"from": 1, "to": 2, "reason": "QueueDepth"}}}
    assert build_status(observe(), prev, NOW)["autoscaler"] == prev["autoscaler"]


def test_gpu_capacity_counts_scheduled_unfinished_pods() -> None:
    ready = [{"type": "Ready", "status": "True"}]
    nodes = [
        {
            "metadata": {"name": "g0"},
            "spec": {},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": ready},
        },
        {
            "metadata": {"name": "g1"},
            "spec": {"unschedulable": True},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": ready},
        },
        {"metadata": {"name": "cpu"}, "spec": {}, "status": {"allocatable": {"cpu": "8"}}},
    ]

    def p(node: str, gpus: int, phase: str = "Running") -> dict[str, Any]:
        return {
            "spec": {
                "nodeName": node,
                "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
            },
            "status": {"phase": phase},
        }

    cap = gpu_capacity(nodes, [p("g0", 3), p("g0", 2, "Succeeded"), p("g1", 8)], "nvidia.com/gpu")
    assert (cap.total, cap.free, cap.nodes) == (8, 5, 1)
    assert cap.fits(2) == 2
    assert cap.largest_free_block == 5


def test_pod_info_recognises_waiting_for_gpu() -> None:
    body = {
        "metadata": {"name": "w", "labels": {"llmfleet.io/revision": "r9"}},
        "spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}]},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/5 nodes are available: 4 Insufficient nvidia.com/gpu.",
                }
            ],
        },
    }
    info = pod_info(body, "nvidia.com/gpu", "llmfleet.io/revision")
    assert info.waiting_for_gpu
    assert info.gpus == 4
    assert info.revision == "r9"
    assert not info.ready


def test_other_scheduling_failures_are_explained() -> None:
    blocked = PodInfo(
        "b",
        "r1",
        "Pending",
        False,
        False,
        False,
        '0/5 nodes are available: persistentvolumeclaim "models" not found.',
        1,
    )
    status = build_status(observe(deployment=deployment(2, 1), pods=[pod("a"), blocked]), None, NOW)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert 'persistentvolumeclaim "models" not found' in ready["message"]


def raw_pod(container_status: dict[str, Any], phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {"name": "w-1", "labels": {"llmfleet.io/revision": "r1"}},
        "spec": {"containers": [{"name": "worker"}]},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "worker", "ready": False, **container_status}],
        },
    }


CRASHING = {
    "restartCount": 4,
    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
    "lastState": {
        "terminated": {
            "reason": "Error",
            "exitCode": 2,
            "message": "llmfleet-worker: error: max model length 4096 exceeds the model's 2048",
        }
    },
}
OOM = {
    "restartCount": 2,
    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
}
PULLING = {"state": {"waiting": {"reason": "ErrImagePull", "message": "manifest unknown"}}}
NO_SECRET = {
    "state": {
        "waiting": {"reason": "CreateContainerConfigError", "message": 'secret "hf" not found'}
    }
}


def test_container_failures_are_named_as_the_kubelet_reports_them() -> None:
    def failure(cs: dict[str, Any]) -> tuple[str, str] | None:
        f = pod_info(raw_pod(cs), "nvidia.com/gpu", "llmfleet.io/revision").failure
        return (f.reason, f.message) if f else None

    reason, message = failure(CRASHING) or ("", "")
    assert reason == "CrashLoopBackOff"
    assert "last exit code 2" in message
    assert "exceeds the model's 2048" in message
    assert failure(OOM) == (
        "OOMKilled",
        "container worker was killed for exceeding its memory limit (exit 137, 2 restarts)",
    )
    assert failure(PULLING) == (
        "ImagePullBackOff",
        "container worker: ErrImagePull: manifest unknown",
    )
    assert failure(NO_SECRET) == (
        "ConfigError",
        'container worker: CreateContainerConfigError: secret "hf" not found',
    )
    assert failure({"state": {"running": {}}}) is None


def test_failing_pods_stall_with_the_kubelet_s_words_and_the_fix_first() -> None:
    info = [
        pod_info(raw_pod(cs), "nvidia.com/gpu", "llmfleet.io/revision") for cs in (OOM, NO_SECRET)
    ]
    status = build_status(observe(deployment=deployment(2, 0), pods=info), None, NOW)
    assert conds(status)["Stalled"] == ("True", "ConfigError")
    assert conds(status)["Ready"] == ("False", "ConfigError")
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["message"].startswith("1 pod ConfigError: w-1: container worker: ")


def test_a_ready_pod_that_was_once_oom_killed_is_not_failing() -> None:
    healthy = raw_pod({**OOM, "ready": True, "state": {"running": {}}})
    healthy["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    info = pod_info(healthy, "nvidia.com/gpu", "llmfleet.io/revision")
    status = build_status(observe(pods=[info, pod("b")]), None, NOW)
    assert conds(status)["Ready"] == ("True", "Available")


def test_a_refused_write_stalls_and_says_what_the_api_server_said() -> None:
    obs = observe(rejected="Deployment x: admission webhook denied: no GPUs on Fridays")
    status = build_status(obs, None, NOW)
    assert conds(status)["Stalled"] == ("True", "ApplyRejected")
    assert conds(status)["Ready"] == ("False", "ApplyRejected")
    assert status["observedGeneration"] == 5  # this generation was acted on: it was refused
    msg = next(c["message"] for c in status["conditions"] if c["type"] == "Stalled")
    assert (
        msg == "the API server refused Deployment x: admission webhook denied: no GPUs on Fridays"
    )


def test_a_foreign_object_in_the_way_stalls_with_its_kind_and_name() -> None:
    # A healthy fleet whose Service name is taken by someone else's Service: not Ready, since
    # the Service clients call is not ours.
    obs = observe(foreign=("Service x",))
    status = build_status(obs, None, NOW)
    assert conds(status)["Stalled"] == ("True", "ForeignObject")
    assert conds(status)["Ready"] == ("False", "ForeignObject")
    assert conds(status)["Reconciling"] == ("False", "ForeignObject")
    assert status["observedGeneration"] == 5
    by_type = {c["type"]: c["message"] for c in status["conditions"]}
    assert by_type["Stalled"] == (
        "Service x exists and is not this LLMDeployment's (no ownerReference to it): left "
        "untouched; delete or rename it, or rename the LLMDeployment"
    )
    assert by_type["Ready"].startswith("2/2 replicas ready; Service x exists")
    two = build_status(observe(foreign=("Service x", "NetworkPolicy x")), None, NOW)
    stalled = next(c["message"] for c in two["conditions"] if c["type"] == "Stalled")
    assert stalled.startswith("Service x, NetworkPolicy x exist and are not ")
    # It is what to fix first: before a refused write of another child.
    both = build_status(observe(foreign=("Service x",), rejected="Deployment x: no"), None, NOW)
    assert conds(both)["Stalled"] == ("True", "ForeignObject")
