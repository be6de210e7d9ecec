"""The torch runners against transformers' own ``generate``: same greedy tokens, with chunked
prefill, sequences joining and leaving mid-flight, and cache rows moving."""

from __future__ import annotations

import os
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llmfleet_worker.engine.loader import (  # noqa: E402  # after importorskip
    ModelLoadError,
    available_cpus,
    load_model,
)
from llmfleet_worker.engine.placement import PlacementError  # noqa: E402
from llmfleet_worker.engine.runner import FastRunner, HFRunner, Sampler, build_runner  # noqa: E402
from llmfleet_worker.engine.scheduler import SamplingParams, Scheduler, Sequence  # noqa: E402
from llmfleet_worker.tinymodel import make_tiny_model  # noqa: E402

PROMPTS = [[5, 17, 33], [9, 8, 7, 6, 5, 4, 3, 2, 1, 11, 12], [40, 41], [100, 200, 300, 400, 500]]
LENGTHS = [6, 11, 3, 9]


@pytest.fixture(scope="module")
def gpt2_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-gpt2", arch="gpt2")


def reference(path: Path) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    out = []
    with torch.inference_mode():
        for prompt, n in zip(PROMPTS, LENGTHS, strict=True):
            ids = torch.tensor([prompt])
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
            out.append(gen[0, len(prompt) :].tolist())
    return out


def run(runner: Any, budget: int, max_num_seqs: int = 3) -> list[list[int]]:
    """Drive ``runner`` like the engine does; the 4th request joins when a slot frees."""
    steps = run_steps(runner, budget, max_num_seqs)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: list[list[int]] = done.value
            return result


def run_steps(
    runner: Any, budget: int, max_num_seqs: int = 3
) -> Generator[None, None, list[list[int]]]:
    """:func:`run`, pausing after every step."""
    sched = Scheduler(
        max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, max_model_len=64, max_queue=8
    )
    seqs = [
        Sequence(p, SamplingParams(max_tokens=n, temperature=0.0))
        for p, n in zip(PROMPTS, LENGTHS, strict=True)
    ]
    for s in seqs:
        sched.add(s)
    while sched.has_work():
        plan = sched.schedule()
        assert plan is not None
        tokens = runner.step(plan)
        sched.complete(plan)
        for seq, tok in zip([c.seq for c in plan.chunks if c.sample], tokens, strict=True):
            seq.output_ids.append(tok)
            if len(seq.output_ids) >= seq.params.max_tokens:
                sched.finish(seq, "length")
        yield
    return [s.output_ids for s in seqs]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fast_runner_matches_generate(arch: str, tiny_model: Path, gpt2_model: Path) -> None:
    path = tiny_model if arch == "llama" else gpt2_model
    expected = reference(path)
    loaded = load_model(str(path))
    runner = FastRunner(loaded, max_num_seqs=3, max_model_len=64)
    # Budget 4 forces chunked prefill mixed with decodes.
    assert run(runner, budget=4) == expected


