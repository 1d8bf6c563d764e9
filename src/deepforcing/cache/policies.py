"""KV-cache policies: pure decisions about which tokens stay and which temporal position each presents.

A policy is a dataclass whose fields are exactly its hyper-parameters, all in **latent frames**; tokens per frame come
from the model geometry (:class:`ChunkContext`). When a new chunk arrives, the cache writes its tokens after the
current content (the "augmented" sequence of length ``T``) and asks the policy for a :class:`Decision`: the slots to
keep, the Top-C selections to count, and how far to move the sink. Policies never touch keys or do attention math.

===================  ==========================================================================  ==================
name                 behaviour                                                                   source
===================  ==========================================================================  ==================
``self-forcing``     FIFO window of ``window`` frames, no sink                                   Self Forcing
``attention-sink``   first ``sink`` frames kept at their original positions, FIFO tail           PAPER App. A
``rolling-sink``     sink re-placed right before the oldest tail frame at every roll             PAPER App. A
``deep-sink``        deep sink (≈ half the window), re-aligned as the released DS-only code      PAPER §3, §3.3
``deep-forcing``     Deep Sink + Participative Compression, released defaults                    PAPER §4, §8
``random-topc``      ``deep-forcing`` with N(0, 1) scores                                        PAPER App. D
``full``             never evict (memory grows; reference inside the training horizon)           —
===================  ==========================================================================  ==================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from .scoring import DEFAULT_BLOCK_TOKENS, participation_scores

__all__ = [
    "ChunkContext",
    "Decision",
    "CachePolicy",
    "SelfForcing",
    "AttentionSink",
    "RollingSink",
    "DeepSink",
    "DeepForcing",
    "RandomTopC",
    "FullCache",
    "POLICIES",
    "make_policy",
    "policy_names",
]

QuerySet = Literal["both", "past", "denoising"]


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
    keys: torch.Tensor  # [B, H, T, D] post-RoPE keys (read only)
    query_sum: torch.Tensor | None  # [B, H, D] recent-query sum, when the policy asked for queries
    state: dict  # per-layer, per-video scratch (e.g. the reference's sink base)
    generator: torch.Generator | None = None

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


def _arange(start: int, stop: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(start, stop, device=like.device).expand(like.shape[0], -1)


@dataclass
class CachePolicy:
    """Base class. ``window`` is the attention window in latent frames (Self Forcing: the training length)."""

    name: ClassVar[str] = "base"
    window: int = 21

    def __post_init__(self) -> None:
        self._check_positive("window", self.window)

    # -------------------------------------------------------------- contract
    @property
    def sink_frames(self) -> int:
        """Frames at the front of the cache that are never evicted (the sink)."""
        return 0

    @property
    def query_set(self) -> QuerySet | None:
        """Which queries the policy scores with, or ``None`` if it needs none."""
        return None

    @property
    def bounded(self) -> bool:
        return True

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

    def decide(self, ctx: ChunkContext) -> Decision:
        raise NotImplementedError

    # --------------------------------------------------------------- helpers
    def _check_positive(self, what: str, value: int, allow_zero: bool = False) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{self.name}: {what} must be an integer number of latent frames, got {value!r}")
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{self.name}: {what} must be {bound} latent frames, got {value}")

    def describe(self) -> dict:
        return {"policy": self.name, **dataclasses.asdict(self)}


# ------------------------------------------------------------------ FIFO family
@dataclass
class _FifoWithSink(CachePolicy):
    """FIFO over the tail behind a fixed sink (REFERENCE.md §A.5): a new chunk that overflows the window evicts
    exactly the overflow, oldest non-sink tokens first, so the cache stays at ``window`` frames."""

    sink: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("sink", self.sink, allow_zero=True)
        if self.sink >= self.window:
            raise ValueError(
                f"{self.name}: sink of {self.sink} frames must be smaller than the window of {self.window} frames; "
                f"lower --sink or raise --window"
            )

    @property
    def sink_frames(self) -> int:
        return self.sink

    def validate(self, chunk_frames: int) -> None:
        super().validate(chunk_frames)
        if self.sink + chunk_frames > self.window:
            raise ValueError(
                f"{self.name}: sink ({self.sink}) + chunk ({chunk_frames}) exceeds the window ({self.window}); "
                f"lower --sink to at most {self.window - chunk_frames}"
            )

    def decide(self, ctx: ChunkContext) -> Decision:
        F = ctx.tokens_per_frame
        overflow = ctx.total - self.window * F
        if overflow <= 0:
            return Decision()
        sink_tokens = self.sink * F
        keep = torch.cat([_arange(0, sink_tokens, ctx.token_ids), _arange(sink_tokens + overflow, ctx.total, ctx.token_ids)], 1)
        return Decision(keep=keep, sink_delta=self._sink_delta(ctx, keep), event="roll")

    def _sink_delta(self, ctx: ChunkContext, keep: torch.Tensor) -> int:
        return 0


@dataclass
class SelfForcing(_FifoWithSink):
    """Self Forcing's rolling KV cache: FIFO over ``window`` frames, no sink, no RoPE change (PAPER.md §8)."""

    name: ClassVar[str] = "self-forcing"
    sink: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sink != 0:
            raise ValueError("self-forcing has no sink; use --policy attention-sink or deep-sink for a sink")


