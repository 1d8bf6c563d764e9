"""Drive a KVCache like the reference pipeline does, with random q/k/v (no model)."""

from __future__ import annotations

import torch

from deepforcing.cache import CacheGeometry, KVCache, TemporalRope

CALLS_PER_CHUNK = 5  # 4 denoising steps + the clean pass


def make_cache(policy, *, tokens_per_frame=6, chunk_frames=3, layers=1, heads=2, head_dim=32, batch=1, **kw):
    kw.setdefault("record_events", True)
    return KVCache(
        policy,
        CacheGeometry(tokens_per_frame, chunk_frames),
        num_layers=layers,
        batch=batch,
        heads=heads,
        head_dim=head_dim,
        rope=TemporalRope.for_wan_head(head_dim),
        **kw,
    )


def run_chunks(cache: KVCache, chunks: int, *, seed: int = 0, calls=CALLS_PER_CHUNK, after_call=None):
    """Feed ``chunks`` chunks; ``after_call(chunk, call, cache)`` observes the cache after each call."""
    gen = torch.Generator().manual_seed(seed)
    geo = cache.geometry
    store0 = cache.layers[0].store
    b, h, _, d = store0.keys.shape
    n = geo.chunk_tokens
    for i in range(chunks):
        f0 = i * geo.chunk_frames
        for c in range(calls):
            cache.begin_call(f0, geo.chunk_frames, clean=(c == calls - 1))
            for layer in cache.layers:
                q, k, v = (torch.randn(b, h, n, d, generator=gen) for _ in range(3))
                layer.update(q, k, v)
            if after_call is not None:
                after_call(i, c, cache)
