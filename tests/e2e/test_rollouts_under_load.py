"""Rollouts under steady load with real workers, a real Prometheus and the per-LLMDeployment
balancer: a rolling update and a healthy canary fail no request; a candidate that fails
requests, or is slow to the first token, is rolled back by the analysis; without Prometheus
the canary holds its step.

Faults are injected by the test worker (dev/llmfleet_dev/faulty_worker.py) through the
candidate's pod env, so the candidate is a new revision exactly as a user's would be.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from llmfleet_dev.kube import Kubectl
from llmfleet_dev.loadgen import LoadGenerator, LoadResult
from llmfleet_dev.localcluster import LocalCluster
from llmfleet_dev.podbacker import PodBacker
from llmfleet_dev.processes import OperatorProcess, operator_reading
from llmfleet_dev.prometheus import PrometheusServer
from llmfleet_dev.wait import wait_for

#: Seconds between two analyses; Prometheus scrapes every second.
INTERVAL = 2
N = 2


@pytest.fixture(scope="module")
def rollout_operator(
    cluster: LocalCluster,
    crd_installed: str,
    prometheus_server: PrometheusServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The operator analysing canaries from the test Prometheus over short windows."""
    with operator_reading(
        cluster.kubeconfig,
        prometheus_server.url,
        tmp_path_factory.mktemp("operator") / "operator.log",
        "--analysis-min-window=6",
    ) as proc:
        yield proc


pytestmark = pytest.mark.usefixtures("rollout_operator", "prometheus")


def fleet(
    version: str = "v1", env: dict[str, str] | None = None, rollout: dict[str, Any] | None = None
) -> dict[str, Any]:
    worker: dict[str, Any] = {"resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"}}
    if env:
        worker["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return {
        "model": {"revision": version},
        "replicas": N,
        "autoscaling": {"mode": "Manual"},
        "worker": worker,
        "rollout": rollout or {"strategy": "RollingUpdate"},
    }


def canary(**analysis: Any) -> dict[str, Any]:
    return {
        "strategy": "Canary",
        "progressDeadlineSeconds": 300,
        "canary": {
            "steps": [{"weight": 50, "pauseSeconds": 4}],
            "analysis": {
                "intervalSeconds": INTERVAL,
                "minRequests": 5,
                "failureLimit": 2,
                "maxTtftRatio": 3,
                **analysis,
            },
        },
    }


def status(kube: Kubectl, name: str) -> dict[str, Any]:
    return dict(kube.get("llmd", name).get("status", {}))


def cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


