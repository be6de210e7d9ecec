"""What the pod backer sees and publishes: the pods it acts on (:class:`PodView`), and what
the cluster network and a PodMonitor would provide: the Prometheus file-based service
discovery groups, the ``endpoints.json`` map, both written atomically and only on change."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llmfleet_dev.localcluster import BACKED_ANNOTATION, NEVER_READY_ANNOTATION

LABEL_DEPLOYMENT = "llmfleet.io/deployment"
LABEL_REVISION = "llmfleet.io/revision"
WORKER_CONTAINER = "worker"


@dataclass(frozen=True)
class PodView:
    """The few facts about a worker pod that the backer acts on."""

    namespace: str
    name: str
    uid: str
    llmdeployment: str
    revision: str
    phase: str
    node: str
    terminating: bool
    env: tuple[tuple[str, str], ...]
    #: The worker container's command and args, as the pod spec says.
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    #: Annotated BACKED_ANNOTATION (and not never-ready): the backer owns its readiness.
    backed: bool = False
    #: Its Ready condition is True right now.
    ready: bool = False
    #: status.containerStatuses as listed: a status patch replaces that list as a whole.
    container_statuses: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    @classmethod
    def from_object(cls, pod: dict[str, Any]) -> PodView:
        meta = pod.get("metadata", {})
        labels = meta.get("labels") or {}
        spec = pod.get("spec", {})
        containers = spec.get("containers") or [{}]
        container = next((c for c in containers if c.get("name") == WORKER_CONTAINER), None)
        worker = container or containers[0]
        env = [
            (e["name"], str(e["value"]))
            for e in worker.get("env") or []
            if "value" in e  # valueFrom (secrets, field refs) cannot be resolved here
        ]
        annotations = meta.get("annotations") or {}
        status = pod.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            llmdeployment=labels.get(LABEL_DEPLOYMENT, ""),
            revision=labels.get(LABEL_REVISION, ""),
            phase=status.get("phase", ""),
            node=spec.get("nodeName") or "",
            terminating=meta.get("deletionTimestamp") is not None,
            env=tuple(env),
            command=tuple(str(c) for c in worker.get("command") or ()),
            args=tuple(str(a) for a in worker.get("args") or ()),
            # never-ready wins, as in the kwok stages: such a pod must stay unready.
            backed=annotations.get(BACKED_ANNOTATION) == "true"
            and NEVER_READY_ANNOTATION not in annotations,
            ready=conditions.get("Ready") == "True",
            container_statuses=tuple(status.get("containerStatuses") or ()),
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.llmdeployment)

    @property
    def wants_worker(self) -> bool:
        """Scheduled, Running and not terminating: its container would be running."""
        return bool(self.node) and self.phase == "Running" and not self.terminating

    def env_value(self, name: str) -> str | None:
        return next((v for k, v in self.env if k == name), None)

    @property
    def vllm(self) -> bool:
        """Its container runs vLLM's OpenAI server (``worker.engine: vllm``)."""
        return self.command[:2] == ("vllm", "serve")


class Target(Protocol):
    """A worker as discovery lists it: its pod and its loopback port."""

    @property
    def pod(self) -> PodView: ...

    @property
    def port(self) -> int: ...


def file_sd_groups(serving: Iterable[Target]) -> list[dict[str, Any]]:
    """Prometheus file-based discovery groups: one target per serving worker, labelled from
    its pod, sorted by namespace and pod name."""
    return [
        {
            "targets": [f"127.0.0.1:{w.port}"],
            "labels": {
                "namespace": w.pod.namespace,
                "llmdeployment": w.pod.llmdeployment,
                "revision": w.pod.revision,
                "pod": w.pod.name,
            },
        }
        for w in sorted(serving, key=lambda w: (w.pod.namespace, w.pod.name))
    ]


def endpoint_map(urls: Mapping[tuple[str, str], str]) -> dict[str, str]:
    """``{"NAMESPACE/NAME": URL}`` from the balancers' URLs by (namespace, LLMDeployment)."""
    return {f"{ns}/{name}": url for (ns, name), url in sorted(urls.items())}


class Publisher:
    """Writes files by atomic replace, and only when the content changed (Prometheus watches
    the discovery file)."""

    def __init__(self) -> None:
        self._written: dict[Path, str] = {}

    def write(self, path: Path, text: str) -> None:
        if self._written.get(path) == text:
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        self._written[path] = text