def test_the_compiled_decode_step_gives_the_eager_tokens(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decode-only steps through TorchScript give exactly the eager path's greedy tokens:
    batches of 3 (padded to 4 rows for oneDNN) and 2, grouped-query heads (the tiny model
    has 4 query and 2 KV heads), and a sequence joining in a moved cache row."""
    eager = FastRunner(load_model(str(tiny_model)), max_num_seqs=3, max_model_len=64,
                       scripted_decode=False)  # fmt: skip
    compiled = FastRunner(load_model(str(tiny_model)), max_num_seqs=3, max_model_len=64)
    assert eager.scripted is None
    assert compiled.scripted is not None
    calls: list[int] = []
    run_scripted = compiled.scripted.run

    def counted(x: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(x.shape[0])
        return run_scripted(x, *args, **kwargs)

    monkeypatch.setattr(compiled.scripted, "run", counted)
    expected = run(eager, budget=16)
    assert compiled.scripted.kernel  # attention through llmfleet::decode_attention
    assert run(compiled, budget=16) == expected == reference(tiny_model)
    assert {2, 3} <= set(calls)
    # Where the kernel did not compile, the compiled step keeps SDPA: the same tokens.
    monkeypatch.setattr(compiled.scripted, "kernel", False)
    assert run(compiled, budget=16) == expected


def test_the_decode_step_stays_eager_where_it_is_not_compiled(
    tiny_model: Path, gpt2_model: Path
) -> None:
    bf16 = load_model(str(tiny_model), dtype="bfloat16")
    assert FastRunner(bf16, max_num_seqs=2, max_model_len=64).scripted is None
    gpt2 = FastRunner(load_model(str(gpt2_model)), max_num_seqs=2, max_model_len=64)
    assert gpt2.scripted is None
    unpacked = FastRunner(load_model(str(tiny_model)), max_num_seqs=2, max_model_len=64,
                          pack_cpu_weights=False)  # fmt: skip
    assert unpacked.scripted is None


def test_lanes_step_side_by_side_over_their_own_cache_rows(tiny_model: Path) -> None:
    """Lanes split one runner's cache rows and share its weights and compiled decode step;
    stepped in turn and from two threads at once, each gives generate's tokens."""
    expected = reference(tiny_model)
    runner = FastRunner(load_model(str(tiny_model)), max_num_seqs=7, max_model_len=64, lanes=2)
    lanes = runner.split_lanes()
    assert [lane.max_num_seqs for lane in lanes] == [4, 3]
    for li, whole in enumerate(runner.k_layers):
        assert lanes[0].k_layers[li].data_ptr() == whole.data_ptr()
        assert lanes[1].k_layers[li].data_ptr() == whole[4].data_ptr()
        assert lanes[1]._v[0][li].data_ptr() == runner.v_layers[li][4].data_ptr()
    assert all(lane.model is runner.model for lane in lanes)
    assert all(lane.scripted is runner.scripted is not None for lane in lanes)
    assert lanes[0].sampler is not lanes[1].sampler
    # In turn: a lane writing another's rows would change that lane's tokens.
    drivers = {i: run_steps(lane, budget=4) for i, lane in enumerate(lanes)}
    results: dict[int, list[list[int]]] = {}
    while drivers:
        for i, driver in list(drivers.items()):
            try:
                next(driver)
            except StopIteration as done:
                results[i] = done.value
                del drivers[i]
    assert results == {0: expected, 1: expected}
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda lane: run(lane, budget=4), lanes)) == [expected, expected]


def test_lanes_need_the_fast_runner_on_one_cpu(tiny_model: Path) -> None:
    with pytest.raises(PlacementError, match="2 lanes need the fast runner"):
        build_runner(load_model(str(tiny_model)), max_num_seqs=4, max_model_len=64,
                     force_generic=True, lanes=2)  # fmt: skip
    split = load_model(str(tiny_model))
    split.devices = (torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(PlacementError, match="2 lanes need the CPU"):
        FastRunner(split, max_num_seqs=4, max_model_len=64, lanes=2)
    with pytest.raises(PlacementError, match="at least one sequence each"):
        FastRunner(load_model(str(tiny_model)), max_num_seqs=2, max_model_len=64, lanes=3)


def test_generic_runner_matches_generate(tiny_model: Path) -> None:
    expected = reference(tiny_model)
    assert run(HFRunner(load_model(str(tiny_model))), budget=64) == expected


@pytest.mark.parametrize(("dtype", "quantization"), [("bfloat16", "none"), ("auto", "int8")])
def test_reduced_precision_runs(tiny_model: Path, dtype: str, quantization: str) -> None:
    loaded = load_model(str(tiny_model), dtype=dtype, quantization=quantization)
    runner = FastRunner(loaded, max_num_seqs=3, max_model_len=64)
    out = run(runner, budget=16)
    assert [len(o) for o in out] == LENGTHS
    assert all(0 <= t < loaded.vocab_size for o in out for t in o)


def test_int8_needs_cpu_and_float32(tiny_model: Path) -> None:
    with pytest.raises(ModelLoadError, match="float32"):
        load_model(str(tiny_model), dtype="bfloat16", quantization="int8")


def test_seeded_sampling_does_not_depend_on_the_batch() -> None:
    sampler = Sampler(torch.device("cpu"))
    logits = torch.randn(3, 50)
    params = SamplingParams(max_tokens=1, temperature=0.8, top_p=0.9, seed=7)

    def draw(rows: int) -> int:
        seqs = [Sequence([1], params)] + [
            Sequence([1], SamplingParams(max_tokens=1, temperature=1.0)) for _ in range(rows - 1)
        ]
        return sampler.sample(logits[:rows], seqs)[0]

    assert draw(1) == draw(3)
    # A vanishing top_p keeps only the most likely token.
    tight = SamplingParams(max_tokens=1, temperature=1.0, top_p=1e-6)
    assert sampler.sample(logits[:1], [Sequence([1], tight)]) == [int(logits[0].argmax())]


def test_threads_respect_a_cgroup_cpu_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # a 1.5-CPU limit
    assert available_cpus(cpu_max) == min(2, len(os.sched_getaffinity(0)))
    cpu_max.write_text("max 100000\n")
    assert available_cpus(cpu_max) == len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path / "missing") == len(os.sched_getaffinity(0))