def at(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def serving(backer: PodBacker, kube: Kubectl, name: str, revision: str | None = None) -> int:
    assert kube.namespace
    return sum(
        1
        for w in backer.ready_workers(kube.namespace, name)
        if revision is None or w.revision == revision
    )


def start_load(backer: PodBacker, kube: Kubectl, name: str) -> LoadGenerator:
    assert kube.namespace
    url = backer.endpoint(kube.namespace, name)
    assert url, "no balancer for this LLMDeployment"
    # Light enough that a new worker loads its model while the others serve (2 cores).
    return LoadGenerator(
        url, model=name, concurrency=2, duration=300, max_tokens=8, think_time=0.1
    ).start()


def steady(
    kube: Kubectl, apply_llmd: Callable[..., dict[str, Any]], backer: PodBacker, spec: Any
) -> str:
    """Apply ``spec`` as "chat", wait until N workers serve; the stable revision."""
    apply_llmd("chat", **spec)
    wait_for("N workers serving", lambda: serving(backer, kube, "chat") == N, timeout=120)
    kube("wait", "--for=condition=Ready", "llmd/chat", "--timeout=60s")
    return str(status(kube, "chat")["currentRevision"])


def no_failures(result: LoadResult) -> None:
    assert result.total > 20, result.summary()
    assert not result.failed, result.summary()


def promoted(kube: Kubectl, old: str) -> Callable[[], Any]:
    def probe() -> Any:
        st = status(kube, "chat")
        done = (
            st.get("rollout", {}).get("phase") == "Stable"
            and st.get("currentRevision") == st.get("updateRevision") != old
            and kube.get_or_none("deployment", "chat-canary") is None
        )
        return st if done else None

    return probe


def test_rolling_update_under_load_fails_no_request(
    kube: Kubectl, apply_llmd: Callable[..., dict[str, Any]], pod_backer: PodBacker
) -> None:
    old = steady(kube, apply_llmd, pod_backer, fleet())
    gen = start_load(pod_backer, kube, "chat")
    try:
        wait_for("traffic", lambda: gen.completed >= 5, timeout=30)
        apply_llmd("chat", **fleet("v2"))
        st = wait_for("the rollout", promoted(kube, old), timeout=180)
        new = st["currentRevision"]
        wait_for("N new workers serving", lambda: serving(pod_backer, kube, "chat", new) == N)
        # The old workers leave the balancer once the pod backer sees their pods go.
        wait_for("only the new workers serving", lambda: serving(pod_backer, kube, "chat") == N)
    finally:
        result = gen.stop()
    no_failures(result)


def test_healthy_canary_is_promoted_under_load_and_fails_no_request(
    kube: Kubectl,
    apply_llmd: Callable[..., dict[str, Any]],
    pod_backer: PodBacker,
    rollout_operator: OperatorProcess,
) -> None:
    old = steady(kube, apply_llmd, pod_backer, fleet(rollout=canary()))
    gen = start_load(pod_backer, kube, "chat")
    try:
        wait_for("traffic", lambda: gen.completed >= 5, timeout=30)
        apply_llmd("chat", **fleet("v2", rollout=canary()))
        st = wait_for("the promotion", promoted(kube, old), timeout=240)
        new = st["currentRevision"]
        wait_for("N new workers serving", lambda: serving(pod_backer, kube, "chat", new) == N)
    finally:
        result = gen.stop()
    no_failures(result)
    assert st["rollout"]["lastAnalysis"]["verdict"] == "Passed"
    assert st["rollout"]["lastAnalysis"]["errorRatio"] == 0
    assert [(r["revision"], r["phase"]) for r in st["revisions"][:2]] == [
        (new, "Active"),
        (old, "Superseded"),
    ]
    reasons = {
        e["reason"]
        for e in kube.get("events", None, "--field-selector", "involvedObject.name=chat")["items"]
    }
    assert {"RolloutStarted", "CanaryStep", "Promoting", "Promoted"} <= reasons
    analyses = rollout_operator.metrics()
    chat = f'llmdeployment="chat",namespace="{kube.namespace}"'
    assert analyses[f'llmfleet_operator_canary_analyses_total{{{chat},verdict="Passed"}}'] >= 1


def watch_rollback(
    kube: Kubectl, backer: PodBacker, old: str, reason: str
) -> tuple[dict[str, Any], int]:
    """Wait for the rollback; return the status and the fewest stable workers seen serving
    once the canary's step was reached."""
    lowest = [N]

    def rolled_back() -> Any:
        st = status(kube, "chat")
        ro = st.get("rollout", {})
        if ro.get("stepStartedTime"):
            lowest[0] = min(lowest[0], serving(backer, kube, "chat", old))
        if cond(st, "Stalled").get("reason") == reason:
            return st
        return None

    st = wait_for(f"Stalled/{reason}", rolled_back, timeout=240)
    return st, lowest[0]


def after_rollback(kube: Kubectl, backer: PodBacker, st: dict[str, Any], old: str) -> None:
    """The canary is gone and the stable back at full size, serving only the old revision."""
    bad = st["updateRevision"]
    assert st["currentRevision"] == old
    assert st["rollout"]["phase"] == "RolledBack"
    assert cond(st, "Ready")["status"] == "False"
    assert (st["revisions"][0]["revision"], st["revisions"][0]["phase"]) == (bad, "RolledBack")
    wait_for(
        "the stable at full size, the canary gone",
        lambda: (
            serving(backer, kube, "chat", old) == N
            and serving(backer, kube, "chat", bad) == 0
            and kube.get_or_none("deployment", "chat-canary") is None
        ),
        timeout=90,
    )
    # Rolled back within one analysis interval of the check that reached the limit.
    rolled = at(st["revisions"][0]["since"])
    assert rolled - at(st["rollout"]["lastAnalysis"]["time"]) <= INTERVAL + 1


def faulty_candidate(
    kube: Kubectl,
    apply_llmd: Callable[..., dict[str, Any]],
    backer: PodBacker,
    env: dict[str, str],
    **analysis: Any,
) -> tuple[dict[str, Any], int, LoadGenerator]:
    """Under load, a candidate with ``env`` faults is rolled back by the analysis: the status
    then, the fewest stable workers serving during the canary, and the running load."""
    old = steady(kube, apply_llmd, backer, fleet(rollout=canary(**analysis)))
    gen = start_load(backer, kube, "chat")
    try:
        wait_for("traffic", lambda: gen.completed >= 5, timeout=30)
        apply_llmd("chat", **fleet("v2", env, rollout=canary(**analysis)))
        st, lowest = watch_rollback(kube, backer, old, "CanaryAnalysisFailed")
        after_rollback(kube, backer, st, old)
    except BaseException:
        gen.stop()
        raise
    assert lowest >= N - 1, "the stable track shrank below its canary-time size"
    return st, lowest, gen


def test_failing_candidate_is_rolled_back_and_the_stable_never_shrinks_below_its_size(
    kube: Kubectl, apply_llmd: Callable[..., dict[str, Any]], pod_backer: PodBacker
) -> None:
    st, _, gen = faulty_candidate(kube, apply_llmd, pod_backer, {"SIM_FAIL_RATIO": "0.5"})
    try:
        assert gen.result.failed, "the candidate failed no request"
        # Once the canary is gone, nothing fails any more.
        gone_at = gen.result.duration
        seen = gen.completed
        wait_for("more traffic", lambda: gen.completed >= seen + 15, timeout=60)
    finally:
        result = gen.stop()
    stalled = cond(st, "Stalled")
    assert "error ratio" in stalled["message"]
    assert st["rollout"]["lastAnalysis"]["verdict"] == "Failed"
    assert st["rollout"]["lastAnalysis"]["errorRatio"] > 0.05
    late = [r for r in result.records if r.started > gone_at]
    assert late
    assert all(r.ok for r in late), "requests failed after the rollback"
    # Only the candidate's share of the traffic failed.
    assert all(r.status == 500 for r in result.failed), result.summary()


def test_slow_candidate_is_rolled_back_on_time_to_first_token(
    kube: Kubectl, apply_llmd: Callable[..., dict[str, Any]], pod_backer: PodBacker
) -> None:
    # The balancer sends fewer requests to a slow worker (least outstanding first), so its
    # window holds only a few: a lower minRequests lets the analysis judge them.
    st, _, gen = faulty_candidate(
        kube, apply_llmd, pod_backer, {"SIM_TTFT_DELAY_SECONDS": "1.5"}, minRequests=2
    )
    no_failures(gen.stop())  # slow is not broken: every request still answered
    assert st["rollout"]["lastAnalysis"]["ttftRatio"] > 3
    assert "TTFT p95" in cond(st, "Stalled")["message"]


def test_prometheus_gone_mid_canary_holds_the_step(
    kube: Kubectl,
    apply_llmd: Callable[..., dict[str, Any]],
    pod_backer: PodBacker,
    prometheus: PrometheusServer,
) -> None:
    old = steady(kube, apply_llmd, pod_backer, fleet(rollout={**canary(), "paused": True}))
    gen = start_load(pod_backer, kube, "chat")
    try:
        wait_for("traffic", lambda: gen.completed >= 5, timeout=30)
        apply_llmd("chat", **fleet("v2", rollout={**canary(), "paused": True}))

        def paused_at_step() -> Any:
            st = status(kube, "chat")
            ro = st.get("rollout", {})
            return st if ro.get("phase") == "Paused" and ro.get("stepStartedTime") else None

        wait_for("the paused step", paused_at_step, timeout=120)
        prometheus.stop()
        try:
            apply_llmd("chat", **fleet("v2", rollout=canary()))  # resume, without metrics

            def unreachable() -> Any:
                # A check made just before the stop may be inconclusive for another reason
                # (no fresh samples yet): wait for one that could not reach Prometheus.
                ro = status(kube, "chat").get("rollout", {})
                last = ro.get("lastAnalysis") or {}
                inconclusive = last.get("verdict") == "Inconclusive"
                return ro if inconclusive and "Prometheus" in last.get("message", "") else None

            wait_for("an analysis that cannot reach Prometheus", unreachable, timeout=30)
            # Held: several intervals (and the step's pause) later it has not promoted.
            until = time.monotonic() + 4 * INTERVAL + 4
            while time.monotonic() < until:  # a hold is observed, not waited on
                ro = status(kube, "chat")["rollout"]
                assert ro["phase"] == "Canary", ro
                assert ro["step"] == 1
                time.sleep(1)
            assert kube.get("deployment", "chat-canary")["spec"]["replicas"] == 1
            assert status(kube, "chat")["currentRevision"] == old
        finally:
            prometheus.start()
        # Data is back: the canary goes on and is promoted.
        wait_for("the promotion", promoted(kube, old), timeout=180)
    finally:
        result = gen.stop()
    no_failures(result)
