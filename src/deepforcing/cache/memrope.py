"""MemRoPE (arXiv 2603.12513; release ``YoungRaeKimm/MemRoPE`` @ b89bf5b, ``wan/modules/causal_model.py``
``CausalWanSelfAttention.forward``, its ``compression_method == 'ema'`` branch, ``causal_rope_apply(...,
relative_frame_indices=...)``; settings ``configs/selfforcing/memrope_60s.yaml``).

A ``window``-frame cache ``[sink][long memory][short memory][recent][new chunk]``, every key **pre-RoPE**. When a new
chunk overflows it, the oldest ``chunk`` frames after the memories are evicted and folded into the two memory frames:
their keys' **and values'** mean over all their tokens (per head and channel) initialises both memories the first
time (the two frames that then occupy the memory slots are dropped unfolded, as in the release) and afterwards
updates them as exponential moving averages, ``m = alpha * mean + (1 - alpha) * m`` (long: 0.01, short: 0.1). A
memory frame holds the same vector on every token. At every read the cache is rotated at block-relative positions
(slot frame 0..n-1, spatial axes by token) and the queries at their chunk's slots (the last ``chunk`` slots once the
window is full), so no position exceeds ``window - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import MEMORY, ChunkContext, Decision, Write
from .options import option
from .policies import FifoSelector
from .registry import register_policy

__all__ = ["MemRope"]

MEMORY_FRAMES = 2  # long, short


@register_policy
@dataclass
class MemRope(FifoSelector):
    """MemRoPE: sink + two EMA memory frames of evicted tokens + recent frames, block-relative RoPE (module doc)."""

    name: ClassVar[str] = "memrope"
    source: ClassVar[str] = "arXiv 2603.12513; YoungRaeKimm/MemRoPE@b89bf5b wan/modules/causal_model.py"
    own_window: ClassVar[bool] = True  # the release's local_attn_size 12 (memrope_60s.yaml) on a 21-frame model
    window: int = 12
    sink: int = 3
    alpha_long: float = option(0.01, "memrope: EMA weight of the newest evicted mean in the long memory frame")
    alpha_short: float = option(0.1, "memrope: EMA weight of the newest evicted mean in the short memory frame")

    def validate(self, chunk_frames: int) -> None:
        super().validate(chunk_frames)
        if self.sink + MEMORY_FRAMES + 2 * chunk_frames > self.window:
            raise ValueError(f"memrope: sink ({self.sink}) + 2 memory frames + the evicted and the new chunk "
                             f"({2 * chunk_frames}) exceed the window ({self.window}); raise --window to at least "
                             f"{self.sink + MEMORY_FRAMES + 2 * chunk_frames}")

    @property
    def layout(self) -> dict[str, int | None]:
        return {"sink": self.sink, "kept": 0, "memory": MEMORY_FRAMES,
                "recent": self.window - self.sink - MEMORY_FRAMES}

    def key_storage(self, layer: int) -> str:
        return "pre-rope"

    def select(self, ctx: ChunkContext) -> Decision:
        """Evict the ``chunk`` frames right after the memory slots and fold their mean K/V into the memories."""
        F, chunk = ctx.tokens_per_frame, ctx.new_tokens
        memory = slice(self.sink * F, (self.sink + MEMORY_FRAMES) * F)
        evicted = slice(memory.stop, memory.stop + chunk)
        mean_k, mean_v = (x[:, :, evicted].mean(dim=2, keepdim=True) for x in (ctx.keys, ctx.values))
        old = ctx.state.get("memory")
        if old is None:
            ctx.state["memory"] = [(mean_k, mean_v), (mean_k, mean_v)]
        else:
            ctx.state["memory"] = [(a * mean_k + (1 - a) * k, a * mean_v + (1 - a) * v)
                                   for a, (k, v) in zip((self.alpha_long, self.alpha_short), old)]
        ctx.state["folded"] = True
        keep = torch.cat([torch.arange(memory.stop), torch.arange(evicted.stop, ctx.total)])
        return Decision(keep=keep.to(ctx.token_ids.device).expand(ctx.token_ids.shape[0], -1), event="compress")

    def after_write(self, layer, write: Write) -> None:
        """Right after an eviction (the chunk's first call, before its attention): the memory frames into their slots
        (token ids: the frames they replace, for the spatial axes)."""
        if not (write.new_chunk and layer.state.pop("folded", False)):
            return
        F = layer.store.tokens_per_frame
        for i, (k, v) in enumerate(layer.state["memory"]):
            slot = (self.sink + i) * F
            layer.put(slot, k.expand(-1, -1, F, -1), v.expand(-1, -1, F, -1),
                      layer.store.token_ids[0, slot:slot + F].clone(), torch.full((F,), self.sink + i))

    def key_positions(self, layer) -> torch.Tensor:
        """Block-relative: every cached frame at its slot index."""
        store = layer.store
        slots = torch.arange(store.length, device=store.positions.device) // store.tokens_per_frame
        return slots.expand(store.positions.shape[0], -1)

    def query_positions(self, layer) -> torch.Tensor:
        """The chunk's slots: its frames while the window fills, the last ``chunk`` slots once it is full."""
        call = layer.call
        first = min(call.start_frame, self.window - call.num_frames)
        return torch.arange(first, first + call.num_frames)

    def regions(self, layer) -> torch.Tensor:
        codes = super().regions(layer)
        if "memory" in layer.state:
            F = layer.store.tokens_per_frame
            codes[:, self.sink * F:(self.sink + MEMORY_FRAMES) * F] = MEMORY
        return codes
