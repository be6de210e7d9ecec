"""The model runner: owns the torch model, the KV cache and sampling.

Two implementations of one contract, :class:`~llmfleet_worker.engine.protocol.ModelRunner`
(``step(plan) -> one token per sampling chunk``):

* :class:`FastRunner` for decoder architectures whose layer maths we mirror (Llama, Mistral,
  Qwen2 and GPT-2). It reuses the checkpoint's weights (fusing q/k/v and gate/up into single
  matmuls), keeps a slot-per-sequence KV cache of shape ``[layers, slots, length, kv_heads,
  head_dim]`` and runs one *flattened* forward per step: the linear layers see every token of
  the step (decodes and prefill chunks together), attention runs per kind over views of the
  cache with ``scaled_dot_product_attention``. No padding of prompts, no per-step re-packing.
* :class:`HFRunner` for everything else: the transformers model itself, one
  ``DynamicCache`` per sequence. Correct for any causal LM, but it does not batch.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F  # noqa: N812  # torch's own conventional alias
from torch import nn

from llmfleet_worker.engine.failures import SampleFailure
from llmfleet_worker.engine.kvcache import KvPlan, activation_reserve, plan_kv_cache
from llmfleet_worker.engine.loader import (
    LoadedModel,
    MemoryConfig,
    free_memory,
    kv_budget,
    quantize_int8,
)
from llmfleet_worker.engine.placement import Placement, PlacementError, place_layers
from llmfleet_worker.engine.protocol import ModelRunner
from llmfleet_worker.engine.scheduler import ScheduledChunk, Sequence, StepPlan
from llmfleet_worker.engine.scripted import ScriptedDecode

log = logging.getLogger(__name__)

FAST_LLAMA_TYPES = frozenset({"llama", "mistral", "qwen2"})
_M = TypeVar("_M", bound=nn.Module)


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------
class Sampler:
    """Greedy, temperature and top-p sampling, batched; per-request seeds stay reproducible
    because each seeded request draws from its own generator.

    A row whose logits are not finite, or whose sampling raises (a seed the generator
    refuses, parameters that slipped past validation), fails alone as a
    :class:`SampleFailure`; the other rows get their tokens.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._generators: dict[str, torch.Generator] = {}
        self._shared = torch.Generator(device=device)
        self._shared.seed()

    def release(self, seq: Sequence) -> None:
        self._generators.pop(seq.request_id, None)

    def _generator(self, seq: Sequence) -> torch.Generator:
        gen = self._generators.get(seq.request_id)
        if gen is None:
            assert seq.params.seed is not None
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seq.params.seed)
            self._generators[seq.request_id] = gen
        return gen

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int | SampleFailure]:
        """``logits``: ``[len(seqs), vocab]``."""
        try:
            return self._sample(logits, seqs)
        except Exception as exc:
            if len(seqs) == 1:
                return [SampleFailure(f"sampling failed: {exc}")]
        # Something in one row broke the batched maths: sample row by row so that only the
        # rows that raise again fail. (Generators are made before anything draws, so a seed
        # the generator refuses costs no other row its reproducibility; a draw that raises
        # after others drew, which only NaN parameters cause, can.)
        out: list[int | SampleFailure] = []
        for i, seq in enumerate(seqs):
            try:
                out += self._sample(logits[i : i + 1], [seq])
            except Exception as exc:
                out.append(SampleFailure(f"sampling failed: {exc}"))
        return out

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int | SampleFailure]:
        # One reduction gives the greedy tokens and, through the row maxima, the rows whose
        # logits are unusable: max propagates NaN, and +inf or an all -inf row is not finite.
        top, picks = logits.max(dim=-1)
        finite = torch.isfinite(top)
        rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
        if rows:
            seeded = {i: self._generator(seqs[i]) for i in rows if seqs[i].params.seed is not None}
            dev = logits.device
            idx = torch.tensor(rows, device=dev)
            temps = torch.tensor([seqs[i].params.temperature for i in rows], device=dev)
            # Subtracting the row maximum keeps every scaled logit <= 0 with one exactly 0, so
            # softmax is well defined at any temperature; rows that fail anyway get zeros to
            # keep the batched draw valid (their token is discarded below).
            scaled = (logits[idx].float() - top[idx, None].float()) / temps[:, None]
            scaled = torch.where(finite[idx, None], scaled, 0.0)
            probs = torch.softmax(scaled, dim=-1)
            top_p = torch.tensor([seqs[i].params.top_p for i in rows], device=dev)
            if bool((top_p < 1.0).any()):
                sorted_p, order = probs.sort(dim=-1, descending=True)
                # Keep the smallest prefix whose mass reaches top_p, and always the first token.
                drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= top_p[:, None]
                drop[:, 0] = False
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
            unseeded = [j for j, i in enumerate(rows) if i not in seeded]
            if unseeded:
                drawn = torch.multinomial(probs[unseeded], 1, generator=self._shared).squeeze(1)
                picks[idx[unseeded]] = drawn
            for j, i in enumerate(rows):
                if i in seeded:
                    picks[i] = torch.multinomial(probs[j], 1, generator=seeded[i])[0]
        # One device-to-host transfer for tokens and failures together.
        tokens: list[int] = torch.where(finite, picks, -1).tolist()
        return [t if t >= 0 else SampleFailure("the logits are not finite") for t in tokens]


