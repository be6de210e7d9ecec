"""Where a replica's layers live when it has more than one GPU: a layer split.

``resources.gpus: N`` gives the pod N GPUs. The model's decoder layers are cut into N
consecutive groups of about equal bytes, the embeddings going with the first group and the
final norm and LM head with the last; each device also holds the KV cache of its own layers.
A step runs the groups one after the other and hands the hidden states from one GPU to the
next (a few kilobytes per token), so N GPUs hold an N-times larger model but do not make one
step faster: it is pipeline placement without pipelining, not tensor parallelism.

Pure arithmetic: the runner passes sizes and device names, tests pass whatever they like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmfleet_worker.engine.kvcache import human
from llmfleet_worker.engine.source import ModelLoadError


class PlacementError(ModelLoadError):
    """The model cannot be laid over these devices (exit 2 at start-up)."""


@dataclass(frozen=True)
class Placement:
    """Which device each decoder layer, the embeddings and the head go to."""

    devices: tuple[str, ...]
    layer_device: tuple[int, ...]  # index into ``devices``, one per layer, non-decreasing

    @property
    def embed_device(self) -> int:
        return 0

    @property
    def head_device(self) -> int:
        return len(self.devices) - 1

    def layers_on(self, device: int) -> list[int]:
        return [i for i, d in enumerate(self.layer_device) if d == device]

    @property
    def layers_per_device(self) -> list[int]:
        return [len(self.layers_on(d)) for d in range(len(self.devices))]

    def describe(self) -> str:
        parts = []
        for d, name in enumerate(self.devices):
            layers = self.layers_on(d)
            span = f"layers {layers[0]}-{layers[-1]}" if layers else "no layers"
            parts.append(f"{name}: {span}")
        return ", ".join(parts)


def place_layers(
    *,
    devices: Sequence[str],
    embed_bytes: int,
    layer_bytes: Sequence[int],
    head_bytes: int,
    free_bytes: Sequence[int | None] | None = None,
) -> Placement:
    """Cut the layers into ``len(devices)`` consecutive groups of about equal bytes.

    Each layer goes to the device whose equal share of the whole model its midpoint falls
    in. ``free_bytes`` (``None`` for a device that does not say) is checked against each
    device's weights; a model that does not fit is refused with the numbers.
    """
    n = len(devices)
    if n < 1:
        raise PlacementError("no device to place the model on")
    if n > len(layer_bytes):
        raise PlacementError(
            f"{n} GPUs for a model of {len(layer_bytes)} layers: a layer split needs at "
            f"least one layer per GPU; ask for at most {len(layer_bytes)} GPUs"
        )
    total = embed_bytes + sum(layer_bytes) + head_bytes
    share = total / n
    layer_device: list[int] = []
    offset = float(embed_bytes)
    for size in layer_bytes:
        layer_device.append(min(n - 1, int((offset + size / 2) / share)))
        offset += size
    # Rounding can leave a device empty (a huge embedding, very few layers): give it the
    # neighbouring layer, keeping the groups consecutive.
    for d in range(n):
        if d not in layer_device:
            layer_device = _fill_empty(layer_device, n)
            break
    placement = Placement(tuple(devices), tuple(layer_device))
    if free_bytes is not None:
        _check_fits(placement, embed_bytes, layer_bytes, head_bytes, free_bytes)
    return placement


def _fill_empty(layer_device: list[int], n: int) -> list[int]:
    """An even split by count: every device gets at least one layer."""
    count = len(layer_device)
    return [min(n - 1, i * n // count) for i in range(count)]


def _check_fits(
    placement: Placement,
    embed_bytes: int,
    layer_bytes: Sequence[int],
    head_bytes: int,
    free_bytes: Sequence[int | None],
) -> None:
    for d, name in enumerate(placement.devices):
        need = sum(layer_bytes[i] for i in placement.layers_on(d))
        need += embed_bytes if d == placement.embed_device else 0
        need += head_bytes if d == placement.head_device else 0
        free = free_bytes[d]
        if free is not None and need > free:
            raise PlacementError(
                f"{placement.describe()}: {name} needs {human(need)} for its weights and has "
                f"{human(free)} free; give the replica more GPUs (resources.gpus), a smaller "
                "dtype, or a smaller model"
            )
