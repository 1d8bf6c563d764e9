"""TriAttention for LongLive (arXiv 2604.04921; release ``WeianMao/triattention`` @ c3744ee, ``longlive/
kv_compression.py`` ``LongLiveKVCompressor`` in ``layer_perhead`` mode, wired by ``longlive/patches.py``; defaults
``longlive/configs/triattention_120f.yaml``).

LongLive's sink cache (``window`` frames, ``sink`` frames pinned, FIFO behind; post-RoPE keys) that, after a chunk's
clean pass and at most every ``compress_every`` frames, compresses every (layer, head) on its own once the cache holds
more than ``budget`` frames: it keeps the sink, the last ``keep_last`` frames and, from the tokens between, the
``budget - sink - keep_last`` frames' worth with the best trigonometric score (:mod:`.triattention_score`: calibrated
query centres against each key at geometric future offsets), so heads keep equally many but different tokens. The
compression happens here at the next chunk's first call, before its attention — the same point in the stream.

Head groups: one group per head, all packed into one attention call (equal key counts). The scores need the
checkpoint's calibration statistics (``--calibration PATH``, the release's file format; make one with
``deepforcing calibrate --policy triattention``).

Release facts kept as they are: the tie-break noise comes from one generator seeded once per video and is drawn per
(layer, head) in order; RoPE is inverted at tail-anchored positions (see :func:`.triattention_score.tail_positions`);
the sink is always protected (``kv_protect_sink: true``). With the 120f defaults the budget (6 frames) is exactly
sink (3) + keep-last (3), so nothing is scored: the cache is the sink and the last chunk (LongLive's sink cache with
a 9-frame window); ``--sink 1`` (``configs/triattention_interactive.yaml``) leaves 2 frames' worth to the score.
Not implemented: ``kv_pruning_mode: perhead`` (one token set per head shared by all layers) and the interactive
pipeline's forced compression after a prompt-switch re-cache (prompt switches and scene cuts are refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from .base import ChunkContext, Decision, HeadGroup
from .options import option
from .policies import FifoSelector
from .registry import register_policy
from .triattention_score import geometric_offsets, standardise, tail_positions, trig_scores
from .triattention_stats import CalibrationError, QueryCentres, load_query_centres

__all__ = ["TriAttention"]

PACK = "triattention"


@register_policy
@dataclass
class TriAttention(FifoSelector):
    """TriAttention (LongLive): per-(layer, head) token sets at a fixed budget chosen by a calibrated trigonometric
    score of future attention, sink and last frames protected (module doc)."""

    name: ClassVar[str] = "triattention"
    source: ClassVar[str] = ("arXiv 2604.04921; WeianMao/triattention@c3744ee longlive/kv_compression.py "
                             "(configs/triattention_120f.yaml)")
    window: int = 12
    sink: int = 3
    budget: int = option(6, "triattention: frames each (layer, head) keeps when it compresses (the release's "
                            "kv_budget_tokens, 6 frames of the 1.3B's tokens); must be below the window")
    keep_last: int = option(3, "triattention: newest frames never evicted (kv_keep_last_frames)")
    compress_every: int = option(3, "triattention: compress at most every this many frames (kv_compress_every_n_frames)")
    offset_max: int = option(128, "triattention: largest future frame offset scored (geometric 1, 2, 4, ...)")
    aggregation: Literal["mean", "max"] = option("mean", "triattention: score over the future offsets (mean or max)")
    normalize: bool = option(True, "triattention: standardise each (layer, head)'s scores before ranking")
    tie_noise: float = option(1e-6, "triattention: tie-break noise scale added to the scores (0 = none)")
    tie_seed: int = option(0, "triattention: seed of the tie-break noise generator, once per video (kv_random_seed)")
    calibration: str | None = option(None, "triattention: calibration statistics of the checkpoint (.pt, the "
                                           "release's format; deepforcing calibrate --policy triattention)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("budget", self.budget)
        self._check_positive("keep_last", self.keep_last, allow_zero=True)
        self._check_positive("compress_every", self.compress_every)
        self._check_positive("offset_max", self.offset_max)
        if self.aggregation not in ("mean", "max"):
            raise ValueError(f"triattention: --aggregation must be mean or max, got {self.aggregation!r}")
        if not isinstance(self.tie_noise, (int, float)) or self.tie_noise < 0:
            raise ValueError(f"triattention: --tie-noise must be >= 0, got {self.tie_noise!r}")
        if self.budget >= self.window:
            raise ValueError(f"triattention: budget ({self.budget}) must be below the window ({self.window}), else "
                             f"nothing is ever compressed; lower --budget or raise --window")
        self._centres: QueryCentres | None = None
        if self.calibration is not None:
            self._centres = load_query_centres(self.calibration)  # missing or malformed: refused here

    # ------------------------------------------------------------ description
    @property
    def scored_frames(self) -> int:
        """Frames' worth of tokens each (layer, head) chooses by score at a compression."""
        return max(0, self.budget - self.sink - self.keep_last)

    @property
    def layout(self) -> dict[str, int | None]:
        """After a compression and the next chunk (compressing every chunk): sink, scored picks, the rest."""
        held = min(self.window, self.budget + self.compress_every)
        return {"sink": self.sink, "kept": self.scored_frames, "memory": 0,
                "recent": held - self.sink - self.scored_frames}

    def validate_model(self, num_layers: int, num_heads: int) -> None:
        """Refuse before any weights load (:class:`CalibrationError`, a ``ValueError``) when the calibration is
        missing (the release loads it in compress mode whatever the budget) or made for another number of layers
        or heads; the head size is checked when the cache meets the model (:meth:`head_groups`)."""
        if self._centres is None:
            raise CalibrationError(
                "triattention needs the checkpoint's calibration statistics: --calibration PATH (LongLive 1.3B: the "
                "release's longlive/assets/calibration_stats_81f.pt; another checkpoint: deepforcing calibrate "
                "--policy triattention)")
        self._centres.check(layers=num_layers, heads=num_heads, source=str(self.calibration))

    def validate_event(self, kind: str, chunk_frames: int) -> None:
        raise ValueError(f"triattention: a {kind} is not supported (the release's interactive pipeline force-"
                         f"compresses after its re-cache, which is not reproduced); use one prompt")

    # ------------------------------------------------------------------ hooks
    def head_groups(self, layer) -> tuple[HeadGroup, ...]:
        """One group per head (packed into one attention call), each holding at most its compression bound."""
        owner = layer.owner
        if "triattention" not in owner.state:  # once per video, before any compression draws noise
            if self._centres is not None:
                self._centres.check(layers=len(owner.layers), heads=owner.heads, head_dim=layer.store.keys.shape[-1],
                                    source=str(self.calibration))
            owner.generator.manual_seed(self.tie_seed)
            # the token grid's width, to split a token's spatial index into row and column (a rope without a grid,
            # as plan's, counts the frame as one row)
            width = getattr(owner.call.rope, "width", owner.geometry.tokens_per_frame)
            owner.state["triattention"] = {"grid_width": int(width)}
        chunk = owner.geometry.chunk_frames
        held = min(self.window, self.budget + -(-self.compress_every // chunk) * chunk)
        return tuple(HeadGroup(f"head {h}", (h,), window=max(held, self.sink + chunk), sink_frames=self.sink,
                               pack=PACK) for h in range(owner.heads))

    def decide_group(self, ctx: ChunkContext) -> Decision:
        """Compress the cache before the new chunk when due (the release's ``maybe_compress`` after the previous
        clean pass), then roll FIFO behind the sink if the window still overflows."""
        F = ctx.tokens_per_frame
        before, end_frame = ctx.length_before, ctx.start_frame
        due = end_frame - ctx.state.get("last_compressed", 0) >= self.compress_every and before > self.budget * F
        if not due:
            return self._roll(ctx, torch.arange(ctx.total, device=ctx.token_ids.device), "append")
        old, picks = [], []
        for b in range(ctx.keys.shape[0]):
            keep, picked = self._compress_row(ctx, b)
            old.append(keep)
            picks.append(picked)
        ctx.state["last_compressed"] = end_frame
        new = torch.arange(before, ctx.total, device=ctx.token_ids.device)
        decision = self._roll(ctx, torch.cat([torch.stack(old), new.expand(len(old), -1)], dim=1), "compress")
        if picks[0].numel():
            decision.selected = torch.stack(picks)
        return decision

    # --------------------------------------------------------------- internals
    def _roll(self, ctx: ChunkContext, keep: torch.Tensor, event: str) -> Decision:
        """``keep`` (``[K]`` or ``[B, K]`` slots) less the oldest non-sink slots that overflow the window."""
        keep = keep.expand(ctx.token_ids.shape[0], -1) if keep.dim() == 1 else keep
        sink = min(self.sink * ctx.tokens_per_frame, keep.shape[1])
        overflow = keep.shape[1] - self.window * ctx.tokens_per_frame
        if overflow > 0:
            keep = torch.cat([keep[:, :sink], keep[:, sink + overflow:]], dim=1)
            event = "roll" if event == "append" else event
        if event == "append":
            return Decision()
        return Decision(keep=keep.contiguous(), event=event)

    def _compress_row(self, ctx: ChunkContext, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots of ``[0, length_before)`` batch row ``b`` keeps, and the scored picks among them (the release's
        ``_compress_layer_perhead`` for this group's head)."""
        F, seq = ctx.tokens_per_frame, ctx.length_before
        device = ctx.token_ids.device
        keep_count = min(self.budget * F, seq)
        keep_last = min(keep_count, self.keep_last * F)
        sink = min(self.sink * F, seq)
        if sink + keep_last > keep_count:
            keep_last = max(0, keep_count - sink)
        dynamic_len, dynamic_keep = max(0, seq - keep_last - sink), max(0, keep_count - keep_last - sink)
        picks = torch.empty(0, dtype=torch.long, device=device)
        if dynamic_keep > 0 and dynamic_len > 0:
            scores = self._scores(ctx, b, sink, dynamic_len)
            picks = torch.sort(torch.topk(scores[0], k=dynamic_keep, largest=True).indices + sink).values
        keep = torch.cat([torch.arange(sink, device=device), picks, torch.arange(seq - keep_last, seq, device=device)])
        return torch.sort(keep).values, picks

    def _scores(self, ctx: ChunkContext, b: int, start: int, length: int) -> torch.Tensor:
        if self._centres is None:
            raise CalibrationError("triattention needs --calibration PATH to score tokens (deepforcing calibrate "
                                   "--policy triattention makes one)")
        F = ctx.tokens_per_frame
        heads = list(ctx.group.heads) if ctx.group is not None else list(range(ctx.keys.shape[1]))
        positions = tail_positions(ctx.length_before, ctx.start_frame * F, self.sink * F, ctx.keys.device)
        positions = positions[start:start + length]
        scores = trig_scores(ctx.keys[b, :, start:start + length], positions,
                             self._centres.mean[ctx.layer, heads], self._centres.abs_mean[ctx.layer, heads],
                             end_frame=ctx.start_frame, tokens_per_frame=F,
                             grid_width=ctx.shared["triattention"]["grid_width"],
                             offsets=geometric_offsets(self.offset_max, ctx.keys.device), aggregation=self.aggregation)
        return standardise(scores, normalize=self.normalize, noise_scale=self.tie_noise or None,
                           generator=ctx.generator)
