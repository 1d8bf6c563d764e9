"""KV-cache policies: pure decisions about which tokens stay and which temporal position each presents.

A policy is a dataclass whose fields are exactly its hyper-parameters, all in **latent frames**; tokens per frame come
from the model geometry (:class:`ChunkContext`). When a new chunk arrives, the cache writes its tokens after the
current content (the "augmented" sequence of length ``T``) and asks the policy for a :class:`Decision`: the slots to
keep, the Top-C selections to count, and how far to move the sink. Policies never touch keys or do attention math.

Every policy is a **selector** (:class:`FifoSelector`, :class:`TopCSelector` with a score: participation or random)
times a **sink placement** (:func:`sink_shift`: fixed, Deep Sink's re-alignment, adjacent), in the manner of NVIDIA
kvpress's presses. Sections (§) and equations refer to arXiv 2512.05081 (Deep Forcing); file names to its release.

===================  ==========================================================================  ==================
name                 behaviour                                                                   source
===================  ==========================================================================  ==================
``self-forcing``     FIFO window of ``window`` frames, no sink                                   Self Forcing
``attention-sink``   first ``sink`` frames kept at their original positions, FIFO tail           StreamingLLM; App. A
``rolling-sink``     sink re-placed right before the oldest tail frame at every roll             Rolling Forcing; A
``deep-sink``        deep sink (≈ half the window), re-aligned as the released DS-only code      §4.2
``deep-forcing``     Deep Sink + Participative Compression, released defaults                    §4.2-4.3
``random-topc``      ``deep-forcing`` with N(0, 1) scores                                        App. D
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


SinkPlacement = Literal["fixed", "deep", "adjacent"]


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
    selector times a placement plus its defaults. ``window`` is the attention window in latent frames (Self Forcing:
    its training length).
    """

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
        if ctx.total <= self.window * ctx.tokens_per_frame:
            return Decision()
        decision = self.select(ctx)
        decision.sink_delta = sink_shift(self.sink_placement(), ctx, decision.keep, self.sink_frames,
                                         self.first_shift())
        return decision

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

    def describe(self) -> dict:
        return {"policy": self.name, **dataclasses.asdict(self)}


# ------------------------------------------------------------------ selectors
@dataclass
class FifoSelector(CachePolicy):
    """Selector: FIFO behind the sink. An overflowing chunk evicts exactly the overflow, oldest non-sink tokens
    first, so the cache stays at ``window`` frames (Self Forcing's rolling KV cache, release ``causal_model.py``)."""

    sink: int = 0

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

    sink: int = 10
    budget: int = 16
    recent: int = 4
    reuse_cap: int | None = 7
    queries: QuerySet = "both"
    topc_rope: Literal["keep", "unify"] = "keep"
    block_tokens: int = DEFAULT_BLOCK_TOKENS

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
@dataclass
class SelfForcing(FifoSelector):
    """Self Forcing's rolling KV cache: FIFO over ``window`` frames, no sink, no RoPE change."""

    name: ClassVar[str] = "self-forcing"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sink != 0:
            raise ValueError("self-forcing has no sink; use --policy attention-sink or deep-sink for a sink")


@dataclass
class AttentionSink(FifoSelector):
    """StreamingLLM's attention sink: the first ``sink`` frames stay at their original RoPE positions, FIFO behind.
    ``sink=3`` is LongLive's setting, run training-free as a baseline in arXiv 2512.05081 (App. A)."""

    name: ClassVar[str] = "attention-sink"
    sink: int = 3


@dataclass
class DeepSink(FifoSelector):
    """Deep Sink alone (arXiv 2512.05081 §4.2; release ``causal_model_DS.py``): a deep sink (about half the window)
    re-aligned at every roll. The release leaves a 3-frame gap between sink and tail; ``placement="adjacent"``
    closes it (a named improvement — the ``rolling-sink`` placement with a deep sink)."""

    name: ClassVar[str] = "deep-sink"
    sink: int = 14
    placement: Literal["reference", "adjacent"] = "reference"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.placement not in ("reference", "adjacent"):
            raise ValueError(f"deep-sink: placement must be 'reference' or 'adjacent', got {self.placement!r}")

    def sink_placement(self) -> SinkPlacement:
        return "deep" if self.placement == "reference" else "adjacent"


@dataclass
class RollingSink(FifoSelector):
    """Rolling Forcing's sink, run training-free (arXiv 2512.05081 App. A): the sink is re-placed at every roll right
    before the oldest frame of the window, one contiguous timeline. The same cache as ``deep-sink`` with
    ``placement="adjacent"`` at the same sink size (an alias with a shallow default sink, 3)."""

    name: ClassVar[str] = "rolling-sink"
    sink: int = 3

    def sink_placement(self) -> SinkPlacement:
        return "adjacent"


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
