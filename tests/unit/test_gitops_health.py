"""What Argo CD (the chart's Lua health script) and Flux (kstatus) say of an LLMDeployment, on
objects recorded from the real test cluster (tests/integration/test_recorded_states.py writes
tests/fixtures/states/) and on a few shapes no recording reaches.

No cluster: Lua 5.1 through lupa, kstatus through the kstatus-check tool hack/tools.sh builds.
"""

from __future__ import annotations

import copy
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmfleet_dev.gitops import (
    AGREES,
    ARGOCD_CM_KEY,
    EXPECTED,
    HEALTH_LUA,
    STATES,
    argocd_health,
    check_state,
    kstatus,
    load_state,
)
from llmfleet_dev.helm import CHART, Helm
from llmfleet_dev.localcluster import ensure_tools
from llmfleet_operator import api

ROOT = Path(__file__).resolve().parents[2]
GITOPS_DOC = ROOT / "docs" / "gitops.md"


@pytest.mark.parametrize("state", sorted(EXPECTED))
def test_recorded_state(state: str) -> None:
    obj = load_state(state)
    assert obj["kind"] == api.KIND
    argo, ks = check_state(state, obj)
    if argo.status in AGREES:
        assert AGREES[argo.status] == ks.status or state == "no-status", (argo, ks)


def test_every_recorded_state_is_expected() -> None:
    assert {p.stem for p in STATES.glob("*.json")} == set(EXPECTED)


def test_recorded_states_are_what_the_operator_writes() -> None:
    """The fixtures carry the conditions the operator writes, not hand-made ones."""
    for state in set(EXPECTED) - {"no-status"}:
        status = api.LLMDeploymentStatus.model_validate(load_state(state)["status"])
        assert status.conditions is not None
        types = [c.type for c in status.conditions]
        assert types[:3] == ["Ready", "Reconciling", "Stalled"], (state, types)


def with_conditions(**conds: tuple[str, str]) -> dict[str, Any]:
    obj = copy.deepcopy(load_state("ready"))
    obj["status"]["conditions"] = [
        {
            "type": t,
            "status": s,
            "reason": r,
            "message": f"the {r} check says so",
            "observedGeneration": 1,
        }
        for t, (s, r) in conds.items()
    ]
    return obj


def test_a_status_without_conditions_is_progressing() -> None:
    obj = with_conditions()
    assert argocd_health(obj).status == "Progressing"


def test_stalled_wins_over_ready() -> None:
    """A stalled fleet may still serve (Ready=True): both tools report the failure."""
    obj = with_conditions(
        Ready=("True", "InsufficientGPU"),
        Reconciling=("False", "InsufficientGPU"),
        Stalled=("True", "InsufficientGPU"),
    )
    assert argocd_health(obj).status == "Degraded"
    assert argocd_health(obj).message == "InsufficientGPU: the InsufficientGPU check says so"
    assert kstatus(obj).status == "Failed"


@pytest.mark.parametrize("reason", ["ApplyRejected", "CrashLoopBackOff", "CanaryAnalysisFailed"])
def test_every_stalled_reason_is_degraded(reason: str) -> None:
    obj = with_conditions(
        Ready=("False", reason), Reconciling=("False", reason), Stalled=("True", reason)
    )
    assert argocd_health(obj).status == "Degraded"
    assert argocd_health(obj).message.startswith(f"{reason}: ")
    assert kstatus(obj).status == "Failed"


def test_suspended_while_scaling_down() -> None:
    obj = with_conditions(
        Ready=("False", "Scaling"), Reconciling=("True", "Scaling"), Stalled=("False", "x")
    )
    obj["spec"]["suspend"] = True
    health = argocd_health(obj)
    assert health.status == "Suspended"
    assert health.message.startswith("suspending: Scaling")


def test_an_object_without_generation_is_judged_by_its_conditions() -> None:
    """Argo CD may hand over an object without metadata.generation (e.g. a diff preview)."""
    obj = load_state("ready")
    del obj["metadata"]["generation"]
    assert argocd_health(obj).status == "Healthy"


def test_the_docs_carry_the_script_as_argocd_cm_wants_it() -> None:
    """docs/gitops.md's argocd-cm snippet is the chart's script, byte for byte."""
    text = GITOPS_DOC.read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    found = [
        yaml.safe_load(b)
        for b in blocks
        if "kind: ConfigMap" in b and ARGOCD_CM_KEY in b and "name: argocd-cm" in b
    ]
    assert found, f"no argocd-cm ConfigMap with {ARGOCD_CM_KEY} in {GITOPS_DOC}"
    assert found[0]["data"][ARGOCD_CM_KEY] == HEALTH_LUA.read_text(), (
        f"{GITOPS_DOC}: the argocd-cm snippet differs from {HEALTH_LUA}; copy the script in"
    )


@pytest.mark.parametrize(
    "script",
    [
        'return {status = string.lower("Healthy")}',
        'local s = "healthy"; return {status = s:upper()}',
        "return {status = tostring(math.floor(1))}",
    ],
)
def test_the_harness_withholds_what_argo_cd_withholds(script: str) -> None:
    """Argo CD opens no string or math library for argocd-cm scripts: neither does the test."""
    with pytest.raises(Exception, match="attempt to index"):
        argocd_health(load_state("ready"), script)


def test_the_chart_package_carries_the_script(tmp_path: Path) -> None:
    """`helm pull --untar` hands users the script of the chart version they install."""
    helm = Helm(str(ensure_tools() / "helm"), tmp_path / "home")
    helm.run("package", str(CHART), f"--destination={tmp_path}")
    [package] = tmp_path.glob("llmfleet-*.tgz")
    with tarfile.open(package) as tar:
        member = tar.extractfile("llmfleet/files/argocd-health.lua")
        assert member is not None
        assert member.read().decode() == HEALTH_LUA.read_text()
