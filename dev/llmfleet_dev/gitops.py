"""How GitOps tools judge an LLMDeployment: Argo CD's health (the chart's Lua script, run in
Lua 5.1 as Argo CD's gopher-lua runs it) and kstatus (the Go library Flux uses, through the
kstatus-check tool hack/tools.sh builds), plus the recorded states both are tested on.

A recorded state is an LLMDeployment as ``kubectl get -o json`` showed it on the test cluster
(tests/integration/test_recorded_states.py), with the noise of one run taken out (uid,
resourceVersion, managedFields, the test's random namespace, timestamps), in
tests/fixtures/states/NAME.json.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from lupa import lua51

from llmfleet_dev.localcluster import ensure_tools

ROOT = Path(__file__).resolve().parents[2]
HEALTH_LUA = ROOT / "charts" / "llmfleet" / "files" / "argocd-health.lua"
STATES = ROOT / "tests" / "fixtures" / "states"
#: argocd-cm's key for the script (GROUP_KIND, as Argo CD spells custom health checks).
ARGOCD_CM_KEY = "resource.customizations.health.llmfleet.io_LLMDeployment"


@dataclass(frozen=True)
class Health:
    status: str
    message: str


@dataclass(frozen=True)
class Expected:
    """What Argo CD and kstatus must say of a recorded state."""

    argocd: str
    kstatus: str
    #: Words the Argo CD message must contain (the operator's reason, say).
    says: str = ""


#: Every state the recorder drives the operator into, and the verdicts.
#: Argo CD: Healthy | Progressing | Degraded | Suspended; kstatus: Current | InProgress | Failed.
EXPECTED: dict[str, Expected] = {
    "ready": Expected("Healthy", "Current", "replicas ready"),
    "rolling": Expected("Progressing", "InProgress", "RollingOut"),
    "canary": Expected("Progressing", "InProgress", "CanaryInProgress"),
    # kstatus has no "suspended": a held canary is a rollout that has not finished.
    "canary-paused": Expected("Suspended", "InProgress", "CanaryPaused"),
    "insufficient-gpu": Expected("Degraded", "Failed", "InsufficientGPU"),
    "rolled-back": Expected("Degraded", "Failed", "RolledBack"),
    "suspended": Expected("Suspended", "Current", "scaled to zero"),
    "invalid-spec": Expected("Degraded", "Failed", "InvalidSpec"),
    "unobserved-generation": Expected("Progressing", "InProgress", "observe generation 2"),
    # kstatus reads an object without status as Current ("Resource is current"): its rules
    # assume a controller has looked once status exists. Argo CD's script waits.
    "no-status": Expected("Progressing", "Current", "waiting for the llmfleet operator"),
}

#: Argo CD's verdict -> kstatus's, where both tools have the notion.
AGREES: dict[str, str] = {"Healthy": "Current", "Degraded": "Failed", "Progressing": "InProgress"}


# --- Argo CD ----------------------------------------------------------------------------------


def _to_lua(lua: Any, value: Any) -> Any:
    """JSON-shaped Python -> Lua tables (arrays 1-based), as Argo CD hands ``obj`` over."""
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return float(value)  # Lua 5.1 numbers are doubles, as are gopher-lua's
    raise TypeError(f"not JSON: {value!r}")


#: What Argo CD opens for an argocd-cm health script (util/lua: package, base, table and a
#: safe os), so no string, math, io, debug or coroutine library, and no string methods.
_ARGOCD_SANDBOX = """
string, math, io, debug, coroutine = nil, nil, nil, nil, nil
os = {time = os.time, date = os.date, clock = os.clock}
getmetatable("").__index = nil
dofile, loadfile, load, loadstring = nil, nil, nil, nil
"""


def argocd_health(obj: dict[str, Any], script: str | None = None) -> Health:
    """The chart's health script on ``obj`` in a fresh Lua 5.1 state with only the libraries
    Argo CD's VM opens for argocd-cm scripts."""
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    lua.execute(_ARGOCD_SANDBOX)
    g = lua.globals()
    g.obj = _to_lua(lua, obj)
    hs = lua.execute(script if script is not None else HEALTH_LUA.read_text())
    assert hs is not None, "the health script returned nothing"
    status, message = hs["status"], hs["message"]
    assert isinstance(status, str), f"hs.status is {status!r}"
    return Health(status, message if isinstance(message, str) else "")


# --- kstatus ----------------------------------------------------------------------------------


@cache
def kstatus_binary() -> Path:
    binary = ensure_tools() / "kstatus-check"
    assert binary.exists(), f"hack/tools.sh did not provide {binary}"
    return binary


def kstatus(obj: dict[str, Any]) -> Health:
    """``status.Compute`` of sigs.k8s.io/cli-utils on ``obj``."""
    out = subprocess.run(
        [str(kstatus_binary()), "-json"],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    line = json.loads(out.stdout)
    return Health(str(line["status"]), str(line["message"]))


# --- recorded states --------------------------------------------------------------------------

FIXTURE_NAMESPACE = "team-a"
FIXTURE_TIME = "2026-01-01T00:00:00Z"
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
_METADATA_NOISE = ("uid", "resourceVersion", "creationTimestamp", "managedFields")
_ANNOTATION_NOISE = ("kubectl.kubernetes.io/last-applied-configuration",)


def _times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_times(v) for v in value]
    if isinstance(value, str) and _TIMESTAMP.match(value):
        return FIXTURE_TIME
    return value


def clean(obj: dict[str, Any]) -> dict[str, Any]:
    """An object as recorded: what the operator wrote, without one run's noise."""
    namespace = str(obj["metadata"].get("namespace", ""))
    meta = {k: v for k, v in obj["metadata"].items() if k not in _METADATA_NOISE}
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k not in _ANNOTATION_NOISE
    }
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    text = json.dumps(_times({**obj, "metadata": meta}))
    if namespace:
        text = text.replace(namespace, FIXTURE_NAMESPACE)
    return dict(json.loads(text))


def fixture_path(state: str) -> Path:
    return STATES / f"{state}.json"


def load_state(state: str) -> dict[str, Any]:
    return dict(json.loads(fixture_path(state).read_text()))


def write_state(state: str, obj: dict[str, Any]) -> Path:
    path = fixture_path(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return path


def check_state(state: str, obj: dict[str, Any]) -> tuple[Health, Health]:
    """Both verdicts on ``obj``, asserted against :data:`EXPECTED`."""
    want = EXPECTED[state]
    argo, ks = argocd_health(obj), kstatus(obj)
    seen = f"{state}: Argo CD {argo}, kstatus {ks}; status: {json.dumps(obj.get('status'))}"
    assert argo.status == want.argocd, seen
    assert ks.status == want.kstatus, seen
    assert want.says in argo.message, seen
    return argo, ks
