"""The real helm binary, and the llmfleet chart rendered or installed with it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "llmfleet"

Manifest = dict[str, Any]


class HelmError(AssertionError):
    """helm exited non-zero; carries its stderr."""

    def __init__(self, args: list[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"helm {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
        )
        self.result = result
        self.stderr = result.stderr


def set_args(values: Mapping[str, object]) -> list[str]:
    """``--set``/``--set-string`` flags; lists become ``{a,b}`` and strings stay strings."""
    args: list[str] = []
    for key, value in values.items():
        if isinstance(value, list | tuple):
            args += ["--set", f"{key}={{{','.join(str(v) for v in value)}}}"]
        elif isinstance(value, bool):
            args += ["--set", f"{key}={str(value).lower()}"]
        elif isinstance(value, int | float):
            args += ["--set", f"{key}={value}"]
        else:
            args += ["--set-string", f"{key}={value}"]
    return args


@dataclass(frozen=True)
class Helm:
    """Runs helm with an isolated configuration, optionally against one cluster."""

    binary: str
    home: Path  # HELM_CACHE_HOME/CONFIG_HOME/DATA_HOME: no user state leaks in or out
    kubeconfig: Path | None = None

    def run(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, *args]
        if self.kubeconfig is not None:
            cmd.append(f"--kubeconfig={self.kubeconfig}")
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.home),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if check and result.returncode != 0:
            raise HelmError(list(args), result)
        return result

    def with_cluster(self, kubeconfig: Path) -> Helm:
        return Helm(self.binary, self.home, kubeconfig)

    def template(
        self,
        values: Mapping[str, object] | None = None,
        *extra: str,
        release: str = "llmfleet",
        namespace: str = "llmfleet-system",
    ) -> list[Manifest]:
        """The chart rendered by ``helm template``: every non-empty document."""
        out = self.run(
            "template",
            release,
            str(CHART),
            f"--namespace={namespace}",
            *set_args(values or {}),
            *extra,
        ).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: Iterable[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    """The documents of ``kind`` (and ``name``, when given)."""
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The single document of ``kind`` (and ``name``); fails when there are none or several."""
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]
