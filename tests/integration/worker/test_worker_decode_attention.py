"""The CPU decode-attention kernel against torch's SDPA, on shapes hypothesis picks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from llmfleet_worker.engine import decode_attention  # noqa: E402  # after importorskip

F = torch.nn.functional


@st.composite
def problems(draw: Any) -> tuple[Any, ...]:
    kv_heads = draw(st.sampled_from([1, 2, 4]))
    heads = kv_heads * draw(st.sampled_from([1, 2, 3]))  # grouped-query heads too
    dim = draw(st.sampled_from([4, 16, 64, 80]))
    rows = draw(st.integers(1, 5))
    positions = draw(st.integers(1, 40))
    lens = draw(st.lists(st.integers(1, positions), min_size=rows, max_size=rows))
    slots = rows + draw(st.integers(0, 2))  # the cache may hold more rows than decode
    seed = draw(st.integers(0, 2**31 - 1))
    spread = draw(st.sampled_from([0.1, 1.0, 30.0]))  # up to very peaked softmaxes
    return kv_heads, heads, dim, rows, positions, lens, slots, seed, spread


def expected(q: Any, k: Any, v: Any, lens: list[int], scale: float) -> Any:
    """SDPA per row over its own length, in float64."""
    out = []
    for b, n in enumerate(lens):
        kb = k[b, :n].double().transpose(0, 1)[None]  # [1, kv_heads, n, dim]
        vb = v[b, :n].double().transpose(0, 1)[None]
        qb = q[b].double()[None, :, None]  # [1, heads, 1, dim]
        group = q.shape[1] // k.shape[2]
        o = F.scaled_dot_product_attention(
            qb, kb.repeat_interleave(group, 1), vb.repeat_interleave(group, 1), scale=scale
        )
        out.append(o[0, :, 0])
    return torch.stack(out)


@pytest.mark.skipif(not decode_attention.ensure_compiled(), reason="numba did not compile")
@given(problem=problems())
@settings(max_examples=60, deadline=None, database=None)
def test_the_kernel_matches_sdpa(problem: tuple[Any, ...]) -> None:
    kv_heads, heads, dim, rows, positions, lens, slots, seed, spread = problem
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, heads, dim, generator=gen) * spread
    k = torch.randn(slots, positions, kv_heads, dim, generator=gen)
    v = torch.randn(slots, positions, kv_heads, dim, generator=gen)
    scale = dim**-0.5
    out = torch.full((rows, heads, dim), float("nan"))
    torch.ops.llmfleet.decode_attention(q, k, v, torch.tensor(lens), scale, out)
    torch.testing.assert_close(out.double(), expected(q, k, v, lens, scale), rtol=1e-4, atol=1e-5)


def test_the_kernels_source_is_the_same_maths_uncompiled() -> None:
    """The Python function numba compiles, run as Python: the maths, not the compiler."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 8, generator=gen)
    k = torch.randn(3, 6, 2, 8, generator=gen)
    v = torch.randn(3, 6, 2, 8, generator=gen)
    out = np.zeros((2, 4, 8), np.float32)
    decode_attention.decode_attention_reference(
        q.numpy(), k.numpy(), v.numpy(), np.array([6, 3]), np.float32(0.5), out
    )
    torch.testing.assert_close(
        torch.from_numpy(out).double(), expected(q, k, v, [6, 3], 0.5), rtol=1e-5, atol=1e-6
    )
