"""The operator's pods and the worker agree: every setting the operator passes is one the
worker reads, with a value it accepts. (The packages never import each other; the test
imports both.)"""

from __future__ import annotations

import argparse
from dataclasses import fields

from llmfleet_operator.api import LLMDeploymentSpec
from llmfleet_operator.resources import Owner, worker_deployment
from llmfleet_worker.settings import Settings, add_serve_arguments, settings_from_args

OWNER = Owner("chat", "ns", "uid")


def test_every_llmfleet_env_var_in_the_pod_is_a_worker_setting() -> None:
    spec = LLMDeploymentSpec.model_validate(
        {
            "model": {
                "uri": "pvc://models/tiny/v1",
                "dtype": "bfloat16",
                "quantization": "int8",
                "maxModelLen": 4096,
            },
            "worker": {"maxNumSeqs": 8},
            "auth": {"apiKeySecretRef": {"name": "k", "key": "v"}},
        }
    )
    dep = worker_deployment(OWNER, spec, 1, "rev")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    known = {f"LLMFLEET_{f.name.upper()}" for f in fields(Settings)}
    ours = {name for name in env if name.startswith("LLMFLEET_")}
    assert ours <= known, f"the worker does not read {sorted(ours - known)}"

    # The plain values parse into the settings the spec asked for.
    plain = {k: v for k, v in env.items() if v is not None}
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser, plain)
    settings = settings_from_args(parser.parse_args([]), plain)
    assert settings.model == "/models/tiny/v1"
    assert settings.served_model_name == "chat"
    assert settings.dtype == "bfloat16"
    assert settings.quantization == "int8"
    assert settings.max_model_len == 4096
    assert settings.max_num_seqs == 8
    assert settings.port == int(container["ports"][0]["containerPort"])
    assert container["args"][0] == "serve"