def test_a_layer_split_over_two_devices_matches_generate(tiny_model: Path) -> None:
    # Two "devices" that are both the CPU: the split code path (per-device caches, inputs and
    # hand-overs) runs for real; only the GPUs are missing.
    expected = reference(tiny_model)
    loaded = load_model(str(tiny_model))
    loaded.devices = (torch.device("cpu"), torch.device("cpu"))
    runner = FastRunner(loaded, max_num_seqs=3, max_model_len=64)
    assert runner.placement.layers_per_device == [1, 1]
    assert len(runner._k) == 2
    assert run(runner, budget=4) == expected


def test_the_kv_cache_is_allocated_once_and_never_grows(tiny_model: Path) -> None:
    runner = FastRunner(load_model(str(tiny_model)), max_num_seqs=3, max_model_len=64)
    # 2 layers x 2 KV heads x 64 dims x fp32, K and V: 2 KiB a token.
    assert runner.kv_plan.allocated_bytes == 3 * 64 * 2048
    before = [(t.data_ptr(), t.shape) for t in runner._k + runner._v]
    run(runner, budget=4)
    assert [(t.data_ptr(), t.shape) for t in runner._k + runner._v] == before


def test_a_derived_budget_lowers_max_num_seqs(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmfleet_worker.engine import loader

    monkeypatch.setattr(loader, "free_memory", lambda device: 64 * 2**20)
    runner = FastRunner(load_model(str(tiny_model)), max_num_seqs=32, max_model_len=2048)
    # 0.8 x 64 MiB, less the activation reserve, holds fewer than 32 x 2048 x 2 KiB = 128 MiB.
    assert runner.kv_plan.lowered_from == 32
    assert 1 <= runner.max_num_seqs < 32
    assert runner.kv_plan.allocated_bytes <= runner.kv_plan.budget_bytes


def test_tied_embeddings_are_one_tensor_and_no_checkpoint_layer_is_kept(gpt2_model: Path) -> None:
    loaded = load_model(str(gpt2_model))
    hf = loaded.model
    weights = sum(p.numel() * p.element_size() for p in hf.parameters())
    runner = FastRunner(loaded, max_num_seqs=1, max_model_len=16)
    m = runner.model
    assert m.lm_head.weight is m.embed.weight
    # The model holds the weights once: the checkpoint's layers were released as each was
    # fused, and nothing else of the checkpoint is referenced.
    # (Linear weights packed for oneDNN are opaque buffers of the same size; parameters()
    # yields the tied weight once.)
    held = [*m.parameters(), *m.buffers()]
    assert any(b.is_mkldnn for b in m.buffers())
    assert sum(t.numel() * t.element_size() for t in held) == weights
    assert all(isinstance(layer, torch.nn.Identity) for layer in hf.transformer.h)


def test_packed_matmuls_see_few_row_counts() -> None:
    from llmfleet_worker.engine.runner import _row_bucket

    buckets = {_row_bucket(rows) for rows in range(1, 4097)}
    assert len(buckets) <= 24  # oneDNN caches a primitive per shape: keep them few
    for rows in range(1, 4097):
        assert rows <= _row_bucket(rows) <= max(2 * rows - 1, 1)
    assert _row_bucket(32) == 32  # a full decode batch is never padded
