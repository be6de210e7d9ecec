"""The KV cache plan and the layer placement: pure arithmetic over faked devices."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfleet_worker.engine.kvcache import (
    Budget,
    KvCacheError,
    human,
    parse_size,
    plan_kv_cache,
)
from llmfleet_worker.engine.placement import PlacementError, place_layers

GIB = 2**30
# The bench model's shape: 8 layers, 8 KV heads of 64, fp32: 2 x 8 x 64 x 4 B per layer-token.
LAYER_TOKEN = 2 * 8 * 64 * 4


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4GiB", 4 * GIB),
        ("512Mi", 512 * 2**20),
        ("1.5G", 1_500_000_000),
        ("2gb", 2_000_000_000),
        ("1073741824", GIB),
        (" 64 KiB ", 64 * 1024),
    ],
)
def test_sizes_parse_like_kubernetes_quantities(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "4 parsecs", "-1Gi", "0", "1e9"])
def test_a_bad_size_names_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"4GiB|more than 0"):
        parse_size(text)


def plan(budget: int, *, explicit: bool, seqs: int = 32, length: int = 2048, layers: int = 8):
    return plan_kv_cache(
        layer_token_bytes=LAYER_TOKEN,
        layers_per_device=[layers],
        budgets=[Budget(budget, explicit, "test budget")],
        max_num_seqs=seqs,
        max_model_len=length,
    )


def test_a_batch_that_fits_is_allocated_exactly() -> None:
    p = plan(8 * GIB, explicit=True)
    assert p.max_num_seqs == 32
    assert p.lowered_from is None
    assert p.allocated_bytes == 32 * 2048 * 8 * LAYER_TOKEN == 2 * GIB
    assert p.budget_bytes == 8 * GIB


def test_an_explicit_budget_that_cannot_hold_the_batch_is_refused_with_the_numbers() -> None:
    with pytest.raises(KvCacheError) as err:
        plan(1 * GIB, explicit=True)
    message = str(err.value)
    assert "32 sequences x 2048 tokens" in message
    assert "need 2 GiB" in message
    assert "holds 16" in message
    assert "--max-num-seqs 16" in message
    assert "--kv-cache-memory to 2 GiB" in message


def test_a_derived_budget_lowers_max_num_seqs_and_says_so() -> None:
    p = plan(1 * GIB, explicit=False)
    assert (p.max_num_seqs, p.lowered_from) == (16, 32)
    assert "lowered from 32 to 16" in p.describe()


@pytest.mark.parametrize("explicit", [True, False])
def test_a_budget_below_one_sequence_is_refused(explicit: bool) -> None:
    with pytest.raises(KvCacheError, match="holds no sequence of 2048 tokens"):
        plan(32 * 2**20, explicit=explicit)


def test_the_tightest_device_decides() -> None:
    p = plan_kv_cache(
        layer_token_bytes=LAYER_TOKEN,
        layers_per_device=[5, 3],
        budgets=[Budget(GIB, False, "a"), Budget(GIB, False, "b")],
        max_num_seqs=32,
        max_model_len=2048,
    )
    # 5 layers x 2048 tokens x 4 KiB = 40 MiB a sequence on the first device: 25 fit in 1 GiB.
    assert p.max_num_seqs == 1 * GIB // (5 * LAYER_TOKEN * 2048)
    assert p.bytes_per_token == (5 * LAYER_TOKEN, 3 * LAYER_TOKEN)


@given(
    budget=st.integers(1, 64 * GIB),
    seqs=st.integers(1, 256),
    length=st.integers(2, 32768),
    layers=st.integers(1, 80),
)
def test_a_derived_plan_never_exceeds_its_budget(
    budget: int, seqs: int, length: int, layers: int
) -> None:
    try:
        p = plan(budget, explicit=False, seqs=seqs, length=length, layers=layers)
    except KvCacheError:
        assert budget < length * layers * LAYER_TOKEN
        return
    assert 1 <= p.max_num_seqs <= seqs
    assert p.allocated_bytes <= budget
    if p.lowered_from is not None:  # lowered as little as the budget allows
        assert p.allocated_bytes + length * layers * LAYER_TOKEN > budget


def test_human_sizes() -> None:
    assert human(512) == "512 B"
    assert human(1.5 * GIB) == "1.5 GiB"


# ---- placement ----------------------------------------------------------------------
def test_one_device_holds_everything() -> None:
    p = place_layers(devices=["cuda:0"], embed_bytes=10, layer_bytes=[5] * 4, head_bytes=10)
    assert p.layer_device == (0, 0, 0, 0)
    assert p.layers_per_device == [4]


def test_layers_split_by_bytes_with_embeddings_first_and_head_last() -> None:
    # 80 layers of 1 GiB (a 70B model in bf16, roughly) over 4 GPUs, 2 GiB embed and head.
    p = place_layers(
        devices=[f"cuda:{i}" for i in range(4)],
        embed_bytes=2 * GIB,
        layer_bytes=[GIB] * 80,
        head_bytes=2 * GIB,
    )
    # 21 GiB on each: the embeddings and the head take the place of two layers.
    assert p.layers_per_device == [19, 21, 21, 19]
    assert p.embed_device == 0
    assert p.head_device == 3
    assert "cuda:0: layers 0-18, cuda:1: layers 19-39" in p.describe()


def test_a_device_too_small_for_its_share_is_refused_with_the_numbers() -> None:
    with pytest.raises(PlacementError, match=r"cuda:1 needs 20 GiB .* has 10 GiB free"):
        place_layers(
            devices=["cuda:0", "cuda:1"],
            embed_bytes=0,
            layer_bytes=[GIB] * 40,
            head_bytes=0,
            free_bytes=[40 * GIB, 10 * GIB],
        )


def test_more_gpus_than_layers_is_refused() -> None:
    with pytest.raises(PlacementError, match="at most 2 GPUs"):
        place_layers(devices=["a", "b", "c"], embed_bytes=1, layer_bytes=[1, 1], head_bytes=1)


@given(
    n=st.integers(1, 8),
    layers=st.lists(st.integers(1, 10**9), min_size=1, max_size=100),
    embed=st.integers(0, 10**10),
    head=st.integers(0, 10**10),
)
def test_placements_are_consecutive_and_give_every_device_a_layer(
    n: int, layers: list[int], embed: int, head: int
) -> None:
    if n > len(layers):
        return
    p = place_layers(
        devices=[f"cuda:{i}" for i in range(n)],
        embed_bytes=embed,
        layer_bytes=layers,
        head_bytes=head,
    )
    assert list(p.layer_device) == sorted(p.layer_device)
    assert set(p.layer_device) == set(range(n))
    assert sum(p.layers_per_device) == len(layers)
