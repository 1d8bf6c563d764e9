"""Dry-run a policy without a model: what the cache holds after every chunk, and the positions it presents.

The simulation drives the real :class:`~deepforcing.cache.KVCache` (same code path as generation,
:meth:`~deepforcing.cache.session.LayerCache.attention` with a temporal-only rotary embedding) with random
queries/keys for one layer, one head (``GROUP_LAYERS`` x ``GROUP_HEADS`` for a policy with head groups): a
new-chunk call (the first denoising step) and a clean pass per chunk. Frame counts do not depend on the random
values; for score-based policies, *which* tokens Top-C keeps does, and for a per-head policy which heads fall in
which group. The regions
(sink / kept / memory / recent) are the policy's own description of its slots (:meth:`CachePolicy.regions`), per
head group when the policy splits the heads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .base import KEPT, MEMORY, RECENT, SINK, CachePolicy
from .rope import TemporalCallRope, TemporalRope
from .session import CacheGeometry, KVCache

__all__ = ["ChunkReport", "simulate", "GROUP_HEADS"]

GROUP_HEADS, GROUP_LAYERS = 4, 2
"""Heads and layers simulated for a policy with head groups (one of each otherwise); the last layer is reported (a
policy may keep layer 0 whole, as Forcing-KV does)."""


@dataclass
class ChunkReport:
    chunk: int
    start_frame: int
    event: str
    cache_frames: float
    sink_frames: float
    topc_frames: float  # the "kept" region: Top-C picks, re-inserted archive tokens
    recent_frames: float
    sink_positions: list[int] | None  # [first, last] temporal positions presented by the sink
    topc_positions: list[int] | None  # [min, max] positions presented by kept tokens
    recent_positions: list[int] | None  # [min, max] positions presented by the recent tail
    sink_delta: int
    memory_frames: float = 0.0  # synthesized memory tokens
    memory_positions: list[int] | None = None
    groups: list[dict] | None = None  # head groups (a per-head policy): name, heads and the fields above per group;
    # the frames above are then the heads' mean (each group weighted by its heads) and the spans their union

    def to_dict(self) -> dict:
        row = asdict(self)
        if row["groups"] is None:  # a policy without head groups: the row it always was
            del row["groups"]
        return row


def _span(values: torch.Tensor) -> list[int] | None:
    return [int(values.min()), int(values.max())] if values.numel() else None


def _union(spans: list[list[int] | None]) -> list[int] | None:
    spans = [s for s in spans if s is not None]
    return [min(s[0] for s in spans), max(s[1] for s in spans)] if spans else None


_FIELDS = ("sink", "topc", "memory", "recent")  # ChunkReport's names of the regions SINK, KEPT, MEMORY, RECENT


def _regions(policy: CachePolicy, view, tokens_per_frame: int) -> dict:
    """Frames and presented-position spans per region of one store (a layer, or one head group of it)."""
    store = view.store
    regions = policy.regions(view)[0]
    read_at = policy.key_positions(view) if store.pre_rope else None  # pre-RoPE: where the read rotates
    pos = (store.positions if read_at is None else read_at)[0, : store.length]
    out: dict = {"cache_frames": store.length / tokens_per_frame}
    for name, code in zip(_FIELDS, (SINK, KEPT, MEMORY, RECENT)):
        mask = regions == code
        out[f"{name}_frames"] = int(mask.sum()) / tokens_per_frame
        out[f"{name}_positions"] = _span(pos[mask])
    return out


def _head_mean(groups: list[dict], heads: int) -> dict:
    """One row for a split layer: frames averaged over heads (each group weighted by its heads), spans united."""
    row = {"cache_frames": sum(g["cache_frames"] * g["heads"] for g in groups) / heads}
    for name in _FIELDS:
        row[f"{name}_frames"] = sum(g[f"{name}_frames"] * g["heads"] for g in groups) / heads
        row[f"{name}_positions"] = _union([g[f"{name}_positions"] for g in groups])
    return row


def simulate(
    policy: CachePolicy,
    chunks: int,
    *,
    chunk_frames: int = 3,
    tokens_per_frame: int = 4,
    seed: int = 0,
) -> list[ChunkReport]:
    """Run ``chunks`` chunks through ``policy`` and report the cache after each chunk's clean pass. A policy with
    head groups (:meth:`CachePolicy.head_groups`) runs with ``GROUP_HEADS`` heads in ``GROUP_LAYERS`` layers and
    reports each group of the last; which heads fall in which group depends on the random queries and keys, as
    Top-C's picks do."""
    if chunks <= 0:
        raise ValueError(f"--chunks must be positive, got {chunks}")
    geometry = CacheGeometry(tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames)
    grouped = type(policy).head_groups is not CachePolicy.head_groups
    (heads, layers), head_dim = ((GROUP_HEADS, GROUP_LAYERS) if grouped else (1, 1)), 8
    rope = TemporalRope(pairs=2)
    cache = KVCache(
        policy, geometry, num_layers=layers, batch=1, heads=heads, head_dim=head_dim,
        rope=rope, seed=seed, record_events=True,
    )
    gen = torch.Generator().manual_seed(seed)
    n = geometry.chunk_tokens
    layer = cache.layers[-1]
    reports = []
    for i in range(chunks):
        f0 = i * chunk_frames
        events_before = len(cache.events)
        for clean in (False, True):
            cache.begin_call(f0, chunk_frames, clean=clean, rope=TemporalCallRope(rope, f0, tokens_per_frame))
            for each in cache.layers:
                q, k, v = (torch.randn(1, heads, n, head_dim, generator=gen) for _ in range(3))
                each.attention(q, k, v, F.scaled_dot_product_attention)
        cache.settle()
        event = next((e for e in cache.events[events_before:] if e.layer == layer.index), None)
        if layer.groups:
            groups = [{"group": view.group.name, "heads": len(view.group.heads),
                       **_regions(policy, view, tokens_per_frame)} for view in layer.groups]
            row = _head_mean(groups, heads)
        else:
            groups, row = None, _regions(policy, layer, tokens_per_frame)
        reports.append(
            ChunkReport(
                chunk=i,
                start_frame=f0,
                event=event.kind if event else "append",
                cache_frames=row["cache_frames"],
                sink_frames=row["sink_frames"],
                topc_frames=row["topc_frames"],
                recent_frames=row["recent_frames"],
                sink_positions=row["sink_positions"],
                topc_positions=row["topc_positions"],
                recent_positions=row["recent_positions"],
                sink_delta=event.decision.sink_delta if event else 0,
                memory_frames=row["memory_frames"],
                memory_positions=row["memory_positions"],
                groups=groups,
            )
        )
    return reports
