"""KV-cache memory of a policy: what a live cache holds, and the bf16 bytes of the real Wan2.1-1.3B from the policy's
own description (``benchmarks/policy_chunk_cost.py`` and the leaderboard, :mod:`deepforcing.eval.leaderboard`).

* :func:`cache_bytes`: bytes of K/V a :class:`~deepforcing.cache.KVCache` holds in its filled slots (every store of
  every layer, head groups included, plus the post-RoPE sink's exact key copy and every tensor a policy keeps in
  ``layer.state``: archives, memories), and the bytes allocated (spare slots included).
* :func:`wan_1p3b_bytes`: the real 1.3B in bf16 (30 layers, 12 heads x 128, 1560 tokens per 480x832 latent frame):
  frames held = the sum of :attr:`CachePolicy.layout` (sink + kept + memory + recent) + :attr:`CachePolicy.
  archive_frames`; bytes = 30 x 2 (K, V) x 12 x 128 x 1560 x frames x 2 B, plus the post-RoPE sink's key copy when
  :meth:`CachePolicy.key_storage` is post-RoPE. ``None`` for a policy whose memory grows with the video.
"""

from __future__ import annotations

import torch

__all__ = ["WAN_1P3B", "tensor_bytes", "cache_bytes", "formula_frames", "formula_bytes", "wan_1p3b_bytes"]

# Wan2.1-T2V-1.3B (arXiv 2503.20314): 30 blocks, dim 1536 = 12 heads x 128; a 480x832 video is 60x104 latents,
# patch 2x2 -> 30 x 52 = 1560 tokens per latent frame; Self Forcing's chunk of 3 latent frames
WAN_1P3B = {"layers": 30, "heads": 12, "head_dim": 128, "tokens_per_frame": 1560, "chunk_frames": 3}


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in ``obj`` (a tensor, or dicts / lists / tuples of them; anything else counts 0)."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def cache_bytes(cache) -> tuple[int, int]:
    """(bytes of K/V the cache holds in its filled slots + sink copies + policy states, bytes allocated including
    spare slots + sink copies + states), over every layer and every store of a layer (head groups)."""
    held = allocated = 0
    for layer in cache.layers:
        state = tensor_bytes(layer.state)
        held += state
        allocated += state
        for store in layer.stores():
            per_slot = 2 * store.keys.shape[0] * store.keys.shape[1] * store.keys.shape[3] * store.keys.element_size()
            held += store.length * per_slot + store.anchor_keys.nbytes
            allocated += store.keys.nbytes + store.values.nbytes + store.anchor_keys.nbytes
    return held, allocated


def formula_frames(policy) -> tuple[int | None, int]:
    """(frames held once the window is full, from the policy's layout + archive (``None``: unbounded), frames of the
    post-RoPE sink's key copy)."""
    if any(v is None for v in policy.layout.values()):
        return None, 0
    post_rope_sink = policy.sink_frames if policy.key_storage(0) == "post-rope" else 0
    return sum(policy.layout.values()) + policy.archive_frames, post_rope_sink


def formula_bytes(frames: int, sink_copy: int, geometry: dict = WAN_1P3B, element_bytes: int = 2) -> int:
    """K and V of ``frames`` frames plus a key copy of ``sink_copy`` frames at ``geometry`` (default the 1.3B, bf16)."""
    g = geometry
    per_frame = g["layers"] * g["heads"] * g["head_dim"] * g["tokens_per_frame"] * element_bytes  # K or V
    return 2 * per_frame * frames + per_frame * sink_copy


def wan_1p3b_bytes(policy) -> int | None:
    """bf16 KV bytes the real Wan2.1-1.3B's cache holds under ``policy`` once its window is full (``None``: the
    policy's memory grows with the video)."""
    frames, sink_copy = formula_frames(policy)
    return None if frames is None else formula_bytes(frames, sink_copy)
