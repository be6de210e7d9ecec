"""LLMDeployment manifests the integration tests apply: one builder, the tests' defaults."""

from __future__ import annotations

from typing import Any

from llmfleet_operator import api

#: The test cluster's model volume (kwok pods never read it; backed pods do).
TINY_MODEL = "pvc://models/tiny"
#: A model that needs no volume in the namespace (kwok never runs the worker).
HUB_MODEL = "hf://llmfleet/tiny"


def llmd(name: str, **spec: Any) -> dict[str, Any]:
    """An LLMDeployment serving the tiny model; each field of ``spec`` replaces the default."""
    body: dict[str, Any] = {"model": {"uri": TINY_MODEL}}
    body.update(spec)
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": body,
    }


def manual(
    name: str, replicas: int, version: str = "v1", gpus: int = 1, **spec: Any
) -> dict[str, Any]:
    """A Manual-mode fleet of ``replicas`` pods of ``gpus`` GPUs each, model revision
    ``version``; a mapping in ``spec`` merges into the default of the same field."""
    body: dict[str, Any] = {
        "model": {"uri": TINY_MODEL, "revision": version},
        "worker": {"resources": {"gpus": gpus, "cpu": "1", "memory": "1Gi"}},
        "replicas": replicas,
        "autoscaling": {"mode": "Manual"},
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return llmd(name, **body)


def from_hub(name: str, gpus: int = 1) -> dict[str, Any]:
    """A fleet of ``gpus``-GPU workers whose model needs no volume: for tests of the operator
    on kwok nodes, which never run the worker."""
    return llmd(name, model={"uri": HUB_MODEL}, worker={"resources": {"gpus": gpus}})
