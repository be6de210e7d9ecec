"""Worker settings: every ``serve`` flag, each also settable as ``LLMFLEET_<FLAG>``.

The operator configures pods through environment variables; people use flags. A flag given
on the command line wins over the environment. The API key is special: it comes from
``LLMFLEET_API_KEY`` (a Secret-backed env var) or ``--api-key-file``, never from a flag, so
it never shows in ``ps`` or in logs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "LLMFLEET_"
DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")
QUANTIZATION_CHOICES = ("none", "int8")
DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Settings:
    """Resolved configuration of ``llmfleet-worker serve``."""

    model: str = ""
    served_model_name: str | None = None
    host: str = "0.0.0.0"  # noqa: S104  # a pod serves its Service on all interfaces
    port: int = 8000
    dtype: str = "auto"
    quantization: str = "none"
    device: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int = 32
    kv_cache_memory: int | None = None
    gpu_memory_utilization: float = 0.9
    num_gpus: int | None = None
    max_num_batched_tokens: int = 512
    max_queue: int = 256
    max_request_bytes: int = 16 * 1024 * 1024
    api_key_file: str | None = None
    drain_timeout: float = 30.0
    retry_after: int = 1
    threads: int | None = None
    lanes: int = 1
    log_level: str = "info"
    api_key: str | None = None  # from LLMFLEET_API_KEY or the file; never a flag

    @property
    def model_name(self) -> str:
        """The id clients send as ``model``."""
        if self.served_model_name:
            return self.served_model_name
        return self.model.rstrip("/").rsplit("/", 1)[-1].split("@")[0] or "model"

    def __repr__(self) -> str:  # keep the key out of any log line that prints settings
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}
        return f"Settings({shown}, api_key={'***' if self.api_key else None})"


def _size(text: str) -> int:
    from llmfleet_worker.engine.kvcache import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:  # argparse shows this message as it is
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _converters() -> dict[str, Callable[[str], Any]]:
    return {
        "port": int,
        "max_model_len": int,
        "max_num_seqs": int,
        "kv_cache_memory": _size,
        "gpu_memory_utilization": float,
        "num_gpus": int,
        "max_num_batched_tokens": int,
        "max_queue": int,
        "max_request_bytes": int,
        "drain_timeout": float,
        "retry_after": int,
        "threads": int,
        "lanes": int,
    }


_HELP: dict[str, str] = {
    "model": "local directory, file:///PATH or hf://ORG/REPO[@REVISION] (required)",
    "served_model_name": "model id on the API (default: the last path component)",
    "host": "address to listen on",
    "port": "TCP port",
    "dtype": "weights and activations dtype; auto: fp32 on CPU, bf16/fp16 on CUDA",
    "quantization": "int8: dynamic int8 quantization of Linear layers (CPU only)",
    "device": "auto picks CUDA when available",
    "max_model_len": "longest prompt + completion in tokens (default: the model's context length)",
    "max_num_seqs": "most sequences in the running batch (lowered at start-up, and said so, "
    "when a derived KV cache budget holds fewer)",
    "kv_cache_memory": "KV cache size per device, e.g. 4GiB; a batch it cannot hold is a start-up "
    "error (default: derived from --gpu-memory-utilization on CUDA, 0.8 of the memory left on CPU)",
    "gpu_memory_utilization": "fraction of each GPU's memory the worker may use, weights, KV cache "
    "and activations together",
    "num_gpus": "GPUs to lay the model's layers over (default: every visible GPU)",
    "max_num_batched_tokens": "token budget of one engine step (prefill chunks + decodes)",
    "max_queue": "most requests waiting for a slot; more get 429",
    "max_request_bytes": "largest request body; larger gets 413 before parsing",
    "api_key_file": "file holding the bearer API key (else env LLMFLEET_API_KEY)",
    "drain_timeout": "seconds to finish in-flight requests after SIGTERM",
    "retry_after": "Retry-After seconds sent with 429",
    "threads": "torch intra-op threads on CPU (default: CPUs usable, cgroup limit included)",
    "lanes": "CPU only: batches stepped side by side, each on its own thread, sharing the "
    "weights and splitting --max-num-seqs; busy lanes share --threads (2 lanes on 2 threads "
    "serve a small model about 1.2x faster at high concurrency: docs/worker.md)",
    "log_level": "debug, info, warning, error",
}


def add_serve_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Add every setting as a flag whose default comes from ``env``."""
    types = _converters()
    choices = {
        "dtype": DTYPE_CHOICES,
        "quantization": QUANTIZATION_CHOICES,
        "device": DEVICE_CHOICES,
        "log_level": ("debug", "info", "warning", "error"),
    }
    defaults = Settings()
    for f in fields(Settings):
        if f.name == "api_key":
            continue
        flag = "--" + f.name.replace("_", "-")
        env_name = ENV_PREFIX + f.name.upper()
        conv = types.get(f.name, str)
        default = getattr(defaults, f.name)
        if env_name in env and env[env_name] != "":
            raw = env[env_name]
            try:
                default = conv(raw)
            except argparse.ArgumentTypeError as exc:
                parser.error(f"{env_name}: {exc}")
            except ValueError:
                parser.error(f"{env_name}={raw!r} is not a valid {conv.__name__}")
            if f.name in choices and default not in choices[f.name]:
                parser.error(f"{env_name}={raw!r}: choose one of {', '.join(choices[f.name])}")
        parser.add_argument(
            flag,
            type=conv,
            default=default,
            choices=choices.get(f.name),
            help=f"{_HELP.get(f.name, '')} [env {env_name}; default {default!r}]",
        )


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Build :class:`Settings`; reads the API key from the file or the environment."""
    values = {f.name: getattr(args, f.name) for f in fields(Settings) if f.name != "api_key"}
    if not values["model"]:
        raise ValueError("--model (or LLMFLEET_MODEL) is required")
    key: str | None = None
    if values["api_key_file"]:
        try:
            key = Path(values["api_key_file"]).read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read --api-key-file: {exc.strerror}") from exc
        if not key:
            raise ValueError("--api-key-file is empty")
    elif env.get(ENV_PREFIX + "API_KEY"):
        key = env[ENV_PREFIX + "API_KEY"].strip()
    for name in (
        "max_num_seqs",
        "max_num_batched_tokens",
        "max_queue",
        "max_request_bytes",
        "lanes",
    ):
        if values[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if values["lanes"] > values["max_num_seqs"]:
        raise ValueError("--lanes must be <= --max-num-seqs (each lane runs a sequence at least)")
    if not 0 < values["gpu_memory_utilization"] <= 1:
        raise ValueError("--gpu-memory-utilization must be in (0, 1]")
    if values["num_gpus"] is not None and values["num_gpus"] < 1:
        raise ValueError("--num-gpus must be >= 1")
    if values["max_model_len"] is not None and values["max_model_len"] < 2:
        raise ValueError("--max-model-len must be >= 2")
    if values["drain_timeout"] < 0:
        raise ValueError("--drain-timeout must be >= 0")
    return Settings(**values, api_key=key)


def environ() -> Mapping[str, str]:
    return os.environ