@dataclass
class AttentionSink(_FifoWithSink):
    """StreamingLLM-style sink: the first ``sink`` frames stay at their original RoPE positions, FIFO behind them.

    ``sink=3`` is LongLive's setting used training-free in PAPER.md App. A ("LongLive-style"); the golden trace
    ``attention_sink_3`` is the Self Forcing code at sink 3.
    """

    name: ClassVar[str] = "attention-sink"
    sink: int = 3


@dataclass
class DeepSink(_FifoWithSink):
    """Deep Sink only, as the released ``causal_model_DS.py`` (PAPER.md §3.3).

    On each roll the sink is re-aligned so its first frame presents ``f0 - tail - sink`` where ``tail`` counts the tail
    frames *including* the incoming chunk (= ``f0 - window``): the first roll sets the base (δ = 0), later rolls move it
    by one chunk. This leaves the reference's 3-frame gap between sink and tail; ``placement="adjacent"`` closes it
    (sink right before the oldest tail frame) as a named improvement.
    """

    name: ClassVar[str] = "deep-sink"
    sink: int = 14
    placement: Literal["reference", "adjacent"] = "reference"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.placement not in ("reference", "adjacent"):
            raise ValueError(f"deep-sink: placement must be 'reference' or 'adjacent', got {self.placement!r}")

    def _sink_delta(self, ctx: ChunkContext, keep: torch.Tensor) -> int:
        if self.sink == 0:
            return 0
        F = ctx.tokens_per_frame
        sink_tokens = self.sink * F
        if self.placement == "adjacent":
            return _adjacent_sink_delta(ctx, keep, sink_tokens)
        tail_frames = (keep.shape[1] - sink_tokens) // F
        desired = ctx.start_frame - tail_frames - self.sink
        base = ctx.state.get("sink_base")
        ctx.state["sink_base"] = desired
        return 0 if base is None else desired - base


def _adjacent_sink_delta(ctx: ChunkContext, keep: torch.Tensor, sink_tokens: int) -> int:
    """Delta that puts the sink's last frame right before the oldest kept non-sink frame (no gap)."""
    F = ctx.tokens_per_frame
    first_tail_slot = keep[0, sink_tokens]
    oldest_tail_position = int(ctx.positions[0, first_tail_slot])
    sink_start_now = int(ctx.positions[0, 0])
    sink_frames = sink_tokens // F
    return (oldest_tail_position - sink_frames) - sink_start_now


@dataclass
class RollingSink(_FifoWithSink):
    """Rolling-Forcing-style sink (PAPER.md App. A): the sink keys are kept un-rotated and re-placed, at every roll,
    right before the oldest frame of the window, so sink and tail form one contiguous timeline."""

    name: ClassVar[str] = "rolling-sink"
    sink: int = 3

    def _sink_delta(self, ctx: ChunkContext, keep: torch.Tensor) -> int:
        if self.sink == 0:
            return 0
        return _adjacent_sink_delta(ctx, keep, self.sink * ctx.tokens_per_frame)


