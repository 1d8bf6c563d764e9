"""KV-cache policies: pure decisions about which tokens stay and which temporal position each presents.

A policy is a dataclass whose fields are exactly its options, all in **latent frames**; tokens per frame come from
the model geometry (:class:`ChunkContext`). When a new chunk arrives, the cache writes its tokens after the current
content (the "augmented" sequence of length ``T``) and asks the policy for a :class:`Decision`: the slots to keep,
the Top-C selections to count, and how far to move the sink. The contract and the other hooks (pre-RoPE storage,
query positions, archived or synthesized tokens, stream events) are in :mod:`deepforcing.cache.base`.

Every policy is a **selector** (:class:`FifoSelector`, :class:`TopCSelector` with a score: participation or random)
times a **sink placement** (:func:`sink_shift`: fixed, Deep Sink's re-alignment, adjacent), in the manner of NVIDIA
kvpress's presses. Sections (§) and equations refer to arXiv 2512.05081 (Deep Forcing); file names to its release.

===================  ==========================================================================  ==================
name                 behaviour                                                                   source
===================  ==========================================================================  ==================
``self-forcing``     FIFO window of ``window`` frames, no sink                                   Self Forcing
``attention-sink``   first ``sink`` frames kept at their original positions, FIFO tail           StreamingLLM; App. A
``rolling-forcing-   sink re-placed right before the oldest tail frame at every roll (old name:  Rolling Forcing; A
sink``               ``rolling-sink``; not the 2026 Rolling Sink method, arXiv 2602.07775)
``deep-sink``        deep sink (≈ half the window), re-aligned as the released DS-only code      §4.2
``deep-forcing``     Deep Sink + Participative Compression, released defaults                    §4.2-4.3
``random-topc``      ``deep-forcing`` with N(0, 1) scores                                        App. D
``full``             never evict (memory grows; reference inside the training horizon)           —
===================  ==========================================================================  ==================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from .base import (REGIONS, CachePolicy, ChunkContext, Decision, QuerySet, SinkPlacement, StreamEvent, Write,
                   _arange, sink_shift)
from .options import option
from .registry import POLICIES, make_policy, policy_names, register_policy
from .scoring import DEFAULT_BLOCK_TOKENS, participation_scores

__all__ = [
    "ChunkContext",
    "Decision",
    "CachePolicy",
    "REGIONS",
    "StreamEvent",
    "Write",
    "FifoSelector",
    "TopCSelector",
    "SelfForcing",
    "AttentionSink",
    "RollingForcingSink",
    "DeepSink",
    "DeepForcing",
    "RandomTopC",
    "FullCache",
    "POLICIES",
    "make_policy",
    "policy_names",
    "register_policy",
    "sink_shift",
]

# ------------------------------------------------------------------ selectors
@dataclass
class FifoSelector(CachePolicy):
    """Selector: FIFO behind the sink. An overflowing chunk evicts exactly the overflow, oldest non-sink tokens
    first, so the cache stays at ``window`` frames (Self Forcing's rolling KV cache, release ``causal_model.py``)."""

    sink: int = option(0, "sink size S in latent frames")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_sink(self.sink)

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

    def select(self, ctx: ChunkContext) -> Decision:
        sink_tokens = self.sink * ctx.tokens_per_frame
        overflow = ctx.total - self.window * ctx.tokens_per_frame
        keep = torch.cat([_arange(0, sink_tokens, ctx.token_ids), _arange(sink_tokens + overflow, ctx.total, ctx.token_ids)], 1)
        return Decision(keep=keep, event="roll")


@dataclass
class TopCSelector(CachePolicy):
    """Selector: Participative Compression (arXiv 2512.05081 §4.3). The augmented cache of ``T`` tokens is
    compressed to ``budget`` frames: ``sink`` frames and the last ``recent`` frames (which include the new chunk) are
    kept; of the tokens in between, the Top-C (``C = budget - sink - recent`` frames' worth, chosen token by token,
    one selection shared by a layer's heads) with the highest :meth:`scores` stay, in temporal order (Eq. 9).
    Tokens already picked ``reuse_cap`` times are no longer candidates (the release's ``PC_topc_max_reuse``).
    ``topc_rope="unify"`` presents the picks contiguously before the recent frames (Eq. 10-11; off in the release).
    """

    sink: int = option(10, "sink size S in latent frames")
    budget: int = option(16, "Participative Compression budget N (frames kept after a compression)")
    recent: int = option(4, "recent frames R always kept (and the span of the scoring queries)")
    reuse_cap: int | None = option(7, "max times a token may be picked as Top-C (release: 7)")
    queries: QuerySet = option("both", "queries that score Top-C (release: both)")
    topc_rope: Literal["keep", "unify"] = option(
        "keep", "Top-C temporal RoPE: keep original positions (release) or unify (paper Eq. 10-11)")
    block_tokens: int = option(DEFAULT_BLOCK_TOKENS, "keys scored per block (memory bound)", expose=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_sink(self.sink)
        self._check_positive("budget", self.budget)
        self._check_positive("recent", self.recent)
        if self.reuse_cap is not None:
            self._check_positive("reuse cap", self.reuse_cap)
        if self.queries not in ("both", "past", "denoising"):
            raise ValueError(f"{self.name}: queries must be 'both', 'past' or 'denoising', got {self.queries!r}")
        if self.topc_rope not in ("keep", "unify"):
            raise ValueError(f"{self.name}: topc_rope must be 'keep' or 'unify', got {self.topc_rope!r}")
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

    @property
    def query_frames(self) -> int:
        return self.recent

    @property
    def layout(self) -> dict[str, int | None]:
        return {"sink": self.sink, "kept": self.topc_frames, "memory": 0, "recent": self.recent}

    def validate(self, chunk_frames: int) -> None:
        super().validate(chunk_frames)
        if chunk_frames > self.recent:
            raise ValueError(
                f"{self.name}: the recent region ({self.recent} frames) must cover the incoming chunk ({chunk_frames} "
                f"frames); raise --recent to at least {chunk_frames}"
            )

    def scores(self, ctx: ChunkContext) -> torch.Tensor:
        """Importance of each slot ``[B, T]``; the one thing a Top-C variant overrides."""
        raise NotImplementedError

    def select(self, ctx: ChunkContext) -> Decision:
        F, T = ctx.tokens_per_frame, ctx.total
        sink_tokens, recent_tokens = self.sink * F, self.recent * F
        protected = torch.zeros(T, dtype=torch.bool, device=ctx.keys.device)
        protected[:sink_tokens] = True
        protected[T - recent_tokens :] = True
        scores = self.scores(ctx).masked_fill(protected, float("-inf"))
        allowed = ~protected.expand_as(scores)
        if self.reuse_cap is not None:
            allowed = allowed & (ctx.reuse < self.reuse_cap)
        c = min(self.topc_frames * F, int(allowed.sum(dim=1).min()))
        picks = scores.masked_fill(~allowed, float("-inf")).topk(c, dim=1).indices.sort(dim=1).values
        keep = torch.cat([_arange(0, sink_tokens, picks), picks, _arange(T - recent_tokens, T, picks)], dim=1)
        unified = self._unified_positions(ctx, picks, T - recent_tokens) if self.topc_rope == "unify" else None
        return Decision(keep=keep, selected=picks, topc_positions=unified, scores=scores, event="compress")

    def _unified_positions(self, ctx: ChunkContext, picks: torch.Tensor, recent_start_slot: int) -> torch.Tensor:
        """Eq. 10-11 option: the picks presented in the frames right before the recent region, one position per
        distinct source frame, keeping their temporal order."""
        frames = ctx.token_ids.gather(1, picks).div(ctx.tokens_per_frame, rounding_mode="floor")
        recent_start = ctx.positions[:, recent_start_slot : recent_start_slot + 1]
        out = torch.empty_like(frames)
        for b in range(frames.shape[0]):
            distinct, rank = torch.unique(frames[b], sorted=True, return_inverse=True)
            out[b] = recent_start[b] - distinct.numel() + rank
        return out


# ------------------------------------------------------------- named policies
@register_policy
@dataclass
class SelfForcing(FifoSelector):
    """Self Forcing's rolling KV cache: FIFO over ``window`` frames, no sink, no RoPE change."""

    name: ClassVar[str] = "self-forcing"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sink != 0:
            raise ValueError("self-forcing has no sink; use --policy attention-sink or deep-sink for a sink")


@register_policy
@dataclass
class AttentionSink(FifoSelector):
    """StreamingLLM's attention sink: the first ``sink`` frames stay at their original RoPE positions, FIFO behind.
    ``sink=3`` is LongLive's setting, run training-free as a baseline in arXiv 2512.05081 (App. A)."""

    name: ClassVar[str] = "attention-sink"
    sink: int = 3


@register_policy
@dataclass
class RollingForcingSink(FifoSelector):
    """Rolling Forcing's sink, run training-free (arXiv 2512.05081 App. A): the sink is re-placed at every roll right
    before the oldest frame of the window, one contiguous timeline. The same cache as ``deep-sink`` with
    ``placement="adjacent"`` at the same sink size (an alias with a shallow default sink, 3).

    Its old name ``rolling-sink`` still works; it is *not* the 2026 Rolling Sink method (arXiv 2602.07775, which
    replays an archive of the first window)."""

    name: ClassVar[str] = "rolling-forcing-sink"
    aliases: ClassVar[tuple[str, ...]] = ("rolling-sink",)
    sink: int = 3

    def sink_placement(self) -> SinkPlacement:
        return "adjacent"


@register_policy
@dataclass
class DeepSink(FifoSelector):
    """Deep Sink alone (arXiv 2512.05081 §4.2; release ``causal_model_DS.py``): a deep sink (about half the window)
    re-aligned at every roll. The release leaves a 3-frame gap between sink and tail; ``placement="adjacent"``
    closes it (a named improvement — the ``rolling-forcing-sink`` placement with a deep sink)."""

    name: ClassVar[str] = "deep-sink"
    sink: int = 14
    placement: Literal["reference", "adjacent"] = option(
        "reference", "deep-sink: the release's placement (3-frame gap) or adjacent to the tail", flag="sink-placement")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.placement not in ("reference", "adjacent"):
            raise ValueError(f"deep-sink: placement must be 'reference' or 'adjacent', got {self.placement!r}")

    def sink_placement(self) -> SinkPlacement:
        return "deep" if self.placement == "reference" else "adjacent"


@register_policy
@dataclass
class DeepForcing(TopCSelector):
    """Deep Forcing (arXiv 2512.05081 §4): Deep Sink + Participative Compression, the release's defaults (sink 10,
    budget 16, recent 4, reuse cap 7). Scores are participation, Eq. 7: the recent queries' summed attention logits
    on each key. At the first compression the sink moves by ``window - budget`` (the release's first shift)."""

    name: ClassVar[str] = "deep-forcing"

    def scores(self, ctx: ChunkContext) -> torch.Tensor:
        if ctx.query_sum is None:
            raise RuntimeError(f"{self.name}: no recent queries were recorded before the first compression")
        return participation_scores(ctx.query_sum, ctx.keys, block_tokens=self.block_tokens)

    def sink_placement(self) -> SinkPlacement:
        return "deep"

    def first_shift(self) -> int:
        return self.window - self.budget


@register_policy
@dataclass
class RandomTopC(DeepForcing):
    """Participative Compression with Gaussian N(0, 1) scores instead of participation (arXiv 2512.05081 App. D)."""

    name: ClassVar[str] = "random-topc"

    def scores(self, ctx: ChunkContext) -> torch.Tensor:
        b, t = ctx.token_ids.shape
        return torch.randn(b, t, generator=ctx.generator, device="cpu").to(ctx.keys.device)

    @property
    def query_set(self) -> QuerySet | None:
        return None


@register_policy
@dataclass
class FullCache(CachePolicy):
    """Never evict: every frame stays at its true position. Memory grows with the video; inside the training horizon
    this is exactly block-causal attention."""

    name: ClassVar[str] = "full"

    @property
    def bounded(self) -> bool:
        return False

    @property
    def layout(self) -> dict[str, int | None]:
        return {"sink": 0, "kept": 0, "memory": 0, "recent": None}

    def validate(self, chunk_frames: int) -> None:
        self._check_positive("chunk", chunk_frames)

    def decide(self, ctx: ChunkContext) -> Decision:
        return Decision()
