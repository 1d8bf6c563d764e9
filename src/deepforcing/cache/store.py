"""Per-layer KV storage: keys, values and per-token metadata in pre-allocated buffers.

Keys are stored *after* RoPE at the temporal position they present (as the released code stores them, so attention
reads them directly). Slots ``[0, anchor_tokens)`` — the attention sink — also keep an exact copy of their key at
its original phase; re-placing a sink token rotates from that copy (one rotation from an exact base), never from the
already re-rotated key, so positions stay exact however often the sink moves.

A ``pre_rope`` store (policies whose :meth:`~deepforcing.cache.CachePolicy.key_storage` says so) keeps keys before
RoPE; they are rotated at every read (:meth:`~deepforcing.cache.session.LayerCache.rotate_stored`), so moving a
token only changes its ``positions`` entry and no anchor copy is needed.

Metadata per slot (``[B, capacity]``):

* ``token_ids`` — absolute token index ``frame * tokens_per_frame + spatial index`` (-1 = empty);
* ``positions`` — the temporal RoPE position the key currently presents;
* ``reuse`` — how many times Participative Compression selected the token as Top-C.
"""

from __future__ import annotations

import torch

from .rope import TemporalRope, rotate_pairs

__all__ = ["LayerKVStore"]

_MAX_SLICE_RUNS = 8


def _contiguous_runs(idx: torch.Tensor) -> list[tuple[int, int, int]] | None:
    """``(dst, src, length)`` runs of an ascending index vector, or ``None`` if there are too many."""
    breaks = torch.nonzero(idx[1:] - idx[:-1] != 1).flatten()
    if breaks.numel() >= _MAX_SLICE_RUNS:
        return None
    starts = [0] + (breaks + 1).tolist()
    ends = starts[1:] + [idx.numel()]
    return [(a, int(idx[a]), b - a) for a, b in zip(starts, ends)]