# --------------------------------------------------------- Participative Compression
@dataclass
class DeepForcing(CachePolicy):
    """Deep Sink + Participative Compression with the released defaults (PAPER.md §4.2, §8).

    When a new chunk would overflow the window (first denoising step only), the augmented cache of ``T`` tokens is
    compressed to ``budget`` frames: the ``sink`` frames and the last ``recent`` frames (which include the new chunk)
    are kept; from the tokens in between, the Top-C (``C = budget - sink - recent`` frames' worth of tokens, chosen
    token by token, one selection shared by the heads of a layer) with the highest participation score (Eq. 7) are
    kept, in temporal order (Eq. 9). Tokens already picked ``reuse_cap`` times are no longer candidates. The sink is
    then re-aligned to start at ``f0 - (budget - sink) - sink``; the first compression moves it by
    ``first_shift`` (``window - budget`` in the release), later ones by the difference to the previous placement.
    Top-C keys keep their original positions unless ``topc_rope="unify"`` (the paper's Eq. 10–11, off in the release).

    Fields:
        sink: S, frames always kept at the front (10).
        budget: N, cache frames after a compression (16).
        recent: R, newest frames always kept; also the span of the query window (4).
        reuse_cap: a token can be Top-C at most this many times (7, the release's ``PC_topc_max_reuse``); None = no cap.
        queries: which recent queries score — "both" (release), "past" (clean only) or "denoising" (new chunk only).
        topc_rope: "keep" (release) or "unify" (place Top-C tokens contiguously before the recent frames).
        block_tokens: scoring block size; bounds the scoring memory.
    """

    name: ClassVar[str] = "deep-forcing"
    sink: int = 10
    budget: int = 16
    recent: int = 4
    reuse_cap: int | None = 7
    queries: QuerySet = "both"
    topc_rope: Literal["keep", "unify"] = "keep"
    block_tokens: int = DEFAULT_BLOCK_TOKENS

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("sink", self.sink, allow_zero=True)
        self._check_positive("budget", self.budget)
        self._check_positive("recent", self.recent)
        if self.reuse_cap is not None:
            self._check_positive("reuse cap", self.reuse_cap)
        if self.queries not in ("both", "past", "denoising"):
            raise ValueError(f"{self.name}: queries must be 'both', 'past' or 'denoising', got {self.queries!r}")
        if self.topc_rope not in ("keep", "unify"):
            raise ValueError(f"{self.name}: topc_rope must be 'keep' or 'unify', got {self.topc_rope!r}")
        if self.sink >= self.window:
            raise ValueError(
                f"{self.name}: sink of {self.sink} frames must be smaller than the window of {self.window}; lower --sink"
            )
        if self.budget > self.window:
            raise ValueError(
                f"{self.name}: budget of {self.budget} frames exceeds the window of {self.window}; lower --budget"
            )
        if self.budget <= self.sink + self.recent:
            raise ValueError(
                f"{self.name}: budget ({self.budget}) must exceed sink + recent ({self.sink} + {self.recent}) so that "
                f"Top-C has room; raise --budget to at least {self.sink + self.recent + 1} or lower --sink/--recent"
            )

    @property
    def topc_frames(self) -> int:
        """C in frames (token-equivalents are chosen individually)."""
        return self.budget - self.sink - self.recent

    @property
    def sink_frames(self) -> int:
        return self.sink

    @property
    def query_set(self) -> QuerySet | None:
        return self.queries

    def validate(self, chunk_frames: int) -> None:
        super().validate(chunk_frames)
        if chunk_frames > self.recent:
            raise ValueError(
                f"{self.name}: the recent region ({self.recent} frames) must cover the incoming chunk ({chunk_frames} "
                f"frames); raise --recent to at least {chunk_frames}"
            )

    def first_shift(self) -> int:
        """The release's first sink shift, ``21 - budget`` with 21 = its window (PAPER.md §3.3)."""
        return self.window - self.budget

    def scores(self, ctx: ChunkContext) -> torch.Tensor:
        """Participation scores ``[B, T]`` (Eq. 7); subclasses may replace the scoring only."""
        if ctx.query_sum is None:
            raise RuntimeError(f"{self.name}: no recent queries were recorded before the first compression")
        return participation_scores(ctx.query_sum, ctx.keys, block_tokens=self.block_tokens)

    def decide(self, ctx: ChunkContext) -> Decision:
        F = ctx.tokens_per_frame
        T = ctx.total
        if T <= self.window * F:
            return Decision()
        sink_tokens, recent_tokens = self.sink * F, self.recent * F
        protected = torch.zeros(T, dtype=torch.bool, device=ctx.keys.device)
        protected[:sink_tokens] = True
        protected[T - recent_tokens :] = True
        scores = self.scores(ctx).masked_fill(protected, float("-inf"))
        allowed = ~protected.expand_as(scores)
        if self.reuse_cap is not None:
            allowed = allowed & (ctx.reuse < self.reuse_cap)
        available = int(allowed.sum(dim=1).min())
        c = min(self.topc_frames * F, available)
        picks = scores.masked_fill(~allowed, float("-inf")).topk(c, dim=1).indices.sort(dim=1).values
        keep = torch.cat([_arange(0, sink_tokens, picks), picks, _arange(T - recent_tokens, T, picks)], dim=1)

        # Deep Sink re-alignment of the compressed cache (PAPER.md §3.3, DS+PC).
        tail_frames = (keep.shape[1] - sink_tokens) // F
        desired = ctx.start_frame - tail_frames - self.sink
        base = ctx.state.get("sink_base")
        delta = self.first_shift() if base is None else desired - base
        ctx.state["sink_base"] = desired

        topc_positions = None
        if self.topc_rope == "unify":
            topc_positions = self._unified_positions(ctx, picks, T - recent_tokens)
        return Decision(
            keep=keep,
            selected=picks,
            sink_delta=delta if self.sink else 0,
            topc_positions=topc_positions,
            scores=scores,
            event="compress",
        )

    def _unified_positions(self, ctx: ChunkContext, picks: torch.Tensor, recent_start_slot: int) -> torch.Tensor:
        """Eq. 10–11 option: Top-C tokens presented in the frames right before the recent region, one position per
        distinct source frame, keeping their temporal order."""
        frames = ctx.token_ids.gather(1, picks).div(ctx.tokens_per_frame, rounding_mode="floor")
        recent_start = ctx.positions[:, recent_start_slot : recent_start_slot + 1]
        out = torch.empty_like(frames)
        for b in range(frames.shape[0]):
            distinct, rank = torch.unique(frames[b], sorted=True, return_inverse=True)
            out[b] = recent_start[b] - distinct.numel() + rank
        return out