# ---------------------------------------------------------------------------------------
# The fast path
# ---------------------------------------------------------------------------------------
class _Block(nn.Module):
    """One decoder layer's weights, fused where that saves a matmul."""

    qkv: nn.Module
    o: nn.Module
    up: nn.Module
    down: nn.Module
    norm1: nn.Module
    norm2: nn.Module

    def __init__(
        self,
        qkv: nn.Linear,
        o: nn.Linear,
        up: nn.Linear,
        down: nn.Linear,
        norm1: nn.Module,
        norm2: nn.Module,
    ) -> None:
        super().__init__()
        self.qkv, self.o, self.up, self.down = qkv, o, up, down
        self.norm1, self.norm2 = norm1, norm2


class _RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.eps = eps
        self.shape = tuple(self.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused kernel instead of five ops
            return torch.rms_norm(x, self.shape, self.weight, self.eps)
        # Same arithmetic as LlamaRMSNorm: normalise in fp32, scale in the model dtype.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    # Built on the meta device: the real tensors are assigned below, nothing is initialised.
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().contiguous(), requires_grad=False)
    return layer


def _cat_linear(layers: list[nn.Linear]) -> nn.Linear:
    weight = torch.cat([layer.weight.data for layer in layers], dim=0)
    biases = [layer.bias.data for layer in layers if layer.bias is not None]
    bias = torch.cat(biases, dim=0) if len(biases) == len(layers) else None
    return _linear(weight, bias)


def _conv1d(conv: Any) -> nn.Linear:
    # GPT-2's Conv1D stores the weight as [in, out]; nn.Linear wants [out, in].
    return _linear(conv.weight.t(), conv.bias)


class _PackedLinear(nn.Module):
    """A Linear whose weight oneDNN has reordered once into its blocked layout (what
    inductor's CPU freezing does): the small-batch matmuls of decoding run 1.1-1.6x faster
    than ``F.linear`` over the plain row-major weight on the bench model's shapes."""

    def __init__(self, linear: nn.Linear, batch_hint: int) -> None:
        super().__init__()
        weight = linear.weight.detach()
        self.out_features = weight.shape[0]
        self.packed: torch.Tensor
        self.bias: torch.Tensor | None
        self.register_buffer(
            "packed", torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint), persistent=False
        )
        bias = None if linear.bias is None else linear.bias.detach()
        self.register_buffer("bias", bias, persistent=False)
        # The resolved overload: the packet's own __call__ costs more Python than the matmul
        # of a decode step on a small model.
        self._op: Any = torch.ops.mkldnn._linear_pointwise.default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN builds (and caches, up to 1024) one primitive per input shape: with every
        # step's token count its own shape, a 5-minute soak grew the worker by 1.2 GiB.
        # Padding the rows to a few sizes keeps that cache, and the memory, small.
        rows = x.shape[0]
        padded = _row_bucket(rows)
        if padded != rows:
            x = F.pad(x, (0, 0, 0, padded - rows))
        out: torch.Tensor = self._op(x, self.packed, self.bias, "none", [], "")
        return out[:rows] if padded != rows else out


def _row_bucket(rows: int) -> int:
    """The next of 1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, ...: at most half padding."""
    power = 1 << max(0, rows - 1).bit_length()
    three_quarters = power * 3 // 4
    return three_quarters if power >= 16 and rows <= three_quarters else power


def pack_for_cpu(model: nn.Module, batch_hint: int) -> int:
    """Swap each fp32 ``nn.Linear`` of ``model`` on the CPU for a :class:`_PackedLinear`, in
    place, when this torch build has oneDNN; returns how many were packed. A weight shared
    with another module (tied embeddings) is left alone: packing copies it."""
    mkldnn: Any = torch.backends.mkldnn  # untyped in torch
    if not mkldnn.is_available():
        return 0
    shared = {
        id(p)
        for name, m in model.named_modules()
        if not isinstance(m, nn.Linear)
        for p in m.parameters(recurse=False)
    }
    packed = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (
                type(child) is nn.Linear
                and child.weight.device.type == "cpu"
                and child.weight.dtype == torch.float32
                and id(child.weight) not in shared
            ):
                setattr(parent, name, _PackedLinear(child, batch_hint))
                packed += 1
    return packed


