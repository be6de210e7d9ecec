"""Model loading: URI resolution, dtype and device choice, int8 quantization.

Every problem an operator can fix (a missing path, a model that is not a causal LM, a dtype
the device cannot run) raises :class:`ModelLoadError` with a message meant for a human;
``__main__`` prints it and exits non-zero before the server starts.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmfleet_worker.engine.kvcache import Budget, human
from llmfleet_worker.engine.source import ModelLoadError, resolve_uri

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


def pick_device(requested: str) -> torch.device:
    """``auto`` means CUDA when available, else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda requested but no CUDA device is available")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device, config_dtype: Any) -> torch.dtype:
    """``auto``: the checkpoint's half precision on CUDA (bf16 if it has none), fp32 on CPU,
    where fp32 kernels are the fast ones on most servers."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ModelLoadError(
                f"unsupported dtype {requested!r}; choose auto, {', '.join(DTYPES)}"
            )
        dtype = DTYPES[requested]
        if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ModelLoadError("bfloat16 is not supported by this GPU; use float16")
        return dtype
    if device.type == "cuda":
        if config_dtype in (torch.float16, "float16"):
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def pick_devices(device: torch.device, num_gpus: int | None) -> tuple[torch.device, ...]:
    """The devices one replica spreads its model over: every visible GPU unless
    ``num_gpus`` says how many (a pod sees exactly the GPUs it was given); one CPU."""
    if device.type != "cuda":
        if num_gpus not in (None, 0, 1):
            raise ModelLoadError(f"--num-gpus {num_gpus} needs --device cuda (or auto with GPUs)")
        return (device,)
    if device.index is not None:
        return (device,)
    visible = torch.cuda.device_count()
    want = num_gpus or visible
    if want > visible:
        raise ModelLoadError(
            f"--num-gpus {want} (LLMFLEET_NUM_GPUS, resources.gpus) but this process sees "
            f"{visible} GPU(s); check the pod's nvidia.com/gpu request and CUDA_VISIBLE_DEVICES"
        )
    return tuple(torch.device("cuda", i) for i in range(want))


@dataclass(frozen=True)
class MemoryConfig:
    """Where the KV cache budget comes from (see :mod:`~llmfleet_worker.engine.kvcache`)."""

    #: Bytes per device, explicit (``--kv-cache-memory``); ``None`` derives the budget.
    kv_cache_memory: int | None = None
    #: On CUDA: the fraction of each GPU's memory this worker may use, weights included.
    gpu_memory_utilization: float = 0.9
    #: On CPU: the fraction of the memory left (pod limit or host) the cache may take.
    cpu_memory_fraction: float = 0.8


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` now: CUDA's own count, or the memory this process may still
    use on the host (its cgroup's limit less its usage, capped by MemAvailable)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        return available_memory()
    return None


def available_memory(
    cgroup: Path = Path("/sys/fs/cgroup"), meminfo: Path = Path("/proc/meminfo")
) -> int | None:
    """Host memory this process may still allocate, or ``None`` when nothing says."""
    found: list[int] = []
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text().strip())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def kv_budget(device: torch.device, memory: MemoryConfig, reserve: int) -> Budget:
    """The KV cache budget of ``device`` once the weights are on it; ``reserve``: bytes kept
    for a step's activations."""
    if memory.kv_cache_memory is not None:
        return Budget(
            memory.kv_cache_memory, True, f"--kv-cache-memory {human(memory.kv_cache_memory)}"
        )
    if device.type == "cuda":
        free, total = (int(v) for v in torch.cuda.mem_get_info(device))
        util = memory.gpu_memory_utilization
        budget = int(util * total) - (total - free) - reserve
        return Budget(
            max(0, budget),
            False,
            f"{util:.2f} of {device}'s {human(total)}, less {human(total - free)} in use "
            f"and {human(reserve)} for activations",
        )
    free_now = free_memory(device)
    if free_now is None:
        raise ModelLoadError(f"cannot tell how much memory {device} has; set --kv-cache-memory")
    frac = memory.cpu_memory_fraction
    return Budget(
        max(0, int(frac * free_now) - reserve),
        False,
        f"{frac:.2f} of the {human(free_now)} of memory left, less {human(reserve)} for "
        "activations (set --kv-cache-memory to choose)",
    )


@dataclass
class LoadedModel:
    """A checkpoint read into host memory: the runner places it on ``devices``."""

    model: torch.nn.Module
    tokenizer: Any
    device: torch.device  # the first of ``devices``: inputs and sampling start here
    devices: tuple[torch.device, ...]
    dtype: torch.dtype
    quantization: str
    load_seconds: float
    eos_token_ids: frozenset[int]
    max_position_embeddings: int | None
    vocab_size: int


