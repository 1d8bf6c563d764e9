"""The per-video KV cache: one :class:`LayerCache` per transformer layer, driven by one policy.

The model calls :meth:`KVCache.begin_call` once per forward (which latent frames the call covers, whether it is
the clean-context pass, and its rotary embedding bound to the call's grid), then :meth:`LayerCache.attend` in every
layer's self-attention with the call's **pre-RoPE** ``q, k`` and ``v``. ``attend`` rotates the queries (at the
policy's :meth:`~deepforcing.cache.CachePolicy.query_positions`, by default their frames), stores the keys post- or
pre-RoPE (:meth:`~deepforcing.cache.CachePolicy.key_storage`), runs :meth:`LayerCache.update`, lets the policy add
tokens (:meth:`~deepforcing.cache.CachePolicy.after_write`) and returns what attention reads
(:meth:`~deepforcing.cache.CachePolicy.read`). ``update`` (post-RoPE ``q, k, v``; tests and ``plan`` call it
directly) reproduces the released write logic (``CausalWanSelfAttention`` in ``wan/modules/causal_model.py`` of
Self Forcing and of the Deep Forcing release):

* a call whose tokens end past everything written so far is a **new-chunk call** (only the first denoising step of a
  chunk): the tokens are appended and, if that overflows the window, the policy decides what stays;
* any other call (later denoising steps, the clean pass) **overwrites** the chunk's slots at the end of the cache;
* the queries then attend, unmasked, to every cached slot including the chunk's own (the returned views).

Everything about one video lives in this object; create a new one per video (the release leaked per-layer state from
one video into the next: its ``pipeline/causal_inference.py`` resets only the cache end indices between videos).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import head_groups
from .base import CachePolicy, ChunkContext, Decision, HeadGroup, Reaction, StreamEvent, Write
from .head_groups import Kernel
from .rope import CallRope, TemporalRope
from .rope_jitter import JitteredCallRope, JitteredTemporalRope
from .scoring import QueryWindow
from .store import LayerKVStore

__all__ = ["CacheGeometry", "CallInfo", "CacheEvent", "KVCache", "LayerCache", "HeadGroupCache", "Kernel"]


@dataclass(frozen=True)
class CacheGeometry:
    """Sizes the cache derives everything from: tokens per latent frame (model geometry) and chunk size (preset)."""

    tokens_per_frame: int
    chunk_frames: int

    def __post_init__(self) -> None:
        if self.tokens_per_frame <= 0 or self.chunk_frames <= 0:
            raise ValueError(f"tokens per frame and chunk size must be positive, got {self}")

    @property
    def chunk_tokens(self) -> int:
        return self.tokens_per_frame * self.chunk_frames


@dataclass(frozen=True)
class CallInfo:
    start_frame: int
    num_frames: int
    clean: bool
    rope: CallRope | None = None  # the model's rotary embedding bound to this call (needed by ``attend``)


@dataclass
class CacheEvent:
    """What a policy did at one layer for one new chunk (recorded when ``record_events`` is on)."""

    layer: int
    start_frame: int
    kind: str  # "append" | "roll" | "compress"
    length_before: int
    total: int
    decision: Decision
    group: str | None = None  # the head group's name, for a split layer


class LayerCache:
    """Cache of one layer: storage, recent queries and the policy's per-video state.

    A policy with head groups (:meth:`~deepforcing.cache.CachePolicy.head_groups`) splits the layer once: ``groups``
    then holds one :class:`HeadGroupCache` per group (its own store of its heads, state and queries) and ``store`` is
    ``None``; :meth:`views` is what describes the layer either way (``[self]`` or the groups)."""

    group: HeadGroup | None = None  # set on a head group's view
    heads: torch.Tensor | slice | None = None  # the group's heads (a slice when contiguous)

    def __init__(self, owner: "KVCache", index: int, store: LayerKVStore | None) -> None:
        self.owner = owner
        self.index = index
        self.store = store
        self.groups: list[HeadGroupCache] = []
        self.state: dict = {}
        self.global_end = 0  # absolute token index after the last write (the release's global_end_index)
        self.attended: tuple[torch.Tensor, torch.Tensor] | None = None  # the keys/values of the last read
        self.rope: CallRope | None = None  # the model's rotary embedding of the last ``attend`` (for ``put``)
        self._after_attention: Write | None = None  # the last attend's write, until its after_attention hook ran
        # only a policy that overrides after_attention keeps the last write (and with it the call's k, v) alive
        self._defers = type(owner.policy).after_attention is not CachePolicy.after_attention
        qset = owner.policy.query_set
        self.queries = QueryWindow(owner.policy.query_frames) if qset is not None else None

    def settle(self) -> None:
        """Run the policy's :meth:`~deepforcing.cache.CachePolicy.after_attention` hook of the last call, if it has
        not run yet (it runs lazily: before the next call of this layer, a restart, an event, or a read by tools)."""
        write, self._after_attention = self._after_attention, None
        if write is not None:
            self.owner.policy.after_attention(self, write)
        for view in self.groups:
            view.settle()

    def views(self) -> list["LayerCache"]:
        """What holds this layer's keys: ``[self]``, or its head groups' views once split (each with ``group``,
        ``heads``, ``store`` and ``state``; the policy's hooks such as ``regions`` take either)."""
        return list(self.groups) if self.groups else [self]

    def stores(self) -> list[LayerKVStore]:
        """Every store of this layer (one, or one per head group), for memory accounting."""
        return [view.store for view in self.views()]

    def reset(self) -> None:
        self._after_attention = None
        if self.groups:  # back to one store for all heads
            self.groups = []
            self.store = self.owner._new_store(self.index)
        self.store.length = 0
        self.store.token_ids.fill_(-1)
        self.state.clear()
        self.global_end = 0
        if self.queries is not None:
            self.queries.clear()

    def restart(self, resume_frame: int, keep_sink: bool) -> None:
        """Drop everything but (optionally) the sink and continue writing at ``resume_frame`` (prompt re-cache)."""
        self.settle()
        if self.groups:  # every group keeps its own sink
            for view in self.groups:
                view.restart(resume_frame, keep_sink)
            self.global_end = resume_frame * self.owner.geometry.tokens_per_frame
            return
        store = self.store
        sink_tokens = min(store.anchor_tokens, store.length) if keep_sink else 0
        store.length = sink_tokens
        store.token_ids[:, sink_tokens:] = -1
        store.reuse.zero_()
        if not keep_sink:
            self.state.clear()
        self.global_end = resume_frame * self.owner.geometry.tokens_per_frame
        if self.queries is not None:
            self.queries.clear()

    def _observe_queries(self, q: torch.Tensor, call: CallInfo, new_chunk: bool) -> None:
        qset = self.owner.policy.query_set
        if qset == "both":
            self.queries.push(q, call.num_frames)
        elif qset == "past" and call.clean:
            self.queries.push(q, call.num_frames)
        elif qset == "denoising" and new_chunk:
            self.queries.replace(q, call.num_frames)

    # ------------------------------------------------------------ model entry
    @property
    def policy(self) -> CachePolicy:
        return self.owner.policy

    @property
    def call(self) -> CallInfo:
        return self.owner.call

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model's entry (``[B, H, n, D]`` pre-RoPE ``q, k``): rotated queries and the keys/values to attend to.

        With the default hooks this is exactly the model rotating ``q, k`` at their frames and calling
        :meth:`update`. A policy with head groups has no single key set: the model calls :meth:`attention`."""
        if self.groups or self.owner.splits_heads:
            raise RuntimeError(f"{self.owner.policy.name} gives head groups their own caches: the model must call "
                               f"LayerCache.attention(q, k, v, kernel), not attend")
        return self._attend(q, k, v)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        call, q_rot, stored = self._rotate(q, k)
        policy = self.owner.policy
        keys, values, write = self._write(q_rot, stored, v, raw_keys=k)
        keys, values = policy.read(self, keys, values)
        if self._defers:
            self._after_attention = write
        if self.owner.observes:
            policy.observe_attention(self, q_rot, keys, values)
        return q_rot, *self._attended(call, q_rot, keys, values)

    def _rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[CallInfo, torch.Tensor, torch.Tensor]:
        """The call, its queries rotated at the policy's query positions and its keys as the store keeps them."""
        call = self.owner.call
        if call is None or call.rope is None:
            raise RuntimeError("KVCache.begin_call(start_frame, num_frames, clean, rope=...) must come before attend")
        positions = self.owner.policy.query_positions(self)
        if positions is None:
            q_rot = call.rope.apply(q)
        else:
            q_rot = call.rope.at(q, self._call_frames(positions), self._call_spatial(q))
        self.rope = call.rope
        pre_rope = (self.store.pre_rope if self.store is not None
                    else self.owner.policy.key_storage(self.index) == "pre-rope")
        return call, q_rot, (k if pre_rope else call.rope.apply(k))

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: Kernel) -> torch.Tensor:
        """The model's entry with its attention ``kernel``: pre-RoPE ``q, k`` and ``v`` ``[B, H, n, D]`` in, the
        attention output ``[B, H, n, D]`` out.

        Without head groups this is exactly ``kernel(*attend(q, k, v))``. With them: the queries are rotated once
        (:meth:`~deepforcing.cache.CachePolicy.query_positions` of this layer), every group writes its heads' keys
        into its own store (decision, ``after_write``, ``read``, ``observe_attention`` on the group's view), groups
        sharing a ``pack`` name with equal key counts go through one kernel call, and the outputs are scattered
        back to head order (:mod:`deepforcing.cache.head_groups`)."""
        if self.groups:
            return head_groups.attend(self, q, k, v, kernel)
        groups = head_groups.new_groups(self, k)
        if groups is None:
            return kernel(*self._attend(q, k, v))
        return head_groups.split(self, groups, q, k, v, kernel, HeadGroupCache)

    def update(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(One store, no head groups.) Write this call's ``k, v`` (``[B, H, n, D]``, keys rotated at their true frames), apply the policy on a
        new chunk, and return the keys/values to attend to (``[B, H, L, D]`` views, valid until the next update)."""
        if self.owner.jitter is not None:
            raise RuntimeError("--rope-jitter rotates queries and keys per head: the model must call attend()")
        keys, values, _ = self._write(q, k, v, raw_keys=None)
        return self._attended(self.owner.call, q, keys, values)

    def _attended(self, call: CallInfo, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        self.attended = (keys, values)
        if self.owner.attention_observer is not None:
            self.owner.attention_observer(self, call, q)
        return keys, values

    def _write(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, raw_keys: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, Write]:
        self.settle()
        call = self.owner.call
        if call is None:
            raise RuntimeError("KVCache.begin_call(start_frame, num_frames, clean) must be called before each forward")
        geo = self.owner.geometry
        n = k.shape[2]
        if n != call.num_frames * geo.tokens_per_frame:
            raise ValueError(
                f"layer {self.index}: got {n} tokens for {call.num_frames} frames of {geo.tokens_per_frame} tokens"
            )
        start_token = call.start_frame * geo.tokens_per_frame
        end_token = start_token + n
        new_chunk = end_token > self.global_end
        if self.queries is not None:
            self._observe_queries(q, call, new_chunk)
        store = self.store
        if new_chunk:
            if start_token != self.global_end:
                raise ValueError(
                    f"layer {self.index}: chunk starts at frame {call.start_frame} but the cache ends at frame "
                    f"{self.global_end // geo.tokens_per_frame}; chunks must be generated in order (start a new KVCache "
                    f"for a new video)"
                )
            ids = torch.arange(start_token, end_token, device=k.device)
            before = store.length
            store.write(before, k, v, ids)
            self._apply_policy(call, before, n)
            self.global_end = end_token
        else:
            if end_token != self.global_end:
                raise ValueError(
                    f"layer {self.index}: re-writing frames {call.start_frame}..{call.start_frame + call.num_frames - 1} "
                    f"but only the newest chunk can be re-written"
                )
            ids = torch.arange(start_token, end_token, device=k.device)
            store.write(store.length - n, k, v, ids)
        raw = raw_keys is not None
        write = Write(call, new_chunk, store.length - n, raw_keys if raw else k, v, raw)
        self.owner.policy.after_write(self, write)
        return (*store.view(), write)

    # --------------------------------------------------------- policy helpers
    def _call_frames(self, positions: torch.Tensor) -> torch.Tensor:
        """Per-frame positions ``[f]`` / ``[B, f]`` of the call -> per-token ``[n]`` / ``[B, n]``."""
        return positions.repeat_interleave(self.owner.geometry.tokens_per_frame, dim=-1)

    def _call_spatial(self, x: torch.Tensor) -> torch.Tensor:
        return torch.arange(x.shape[2], device=x.device) % self.owner.geometry.tokens_per_frame

    def rotate_stored(self, keys: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-RoPE keys ``[B, H, L, D]`` of the filled slots rotated (3D RoPE, float64 then cast, as the releases
        rotate) at temporal ``positions`` ``[B, L]`` (default: the positions the slots present)."""
        store = self.store
        length = keys.shape[2]
        if positions is None:
            positions = store.positions[:, :length]
        spatial = store.token_ids[:, :length] % store.tokens_per_frame
        return self.rope.at(keys, positions, spatial)

    def put(self, slot: int, keys: torch.Tensor, values: torch.Tensor, token_ids: torch.Tensor,
            positions: torch.Tensor, *, insert: bool = False) -> None:
        """Write tokens that did not come from this call — archived or synthesized (memory) — at ``slot``.

        ``keys`` are pre-RoPE ``[B, H, m, D]``; a post-RoPE store rotates them once at ``positions`` (``[m]`` or
        ``[B, m]`` temporal positions; spatial positions from ``token_ids % tokens_per_frame``), float64 then cast,
        exactly as a release rotating pre-RoPE keys (never a delta on post-RoPE keys). ``insert=True`` shifts slots
        ``slot ..`` right to make room; otherwise the slots are overwritten."""
        store = self.store
        if not store.pre_rope and slot < store.anchor_tokens:
            raise ValueError(f"{self.owner.policy.name}: put() into the sink of a post-RoPE store would spoil its exact "
                             f"copy; store keys pre-RoPE (key_storage) to place tokens there")
        positions = torch.as_tensor(positions, device=keys.device).expand(keys.shape[0], -1)
        token_ids = torch.as_tensor(token_ids, device=keys.device)
        if not store.pre_rope:
            keys = self.rope.at(keys, positions, token_ids % store.tokens_per_frame)
        if insert:
            store.insert(slot, keys.shape[2])
        store.write(slot, keys, values, token_ids, positions=positions)

    def _apply_policy(self, call: CallInfo, before: int, n: int) -> None:
        started = time.perf_counter()
        store = self.store
        total = store.length
        ctx = ChunkContext(
            layer=self.index,
            start_frame=call.start_frame,
            tokens_per_frame=self.owner.geometry.tokens_per_frame,
            length_before=before,
            new_tokens=n,
            token_ids=store.token_ids[:, :total],
            positions=store.positions[:, :total],
            reuse=store.reuse[:, :total],
            keys=store.keys[:, :, :total],
            values=store.values[:, :, :total],
            query_sum=self.queries.total() if self.queries is not None else None,
            state=self.state,
            generator=self.owner.generator,
            group=self.group,
            shared=self.owner.state,
        )
        decision = self.owner.policy.decide(ctx)
        if decision.keep is not None:
            store.keep(decision.keep)
            if decision.selected is not None:
                # picks keep their order, right after the sink: slots [sink, sink + C) after compaction
                sink_tokens = self.owner.policy.sink_frames * self.owner.geometry.tokens_per_frame
                c = decision.selected.shape[1]
                slots = torch.arange(sink_tokens, sink_tokens + c, device=store.reuse.device).expand(
                    decision.selected.shape[0], -1
                )
                store.count_selection(slots)
                if decision.topc_positions is not None:
                    store.place(slots, decision.topc_positions)
        if decision.sink_delta:
            store.shift_anchor(decision.sink_delta)
        self.owner.policy_seconds += time.perf_counter() - started
        if self.index == 0 and (self.group is None or self is self._first_view()):
            self.owner.event_counts[decision.event] = self.owner.event_counts.get(decision.event, 0) + 1
            self.owner.sink_shift_frames += decision.sink_delta
        if self.owner.record_events:
            self.owner.events.append(
                CacheEvent(self.index, call.start_frame, decision.event, before, total, decision,
                           self.group.name if self.group is not None else None)
            )
        if self.owner.on_event is not None:
            self.owner.on_event(self, decision)

    def _first_view(self) -> "LayerCache":
        return self


class HeadGroupCache(LayerCache):
    """One head group of a split layer (:meth:`CachePolicy.head_groups`): a :class:`LayerCache` over its own store
    (``heads`` of the layer only), its own ``state`` and query window; ``layer`` is the split layer. The policy's
    hooks receive this view for the group's writes, decisions and reads, so a hook written for a layer
    (``regions``, ``after_write`` with ``put``, ``read``) works per group unchanged. The split, the groups' calls and
    their kernel calls are :mod:`deepforcing.cache.head_groups`'s (it makes this view; it lives here beside its base
    class because that module may not import this one)."""

    def __init__(self, layer: LayerCache, group: HeadGroup, store: LayerKVStore) -> None:
        super().__init__(layer.owner, layer.index, store)
        self.layer = layer
        self.group = group
        heads = list(group.heads)
        contiguous = heads == list(range(heads[0], heads[0] + len(heads)))
        self.heads = (slice(heads[0], heads[0] + len(heads)) if contiguous
                      else torch.tensor(heads, device=store.keys.device))

    def _first_view(self) -> LayerCache:
        return self.layer.groups[0] if self.layer.groups else self

    def reset(self) -> None:
        raise RuntimeError("a head group is reset with its layer (KVCache.reset)")


class KVCache:
    """All layers' caches for one video.

    Args:
        policy: the cache policy (validated against ``geometry.chunk_frames`` here).
        geometry: tokens per frame and chunk size.
        num_layers, batch, heads, head_dim: model shape.
        rope: the temporal part of the model's rotary embedding (for re-aligning keys).
        dtype, device: storage dtype/device (bf16 on GPU for the 1.3B model).
        seed: seed for policies that draw random numbers (``random-topc``).
        record_events: keep a :class:`CacheEvent` per layer and new chunk in ``events``.
        on_event: called with (layer cache, decision) after every new-chunk decision.
        attention_observer: called with (layer cache, call, post-RoPE queries) after every update (diagnostics).
    """

    def __init__(
        self,
        policy: CachePolicy,
        geometry: CacheGeometry,
        *,
        num_layers: int,
        batch: int,
        heads: int,
        head_dim: int,
        rope: TemporalRope,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        seed: int | None = 0,
        record_events: bool = False,
        on_event: Callable[[LayerCache, Decision], None] | None = None,
        attention_observer: Callable[[LayerCache, CallInfo, torch.Tensor], None] | None = None,
        max_frames: int | None = None,
    ) -> None:
        policy.validate(geometry.chunk_frames)
        self.policy = policy
        self.geometry = geometry
        self.record_events = record_events
        self.on_event = on_event
        self.attention_observer = attention_observer  # diagnostics: sees each call's queries and the cache
        self.events: list[CacheEvent] = []
        self.event_counts: dict[str, int] = {}  # layer 0's decisions per kind (always kept; events are opt-in)
        self.sink_shift_frames = 0  # layer 0's total sink movement
        self.policy_seconds = 0.0  # host time spent in policy decisions and compaction (asynchronous on GPU)
        self.call: CallInfo | None = None
        self.state: dict = {}  # per-video scratch shared by all layers (a cross-layer head assignment)
        # the engine's plain path stays untouched unless the policy overrides these hooks
        self.splits_heads = type(policy).head_groups is not CachePolicy.head_groups
        self.observes = type(policy).observe_attention is not CachePolicy.observe_attention
        self.generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        # LoL's RoPE modifier (cache/rope_jitter.py): per-head temporal tables, None when off (the model's own RoPE)
        self.jitter = (JitteredTemporalRope.of(rope, heads, policy.rope_jitter, policy.rope_jitter_seed)
                       if policy.rope_jitter else None)
        rope = self.jitter or rope
        F = geometry.tokens_per_frame
        capacity = self.capacity_frames(policy, geometry.chunk_frames, max_frames) * F

        def new_store(i: int) -> LayerKVStore:
            return LayerKVStore(
                batch=batch,
                heads=heads,
                head_dim=head_dim,
                capacity=capacity,
                anchor_tokens=min(policy.sink_frames * F, capacity),
                tokens_per_frame=F,
                rope=rope,
                dtype=dtype,
                device=device,
                growable=not policy.bounded,
                pre_rope=policy.key_storage(i) == "pre-rope",
            )

        self._new_store = new_store
        self.heads = heads
        self.layers = [LayerCache(self, i, new_store(i)) for i in range(num_layers)]

    @staticmethod
    def capacity_frames(policy: CachePolicy, chunk_frames: int, max_frames: int | None = None) -> int:
        """Frames to pre-allocate: the policy's bound, or the whole video (``max_frames``) when it is shorter."""
        bound = policy.capacity_frames(chunk_frames)
        if max_frames is None:
            return bound
        if max_frames <= 0:
            raise ValueError(f"max_frames must be positive, got {max_frames}")
        return min(bound, -(-max_frames // chunk_frames) * chunk_frames)

    @classmethod
    def estimate_bytes(cls, policy: CachePolicy, geometry: CacheGeometry, *, num_layers: int, batch: int, heads: int,
                       head_dim: int, dtype: torch.dtype, max_frames: int | None = None) -> int:
        """Bytes the pre-allocated stores take (keys, values, sink anchor copy, per-slot metadata), before allocation.

        For a policy with head groups, per layer the larger of the one store before the split and a bound on the
        groups' stores after it: each group allocates ``window + chunk`` frames for its heads (plus its own per-slot
        metadata), and a per-head policy's :attr:`~CachePolicy.layout` is its largest head's (docs/cache_api.md,
        "Head groups"), so every head at ``sum(layout) + chunk`` frames in a store of its own bounds them. Forcing-KV's
        dynamic heads hold 9 frames where the one store holds 8. (The split itself holds one layer's one store and
        its groups at once for the length of that call; not counted.)"""
        slots = cls.capacity_frames(policy, geometry.chunk_frames, max_frames) * geometry.tokens_per_frame
        anchor = min(policy.sink_frames * geometry.tokens_per_frame, slots)
        total = 0
        for i in range(num_layers):
            sink = 0 if policy.key_storage(i) == "pre-rope" else anchor
            one = LayerKVStore.nbytes(batch=batch, heads=heads, head_dim=head_dim, capacity=slots, dtype=dtype,
                                      anchor_tokens=sink)
            groups = head_groups.store_bytes_bound(policy, geometry, batch=batch, heads=heads, head_dim=head_dim,
                                                   dtype=dtype, anchor_tokens=sink)
            total += max(one, groups)
        return total

    def begin_call(self, start_frame: int, num_frames: int, clean: bool = False, rope: CallRope | None = None) -> None:
        """Declare the frames the next forward covers (``start_frame`` = absolute latent index of its first frame)
        and the model's rotary embedding bound to the call (``rope``, needed by :meth:`LayerCache.attend`)."""
        if start_frame < 0 or num_frames <= 0:
            raise ValueError(f"invalid call: start_frame={start_frame}, num_frames={num_frames}")
        if self.jitter is not None and rope is not None:
            rope = JitteredCallRope(rope, self.jitter, start_frame, self.geometry.tokens_per_frame)
        self.call = CallInfo(start_frame, num_frames, clean, rope)

    def notify(self, event: StreamEvent) -> Reaction:
        """Tell the policy about a stream event (prompt switch, scene cut); see :meth:`CachePolicy.react`."""
        self.settle()
        return self.policy.react(event, self)

    def settle(self) -> None:
        """Run every layer's pending :meth:`~deepforcing.cache.CachePolicy.after_attention` hook (before reading the
        cache from outside the model, e.g. to report it)."""
        for layer in self.layers:
            layer.settle()

    def restart(self, resume_frame: int, keep_sink: bool = True) -> None:
        """Truncate every layer to its sink (or to nothing) and resume writing at ``resume_frame``.

        Used by prompt switches: the frames after ``resume_frame`` are then re-run under the new prompt.
        """
        if resume_frame < 0:
            raise ValueError(f"resume_frame must be >= 0, got {resume_frame}")
        for layer in self.layers:
            layer.restart(resume_frame, keep_sink)
        self.call = None

    def reset(self) -> None:
        """Forget everything (all layers, queries, policy state, events) to start a new video."""
        for layer in self.layers:
            layer.reset()
        self.events.clear()
        self.state.clear()
        self.call = None

    @property
    def length(self) -> int:
        """Filled slots of layer 0 (all layers hold the same count); with head groups, per head on average
        (each group's slots weighted by its heads, floored)."""
        layer = self.layers[0]
        if not layer.groups:
            return layer.store.length
        return sum(view.store.length * len(view.group.heads) for view in layer.groups) // self.heads

    def memory_bytes(self) -> int:
        """Bytes every store allocates now (keys, values, sink copies, per-slot metadata; each head group's own)."""
        total = 0
        for layer in self.layers:
            for s in layer.stores():
                for t in (s.keys, s.values, s.anchor_keys, s.token_ids, s.positions, s.reuse):
                    total += t.numel() * t.element_size()
        return total