def _place(module: _M, device: torch.device) -> _M:
    """``module`` on ``device``: a copy per layer, so the device never holds the checkpoint's
    unfused tensors. (On the host nothing moves: the unfused tensors stay in the checkpoint
    file's private mapping, clean file pages the kernel can reclaim.)"""
    return module.to(device)


def _nbytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


class FastModel(nn.Module):
    """Weights of a supported decoder in the layout :class:`FastRunner` expects, laid over
    ``devices`` by a :class:`~llmfleet_worker.engine.placement.Placement`.

    Built from a model in host memory one layer at a time: each layer is fused on the host,
    moved to its device, and the checkpoint's copy of it released before the next, so a
    device never holds more than the weights and the host at most one extra layer.
    """

    embed: nn.Module
    pos_embed: nn.Module | None
    final_norm: nn.Module
    lm_head: nn.Module
    blocks: nn.ModuleList

    def __init__(self, hf_model: Any, placement: Placement | None = None) -> None:
        super().__init__()
        cfg = hf_model.config
        self.kind = "gpt2" if cfg.model_type == "gpt2" else "llama"
        if self.kind == "gpt2":
            base = hf_model.transformer
            layers = base.h
            self.num_heads = self.num_kv_heads = cfg.n_head
            self.head_dim = cfg.n_embd // cfg.n_head
        else:
            base = hf_model.model
            layers = base.layers
            self.num_heads = cfg.num_attention_heads
            self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.num_heads
            self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads
        head = hf_model.get_output_embeddings()
        embed = base.wte if self.kind == "gpt2" else base.embed_tokens
        tied = head.weight is embed.weight
        self.placement = placement or layer_placement(hf_model, ["cpu"])
        devs = [torch.device(d) for d in self.placement.devices]
        self.block_devices = [devs[d] for d in self.placement.layer_device]
        self.embed = _place(embed, devs[self.placement.embed_device])
        self.pos_embed = _place(base.wpe, devs[0]) if self.kind == "gpt2" else None
        blocks: list[_Block] = []
        for i in range(len(layers)):
            blocks.append(_place(self._fuse(layers[i], cfg), self.block_devices[i]))
            layers[i] = nn.Identity()  # release the checkpoint's copy of this layer now
        self.blocks = nn.ModuleList(blocks)
        head_dev = devs[self.placement.head_device]
        if self.kind == "gpt2":
            self.final_norm = _place(base.ln_f, head_dev)
        else:
            self.final_norm = _place(_RMSNorm(base.norm.weight, cfg.rms_norm_eps), head_dev)
        if tied and self.embed.weight.device == head_dev:
            # One tensor serves both: the same Parameter, not a second copy on the device.
            shared: Any = self.embed.weight
            self.lm_head = nn.Linear(shared.shape[1], shared.shape[0], bias=False, device="meta")
            self.lm_head.weight = shared
        else:
            self.lm_head = _place(_linear(head.weight, getattr(head, "bias", None)), head_dev)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def _fuse(self, layer: Any, cfg: Any) -> _Block:
        if self.kind == "gpt2":
            return _Block(
                _conv1d(layer.attn.c_attn),
                _conv1d(layer.attn.c_proj),
                _conv1d(layer.mlp.c_fc),
                _conv1d(layer.mlp.c_proj),
                layer.ln_1,
                layer.ln_2,
            )
        attn, mlp, eps = layer.self_attn, layer.mlp, cfg.rms_norm_eps
        return _Block(
            _cat_linear([attn.q_proj, attn.k_proj, attn.v_proj]),
            _linear(attn.o_proj.weight, attn.o_proj.bias),
            _cat_linear([mlp.gate_proj, mlp.up_proj]),
            _linear(mlp.down_proj.weight, mlp.down_proj.bias),
            _RMSNorm(layer.input_layernorm.weight, eps),
            _RMSNorm(layer.post_attention_layernorm.weight, eps),
        )


def layer_placement(
    hf_model: Any, devices: list[str], free_bytes: list[int | None] | None = None
) -> Placement:
    """The :class:`Placement` of a supported checkpoint's layers over ``devices``."""
    base = hf_model.transformer if hf_model.config.model_type == "gpt2" else hf_model.model
    layers = base.h if hf_model.config.model_type == "gpt2" else base.layers
    head = hf_model.get_output_embeddings()
    tied = head.weight is hf_model.get_input_embeddings().weight
    embed_bytes = _nbytes(hf_model.get_input_embeddings())
    if hf_model.config.model_type == "gpt2":
        embed_bytes += _nbytes(base.wpe)
    head_bytes = 0 if tied and len(devices) == 1 else _nbytes(head)
    return place_layers(
        devices=devices,
        embed_bytes=embed_bytes,
        layer_bytes=[_nbytes(layer) for layer in layers],
        head_bytes=head_bytes,
        free_bytes=free_bytes,
    )


