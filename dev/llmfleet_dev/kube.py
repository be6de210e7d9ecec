"""A thin, typed wrapper around the real kubectl binary for tests."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The field manager of what the tests apply server-side (the CRD: ``apply_crd``).
FIELD_MANAGER = "llmfleet-tests"


class KubectlError(AssertionError):
    """kubectl exited non-zero; carries its stderr."""

    def __init__(self, args: list[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
        )
        self.result = result
        self.stderr = result.stderr


@dataclass(frozen=True)
class Kubectl:
    """Runs kubectl against one cluster, optionally defaulting to a namespace."""

    binary: str
    kubeconfig: Path
    namespace: str | None = None

    def in_namespace(self, namespace: str) -> Kubectl:
        return Kubectl(self.binary, self.kubeconfig, namespace)

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, f"--kubeconfig={self.kubeconfig}"]
        if self.namespace:
            cmd.append(f"--namespace={self.namespace}")
        cmd += list(args)
        result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise KubectlError(list(args), result)
        return result

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(*args, stdin=stdin, check=check)

    def apply(
        self, manifest: str | dict[str, Any] | list[dict[str, Any]], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl apply -f -`` of YAML text or of objects (sent as a JSON List)."""
        if not isinstance(manifest, str):
            items = manifest if isinstance(manifest, list) else [manifest]
            manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        return self.run("apply", "-f", "-", stdin=manifest, check=check)

    def get(self, kind: str, name: str | None = None, *extra: str) -> Any:
        """The object (or list) as parsed JSON."""
        args = ["get", kind] + ([name] if name else []) + list(extra) + ["-o", "json"]
        return json.loads(self.run(*args).stdout)

    def get_or_none(self, kind: str, name: str) -> Any:
        result = self.run("get", kind, name, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise KubectlError(["get", kind, name], result)
        return json.loads(result.stdout)


def gpu_blocker(replicas: int, gpus_per_pod: int, name: str = "blocker") -> dict[str, Any]:
    """A plain Deployment whose pods just hold GPUs, to make capacity scarce in a test."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                    "containers": [
                        {
                            "name": "c",
                            "image": "registry.k8s.io/pause:3.10",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus_per_pod)}},
                        }
                    ],
                },
            },
        },
    }
