"""KV-cache memory of a policy: what a live cache holds, and the bf16 bytes of the real Wan2.1-1.3B from the policy's
own description (``benchmarks/policy_chunk_cost.py`` and the leaderboard, :mod:`deepforcing.eval.leaderboard`).

* :func:`cache_bytes`: bytes of K/V a :class:`~deepforcing.cache.KVCache` holds in its filled slots (every store of
  every layer, head groups included, plus the post-RoPE sink's exact key copy and every tensor a policy keeps in
  ``layer.state``: archives, memories), and the bytes allocated (spare slots included).
* :func:`wan_1p3b_bytes`: the real 1.3B in bf16 (``WAN_1P3B``: its layers, heads and head size, tokens per latent
  frame of a 480x832 video, from the model config and the Self Forcing preset): frames held = the sum of
  :attr:`CachePolicy.layout` (sink + kept + memory + recent) + :attr:`CachePolicy.archive_frames`; bytes = layers x
  2 (K, V) x heads x head size x tokens per frame x frames x 2 B, plus the post-RoPE sink's key copy when
  :meth:`CachePolicy.key_storage` is post-RoPE. ``None`` for a policy whose memory grows with the video.
* :func:`simulate_cache`: a per-head policy's groups depend on the layer and head count (Forcing-KV's profile, Dummy
  Forcing's cross-layer assignment), so its layout alone does not give the real model's bytes: the cache itself is
  driven at the real layer / head / head-size shape with random queries and keys at a few tokens per frame
  (:func:`scaled_bytes` scales what it holds to the real tokens per frame; every byte of a store is per token).
* :func:`head_frames`: frames each (layer, head) holds on average, over every store (head groups weighted by heads).
"""

from __future__ import annotations

import torch

__all__ = ["WAN_1P3B", "tensor_bytes", "cache_bytes", "formula_frames", "formula_bytes", "wan_1p3b_bytes",
           "simulate_cache", "head_frames", "scaled_bytes"]



def _wan_1p3b_geometry() -> dict:
    """Wan2.1-T2V-1.3B's attention shape (its config, ``models.presets.WAN21_T2V_1_3B``) at the Self Forcing preset's
    latent size and chunk (480x832 video: its latent over the 2x2 patch)."""
    from deepforcing.models.presets import WAN21_T2V_1_3B, get_preset

    preset, patch = get_preset("self-forcing"), WAN21_T2V_1_3B["patch_size"]
    return {"layers": WAN21_T2V_1_3B["num_layers"], "heads": WAN21_T2V_1_3B["num_attention_heads"],
            "head_dim": WAN21_T2V_1_3B["attention_head_dim"],
            "tokens_per_frame": (preset.latent_height // patch[1]) * (preset.latent_width // patch[2]),
            "chunk_frames": preset.sampling.chunk_frames}


WAN_1P3B = _wan_1p3b_geometry()


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


def head_frames(cache) -> float:
    """Frames of K/V one (layer, head) holds on average: every store's filled slots weighted by its heads (a head
    group's store has its heads only), over all layers and heads, without the post-RoPE sink's key copy."""
    F = cache.geometry.tokens_per_frame
    held = sum(store.length * store.keys.shape[1] for layer in cache.layers for store in layer.stores())
    return held / (F * len(cache.layers) * cache.heads)


def simulate_cache(policy, *, layers: int, heads: int, head_dim: int, tokens_per_frame: int, chunks: int,
                   chunk_frames: int = 3, steps: int = 1, seed: int = 0, dtype: torch.dtype = torch.bfloat16):
    """Drive a fresh :class:`~deepforcing.cache.KVCache` of ``layers`` x ``heads`` x ``head_dim`` under ``policy``
    through ``chunks`` chunks with random queries, keys and values (``steps`` denoising calls and the clean pass per
    chunk, every layer, a temporal-only RoPE, as ``plan`` drives it). Returns the cache after the last chunk and the
    largest :meth:`~deepforcing.cache.KVCache.memory_bytes` after any call (the groups' stores included)."""
    import torch.nn.functional as F

    from deepforcing.cache import CacheGeometry, KVCache
    from deepforcing.cache.rope import TemporalCallRope, TemporalRope

    geometry = CacheGeometry(tokens_per_frame=tokens_per_frame, chunk_frames=chunk_frames)
    rope = TemporalRope(pairs=head_dim // 2)
    cache = KVCache(policy, geometry, num_layers=layers, batch=1, heads=heads, head_dim=head_dim, rope=rope,
                    dtype=dtype, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    n, peak = geometry.chunk_tokens, cache.memory_bytes()
    with torch.no_grad():
        for i in range(chunks):
            f0 = i * chunk_frames
            for call in range(steps + 1):
                cache.begin_call(f0, chunk_frames, clean=call == steps,
                                 rope=TemporalCallRope(rope, f0, tokens_per_frame))
                for layer in cache.layers:
                    q, k, v = (torch.randn(1, heads, n, head_dim, generator=gen).to(dtype) for _ in range(3))
                    layer.attention(q, k, v, F.scaled_dot_product_attention)
                peak = max(peak, cache.memory_bytes())
            cache.settle()
    return cache, peak


def scaled_bytes(nbytes: int, cache, geometry: dict = WAN_1P3B) -> float:
    """``nbytes`` measured on ``cache`` (simulated at a few tokens per frame) at ``geometry``'s tokens per frame:
    keys, values, sink copies and per-slot metadata are all per token."""
    return nbytes * geometry["tokens_per_frame"] / cache.geometry.tokens_per_frame