class LayerKVStore:
    """Pre-allocated keys/values ``[B, H, capacity, D]`` with ``length`` filled slots.

    ``growable`` stores (the ``full`` policy) double their capacity when a write does not fit.
    """

    def __init__(
        self,
        *,
        batch: int,
        heads: int,
        head_dim: int,
        capacity: int,
        anchor_tokens: int,
        tokens_per_frame: int,
        rope: TemporalRope,
        dtype: torch.dtype,
        device: torch.device | str,
        growable: bool = False,
        pre_rope: bool = False,
    ) -> None:
        if anchor_tokens > capacity:
            raise ValueError(f"anchor ({anchor_tokens} tokens) larger than the store ({capacity} tokens)")
        self.tokens_per_frame = tokens_per_frame
        self.rope = rope
        self.growable = growable
        self.pre_rope = pre_rope
        self.anchor_tokens = anchor_tokens
        self.length = 0
        self.keys = torch.zeros(batch, heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.anchor_keys = torch.zeros(batch, heads, 0 if pre_rope else anchor_tokens, head_dim, dtype=dtype,
                                       device=device)
        self.token_ids = torch.full((batch, capacity), -1, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.reuse = torch.zeros(batch, capacity, dtype=torch.int32, device=device)

    @staticmethod
    def nbytes(*, batch: int, heads: int, head_dim: int, capacity: int, anchor_tokens: int, dtype: torch.dtype) -> int:
        """Bytes a store of these sizes allocates (keys, values, sink anchor copy, per-slot metadata)."""
        element = torch.empty((), dtype=dtype).element_size()
        metadata = torch.empty((), dtype=torch.long).element_size() * 2 + torch.empty((), dtype=torch.int32).element_size()
        return batch * heads * head_dim * element * (2 * capacity + anchor_tokens) + batch * capacity * metadata

    def subset(self, heads: list[int], capacity: int, anchor_tokens: int) -> "LayerKVStore":
        """A new store of ``heads`` only (a head group's, :meth:`~deepforcing.cache.CachePolicy.head_groups`) with
        this store's filled slots and metadata, ``capacity`` slots and an ``anchor_tokens`` sink.

        The group's sink copies come from this store's exact copies where this store has them, else from the keys
        themselves (a slot that was never moved is its own exact copy)."""
        if capacity < self.length:
            raise ValueError(f"a head group's store of {capacity} slots cannot take {self.length} filled slots")
        b, _, _, d = self.keys.shape
        out = LayerKVStore(batch=b, heads=len(heads), head_dim=d, capacity=capacity,
                           anchor_tokens=min(anchor_tokens, capacity), tokens_per_frame=self.tokens_per_frame,
                           rope=self.rope, dtype=self.keys.dtype, device=self.keys.device, growable=self.growable,
                           pre_rope=self.pre_rope)
        idx = torch.tensor(heads, device=self.keys.device)
        n = self.length
        out.keys[:, :, :n] = self.keys[:, idx, :n]
        out.values[:, :, :n] = self.values[:, idx, :n]
        for mine, theirs in ((out.token_ids, self.token_ids), (out.positions, self.positions), (out.reuse, self.reuse)):
            mine[:, :n] = theirs[:, :n]
        a = min(out.anchor_keys.shape[2], n)
        if a:
            copied = min(a, self.anchor_keys.shape[2])
            out.anchor_keys[:, :, :copied] = self.anchor_keys[:, idx, :copied]
            out.anchor_keys[:, :, copied:a] = self.keys[:, idx, copied:a]
        out.length = n
        return out

    def fit(self, capacity: int) -> None:
        """Shrink the buffers to ``capacity`` slots (a head group's bound once its first decision ran)."""
        if capacity < self.length:
            raise ValueError(f"cannot fit {self.length} filled slots into {capacity}")
        if capacity >= self.capacity:
            return
        self.keys = self.keys[:, :, :capacity].clone()
        self.values = self.values[:, :, :capacity].clone()
        self.token_ids = self.token_ids[:, :capacity].clone()
        self.positions = self.positions[:, :capacity].clone()
        self.reuse = self.reuse[:, :capacity].clone()

    # ------------------------------------------------------------------ views
    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def view(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the filled slots, ``[B, H, length, D]`` (views, no copy)."""
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def frames(self) -> torch.Tensor:
        """Source latent frame of each filled slot, ``[B, length]``."""
        return self.token_ids[:, : self.length].div(self.tokens_per_frame, rounding_mode="floor")

    # ----------------------------------------------------------------- writes
    def _ensure_capacity(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        if not self.growable:
            raise RuntimeError(
                f"KV store overflow: {needed} tokens needed, {self.capacity} allocated (policy bound violated)"
            )
        new_capacity = max(needed, 2 * self.capacity)
        extra = new_capacity - self.capacity
        pad4 = lambda t: torch.cat([t, t.new_zeros(*t.shape[:2], extra, t.shape[3])], dim=2)  # noqa: E731
        self.keys, self.values = pad4(self.keys), pad4(self.values)
        self.token_ids = torch.cat([self.token_ids, self.token_ids.new_full((self.token_ids.shape[0], extra), -1)], 1)
        self.positions = torch.cat([self.positions, self.positions.new_zeros(self.positions.shape[0], extra)], 1)
        self.reuse = torch.cat([self.reuse, self.reuse.new_zeros(self.reuse.shape[0], extra)], 1)

    def write(self, start: int, keys: torch.Tensor, values: torch.Tensor, token_ids: torch.Tensor,
              positions: torch.Tensor | None = None) -> None:
        """Write ``n`` tokens at slots ``[start, start + n)``; counters reset to 0.

        ``keys``/``values``: ``[B, H, n, D]`` (post-RoPE stores: keys already rotated at ``positions``);
        ``token_ids``: ``[n]`` or ``[B, n]``; ``positions``: the temporal positions they present (default: their
        own frames).
        """
        n = keys.shape[2]
        end = start + n
        self._ensure_capacity(end)
        self.keys[:, :, start:end] = keys
        self.values[:, :, start:end] = values
        self.token_ids[:, start:end] = token_ids
        if positions is None:
            positions = token_ids.div(self.tokens_per_frame, rounding_mode="floor")
        self.positions[:, start:end] = positions
        self.reuse[:, start:end] = 0
        if start < self.anchor_tokens and not self.pre_rope:
            stop = min(end, self.anchor_tokens)
            self.anchor_keys[:, :, start:stop] = keys[:, :, : stop - start]
        self.length = max(self.length, end)

    def keep(self, indices: torch.Tensor) -> None:
        """Compact the store to the slots ``indices`` (``[B, K]``, ascending), in that order.

        The sink prefix must be kept in place (``indices[:, :anchor] == arange(anchor)``), so the exact-phase copies
        stay valid. A selection shared by the batch that is a few contiguous runs (FIFO eviction) is moved with slice
        copies; token-level selections (Top-C) use one ``index_select`` (or ``gather`` when rows differ).
        """
        k = indices.shape[1]
        if self.anchor_tokens and k >= self.anchor_tokens:
            prefix = indices[:, : self.anchor_tokens]
            if not torch.equal(prefix, torch.arange(self.anchor_tokens, device=indices.device).expand_as(prefix)):
                raise RuntimeError("a cache plan moved or dropped sink slots; sinks must stay at the front")
        shared = indices.shape[0] == 1 or bool((indices == indices[:1]).all())
        runs = _contiguous_runs(indices[0]) if shared else None
        if runs is not None and len(runs) <= _MAX_SLICE_RUNS:
            for dst, src, n in runs:
                if dst != src:
                    for buf in (self.keys, self.values):
                        buf[:, :, dst : dst + n] = buf[:, :, src : src + n].clone()
                    for meta in (self.token_ids, self.positions, self.reuse):
                        meta[:, dst : dst + n] = meta[:, src : src + n].clone()
        else:
            if shared:
                idx = indices[0]
                self.keys[:, :, :k] = self.keys.index_select(2, idx)
                self.values[:, :, :k] = self.values.index_select(2, idx)
            else:
                gather4 = indices[:, None, :, None].expand(-1, self.keys.shape[1], -1, self.keys.shape[3])
                self.keys[:, :, :k] = self.keys.gather(2, gather4)
                self.values[:, :, :k] = self.values.gather(2, gather4)
            for meta in (self.token_ids, self.positions, self.reuse):
                meta[:, :k] = meta.gather(1, indices)
        self.token_ids[:, k:] = -1
        self.length = k

    def insert(self, slot: int, n: int) -> None:
        """Open ``n`` empty slots at ``slot`` by moving slots ``[slot, length)`` right (fill them with :meth:`write`)."""
        if slot < self.anchor_tokens and self.anchor_tokens and not self.pre_rope and slot < self.length:
            raise RuntimeError("tokens cannot be inserted inside the sink; sinks must stay at the front")
        self._ensure_capacity(self.length + n)
        stop = self.length
        for buf in (self.keys, self.values):
            buf[:, :, slot + n : stop + n] = buf[:, :, slot:stop].clone()
        for meta in (self.token_ids, self.positions, self.reuse):
            meta[:, slot + n : stop + n] = meta[:, slot:stop].clone()
        self.length = stop + n

    def count_selection(self, slots: torch.Tensor) -> None:
        """Add one to the Top-C reuse counter of ``slots`` (``[B, C]`` indices after :meth:`keep`)."""
        self.reuse.scatter_add_(1, slots, torch.ones_like(slots, dtype=self.reuse.dtype))

    # -------------------------------------------------------------- positions
    def shift_anchor(self, delta: int) -> None:
        """Move every sink token by ``delta`` frames, rotating from its exact original-phase copy (Eq. 6)."""
        a = min(self.anchor_tokens, self.length)
        if a == 0 or delta == 0:
            return
        self.positions[:, :a] += delta
        if self.pre_rope:  # rotated at read
            return
        original = self.token_ids[:, :a].div(self.tokens_per_frame, rounding_mode="floor")
        # only the temporal channels move (the spatial ones equal the anchor copy): no full-width clone per shift
        span = 2 * self.rope.pairs
        angles = self.rope.angles((self.positions[:, :a] - original)[:, None, :])
        self.keys[:, :, :a, :span] = rotate_pairs(self.anchor_keys[:, :, :a, :span], angles)

    def place(self, slots: torch.Tensor, positions: torch.Tensor) -> None:
        """Give non-sink ``slots`` (``[B, M]``) new temporal ``positions`` by rotating from their current phase.

        Used by the optional Top-C RoPE unification (Eq. 10–11), which moves a token at most ``reuse cap`` times.
        """
        if self.pre_rope:  # rotated at read
            self.positions.scatter_(1, slots, positions)
            return
        current = self.positions.gather(1, slots)
        gather4 = slots[:, None, :, None].expand(-1, self.keys.shape[1], -1, self.keys.shape[3])
        moved = self.rope.rotate(self.keys.gather(2, gather4), positions - current)
        self.keys.scatter_(2, gather4, moved)
        self.positions.scatter_(1, slots, positions)