@dataclass
class RandomTopC(DeepForcing):
    """Participative Compression with Gaussian N(0, 1) scores instead of q·k (PAPER.md App. D ablation)."""

    name: ClassVar[str] = "random-topc"

    def scores(self, ctx: ChunkContext) -> torch.Tensor:
        b, t = ctx.token_ids.shape
        return torch.randn(b, t, generator=ctx.generator, device="cpu").to(ctx.keys.device)

    @property
    def query_set(self) -> QuerySet | None:
        return None


@dataclass
class FullCache(CachePolicy):
    """Never evict: every frame stays at its true position. Memory grows with the video; inside the training horizon
    this is exactly block-causal attention."""

    name: ClassVar[str] = "full"

    @property
    def bounded(self) -> bool:
        return False

    def validate(self, chunk_frames: int) -> None:
        self._check_positive("chunk", chunk_frames)

    def decide(self, ctx: ChunkContext) -> Decision:
        return Decision()


POLICIES: dict[str, type[CachePolicy]] = {
    cls.name: cls for cls in (SelfForcing, AttentionSink, RollingSink, DeepSink, DeepForcing, RandomTopC, FullCache)
}


def policy_names() -> list[str]:
    return list(POLICIES)


def make_policy(name: str, **sizes) -> CachePolicy:
    """Build a policy by its CLI name; ``sizes`` set its fields (``None`` values are ignored = defaults).

    Unknown names or fields raise ``ValueError`` listing what exists.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in POLICIES:
        raise ValueError(f"unknown cache policy {name!r}; choose one of: {', '.join(POLICIES)}")
    cls = POLICIES[key]
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in sizes.items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(
            f"policy {key!r} has no option {', '.join(unknown)}; its options are: {', '.join(sorted(fields))}"
        )
    return cls(**given)
