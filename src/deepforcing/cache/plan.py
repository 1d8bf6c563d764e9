"""Dry-run a policy without a model: what the cache holds after every chunk, and the positions it presents.

The simulation drives the real :class:`~deepforcing.cache.KVCache` (same code path as generation,
:meth:`~deepforcing.cache.session.LayerCache.attend` with a temporal-only rotary embedding) with random
queries/keys for one layer, one head: a new-chunk call (the first denoising step) and a clean pass per chunk. Frame
counts do not depend on the random values; for score-based policies, *which* tokens Top-C keeps does. The regions
(sink / kept / memory / recent) are the policy's own description of its slots (:meth:`CachePolicy.regions`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .base import KEPT, MEMORY, RECENT, SINK, CachePolicy
from .rope import TemporalCallRope, TemporalRope
from .session import CacheGeometry, KVCache

__all__ = ["ChunkReport", "simulate"]


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

    def to_dict(self) -> dict:
        return asdict(self)


def _span(values: torch.Tensor) -> list[int] | None:
    return [int(values.min()), int(values.max())] if values.numel() else None


def simulate(
    policy: CachePolicy,
    chunks: int,
    *,
    chunk_frames: int = 3,
    tokens_per_frame: int = 4,
    seed: int = 0,
) -> list[ChunkReport]:
    """Run ``chunks`` chunks through ``policy`` and report the cache after each chunk's clean pass."""
    if chunks <= 0:
        raise ValueError(f"--chunks must be positive, got {chunks}")
    geometry = CacheGeometry(tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames)
    heads, head_dim = 1, 8
    rope = TemporalRope(pairs=2)
    cache = KVCache(
        policy, geometry, num_layers=1, batch=1, heads=heads, head_dim=head_dim,
        rope=rope, seed=seed, record_events=True,
    )
    gen = torch.Generator().manual_seed(seed)
    n = geometry.chunk_tokens
    layer = cache.layers[0]
    reports = []
    for i in range(chunks):
        f0 = i * chunk_frames
        events_before = len(cache.events)
        for clean in (False, True):
            q, k, v = (torch.randn(1, heads, n, head_dim, generator=gen) for _ in range(3))
            cache.begin_call(f0, chunk_frames, clean=clean, rope=TemporalCallRope(rope, f0, tokens_per_frame))
            layer.attend(q, k, v)
        cache.settle()
        event = cache.events[events_before] if len(cache.events) > events_before else None
        store = layer.store
        regions = policy.regions(layer)[0]
        sink, topc, memory, rest = (regions == code for code in (SINK, KEPT, MEMORY, RECENT))
        read_at = policy.key_positions(layer) if store.pre_rope else None  # pre-RoPE: where the read rotates
        pos = (store.positions if read_at is None else read_at)[0, : store.length]
        F = tokens_per_frame
        reports.append(
            ChunkReport(
                chunk=i,
                start_frame=f0,
                event=event.kind if event else "append",
                cache_frames=store.length / F,
                sink_frames=int(sink.sum()) / F,
                topc_frames=int(topc.sum()) / F,
                recent_frames=int(rest.sum()) / F,
                sink_positions=_span(pos[sink]),
                topc_positions=_span(pos[topc]),
                recent_positions=_span(pos[rest]),
                sink_delta=event.decision.sink_delta if event else 0,
                memory_frames=int(memory.sum()) / F,
                memory_positions=_span(pos[memory]),
            )
        )
    return reports
