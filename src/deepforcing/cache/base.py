"""The policy contract (cache API v2): what a policy describes and the hooks it may override.

A policy is a dataclass whose fields are its options (all sizes in **latent frames**; tokens per frame come from the
model geometry). In the manner of NVIDIA kvpress's presses, a named policy overrides one or two hooks of
:class:`CachePolicy`; everything else is the engine's. The hooks, in the order the engine calls them for one
attention call of one layer (:meth:`deepforcing.cache.session.LayerCache.attend`):

==========================  ===========================================================================  ==============
hook                        what the policy decides                                                      default
==========================  ===========================================================================  ==============
:meth:`key_storage`         keys stored post-RoPE (rotated once at their frame) or pre-RoPE (rotated     post-RoPE
                            at every read, as ∞-RoPE and MemRoPE do)
:meth:`query_positions`     the temporal position of each of the call's query frames                    true frames
:meth:`decide`              on a new chunk: the slots to keep, Top-C picks, how far the sink moves       FIFO window
:meth:`after_write`         after every write, before attention reads: put archived or synthesized       nothing
                            tokens into slots (:meth:`LayerCache.put`)
:meth:`key_positions`       pre-RoPE storage: the position each cached key is rotated at for this read   stored position
:meth:`read`                the keys/values attention sees (e.g. paste an exact post-RoPE copy back)     rotate at read
:meth:`after_attention`     after the call's attention (run lazily, before the cache is next touched):   nothing
                            edits that the call itself must not see (Rolling Sink's archive replay)
:meth:`react`               stream events: a prompt switch, a scene cut (:meth:`validate_event` checks   engine default
                            beforehand that the policy can take them on this model)
:meth:`head_groups`         per-head caches: split a layer's heads into :class:`HeadGroup` s, each with  none
                            its own store and attention call (:meth:`decide_group` per group)
:meth:`observe_attention`   attention statistics: the rotated queries and the keys attention reads       nothing
==========================  ===========================================================================  ==============

And a policy describes itself: :meth:`options` (name, type, default, help — the command-line flags),
:attr:`layout` (frames per region: sink / kept / memory / recent) and :meth:`regions` (the region of every cached
slot now), which ``plan``, ``diagnose``, the live page and the sidecar read instead of guessing from field names.

Sections (§) and equations refer to arXiv 2512.05081 (Deep Forcing) unless a policy says otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch

from .options import PolicyOption, option, policy_options

if TYPE_CHECKING:  # the session imports this module; these names are for annotations only
    from .session import CallInfo, KVCache, LayerCache

__all__ = ["ChunkContext", "Decision", "Write", "StreamEvent", "CachePolicy", "HeadGroup", "sink_shift", "fifo_keep",
           "REGIONS", "KeyStorage", "Reaction", "QuerySet", "SinkPlacement"]

QuerySet = Literal["both", "past", "denoising"]
SinkPlacement = Literal["fixed", "deep", "adjacent"]
KeyStorage = Literal["post-rope", "pre-rope"]
Reaction = Literal["default", "handled"]

REGIONS = ("sink", "kept", "memory", "recent")
"""Cache regions a policy reports per slot: the sink; tokens kept by a selection (Top-C) or re-inserted from an
archive; synthesized memory tokens; the recent tail (the incoming chunk included)."""
SINK, KEPT, MEMORY, RECENT = range(len(REGIONS))


@dataclass(frozen=True)
class HeadGroup:
    """Heads of one layer that share a key set (per-head caches: Dummy Forcing, Forcing-KV, TriAttention).

    A policy returns a layer's groups from :meth:`CachePolicy.head_groups`; from then on each group has its own
    store (its heads only, ``window + chunk`` frames of capacity, a ``sink_frames`` anchor) and its own attention
    call, the outputs scattered back to head order. ``window`` and ``sink_frames`` are the frames the default
    :meth:`CachePolicy.decide_group` keeps (FIFO behind the sink, the incoming chunk included); a policy that keeps
    other tokens overrides ``decide_group`` and says its bound with ``window``. Groups of one layer with the same
    ``pack`` name whose key counts are equal at a read are attended in one call (heads concatenated in group order;
    Dummy Forcing's sink and dummy heads)."""

    name: str
    heads: tuple[int, ...]
    window: int
    sink_frames: int = 0
    pack: str | None = None

    def __post_init__(self) -> None:
        heads = tuple(int(h) for h in self.heads)
        object.__setattr__(self, "heads", heads)
        if not heads or any(b <= a for a, b in zip(heads, heads[1:])) or heads[0] < 0:
            raise ValueError(f"head group {self.name!r}: heads must be ascending, distinct and non-empty, got {heads}")
        if self.window <= 0 or not 0 <= self.sink_frames < self.window:
            raise ValueError(f"head group {self.name!r}: need 0 <= sink ({self.sink_frames}) < window ({self.window})")

    def capacity_frames(self, chunk_frames: int) -> int:
        """Store capacity in frames: the group's window plus one incoming chunk (the augmented sequence)."""
        return self.window + chunk_frames


@dataclass
class ChunkContext:
    """What a policy sees when a new chunk arrives at one layer.

    The new chunk's tokens already sit at slots ``[length_before, length_before + new_tokens)``.
    """

    layer: int
    start_frame: int  # f0: absolute latent frame of the incoming chunk's first frame
    tokens_per_frame: int
    length_before: int  # filled slots before the new chunk
    new_tokens: int
    token_ids: torch.Tensor  # [B, T] absolute token ids of the augmented sequence
    positions: torch.Tensor  # [B, T] presented temporal positions
    reuse: torch.Tensor  # [B, T] Top-C selection counters
    keys: torch.Tensor  # [B, H, T, D] stored keys (post- or pre-RoPE, see key_storage; read only)
    query_sum: torch.Tensor | None  # [B, H, D] recent-query sum, when the policy asked for queries
    state: dict  # per-layer, per-video scratch (e.g. the reference's sink base)
    generator: torch.Generator | None = None
    values: torch.Tensor | None = None  # [B, H, T, D] stored values (read only; e.g. to fold evicted tokens)
    group: HeadGroup | None = None  # the head group deciding (keys/values hold its heads only); None: whole layer
    shared: dict | None = None  # the video's cross-layer scratch (KVCache.state), e.g. a choice made on one layer

    @property
    def total(self) -> int:
        return self.length_before + self.new_tokens


@dataclass
class Decision:
    """A policy's answer for one layer and one incoming chunk."""

    keep: torch.Tensor | None = None  # [B, K] ascending slot indices into the augmented sequence; None = keep all
    selected: torch.Tensor | None = None  # [B, C] Top-C picks, as indices into the augmented sequence
    sink_delta: int = 0  # frames to move the sink by (rotation of its temporal channels, Eq. 6)
    topc_positions: torch.Tensor | None = None  # [B, C] new temporal positions of the picks (Eq. 10-11 option)
    scores: torch.Tensor | None = None  # [B, T] fused scores (diagnostics; -inf on protected slots)
    event: str = "append"  # "append" | "roll" | "compress"


@dataclass
class Write:
    """One write into a layer's store, as :meth:`CachePolicy.after_write` sees it."""

    call: "CallInfo"
    new_chunk: bool  # the first call of a chunk (the policy's decide ran) or a re-write of the newest chunk
    start: int  # first slot written
    keys: torch.Tensor  # [B, H, n, D] the call's keys, pre-RoPE when ``raw`` else as stored
    values: torch.Tensor  # [B, H, n, D]
    raw: bool  # whether ``keys`` are pre-RoPE (the model called ``attend``)


@dataclass(frozen=True)
class StreamEvent:
    """Something that happens to the stream between chunks: ``"prompt-switch"`` or ``"scene-cut"`` at ``frame``
    (the first latent frame generated after it)."""

    kind: Literal["prompt-switch", "scene-cut"]
    frame: int


def _arange(start: int, stop: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(start, stop, device=like.device).expand(like.shape[0], -1)


def fifo_keep(ctx: ChunkContext, window: int, sink: int) -> Decision:
    """FIFO inside ``window`` frames behind ``sink`` frames: the oldest non-sink tokens of the augmented sequence
    leave first (Self Forcing's rolling cache; every head group's default)."""
    F = ctx.tokens_per_frame
    overflow = ctx.total - window * F
    if overflow <= 0:
        return Decision()
    keep = torch.cat([_arange(0, sink * F, ctx.token_ids), _arange(sink * F + overflow, ctx.total, ctx.token_ids)], 1)
    return Decision(keep=keep, event="roll")


def sink_shift(placement: SinkPlacement, ctx: ChunkContext, keep: torch.Tensor, sink_frames: int,
               first_shift: int = 0) -> int:
    """Frames to move the sink by after an eviction that keeps slots ``keep`` (rotation of its keys, Eq. 6).

    * ``fixed`` — never moved (StreamingLLM's attention sink);
    * ``deep`` — Deep Sink's temporal re-alignment (arXiv 2512.05081 §4.2; the release's ``causal_model_DS.py`` and
      its DS+PC model): the sink's first frame is placed at ``f0 - tail - sink``, ``tail`` being the frames kept after
      the sink (the incoming chunk included). The first eviction moves it by ``first_shift`` (0 for Deep Sink alone,
      ``window - budget`` for Deep Forcing), later ones by the change of that target;
    * ``adjacent`` — the sink's last frame right before the oldest kept frame (Rolling Forcing's contiguous
      timeline; for Deep Sink, the gap-free placement).
    """
    if placement == "fixed" or sink_frames == 0:
        return 0
    F = ctx.tokens_per_frame
    sink_tokens = sink_frames * F
    if placement == "adjacent":
        oldest_kept_position = int(ctx.positions[0, keep[0, sink_tokens]])
        return (oldest_kept_position - sink_frames) - int(ctx.positions[0, 0])
    target = ctx.start_frame - (keep.shape[1] - sink_tokens) // F - sink_frames
    base = ctx.state.get("sink_base")
    ctx.state["sink_base"] = target
    return first_shift if base is None else target - base


@dataclass
class CachePolicy:
    """Base class: the mechanics every policy shares (NVIDIA kvpress's base press, for a video KV cache).

    Nothing happens until the augmented cache (the cache plus the incoming chunk) overflows ``window`` frames; then
    :meth:`select` (the selector: FIFO, Top-C by participation, random Top-C) picks the slots to keep, and
    :func:`sink_shift` with :meth:`sink_placement` (fixed, Deep Sink, adjacent) moves the sink. A named policy is a
    selector times a placement plus its defaults, registered with ``@register_policy``.
    """

    name: ClassVar[str] = "base"
    aliases: ClassVar[tuple[str, ...]] = ()  # old names that keep working
    source: ClassVar[str] = ""  # paper section / release file the policy follows (shown by `plan` and the README)
    own_window: ClassVar[bool] = False  # the window is part of the method (∞-RoPE's 6 frames): a model's attention
    # window does not replace its default (pipeline.generate.policy_from_defaults); --window still does
    window: int = option(21, "attention window in latent frames (Self Forcing: 21, its training length)")
    rope_jitter: float = option(0.0, "LoL's multi-head RoPE jitter strength sigma in [0, 1) for any policy (arXiv "
                                     "2601.16914; paper only, no release parity; 0 = off, the paper's best 0.8)",
                                kw_only=True)
    rope_jitter_seed: int = option(0, "seed of the per-head RoPE bases drawn once per video (--rope-jitter)",
                                   kw_only=True)

    def __post_init__(self) -> None:
        self._check_positive("window", self.window)
        if not isinstance(self.rope_jitter, (int, float)) or not 0.0 <= self.rope_jitter < 1.0:
            raise ValueError(f"{self.name}: --rope-jitter must be in [0, 1) (0 = off; the paper's best is 0.8), "
                             f"got {self.rope_jitter!r}")

    # ------------------------------------------------------------ description
    @classmethod
    def options(cls) -> tuple[PolicyOption, ...]:
        """The policy's options (its dataclass fields): name, type, default, help, choices, flag."""
        return policy_options(cls)

    @property
    def sink_frames(self) -> int:
        """Frames at the front of the cache that are never evicted (the sink)."""
        return 0

    @property
    def query_set(self) -> QuerySet | None:
        """Which queries the policy scores with, or ``None`` if it needs none."""
        return None

    @property
    def query_frames(self) -> int:
        """How many recent query frames the scoring window holds (when :attr:`query_set` is not ``None``)."""
        return 0

    @property
    def bounded(self) -> bool:
        return True

    @property
    def layout(self) -> dict[str, int | None]:
        """Frames per region (:data:`REGIONS`) once the window is full (``None``: grows without bound)."""
        return {"sink": self.sink_frames, "kept": 0, "memory": 0, "recent": self.window - self.sink_frames}

    @property
    def archive_frames(self) -> int:
        """Frames of K/V the policy keeps outside the window's slots (Rolling Sink's archive of its first window), for
        memory accounting (``benchmarks/policy_chunk_cost.py``); synthesized memory frames sit in slots (layout)."""
        return 0

    def regions(self, layer: "LayerCache") -> torch.Tensor:
        """Region index (into :data:`REGIONS`) of every filled slot of ``layer``, ``[B, length]`` int8: the anchor
        slots are the sink, tokens picked by Top-C (reuse > 0) are kept, the rest is recent."""
        store = layer.store
        length = store.length
        codes = torch.full((store.reuse.shape[0], length), RECENT, dtype=torch.int8, device=store.reuse.device)
        codes[store.reuse[:, :length] > 0] = KEPT
        codes[:, : min(store.anchor_tokens, length)] = SINK
        return codes

    def capacity_frames(self, chunk_frames: int) -> int:
        """Store capacity in frames: the window plus one incoming chunk (the augmented sequence)."""
        return self.window + chunk_frames

    def validate(self, chunk_frames: int) -> None:
        """Check the policy against the model's chunk size; raise ``ValueError`` saying what to change."""
        self._check_positive("chunk", chunk_frames)
        if chunk_frames > self.window:
            raise ValueError(
                f"{self.name}: chunk of {chunk_frames} frames does not fit the window of {self.window} frames; "
                f"use --window >= {chunk_frames}"
            )

    def describe(self) -> dict:
        """Name and options (the sidecar's ``policy`` entry), and the source when the policy names one. LoL's RoPE
        jitter appears only when on, with its evidence (paper only), so a sidecar without it is unchanged."""
        options = dataclasses.asdict(self)
        if not self.rope_jitter:
            del options["rope_jitter"], options["rope_jitter_seed"]
        else:
            from .rope_jitter import PAPER
            options["rope_jitter_source"] = PAPER
        return {"policy": self.name, **options, **({"source": self.source} if self.source else {})}

    # ------------------------------------------------------------------ hooks
    def key_storage(self, layer: int) -> KeyStorage:
        """How ``layer`` stores keys: ``"post-rope"`` (rotated once at their frame, as Self Forcing's cache) or
        ``"pre-rope"`` (rotated at :meth:`key_positions` at every read, float64 then cast, as ∞-RoPE/MemRoPE)."""
        return "post-rope"

    def query_positions(self, layer: "LayerCache") -> torch.Tensor | None:
        """Temporal positions ``[f]`` (or ``[B, f]``) of the current call's query frames; ``None``: their frames.

        Asked *before* the call's keys are written (the rotated queries feed the scoring window that the decision
        on a new chunk reads), so derive them from ``layer.call`` and the policy's sizes, not from the store."""
        return None

    def decide(self, ctx: ChunkContext) -> Decision:
        """A new chunk was written after the cache (the augmented sequence): what stays. A head group's store
        (``ctx.group`` set) is asked :meth:`decide_group` instead."""
        if ctx.group is not None:
            return self.decide_group(ctx)
        if ctx.total <= self.window * ctx.tokens_per_frame:
            return Decision()
        decision = self.select(ctx)
        decision.sink_delta = sink_shift(self.sink_placement(), ctx, decision.keep, self.sink_frames,
                                         self.first_shift())
        return decision

    def head_groups(self, layer: "LayerCache") -> tuple[HeadGroup, ...] | None:
        """Asked at the first call of every new chunk (before its write) until it returns groups: ``None`` keeps one
        key set for all heads (every policy without per-head caches; the engine then runs exactly its plain path);
        groups (covering every head once) split the layer after this call's write and decision, each group keeping
        what :meth:`decide_group` keeps of the augmented sequence. Cross-layer choices (Dummy Forcing's global head
        assignment) read every layer's ``state`` through ``layer.owner`` and keep their result in
        ``layer.owner.state``. The split lasts until :meth:`KVCache.reset`."""
        return None

    def decide_group(self, ctx: ChunkContext) -> Decision:
        """A head group's :meth:`decide` (``ctx.group``; keys/values of its heads only): by default FIFO within the
        group's ``window`` behind its ``sink_frames``."""
        return fifo_keep(ctx, ctx.group.window, ctx.group.sink_frames)

    def observe_attention(self, layer: "LayerCache", q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
                          ) -> None:
        """After :meth:`read`, before the attention call: the rotated queries ``[B, h, n, D]`` and the keys/values
        attention reads, for attention statistics (Dummy Forcing's sampled softmax); ``layer`` is the head group's
        view when the layer is split. Default: nothing."""

    def after_write(self, layer: "LayerCache", write: Write) -> None:
        """After every write (and the decision on a new chunk), before attention reads: a policy that re-inserts
        archived tokens or synthesizes memory tokens writes them here with :meth:`LayerCache.put`."""

    def after_attention(self, layer: "LayerCache", write: Write) -> None:
        """After the attention of the call that made ``write`` (the engine runs it before this layer's next call,
        a restart, an event, or :meth:`KVCache.settle`): cache edits the call's own attention must not see."""

    def key_positions(self, layer: "LayerCache") -> torch.Tensor | None:
        """Pre-RoPE storage: temporal position ``[B, length]`` each cached key is rotated at for this read;
        ``None``: the position the slot presents (``store.positions``)."""
        return None

    def read(self, layer: "LayerCache", keys: torch.Tensor, values: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys/values attention sees, from the stored ones (``[B, H, length, D]`` views)."""
        if layer.store.pre_rope:
            keys = layer.rotate_stored(keys, self.key_positions(layer))
        return keys, values

    def react(self, event: StreamEvent, cache: "KVCache") -> Reaction:
        """A stream event. ``"default"``: the engine's reaction (a prompt switch re-caches the recent window under
        the new prompt, LongLive's recipe; a scene cut does nothing); ``"handled"``: the policy changed the cache
        itself (e.g. ∞-RoPE's KV flush)."""
        return "default"

    def validate_model(self, num_layers: int, num_heads: int) -> None:
        """Raise ``ValueError`` (saying what to change) if the policy cannot run on a transformer of ``num_layers``
        layers with ``num_heads`` attention heads, e.g. a per-checkpoint file made for another model; checked before
        any weights load (:meth:`deepforcing.model_spec.CheckedModel.policy`). Default: any model."""

    def validate_tokens(self, tokens_per_frame: int) -> None:
        """Raise ``ValueError`` (saying what to change) if the policy cannot run on a model with ``tokens_per_frame``
        tokens per latent frame (e.g. Forcing-KV's patches must divide a frame); checked before any weights load
        (:meth:`deepforcing.model_spec.CheckedModel.policy`). Default: any size."""

    def validate_event(self, kind: str, chunk_frames: int) -> None:
        """Raise ``ValueError`` (one line saying what to change) if the policy cannot react to a ``kind`` event
        (:class:`StreamEvent`) on a model making ``chunk_frames``-frame chunks; a timeline's events are checked with
        it before any weights load. Default: every event is fine."""

    # ------------------------------------------------------------ the pieces
    def select(self, ctx: ChunkContext) -> Decision:
        """The selector: the slots to keep (and any Top-C picks) once the augmented cache overflows."""
        raise NotImplementedError

    def sink_placement(self) -> SinkPlacement:
        """How the sink moves at an eviction (see :func:`sink_shift`)."""
        return "fixed"

    def first_shift(self) -> int:
        """Sink shift at the first eviction under the ``deep`` placement."""
        return 0

    # --------------------------------------------------------------- helpers
    def _check_positive(self, what: str, value: int, allow_zero: bool = False) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{self.name}: {what} must be an integer number of latent frames, got {value!r}")
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{self.name}: {what} must be {bound} latent frames, got {value}")

    def _check_sink(self, sink: int) -> None:
        self._check_positive("sink", sink, allow_zero=True)
        if sink >= self.window:
            raise ValueError(
                f"{self.name}: sink of {sink} frames must be smaller than the window of {self.window} frames; "
                f"lower --sink or raise --window"
            )
