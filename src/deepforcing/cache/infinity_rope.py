"""∞-RoPE (arXiv 2511.20649; release ``yesiltepe-hidir/infinity-rope`` @ 63d7b84, ``wan/modules/causal_model.py``
``block_relativistic_rope`` / ``rope_cut``, ``pipeline/causal_inference.py`` ``kv_flush``; settings
``configs/self_forcing_dmd.yaml``: ``local_attn_size 6``, ``sink_size 1``).

A ``window``-frame cache (1 sink frame, then a FIFO) whose keys are stored **pre-RoPE** and rotated at every read at
their window slot, 0..n-1 (*block-relativistic RoPE*); the chunk's queries sit at its slots (``window - chunk ..
window - 1`` once full), so no position ever exceeds ``window - 1``. Events:

* **KV Flush** at a prompt switch: the cross-attention is rebuilt from the new prompt and the cache keeps the sink and
  the last frames computed under the old prompt, with no re-cache (in the release's configuration the flush equals
  the ordinary roll, so the policy only has to stop the engine's LongLive re-cache);
* **RoPE Cut** at a scene cut (``#`` in the release's prompt DSL): on every call of the first chunk after it, that
  chunk's queries and keys jump to ``cut_to ..`` (the release's ``transition_from`` 45) while the sink and the kept
  frames stay at their slots, so the new scene reads the old one as far in the past.

The release stores the sink frame post-RoPE at position 0 and pastes it back at every read; that is bit-equal to
rotating it at slot 0 like every other key (measured on its trace), so every key is stored pre-RoPE here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import Reaction, StreamEvent
from .options import option
from .policies import FifoSelector
from .registry import register_policy

__all__ = ["InfinityRope"]


@register_policy
@dataclass
class InfinityRope(FifoSelector):
    """∞-RoPE: sink + FIFO, pre-RoPE keys read at window slots, KV Flush and RoPE Cut (module docstring)."""

    name: ClassVar[str] = "infinity-rope"
    source: ClassVar[str] = "arXiv 2511.20649; yesiltepe-hidir/infinity-rope@63d7b84 wan/modules/causal_model.py"
    window: int = 6
    sink: int = 1
    cut_to: int = option(45, "infinity-rope: position the first chunk after a scene cut jumps to (release: 45)")

    def key_storage(self, layer: int) -> str:
        return "pre-rope"

    def _cut(self, layer) -> bool:
        return layer.state.get("cut") == layer.call.start_frame

    def query_positions(self, layer) -> torch.Tensor:
        """The chunk's slots (the last ``chunk`` once the window is full), or ``cut_to ..`` on a cut chunk."""
        call = layer.call
        first = self.cut_to if self._cut(layer) else min(call.start_frame, self.window - call.num_frames)
        return torch.arange(first, first + call.num_frames)

    def key_positions(self, layer) -> torch.Tensor:
        """Every cached frame at its slot; on a cut chunk its own frames at ``cut_to ..``."""
        store, F = layer.store, layer.store.tokens_per_frame
        frames = torch.arange(store.length // F, device=store.positions.device)
        if self._cut(layer):
            own = layer.call.num_frames
            frames[-own:] = self.cut_to + torch.arange(own)
        return frames.repeat_interleave(F).expand(store.positions.shape[0], -1)

    def react(self, event: StreamEvent, cache) -> Reaction:
        if event.kind == "scene-cut":
            for layer in cache.layers:
                layer.state["cut"] = event.frame
            return "default"
        return "handled"  # KV Flush: the new prompt's cross-attention, the cache as it is (no re-cache)