def fast_path_supported(hf_model: Any, max_model_len: int) -> str | None:
    """``None`` when :class:`FastRunner` can run this model, else the reason it cannot."""
    cfg = hf_model.config
    mt = cfg.model_type
    if mt == "gpt2":
        if cfg.scale_attn_by_inverse_layer_idx or cfg.reorder_and_upcast_attn:
            return "GPT-2 attention variants are not mirrored"
        if cfg.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            return f"activation {cfg.activation_function}"
        return None
    if mt not in FAST_LLAMA_TYPES:
        return f"model_type {mt!r} has no fast path"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act}"
    window = getattr(cfg, "sliding_window", None)
    windowed = mt != "qwen2" or getattr(cfg, "use_sliding_window", False)
    if window and windowed and window < max_model_len:
        return "sliding-window attention shorter than max_model_len"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", "default") in ("dynamic", "longrope"):
        return f"rope type {rope.get('rope_type')} depends on sequence length"
    return None


class FastRunner(ModelRunner):
    """Continuous-batching runner over a slot KV cache (see the module docstring).

    The cache is allocated whole here, from the plan :func:`plan_kv_cache` makes of the
    memory budget (``memory``), and never grows: ``max_num_seqs`` may come out lower than
    asked when a derived budget holds fewer sequences (read it back from the runner).

    ``lanes`` > 1 (CPU only) plans for that many steps running at once, each over its own
    share of the cache rows: :meth:`split_lanes` hands out one runner per lane.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_num_seqs: int,
        max_model_len: int,
        max_num_batched_tokens: int = 512,
        memory: MemoryConfig | None = None,
        pack_cpu_weights: bool = True,
        scripted_decode: bool = True,
        lanes: int = 1,
    ) -> None:
        memory = memory or MemoryConfig()
        self.lanes = lanes
        self.dtype = loaded.dtype
        self.max_model_len = max_model_len
        hf: Any = loaded.model
        devices = list(loaded.devices)
        # The host already holds the weights: only a device they move to must have room.
        free = [None if d.type == "cpu" else free_memory(d) for d in devices]
        placement = layer_placement(hf, [str(d) for d in devices], free)
        rope = None
        if hf.config.model_type != "gpt2":
            with torch.inference_mode():  # on the host, where the checkpoint still is
                pos = torch.arange(max_model_len)[None]
                cos, sin = hf.model.rotary_emb(torch.zeros(1, dtype=self.dtype), pos)
            half = sin.shape[-1] // 2
            signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
            rope = (cos[0].to(self.dtype), signed[0].to(self.dtype))
        model = FastModel(hf, placement)
        model.eval()
        if loaded.quantization == "int8":
            # Swaps the Linear children in place; the object stays a FastModel.
            quantize_int8(model)
        elif pack_cpu_weights:
            pack_for_cpu(model, max_num_seqs)
        self.model = model
        self.placement = placement
        self.devices = [torch.device(d) for d in placement.devices]
        # Inputs start on the embeddings' device; logits end on the head's.
        self.device = self.devices[placement.head_device]
        self.input_device = self.devices[placement.embed_device]
        self.rope_on = (
            {d: (rope[0].to(d), rope[1].to(d)) for d in set(self.devices)} if rope else {}
        )
        self.sampler = Sampler(self.device)
        # Drop the transformers module: its weights live on in FastModel where it shares them.
        loaded.model = model
        cfg = hf.config
        hidden = model.num_heads * model.head_dim
        reserve = (
            activation_reserve(
                max_num_batched_tokens=max_num_batched_tokens,
                max_num_seqs=max_num_seqs,
                hidden_size=getattr(cfg, "hidden_size", None) or hidden,
                intermediate_size=getattr(cfg, "intermediate_size", None) or 4 * hidden,
                qkv_size=(model.num_heads + 2 * model.num_kv_heads) * model.head_dim,
                vocab_size=loaded.vocab_size,
                dtype_bytes=torch.finfo(self.dtype).bits // 8,
            )
            * lanes
        )  # every lane's step holds its activations at the same time
        element = torch.finfo(self.dtype).bits // 8
        self.kv_plan = plan_kv_cache(
            layer_token_bytes=2 * model.num_kv_heads * model.head_dim * element,
            layers_per_device=placement.layers_per_device,
            budgets=[kv_budget(d, memory, reserve) for d in self.devices],
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
        )
        self.slots = self.kv_plan.max_num_seqs
        if lanes > 1 and (self.devices != [torch.device("cpu")] or self.slots < lanes):
            raise PlacementError(
                f"{lanes} lanes need the CPU and at least one sequence each "
                f"(device {loaded.device}, max_num_seqs {self.slots})"
            )
        # One K and one V tensor per device, zeroed now so that every page is committed
        # before the worker is ready; per-layer views index into them.
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self.k_layers: list[torch.Tensor] = []
        self.v_layers: list[torch.Tensor] = []
        for d, dev in enumerate(self.devices):
            n = placement.layers_per_device[d]
            # Position-major within a slot: a slot's cached prefix is one contiguous run, and
            # a decode writes one [kv_heads, head_dim] block per row (measured on the bench
            # model's decode: 15-25 % less time in cache writes and attention than
            # head-major).
            shape = (n, self.slots, max_model_len, model.num_kv_heads, model.head_dim)
            self._k.append(torch.zeros(shape, device=dev, dtype=self.dtype))
            self._v.append(torch.zeros(shape, device=dev, dtype=self.dtype))
            self.k_layers += list(self._k[-1].unbind(0))
            self.v_layers += list(self._v[-1].unbind(0))
        # The steady-state decode step as one compiled call where the model allows it.
        self.scripted = ScriptedDecode.build(model) if scripted_decode else None
        log.info(
            "%s; %s; decode step %s",
            self.kv_plan.describe(),
            placement.describe(),
            "compiled (TorchScript)" if self.scripted else "eager",
        )

    @property
    def max_num_seqs(self) -> int:
        return self.slots

    def split_lanes(self) -> list[FastRunner]:
        """One runner per lane: each owns a run of this runner's cache rows and a sampler
        of its own, and shares everything else (weights, compiled decode step, RoPE
        tables), which is read-only while serving. The lanes' steps may run concurrently,
        one thread each."""
        if self.lanes == 1:
            return [self]
        out: list[FastRunner] = []
        start = 0
        for i in range(self.lanes):
            rows = self.slots // self.lanes + (1 if i < self.slots % self.lanes else 0)
            stop = start + rows
            lane = copy.copy(self)  # shallow: the shared parts stay shared
            lane.lanes, lane.slots = 1, rows
            # Row ranges of each layer's cache stay contiguous (rows lead within a layer),
            # which the compiled decode step's flat cache writes rely on.
            lane._k = [k[:, start:stop] for k in self._k]
            lane._v = [v[:, start:stop] for v in self._v]
            lane.k_layers = [k[start:stop] for k in self.k_layers]
            lane.v_layers = [v[start:stop] for v in self.v_layers]
            lane.sampler = Sampler(self.device)
            out.append(lane)
            start = stop
        return out

    def release(self, seq: Sequence) -> None:
        self.sampler.release(seq)

    # ---- the step ------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, plan: StepPlan) -> list[int | SampleFailure]:
        """One flattened forward over every token of ``plan`` (see the module docstring),
        then a token for each chunk that samples."""
        self._move_rows(plan)
        if not plan.chunks:
            return []
        batch = self._prepare(plan)
        m = self.model
        x = m.embed(batch.inputs.on(self.input_device).ids)
        if self.scripted is not None and batch.decode_only:
            return self._sample_tokens(self._scripted_decode(x, batch), batch)
        if m.pos_embed is not None:
            x = x + m.pos_embed(batch.inputs.on(self.input_device).pos)
        blk: _Block
        for li, blk in enumerate(m.blocks):  # type: ignore[assignment]  # ModuleList is untyped
            dev = m.block_devices[li]
            if x.device != dev:  # the next GPU's layers: hand the hidden states over
                x = x.to(dev)
            qkv = blk.qkv.forward(blk.norm1.forward(x))
            attn = self._attention(li, qkv, batch.inputs.on(dev), batch)
            x = x + blk.o.forward(attn.reshape(batch.tokens, m.num_heads * m.head_dim))
            x = x + self._mlp(blk, x)
        return self._sample_tokens(x, batch)

    def _scripted_decode(self, x: torch.Tensor, batch: _StepBatch) -> torch.Tensor:
        """The decoder layers of a decode-only step through :attr:`scripted`."""
        assert self.scripted is not None
        on = batch.inputs.on(self.input_device)
        assert on.cos is not None
        assert on.sin is not None
        assert on.dec_mask is not None
        assert on.dec_slots is not None
        assert on.dec_lens is not None
        return self.scripted.run(
            x,
            self.k_layers,
            self.v_layers,
            cos=on.cos,
            sin=on.sin,
            kv_index=on.dec_slots,
            mask=on.dec_mask,
            lens=on.dec_lens,
            dec_len=batch.dec_len,
            padded_rows=_row_bucket(batch.tokens),
        )

    def _move_rows(self, plan: StepPlan) -> None:
        """Copy the cache rows the scheduler compacted, before anything reads them."""
        for move in plan.moves:  # only the positions the row holds: a whole row is 32 MB
            for cache in (*self._k, *self._v):  # on the bench model
                cache[:, move.dst, : move.length].copy_(cache[:, move.src, : move.length])

    def _prepare(self, plan: StepPlan) -> _StepBatch:
        """Flatten the plan's chunks (decodes first) into one row of tokens, and lay out the
        decodes over the cache rows they attend to."""
        longest = max(c.start + c.length for c in plan.chunks)
        if longest > self.max_model_len:
            raise RuntimeError(f"a chunk reaches position {longest} > {self.max_model_len}")
        ids: list[int] = []
        positions: list[int] = []
        sample_at: list[int] = []
        sample_seqs: list[Sequence] = []
        for chunk in plan.chunks:
            ids.extend(chunk.seq.tokens(chunk.start, chunk.start + chunk.length))
            positions.extend(range(chunk.start, chunk.start + chunk.length))
            if chunk.sample:
                sample_at.append(len(ids) - 1)
                sample_seqs.append(chunk.seq)
        n_dec = plan.num_decodes
        prefills = plan.chunks[n_dec:]
        rows: list[int] = []
        lens: list[int] = []
        dec_len = 0
        dec_dense = False
        if n_dec:
            decodes = plan.chunks[:n_dec]
            rows = [_slot(c.seq) for c in decodes]
            lens = [0] * plan.num_rows
            for row, c in zip(rows, decodes, strict=True):
                lens[row] = c.start + 1
            dec_len = max(lens)
            dec_dense = rows == list(range(plan.num_rows))
        return _StepBatch(
            tokens=len(ids),
            num_decodes=n_dec,
            num_rows=plan.num_rows,
            prefills=prefills,
            dec_len=dec_len,
            dec_dense=dec_dense,
            decode_only=bool(n_dec) and dec_dense and not prefills,
            sample_at=sample_at,
            sample_seqs=sample_seqs,
            inputs=_StepInputs(self, ids, positions, rows, lens, dec_len),
        )

    def _attention(
        self, li: int, qkv: torch.Tensor, on: _OnDevice, batch: _StepBatch
    ) -> torch.Tensor:
        """Layer ``li``'s attention output, ``[tokens, heads, head_dim]``: the step's keys and
        values go into the cache, then the decodes attend together and each prefill alone."""
        q, k, v = self._rotary_qkv(qkv, on, batch.tokens)
        if batch.decode_only:  # the common steady state: SDPA's output is the result
            return self._decode_attention(li, q, k, v, on, batch)
        attn = q.new_empty(batch.tokens, self.model.num_heads, self.model.head_dim)
        n_dec = batch.num_decodes
        if n_dec:
            out = self._decode_attention(li, q, k, v, on, batch)
            attn[:n_dec] = out[:, :, 0] if batch.dec_dense else out[on.dec_rows, :, 0]
        self._prefill_attention(li, q, k, v, attn, batch)
        return attn

    def _rotary_qkv(
        self, qkv: torch.Tensor, on: _OnDevice, tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fused projection split into per-head q, k and v, q and k rotated (RoPE)."""
        m = self.model
        hq, hk, hd = m.num_heads, m.num_kv_heads, m.head_dim
        qk = qkv[:, : (hq + hk) * hd].view(tokens, hq + hk, hd)
        if on.cos is not None and on.sin is not None:  # rotate q and k together
            # rotate_half(x) * sin == swap(x's halves) * (sin with its first half negated)
            swapped = qk.view(tokens, hq + hk, 2, hd // 2).flip(-2).view(tokens, hq + hk, hd)
            qk = qk * on.cos + swapped * on.sin
        v = qkv[:, (hq + hk) * hd :].view(tokens, hk, hd)
        return qk[:, :hq], qk[:, hq:], v

    def _decode_attention(
        self,
        li: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        on: _OnDevice,
        batch: _StepBatch,
    ) -> torch.Tensor:
        """All decodes in one SDPA over the cache rows ``[0, num_rows)``, masked to each
        row's length; ``[num_rows, heads, 1, head_dim]`` (rows without a decode: padding)."""
        m = self.model
        n_dec = batch.num_decodes
        kc, vc = self.k_layers[li], self.v_layers[li]
        assert on.dec_rows is not None
        assert on.dec_slots is not None
        kc.view(-1, m.num_kv_heads, m.head_dim).index_copy_(0, on.dec_slots, k[:n_dec])
        vc.view(-1, m.num_kv_heads, m.head_dim).index_copy_(0, on.dec_slots, v[:n_dec])
        if batch.dec_dense:
            qd = q[:n_dec].unsqueeze(2)
        else:
            qd = q.new_zeros(batch.num_rows, m.num_heads, 1, m.head_dim)
            qd[on.dec_rows] = q[:n_dec].unsqueeze(2)
        out: torch.Tensor = F.scaled_dot_product_attention(
            qd,
            kc[: batch.num_rows, : batch.dec_len].transpose(1, 2),
            vc[: batch.num_rows, : batch.dec_len].transpose(1, 2),
            attn_mask=on.dec_mask,
            scale=m.scale,
            enable_gqa=m.num_heads != m.num_kv_heads,
        )
        return out

    def _prefill_attention(
        self,
        li: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn: torch.Tensor,
        batch: _StepBatch,
    ) -> None:
        """Each prefill chunk into ``attn``, over its own cache row: causal from position 0,
        else with a mask that lets the chunk see everything before it."""
        m = self.model
        gqa = m.num_heads != m.num_kv_heads
        kc, vc = self.k_layers[li], self.v_layers[li]
        offset = batch.num_decodes
        for c in batch.prefills:
            row, s, n = _slot(c.seq), c.start, c.length
            kc[row, s : s + n] = k[offset : offset + n]
            vc[row, s : s + n] = v[offset : offset + n]
            qp = q[offset : offset + n].transpose(0, 1).unsqueeze(0)
            kp = kc[row : row + 1, : s + n].transpose(1, 2)
            vp = vc[row : row + 1, : s + n].transpose(1, 2)
            if s == 0:
                out = F.scaled_dot_product_attention(
                    qp, kp, vp, is_causal=True, scale=m.scale, enable_gqa=gqa
                )
            else:
                mask = torch.ones(n, s + n, dtype=torch.bool, device=q.device).tril(s)
                out = F.scaled_dot_product_attention(
                    qp, kp, vp, attn_mask=mask, scale=m.scale, enable_gqa=gqa
                )
            attn[offset : offset + n] = out[0].transpose(0, 1)
            offset += n

    def _mlp(self, blk: _Block, x: torch.Tensor) -> torch.Tensor:
        """The layer's feed-forward output (before the residual): SwiGLU, or GPT-2's GELU."""
        up = blk.up.forward(blk.norm2.forward(x))
        if self.model.kind == "llama":
            gate, val = up.chunk(2, dim=-1)
            act = F.silu(gate) * val
        else:
            act = F.gelu(up, approximate="tanh")
        out: torch.Tensor = blk.down.forward(act)
        return out

    def _sample_tokens(self, x: torch.Tensor, batch: _StepBatch) -> list[int | SampleFailure]:
        """The head over each sampling chunk's last hidden state, and a token from each."""
        if not batch.sample_at:
            return []
        m = self.model
        x = x.to(self.device)
        last = x[torch.tensor(batch.sample_at, device=self.device)]
        logits = m.lm_head(m.final_norm(last))
        return self.sampler.sample(logits, batch.sample_seqs)


@dataclass(slots=True)
class _StepBatch:
    """One step as :meth:`FastRunner.step` runs it: ``tokens`` flattened, decodes first."""

    tokens: int
    num_decodes: int
    num_rows: int  # cache rows 0..num_rows-1 are occupied
    prefills: list[ScheduledChunk]
    dec_len: int  # the longest decode's length: the cache columns the decodes attend to
    dec_dense: bool  # decode i sits in cache row i, for every row
    decode_only: bool  # decodes in every occupied row and no prefill
    sample_at: list[int]  # flat index of the token to sample after, per sampling chunk
    sample_seqs: list[Sequence]
    inputs: _StepInputs


class _OnDevice:
    """One step's index tensors on one device."""

    def __init__(
        self,
        runner: FastRunner,
        dev: torch.device,
        ids: list[int],
        positions: list[int],
        rows: list[int],
        lens: list[int],
        dec_len: int,
    ) -> None:
        self.ids = torch.tensor(ids, device=dev)
        self.pos = torch.tensor(positions, device=dev)
        rope = runner.rope_on.get(dev)
        self.cos = rope[0][self.pos][:, None, :] if rope else None
        self.sin = rope[1][self.pos][:, None, :] if rope else None  # first half negated
        self.dec_rows = self.dec_pos = self.dec_mask = self.dec_slots = self.dec_lens = None
        if rows:
            self.dec_rows = torch.tensor(rows, device=dev)
            self.dec_pos = self.pos[: len(rows)]
            # Where each decode's key and value go in a layer's cache seen as one run of
            # [kv_heads, head_dim] blocks: row r, position p -> block r * max_model_len + p.
            self.dec_slots = self.dec_rows * runner.max_model_len + self.dec_pos
            self.dec_lens = torch.tensor([max(n, 1) for n in lens], device=dev)
            arange = torch.arange(dec_len, device=dev)
            self.dec_mask = (arange[None, :] < self.dec_lens[:, None])[:, None, None]


class _StepInputs:
    """One step's inputs, made on a device the first time a layer there asks."""

    def __init__(
        self,
        runner: FastRunner,
        ids: list[int],
        positions: list[int],
        rows: list[int],
        lens: list[int],
        dec_len: int,
    ) -> None:
        self._args = (runner, ids, positions, rows, lens, dec_len)
        self._made: dict[torch.device, _OnDevice] = {}

    def on(self, dev: torch.device) -> _OnDevice:
        made = self._made.get(dev)
        if made is None:
            runner, ids, positions, rows, lens, dec_len = self._args
            made = self._made[dev] = _OnDevice(runner, dev, ids, positions, rows, lens, dec_len)
        return made


def _slot(seq: Sequence) -> int:
    if seq.slot is None:
        raise RuntimeError(f"sequence {seq.request_id} is scheduled without a cache row")
    return seq.slot


# ---------------------------------------------------------------------------------------
# The generic path
# ---------------------------------------------------------------------------------------
class HFRunner(ModelRunner):
    """Any transformers causal LM, one sequence at a time with its own ``DynamicCache``.

    Its caches grow with each sequence (transformers allocates them), so the start-up plan
    only checks, from the config's shape, that the budget holds the batch, lowering
    ``max_num_seqs`` like the fast path does; one device only.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_num_seqs: int = 1,
        max_model_len: int = 2048,
        memory: MemoryConfig | None = None,
    ) -> None:
        if len(loaded.devices) > 1:
            raise PlacementError(
                f"{len(loaded.devices)} GPUs: the generic runner (for architectures without a "
                f"fast path: {fast_path_supported(loaded.model, max_model_len)}) runs on one "
                "device; serve a Llama, Mistral, Qwen2 or GPT-2 model, or use resources.gpus: 1"
            )
        self.model = loaded.model
        if loaded.quantization == "int8":
            self.model = quantize_int8(self.model)
        self.device = loaded.device
        self.model.to(self.device)
        self.sampler = Sampler(self.device)
        self._caches: dict[str, Any] = {}
        # transformers 5.x renamed the forward argument ``past_key_values`` to ``cache``.
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.max_num_seqs = max_num_seqs
        self.kv_plan: KvPlan | None = None
        cfg: Any = getattr(self.model, "config", None)
        layers = getattr(cfg, "num_hidden_layers", None)
        heads = getattr(cfg, "num_attention_heads", None)
        if layers and heads and getattr(cfg, "hidden_size", None):
            kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
            element = torch.finfo(loaded.dtype).bits // 8
            self.kv_plan = plan_kv_cache(
                layer_token_bytes=2 * kv_heads * head_dim * element,
                layers_per_device=[layers],
                budgets=[kv_budget(self.device, memory or MemoryConfig(), 0)],
                max_num_seqs=max_num_seqs,
                max_model_len=max_model_len,
            )
            self.max_num_seqs = self.kv_plan.max_num_seqs
            log.info("generic runner: %s (grown per sequence)", self.kv_plan.describe())

    def release(self, seq: Sequence) -> None:
        self.sampler.release(seq)
        self._caches.pop(seq.request_id, None)

    @torch.inference_mode()
    def step(self, plan: StepPlan) -> list[int | SampleFailure]:
        from transformers import DynamicCache

        logits: list[torch.Tensor] = []
        seqs: list[Sequence] = []
        for chunk in plan.chunks:
            seq = chunk.seq
            cache = self._caches.setdefault(seq.request_id, DynamicCache())
            ids = torch.tensor([seq.tokens(chunk.start, chunk.start + chunk.length)])
            positions = torch.arange(chunk.start, chunk.start + chunk.length)[None]
            out = self.model(
                input_ids=ids.to(self.device),
                use_cache=True,
                position_ids=positions.to(self.device),
                **{self._cache_arg: cache},
            )
            if chunk.sample:
                logits.append(out.logits[0, -1])
                seqs.append(seq)
        if not seqs:
            return []
        return self.sampler.sample(torch.stack(logits), seqs)


def build_runner(
    loaded: LoadedModel,
    *,
    max_num_seqs: int,
    max_model_len: int,
    max_num_batched_tokens: int = 512,
    memory: MemoryConfig | None = None,
    force_generic: bool = False,
    lanes: int = 1,
) -> FastRunner | HFRunner:
    """The fast runner when the architecture allows it, else the generic one (which has
    no lanes: ``lanes`` > 1 then raises :class:`PlacementError`)."""
    reason = "forced" if force_generic else fast_path_supported(loaded.model, max_model_len)
    if reason is None:
        return FastRunner(
            loaded,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            max_num_batched_tokens=max_num_batched_tokens,
            memory=memory,
            lanes=lanes,
        )
    if lanes > 1:
        raise PlacementError(
            f"{lanes} lanes need the fast runner, which this model cannot use: {reason}"
        )
    log.warning("using the generic (unbatched) runner: %s", reason)
    return HFRunner(loaded, max_num_seqs=max_num_seqs, max_model_len=max_model_len, memory=memory)
