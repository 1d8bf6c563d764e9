"""∞-RoPE (arXiv 2511.20649; release ``yesiltepe-hidir/infinity-rope`` @ 63d7b84: ``wan/modules/causal_model.py``
``block_relativistic_rope`` / ``rope_cut``, ``pipeline/causal_inference.py`` ``kv_flush``; settings
``configs/self_forcing_dmd.yaml``: ``local_attn_size 6``, ``sink_size 1``).

A ``window``-frame cache (1 sink frame, then a FIFO) whose keys are stored **pre-RoPE** and rotated at every read at
their window slot, 0..n-1 (*block-relativistic RoPE*); the chunk's queries sit at its slots (``window - chunk ..
window - 1`` once full), so no position ever exceeds ``window - 1``. The window is the method's (6 frames), not the
model's attention window (``own_window``). Events (the release's prompt DSL ``scene[Ns]``, ``#`` for a cut; here a
``--timeline`` entry, ``cut 10s: ...`` for a cut):

* **KV Flush** at a prompt switch: the cross-attention is rebuilt from the new prompt (the rollout swaps the context)
  and the self-attention cache keeps the sink and the last ``flush_keep`` frames (the release's ``kv_flush``: slots
  1..2 <- the buffer's last 2, ``local_end`` = 3 frames), computed under the old prompt, with **no re-cache**. With
  the release's 3-frame chunks and 6-frame window that is exactly the ordinary roll (its trace shows the same slots
  at a flush as at any rolling chunk); with 1-frame chunks it drops the window to sink + 2, as the release does;
* **RoPE Cut** at a scene cut: on every call of the first chunk after it, that chunk's queries and keys jump to
  ``cut_to ..`` (the release's ``transition_from`` 45) while the sink and the kept frames stay at their slots, so
  the new scene reads the old one as far in the past. The release moves exactly 3 frames (``rope_cut``'s
  ``transition_frames``) and fails on 1-frame blocks, so a cut needs 3-frame chunks (:meth:`validate_event`).

The release stores the sink frame post-RoPE at position 0 and pastes it back at every read; that is bit-equal to
rotating it at slot 0 like every other key (measured on its trace), so every key is stored pre-RoPE here.
Not reproduced: a flush before the window is full copies the release's still-zero buffer slots over frames 1..2
(here the last frames computed are kept); the paper's flush keeps sink + 1 frame (``--flush-keep 1``).
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
    source: ClassVar[str] = ("arXiv 2511.20649; yesiltepe-hidir/infinity-rope@63d7b84 wan/modules/causal_model.py, "
                             "pipeline/causal_inference.py")
    own_window: ClassVar[bool] = True
    cut_frames: ClassVar[int] = 3  # the release's rope_cut transition_frames: the frames a RoPE Cut moves
    window: int = 6
    sink: int = 1
    cut_to: int = option(45, "infinity-rope: position the first chunk after a scene cut jumps to (release: 45)")
    flush_keep: int = option(2, "infinity-rope: frames after the sink a prompt switch's KV Flush keeps "
                                "(release: 2; the paper: 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("flush_keep", self.flush_keep, allow_zero=True)
        self._check_positive("cut_to", self.cut_to, allow_zero=True)

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

    def validate_event(self, kind: str, chunk_frames: int) -> None:
        if kind == "scene-cut" and chunk_frames != self.cut_frames:
            raise ValueError(
                f"{self.name}: a scene cut needs {self.cut_frames}-frame chunks (the release's RoPE Cut moves "
                f"{self.cut_frames} frames and fails on {chunk_frames}-frame blocks); this model makes "
                f"{chunk_frames}-frame chunks: drop 'cut' from the timeline or use a chunk-wise preset")

    def react(self, event: StreamEvent, cache) -> Reaction:
        if event.kind == "scene-cut":
            self.validate_event(event.kind, cache.geometry.chunk_frames)
            for layer in cache.layers:
                layer.state["cut"] = event.frame
            return "default"
        for layer in cache.layers:  # KV Flush: sink + the last flush_keep frames, as they are (no re-cache)
            self._flush(layer.store)
        return "handled"

    def _flush(self, store) -> None:
        F = store.tokens_per_frame
        sink, keep = self.sink * F, self.flush_keep * F
        if store.length <= sink + keep:
            return
        kept = torch.cat([torch.arange(sink), torch.arange(store.length - keep, store.length)])
        store.keep(kept.to(store.token_ids.device).expand(store.token_ids.shape[0], -1))
