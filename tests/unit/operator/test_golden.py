"""Golden manifests: what the operator asks the API server for, per track, reviewable in a
diff. ``LLMFLEET_UPDATE_GOLDEN=1`` rewrites the files after an intended change."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmfleet_operator.api import CANARY_TRACK, LLMDeploymentSpec
from llmfleet_operator.resources import Owner, desired_children, revision_of, spec_json

GOLDEN = Path(__file__).resolve().parent / "golden"
OWNER = Owner("chat", "team-a", "0b3c7a52-uid", 3)
STABLE = LLMDeploymentSpec.model_validate(
    {
        "model": {"uri": "pvc://models/llama-3.1-8b", "revision": "v1"},
        "worker": {"resources": {"gpus": 1}},
        "rollout": {"strategy": "Canary"},
    }
)
#: engine vllm: every field the vLLM pod maps (docs/operator.md, "engine: vllm").
VLLM = LLMDeploymentSpec.model_validate(
    {
        "model": {
            "name": "llama-3.1-8b-instruct",
            "uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
            "revision": "0e9e39f249a16976918f6564b8830bc894c89659",
            "dtype": "bfloat16",
            "maxModelLen": 8192,
            "hfTokenSecretRef": {"name": "hf", "key": "token"},
        },
        "worker": {
            "engine": "vllm",
            "maxNumSeqs": 64,
            "args": ["--enable-prefix-caching", "--gpu-memory-utilization=0.9"],
            "resources": {"gpus": 2},
        },
        "auth": {"apiKeySecretRef": {"name": "api", "key": "key"}},
    }
)
CANDIDATE = STABLE.model_copy(update={"model": STABLE.model.model_copy(update={"revision": "v2"})})


def children() -> dict[str, list[dict[str, Any]]]:
    old, new = revision_of(STABLE), revision_of(CANDIDATE)
    return {
        # A steady fleet of 2: one track, surge budget, the last good revision recorded.
        "steady": desired_children(OWNER, STABLE, 2, old, stable=(old, spec_json(STABLE))),
        # Canary step at 1 of 4: the stable keeps the old pods (from the stored spec), the
        # canary Deployment runs the candidate from the current spec.
        "canary": desired_children(
            OWNER,
            CANDIDATE,
            3,
            old,
            template_spec=STABLE,
            stable=(old, spec_json(STABLE)),
            canary=(1, new),
        ),
        # engine vllm: vLLM's OpenAI server, /health probes, no LLMFLEET_* env.
        "vllm": desired_children(OWNER, VLLM, 1, revision_of(VLLM)),
        # A full pool: the stable rolls in place (one pod at a time).
        "in-place": desired_children(
            OWNER, CANDIDATE, 3, new, surge=False, stable=(old, spec_json(STABLE))
        ),
    }


@pytest.mark.parametrize("case", ["steady", "canary", "in-place", "vllm"])
def test_golden_manifests(case: str) -> None:
    objects = children()[case]
    text = yaml.safe_dump_all(objects, sort_keys=True)
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("LLMFLEET_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with LLMFLEET_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path.name} changed; review, then LLMFLEET_UPDATE_GOLDEN=1"


def test_the_canary_track_is_a_second_deployment_behind_the_same_service() -> None:
    objects = children()["canary"]
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in deployments] == ["chat", f"chat-{CANARY_TRACK}"]
    service = next(o for o in objects if o["kind"] == "Service")
    for d in deployments:
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()


def test_the_stored_stable_spec_rebuilds_the_same_revision() -> None:
    stored = LLMDeploymentSpec.model_validate_json(spec_json(STABLE))
    assert stored == STABLE
    assert revision_of(stored) == revision_of(STABLE)
    assert '"image":' in spec_json(STABLE)  # defaults are stored, not re-derived later