def quantize_int8(module: torch.nn.Module) -> torch.nn.Module:
    """PyTorch dynamic int8 quantization of every ``nn.Linear`` (CPU only), in place."""
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the eager API still works and
        # is what the issue asks for, so the notice is not actionable here.
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize")
        quantize: Any = torch.ao.quantization.quantize_dynamic  # untyped in torch
        quantized: torch.nn.Module = quantize(
            module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )
        return quantized


def _require_causal_lm(uri: str, config: Any) -> None:
    # AutoModelForCausalLM happily wraps encoders (BERT becomes BertLMHeadModel with fresh
    # heads), so trust the checkpoint's own declared architecture instead.
    archs = list(getattr(config, "architectures", None) or [])
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    if getattr(config, "is_encoder_decoder", False) or (archs and not causal):
        raise ModelLoadError(
            f"{uri!r} is not a causal language model (architectures: {archs or 'unknown'}); "
            "the worker serves decoder-only text generation models"
        )


def load_model(
    uri: str,
    *,
    dtype: str = "auto",
    quantization: str = "none",
    device: str = "auto",
    num_gpus: int | None = None,
) -> LoadedModel:
    """Load tokenizer and causal LM into host memory (the runner fuses the weights there and
    then moves them, so a device never holds two copies); raises :class:`ModelLoadError` on
    anything fixable."""
    # transformers' own annotations are partial; treat the module as untyped here.
    hf: Any = importlib.import_module("transformers")
    hf.utils.logging.disable_progress_bar()
    start = time.monotonic()
    source = resolve_uri(uri)
    dev = pick_device(device)
    devices = pick_devices(dev, num_gpus)
    dev = devices[0]
    if quantization not in ("none", "int8"):
        raise ModelLoadError(f"unsupported quantization {quantization!r}; choose none or int8")
    if quantization == "int8" and dev.type != "cpu":
        raise ModelLoadError(
            "quantization int8 is PyTorch dynamic quantization, which runs on CPU only; on CUDA "
            "use dtype bfloat16/float16 or serve a checkpoint that is already quantized"
        )
    # HF_TOKEN is read from the environment by huggingface_hub itself; pass nothing, log nothing.
    hub_kwargs: dict[str, Any] = {"revision": source.revision} if source.hub else {}
    if not source.hub:
        hub_kwargs["local_files_only"] = True
    try:
        config = hf.AutoConfig.from_pretrained(source.path, **hub_kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read model config from {uri!r}: {exc}") from exc
    _require_causal_lm(uri, config)
    torch_dtype = pick_dtype(dtype, dev, getattr(config, "dtype", None))
    if quantization == "int8" and torch_dtype is not torch.float32:
        raise ModelLoadError("quantization int8 needs dtype float32 (or auto) on CPU")
    try:
        model: Any = hf.AutoModelForCausalLM.from_pretrained(
            source.path, dtype=torch_dtype, **hub_kwargs
        )
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise ModelLoadError(
                f"{uri!r} is not a causal language model ({type(config).__name__}); "
                "the worker serves text generation models only"
            ) from exc
        raise ModelLoadError(f"cannot load model from {uri!r}: {exc}") from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot load model from {uri!r}: {exc}") from exc
    try:
        tokenizer = hf.AutoTokenizer.from_pretrained(source.path, **hub_kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load tokenizer from {uri!r}: {exc}") from exc
    if getattr(tokenizer, "_tokenizer", None) is None:
        raise ModelLoadError("the worker needs a fast (Rust) tokenizer: tokenizer.json is missing")
    model.eval()
    eos: set[int] = set()
    for cfg in (config, getattr(model, "generation_config", None)):
        value = getattr(cfg, "eos_token_id", None)
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, list):
            eos.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    max_pos = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", None
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=dev,
        devices=devices,
        dtype=torch_dtype,
        quantization=quantization,
        load_seconds=time.monotonic() - start,
        eos_token_ids=frozenset(eos),
        max_position_embeddings=int(max_pos) if max_pos else None,
        vocab_size=int(model.get_input_embeddings().num_embeddings),
    )


def available_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a pod's
    CPU limit). More OpenMP threads than that stall each other badly under throttling."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


def set_threads(threads: int | None) -> int:
    """Intra-op threads for CPU inference: the flag, else :func:`available_cpus`."""
    if threads is None or threads <= 0:
        threads = available_cpus()
    torch.set_num_threads(threads)
    return threads
