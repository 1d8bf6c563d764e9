"""MemRoPE (arXiv 2603.12513) replays its release trace: YoungRaeKimm/MemRoPE@b89bf5b (recorded by
``scripts/record_memrope_trace.py``: 10 chunks, the first memory initialisation at chunk 4 and five EMA updates)
through the ``memrope`` policy, same weights, noise and re-noising draws."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepforcing.cache import make_policy
from deepforcing.cache.base import MEMORY, REGIONS
from release_traces import load_trace, per_chunk_error, replay_rollout

TRACE = Path(__file__).parent / "data" / "memrope_trace"
RELEASE = "YoungRaeKimm/MemRoPE@b89bf5b"


@pytest.fixture(scope="module")
def replay():
    meta, t = load_trace(TRACE)
    assert meta["release"] == RELEASE
    policy = make_policy("memrope", window=meta["local_attn_size"], sink=meta["sink_size"],
                         alpha_long=meta["ema_alpha_long"], alpha_short=meta["ema_alpha_short"])
    assert policy == make_policy("memrope")  # the release's defaults are the policy's
    ours, rollout = replay_rollout(TRACE, meta, t, policy, meta["chunk_frames"])
    return meta, t, ours, rollout.cache


def test_memrope_replays_its_release_trace(replay):
    meta, t, ours, _ = replay
    err = per_chunk_error(ours, t["latents"])
    assert len(err) == 10 and err.max() < 1e-5, err


def test_the_memories_and_the_cache_are_the_releases(replay):
    meta, t, _, cache = replay
    F = meta["tokens_per_frame"]
    for layer in range(2):
        c = cache.layers[layer]
        (long_k, long_v), (short_k, short_v) = c.state["memory"]
        expected = t["memory"][-1, layer]  # [long/short, k/v, H, D] after the last update
        for got, want in ((long_k, expected[0, 0]), (long_v, expected[0, 1]), (short_k, expected[1, 0]),
                          (short_v, expected[1, 1])):
            assert (got[0, :, 0] - want).abs().max() < 1e-6
        k, v = (x.permute(1, 0, 2) for x in (t["cache_k_final"][layer], t["cache_v_final"][layer]))
        assert c.store.length == 12 * F
        assert (c.store.keys[0, :, : c.store.length] - k).abs().max() < 1e-5  # pre-RoPE, as the release stores
        assert (c.store.values[0, :, : c.store.length] - v).abs().max() < 1e-5
    regions = cache.policy.regions(cache.layers[0])[0, ::F].tolist()
    assert [REGIONS[r] for r in regions] == ["sink"] * 3 + ["memory"] * 2 + ["recent"] * 7
    assert int((cache.policy.regions(cache.layers[0]) == MEMORY).sum()) == 2 * F


def test_the_release_window_not_the_models():
    """MemRoPE's 12 frames (``memrope_60s.yaml``: local_attn_size 12 on Self Forcing's 21-frame model) are part of the
    method: a preset's attention window does not replace them (``own_window``); ``--window`` still does."""
    from deepforcing.models.presets import get_preset
    from deepforcing.pipeline.generate import policy_from_defaults

    defaults = get_preset("self-forcing").product_policy()
    assert defaults["window"] == 21
    assert policy_from_defaults(defaults, "memrope").window == 12
    assert policy_from_defaults(defaults, "memrope", window=15).window == 15
