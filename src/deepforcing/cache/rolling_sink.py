"""Rolling Sink (arXiv 2602.07775; release ``Rolling-Sink/Rolling-Sink`` @ d7fc0d9, ``wan/modules/causal_model.py``
``CausalWanSelfAttention.forward`` between "Rolling Sink starts" and "ends"; archive buffers ``k_original`` /
``v_original`` in ``pipeline/causal_inference.py``).

Self Forcing's FIFO window of ``window`` frames, post-RoPE at absolute positions, plus an **archive** of the first
window's pre-RoPE keys and values. Once the window is full, every clean pass overwrites the previous chunk's slots
(after the pass's attention) with a chunk-sized slice of the archive, its keys rotated once at those slots' absolute
positions. The slice walks over archive frames ``0 .. window - chunk - 1`` one chunk per chunk and ping-pongs: the
first phase walks backwards in time (frames in reverse order, tokens within a frame kept), the next forwards, and so
on — so while a chunk is denoised it sees replayed first-window content at contiguous positions, the real previous
chunk and itself.

Release quirk: its replay runs only when the clean pass is at timestep 0 (``context_noise == 0``, the default);
here it runs on every clean pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import KEPT, Write
from .policies import SelfForcing
from .registry import register_policy

__all__ = ["RollingSinkReplay"]


@register_policy
@dataclass
class RollingSinkReplay(SelfForcing):
    """Rolling Sink: a FIFO window that replays its first window, ping-ponging (module docstring)."""

    name: ClassVar[str] = "rolling-sink-replay"
    source: ClassVar[str] = "arXiv 2602.07775; Rolling-Sink/Rolling-Sink@d7fc0d9 wan/modules/causal_model.py"

    @property
    def layout(self) -> dict[str, int | None]:
        return {"sink": 0, "kept": self.window - 3, "memory": 0, "recent": 3}  # 3: the chunk and the previous one

    @property
    def archive_frames(self) -> int:
        return self.window  # the first window's pre-RoPE K/V (after_write)

    def after_write(self, layer, write: Write) -> None:
        """Archive: every call of a chunk inside the first window copies its pre-RoPE K/V (the clean pass's stay)."""
        call, F = write.call, layer.store.tokens_per_frame
        if not write.raw or call.start_frame + call.num_frames > self.window:
            return
        if "archive" not in layer.state:
            b, h, _, d = write.keys.shape
            layer.state["archive"] = [write.keys.new_zeros(b, h, self.window * F, d) for _ in range(2)]
        start, stop = call.start_frame * F, (call.start_frame + call.num_frames) * F
        for buf, new in zip(layer.state["archive"], (write.keys, write.values)):
            buf[:, :, start:stop] = new

    def after_attention(self, layer, write: Write) -> None:
        """Replay (clean pass, window full): the previous chunk's slots <- an archive slice rotated at them."""
        call, F = write.call, layer.store.tokens_per_frame
        if not call.clean or call.start_frame < self.window:
            return
        chunk = call.num_frames
        frames = self.replayed_frames(call.start_frame, chunk)
        token_ids = (frames[:, None] * F + torch.arange(F)).flatten()
        keys, values = (buf[:, :, token_ids] for buf in layer.state["archive"])
        previous = call.start_frame - chunk
        positions = torch.arange(previous, call.start_frame).repeat_interleave(F)
        layer.put(layer.store.length - 2 * chunk * F, keys, values, token_ids, positions)

    def replayed_frames(self, start_frame: int, chunk: int) -> torch.Tensor:
        """Archive frames written before the chunk starting at ``start_frame``, oldest slot first: the slice starts
        where the previous chunk does, modulo the span ``window - chunk``, time-reversed on odd passes."""
        span, previous = self.window - chunk, start_frame - chunk
        if (previous // span) % 2:
            right = span - previous % span
            return torch.arange(right - 1, right - chunk - 1, -1)
        left = previous % span
        return torch.arange(left, left + chunk)

    def regions(self, layer) -> torch.Tensor:
        """Replayed archive tokens (a frame away from its own position) are "kept"; the rest is the recent FIFO."""
        codes = super().regions(layer)
        store = layer.store
        codes[store.frames() != store.positions[:, : store.length]] = KEPT
        return codes
