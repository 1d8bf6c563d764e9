"""Rolling Forcing's KV cache: an anchor chunk re-placed in time right before the working chunks (its release,
``TencentARC/RollingForcing`` ``wan/modules/causal_model.py``; the loop is :mod:`deepforcing.pipeline.rolling`).

* the first chunk is the *anchor* (sink); at every noisy call (a window of chunks denoised jointly) it is re-placed
  right before the working chunks — one rotation of its post-RoPE keys from their own frames
  (:meth:`~deepforcing.cache.rope.TemporalRope.place`, the cache's sink re-placement);
* the working chunks are the clean chunks just before the window, as many as fit ``attention_frames`` (21) with the
  anchor and the window;
* the clean pass (t = 0) of the window's oldest chunk writes its keys/values and attends to the last
  ``attention_frames`` cached frames (the anchor only while it is among them, at its own position).

It talks to the model like :class:`~deepforcing.cache.KVCache` (``begin_call`` and ``layers[i].attention``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .rope import CallRope, TemporalRope

__all__ = ["RollingCache"]


@dataclass
class _Call:
    start_frame: int
    num_frames: int
    clean: bool
    rope: CallRope | None = None


class _RollingLayer:
    def __init__(self, owner: "RollingCache", index: int) -> None:
        self.owner, self.index = owner, index
        self.anchor: tuple[torch.Tensor, torch.Tensor] | None = None  # keys rotated at the anchor's own frames
        self.blocks: list[tuple[torch.Tensor, torch.Tensor]] = []  # clean chunks 1, 2, ... (newest last)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model's entry (pre-RoPE ``q, k``): both rotated at their frames, then :meth:`update`."""
        rope = self.owner.call.rope
        q = rope.apply(q)
        return q, *self.update(q, rope.apply(k), v)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel) -> torch.Tensor:
        """The model's entry with its attention ``kernel`` (:meth:`deepforcing.cache.LayerCache.attention`)."""
        return kernel(*self.attend(q, k, v))

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        own, call = self.owner, self.owner.call
        chunk = own.chunk_frames
        first = call.start_frame // chunk
        if call.clean:  # write the chunk; attend to the last `attention_frames` cached frames (itself included)
            if first == 0:
                self.anchor = (k, v)
                return k, v
            self.blocks.append((k, v))
            del self.blocks[: max(0, len(self.blocks) - own.max_chunks)]
            slots = [self.anchor, *self.blocks][-own.max_chunks:]
            return torch.cat([s[0] for s in slots], 2), torch.cat([s[1] for s in slots], 2)
        if first == 0:  # ramp-up windows attend to themselves only
            return k, v
        room = (own.attention_frames - call.num_frames - chunk) // chunk  # working chunks that fit
        working = self.blocks[len(self.blocks) - min(first - 1, room, len(self.blocks)):] if room > 0 else []
        anchor_start = call.start_frame - chunk * len(working) - chunk
        anchor_k = own.rope.place(self.anchor[0], 0, anchor_start)  # the anchor chunk sits at frames 0..
        keys = torch.cat([anchor_k, *[b[0] for b in working], k], 2)
        values = torch.cat([self.anchor[1], *[b[1] for b in working], v], 2)
        return keys, values


@dataclass
class RollingCache:
    """The KV cache of a Rolling Forcing rollout (module docstring): anchor chunk + working chunks, per layer."""

    num_layers: int
    chunk_frames: int
    rope: TemporalRope
    attention_frames: int = 21
    call: _Call | None = None
    layers: list[_RollingLayer] = field(init=False)

    def __post_init__(self) -> None:
        if self.attention_frames < 3 * self.chunk_frames:
            raise ValueError(f"attention of {self.attention_frames} frames cannot hold the anchor, a working chunk and "
                             f"a chunk of {self.chunk_frames} frames")
        self.max_chunks = self.attention_frames // self.chunk_frames
        self.layers = [_RollingLayer(self, i) for i in range(self.num_layers)]

    def begin_call(self, start_frame: int, num_frames: int, clean: bool = False, rope: CallRope | None = None) -> None:
        self.call = _Call(start_frame, num_frames, clean, rope)

    def settle(self) -> None:
        """Nothing is deferred in this cache (the :class:`~deepforcing.cache.KVCache` interface)."""

    @property
    def length(self) -> int:
        """Cached tokens of layer 0 (anchor + working chunks)."""
        layer = self.layers[0]
        return sum(b[0].shape[2] for b in ([layer.anchor] if layer.anchor else []) + layer.blocks)
