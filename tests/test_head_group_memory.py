"""Memory of the per-head policies (issue 24 item 3): ``KVCache.estimate_bytes`` bounds what the head groups' stores
allocate (Forcing-KV's dynamic store holds 9 frames where the one store before the split holds 8), and
``eval.kv_cost``'s simulation counts the frames each (layer, head) holds."""

from __future__ import annotations

import json

import pytest
import torch

from deepforcing.cache import CacheGeometry, KVCache, make_policy
from deepforcing.cache.store import LayerKVStore
from deepforcing.cache.triattention_stats import QueryStatsAccumulator
from deepforcing.eval.kv_cost import cache_bytes, head_frames, scaled_bytes, simulate_cache

LAYERS, HEADS, DIM, TPF = 3, 4, 8, 6  # 6 tokens per frame: Forcing-KV's 6 patches of one token


def _profile(tmp_path):
    """Layer 0 all static (it stays whole anyway), layers 1-2: head 0 static, heads 1-3 dynamic."""
    layers = [{"layer_idx": 0, "static_head": [0, 1, 2, 3], "dynamic_head": []}]
    layers += [{"layer_idx": i, "static_head": [0], "dynamic_head": [1, 2, 3]} for i in (1, 2)]
    path = tmp_path / "heads.json"
    path.write_text(json.dumps({"num_layers": LAYERS, "num_heads": HEADS, "layers": layers}))
    return str(path)


def _calibration(tmp_path):
    acc = QueryStatsAccumulator(LAYERS, HEADS, DIM)
    for layer in range(LAYERS):
        acc.add(layer, torch.randn(1, 5, HEADS, DIM, generator=torch.Generator().manual_seed(layer)))
    return str(acc.save(tmp_path / "stats.pt"))


def _estimate(policy, dtype=torch.float32):
    return KVCache.estimate_bytes(policy, CacheGeometry(TPF, 3), num_layers=LAYERS, batch=1, heads=HEADS,
                                  head_dim=DIM, dtype=dtype)


def test_forcing_kv_groups_outgrow_the_one_store_and_the_estimate_covers_them(tmp_path):
    policy = make_policy("forcing-kv", head_profile=_profile(tmp_path))
    cache, peak = simulate_cache(policy, layers=LAYERS, heads=HEADS, head_dim=DIM, tokens_per_frame=TPF, chunks=8,
                                 dtype=torch.float32)
    groups = {view.group.name: view.store for view in cache.layers[1].groups}
    assert groups["dynamic"].keys.shape[2] == 9 * TPF and groups["static"].keys.shape[2] == 8 * TPF
    assert groups["dynamic"].length == 6 * TPF and groups["static"].length == 5 * TPF
    one_store = LayerKVStore.nbytes(batch=1, heads=HEADS, head_dim=DIM, capacity=8 * TPF, anchor_tokens=TPF,
                                    dtype=torch.float32)
    assert peak > LAYERS * one_store  # what estimate_bytes reported before: the one store of 8 frames per layer
    # the bound: every head at the dynamic heads' 6 + 3 frames, a store (and its metadata) of its own
    bound = LAYERS * HEADS * LayerKVStore.nbytes(batch=1, heads=1, head_dim=DIM, capacity=9 * TPF,
                                                 anchor_tokens=TPF, dtype=torch.float32)
    assert _estimate(policy) == bound >= peak
    # frames per (layer, head): layer 0 whole (sink 1 + last 1 + chunk 3); layers 1-2 one static head of 5 frames
    # and three dynamic heads of 6 (sink, buffer, ring, chunk)
    assert head_frames(cache) == pytest.approx((4 * 5 + 2 * (5 + 3 * 6)) / (LAYERS * HEADS))


@pytest.mark.parametrize("name, options", [("dummy-forcing", {}), ("triattention", {}), ("triattention", {"sink": 1}),
                                           ("self-forcing", {})])
def test_estimate_bounds_every_per_head_policy(tmp_path, name, options):
    if name == "triattention":
        options = {**options, "calibration": _calibration(tmp_path)}
    policy = make_policy(name, **options)
    cache, peak = simulate_cache(policy, layers=LAYERS, heads=HEADS, head_dim=DIM, tokens_per_frame=TPF, chunks=8,
                                 dtype=torch.float32)
    assert peak <= _estimate(policy)
    if name == "self-forcing":  # no groups: the estimate is what the one store allocates, and it holds 21 frames
        assert peak == _estimate(policy) and head_frames(cache) == 21
    if name == "triattention":  # every (layer, head) at its budget (6) + one chunk
        assert head_frames(cache) == 9 and all(len(layer.groups) == HEADS for layer in cache.layers)


def test_scaled_bytes_is_per_token(tmp_path):
    policy = make_policy("self-forcing")
    small, _ = simulate_cache(policy, layers=1, heads=2, head_dim=DIM, tokens_per_frame=2, chunks=8)
    large, _ = simulate_cache(policy, layers=1, heads=2, head_dim=DIM, tokens_per_frame=6, chunks=8)
    geometry = {"tokens_per_frame": 6}
    assert scaled_bytes(cache_bytes(small)[0], small, geometry) == cache_bytes(large)[0]
    assert scaled_bytes(small.memory_bytes(), small, geometry) == large.memory_bytes()
