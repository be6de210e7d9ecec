"""What only a GPU shows, in one run: bf16 throughput, memory at load, the KV budget honoured.

For the bench model (34M) and a ~1.1B Llama built here from a config (random weights, the
bench tokenizer), on the first CUDA device:

* tokens/s of the engine's own loop (scheduler + fast runner, no HTTP) at batch 1 and 32,
  greedy, 32 prompt tokens, 64 generated;
* peak device memory while the weights are fused and placed, over the weights' bytes
  (the worker fuses on the host and moves each layer once: the target is <= 1.1x);
* the KV cache the plan allocated against its budget, and the device's free memory after
  the allocation against ``1 - --gpu-memory-utilization`` of its total.

    python bench/gpu_check.py                 # on a CUDA machine
    python bench/gpu_check.py --device cpu --smoke   # the script itself, on any machine
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from llmfleet_worker.engine.loader import MemoryConfig, load_model
from llmfleet_worker.engine.runner import FastRunner
from llmfleet_worker.engine.scheduler import SamplingParams, Scheduler, Sequence
from llmfleet_worker.tinymodel import make_tiny_model

#: TinyLlama-1.1B's shape.
ONE_B = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
}


def build_1b(base: Path, out: Path, layers: int | None) -> Path:
    """The bench model's tokenizer with a ~1.1B-parameter Llama of random weights."""
    hf: Any = importlib.import_module("transformers")  # partially typed
    cfg: dict[str, Any] = dict(ONE_B)
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    config = hf.LlamaConfig(vocab_size=32000, tie_word_embeddings=False, **cfg)
    model = hf.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    hf.AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def throughput(runner: FastRunner, batch: int, prompt: int, output: int) -> float:
    sched = Scheduler(
        max_num_seqs=runner.max_num_seqs,
        max_num_batched_tokens=512,
        max_model_len=runner.max_model_len,
        max_queue=batch,
    )
    seqs = [
        Sequence(list(range(10, 10 + prompt)), SamplingParams(max_tokens=output, temperature=0.0))
        for _ in range(batch)
    ]
    for s in seqs:
        sched.add(s)
    cuda = runner.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    sync()
    start = time.perf_counter()
    while sched.has_work():
        plan = sched.schedule()
        assert plan is not None
        tokens = runner.step(plan)
        sched.complete(plan)
        for seq, tok in zip([c.seq for c in plan.chunks if c.sample], tokens, strict=True):
            assert isinstance(tok, int), tok
            seq.output_ids.append(tok)
            if len(seq.output_ids) >= output:
                sched.finish(seq, "length")
    sync()
    return batch * output / (time.perf_counter() - start)


def check(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    loaded = load_model(str(path), dtype=args.dtype, device=args.device)
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    before = torch.cuda.memory_allocated() if cuda else 0
    memory = MemoryConfig(gpu_memory_utilization=args.gpu_memory_utilization)
    runner = FastRunner(loaded, max_num_seqs=32, max_model_len=args.max_model_len, memory=memory)
    plan = runner.kv_plan
    out: dict[str, Any] = {
        "model": path.name,
        "weights_bytes": weights,
        "kv_plan": plan.describe(),
        "kv_allocated_bytes": plan.allocated_bytes,
        "kv_budget_bytes": plan.budget_bytes,
        "kv_within_budget": plan.allocated_bytes <= plan.budget_bytes,
    }
    if cuda:
        peak = torch.cuda.max_memory_allocated() - before - plan.allocated_bytes
        free, total = torch.cuda.mem_get_info()
        out |= {
            "peak_at_load_over_weights": round(peak / weights, 3),
            "free_after_allocation_bytes": free,
            "reserved_by_utilization_bytes": int((1 - args.gpu_memory_utilization) * total),
            "utilization_honoured": free >= (1 - args.gpu_memory_utilization) * total * 0.98,
        }
    for batch in (1, 32):
        throughput(runner, batch, 8, 4)  # warm-up: kernels, allocator
        tps = [throughput(runner, batch, args.prompt_len, args.output_len) for _ in range(3)]
        out[f"tokens_per_s_batch_{batch}"] = round(sorted(tps)[1], 1)
    del runner, loaded
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="2-layer '1B', short runs")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; use --device cpu --smoke to try the script", file=sys.stderr)
        return 2
    if args.smoke:
        args.max_model_len, args.output_len = 256, 8
    print("command:", " ".join(sys.argv))
    if args.device == "cuda":
        print("device:", torch.cuda.get_device_name(), f"torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="llmfleet-gpu-") as tmp:
        bench = make_tiny_model(Path(tmp) / "bench", size="bench")
        one_b = build_1b(bench, Path(tmp) / "llama-1b", 2 if args.smoke else None)
        results = [check(bench, args), check(one_b, args)]
    print(json.dumps(results, indent=2))
    ok = all(r["kv_within_budget"] and r.get("utilization_honoured", True) for r in results)
    ok = ok and all(r.get("peak_at_load_over_weights", 1.0) <= 1.1 for r in results)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
