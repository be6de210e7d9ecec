"""The steady-state decode step of a Llama-family model on the CPU as one TorchScript call.

A decode step at batch 32 on the bench model runs about 300 small torch operations. Called
from Python, each costs tens of microseconds of interpreter time on the engine thread, and
while Python runs, torch's other OpenMP thread waits: on 2 cores the eager step kept them
busy about 70 % of the time. Compiled with TorchScript (no C++ compiler needed, unlike
inductor), the same operations run back to back from C++, and the residual adds ride on the
output projections' oneDNN kernels (``_linear_pointwise``'s ``add`` post-op) instead of
being separate passes over the hidden states. Attention goes through the numba kernel of
:mod:`~llmfleet_worker.engine.decode_attention` (a torch operator the compiled code calls),
or SDPA where that kernel did not compile.

Only what :class:`~llmfleet_worker.engine.runner.FastRunner` calls ``decode_only`` comes
here (every occupied cache row decodes one token, no prefill), on one CPU device, with every
linear packed for oneDNN (fp32). Everything else, and any model this cannot build for, keeps
the eager path; the two give the same tokens (tested).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812  # torch's own conventional alias

log = logging.getLogger(__name__)

# TorchScript spells oneDNN's ``Scalar?[]`` argument ``List[Optional[number]]``, a type the
# Python frontend cannot name: these two wrappers are compiled from TorchScript source.
_ONEDNN_SOURCE = """
def packed_linear(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    none: List[Optional[number]] = []
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", none, "")

def packed_linear_add(x: Tensor, other: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, other, w, b, "add")
"""


def _decode_layers(
    x: torch.Tensor,
    layers: tuple[
        list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None]
    ],
    shape: tuple[float, int, int, int, float],
    caches: tuple[list[torch.Tensor], list[torch.Tensor]],
    step: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    rows: int,
    dec_len: int,
    kernel: bool,
) -> torch.Tensor:
    """Every decoder layer over ``x`` (``[padded rows, hidden]``, the first ``rows`` real):
    the eager path's maths (runner.FastRunner.step), in the same order. ``layers``: the
    norms' weights and the packed linears' weights and biases (q/k/v, o, gate/up, down per
    layer); ``shape``: eps, query heads, KV heads, head size, attention scale; ``step``:
    the rotary cos and sin rows, the flat cache index of each row's write, the length mask
    and the lengths; ``kernel``: attention through ``llmfleet::decode_attention`` (else SDPA).
    """
    norm1, norm2, weights, biases = layers
    eps, hq, hk, hd, scale = shape
    k_layers, v_layers = caches
    cos, sin, kv_index, mask, lens = step
    n = rows
    gqa = hq != hk
    hidden = [x.size(1)]
    pad = x.size(0) - n
    for li in range(len(k_layers)):
        w = 4 * li
        qkv = packed_linear(torch.rms_norm(x, hidden, norm1[li], eps), weights[w], biases[w])
        qk = qkv[:n, : (hq + hk) * hd].view(n, hq + hk, hd)
        # rotate_half(x) * sin == swap(x's halves) * (sin with its first half negated)
        swapped = qk.view(n, hq + hk, 2, hd // 2).flip(-2).view(n, hq + hk, hd)
        qk = torch.addcmul(qk * cos, swapped, sin)
        # Row r's new key and value go to cache row r at its position: one flat index each.
        kc, vc = k_layers[li], v_layers[li]
        kc.view(-1, hk * hd).index_copy_(0, kv_index, qk[:, hq:].reshape(n, hk * hd))
        vc.view(-1, hk * hd).index_copy_(0, kv_index, qkv[:n, (hq + hk) * hd :])
        if kernel:
            attn = torch.empty(n, hq, hd, dtype=x.dtype)
            torch.ops.llmfleet.decode_attention(qk[:, :hq].contiguous(), kc, vc, lens, scale, attn)
        else:
            attn = F.scaled_dot_product_attention(
                qk[:, :hq].unsqueeze(2),
                kc[:n, :dec_len].transpose(1, 2),
                vc[:n, :dec_len].transpose(1, 2),
                attn_mask=mask,
                scale=scale,
                enable_gqa=gqa,
            )
        attn = attn.reshape(n, hq * hd)
        if pad:
            attn = F.pad(attn, [0, 0, 0, pad])
        x = packed_linear_add(attn, x, weights[w + 1], biases[w + 1])
        gate, up = packed_linear(
            torch.rms_norm(x, hidden, norm2[li], eps), weights[w + 2], biases[w + 2]
        ).chunk(2, dim=-1)
        x = packed_linear_add(F.silu(gate) * up, x, weights[w + 3], biases[w + 3])
    return x


# The compiled forms, made on first use (compiling takes about a second).
packed_linear: Any = None
packed_linear_add: Any = None
_compiled: Any = None


def _compile() -> Any:
    global packed_linear, packed_linear_add, _compiled
    if _compiled is None:
        with warnings.catch_warnings():
            # torch marks TorchScript deprecated in favour of torch.compile, which needs a
            # C++ compiler at start-up; the eager path stays for the day it is gone.
            warnings.simplefilter("ignore", FutureWarning)
            # Registers llmfleet::decode_attention, which the compiled step may call.
            from llmfleet_worker.engine import decode_attention  # noqa: F401

            unit = torch.jit.CompilationUnit(_ONEDNN_SOURCE)
            packed_linear, packed_linear_add = unit.packed_linear, unit.packed_linear_add
            _compiled = torch.jit.script(_decode_layers)
    return _compiled


@dataclass
class ScriptedDecode:
    """The weights of a model's decoder layers, laid out for the compiled decode step."""

    layers: tuple[
        list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None]
    ]
    shape: tuple[float, int, int, int, float]  # eps, heads, KV heads, head size, scale
    fn: Any
    #: Attention through the numba kernel (engine/decode_attention.py), else SDPA.
    kernel: bool = False

    @classmethod
    def build(cls, model: Any) -> ScriptedDecode | None:
        """For a packed fp32 Llama-family ``FastModel`` on one CPU device, else ``None``
        (with the reason logged at debug level)."""
        from llmfleet_worker.engine.runner import _PackedLinear, _RMSNorm

        reason = None
        if model.kind != "llama":
            reason = f"{model.kind} layers"
        elif any(d.type != "cpu" for d in model.block_devices):
            reason = "not on the CPU"
        else:
            blocks = list(model.blocks)
            linears = [m for b in blocks for m in (b.qkv, b.o, b.up, b.down)]
            norms = [m for b in blocks for m in (b.norm1, b.norm2)]
            if not all(isinstance(m, _PackedLinear) for m in linears):
                reason = "linears not packed for oneDNN"
            elif not all(isinstance(m, _RMSNorm) for m in norms) or any(
                m.weight.dtype != torch.float32 for m in norms
            ):
                reason = "not float32"
        if reason is not None:
            log.debug("decode step stays eager: %s", reason)
            return None
        try:
            fn = _compile()
        except Exception as exc:  # a torch without TorchScript: the eager path serves
            log.warning("decode step stays eager: TorchScript failed: %s", exc)
            return None
        from llmfleet_worker.engine.decode_attention import ensure_compiled

        norm1 = [b.norm1.weight for b in blocks]
        norm2 = [b.norm2.weight for b in blocks]
        dims = (model.num_heads, model.num_kv_heads, model.head_dim)
        return cls(
            layers=(norm1, norm2, [m.packed for m in linears], [m.bias for m in linears]),
            shape=(float(blocks[0].norm1.eps), *dims, float(model.scale)),
            fn=fn,
            kernel=ensure_compiled(),
        )

    def run(
        self,
        x: torch.Tensor,
        k_layers: list[torch.Tensor],
        v_layers: list[torch.Tensor],
        *,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_index: torch.Tensor,
        mask: torch.Tensor,
        lens: torch.Tensor,
        dec_len: int,
        padded_rows: int,
    ) -> torch.Tensor:
        """The hidden states after the last layer, ``[rows, hidden]``, for the decode step
        whose embeddings are ``x``; writes the step's keys and values into the caches."""
        rows = x.shape[0]
        if padded_rows != rows:  # the packed matmuls see a few row counts only (_row_bucket)
            x = F.pad(x, (0, 0, 0, padded_rows - rows))
        out: torch.Tensor = self.fn(
            x,
            self.layers,
            self.shape,
            (k_layers, v_layers),
            (cos, sin, kv_index, mask, lens),
            rows,
            dec_len,
            self.kernel,
        )
        return out[:rows]
