"""LoL's multi-head RoPE jitter (arXiv 2601.16914; paper only, no release parity): its statistics, that it is off by
default (the model's own RoPE object, so traces stay bit-identical), and that it composes with a moving sink."""

import math

import pytest
import torch

from deepforcing.cache import (CacheGeometry, KVCache, TemporalRope, inverse_frequencies, make_policy, policy_names,
                               rotate_pairs)
from deepforcing.cache.rope import TemporalCallRope
from deepforcing.cache.rope_jitter import PAPER, JitteredCallRope, JitteredTemporalRope, jitter_bases
from deepforcing.models.rope3d import WanRope3D


def _cache(policy, heads=2, head_dim=8, tokens_per_frame=2, chunk=1):
    return KVCache(policy, CacheGeometry(tokens_per_frame=tokens_per_frame, chunk_frames=chunk), num_layers=1,
                   batch=1, heads=heads, head_dim=head_dim, rope=TemporalRope(pairs=2))


@pytest.mark.parametrize("name", policy_names())
def test_off_by_default_everywhere(name):
    policy = make_policy(name)
    assert policy.rope_jitter == 0.0
    assert not {"rope_jitter", "rope_jitter_seed", "rope_jitter_source"} & set(policy.describe())
    rope = TemporalRope(pairs=2)
    cache = KVCache(policy, CacheGeometry(tokens_per_frame=2, chunk_frames=3), num_layers=1, batch=1, heads=2,
                    head_dim=8, rope=rope)
    assert cache.jitter is None and cache.layers[0].store.rope is rope  # the model's RoPE object itself
    call_rope = TemporalCallRope(rope, 0, 2)
    cache.begin_call(0, 3, rope=call_rope)
    assert cache.call.rope is call_rope


def test_bases_statistics():
    theta, sigma = 10000.0, 0.8
    bases = jitter_bases(theta, 20000, sigma, seed=0) / theta
    assert bases.dtype == torch.float64
    assert float(bases.min()) >= 1 - sigma and float(bases.max()) <= 1 + sigma
    assert float(bases.min()) < 1 - 0.99 * sigma and float(bases.max()) > 1 + 0.99 * sigma  # fills U(1-s, 1+s)
    assert abs(float(bases.mean()) - 1.0) < 0.01
    assert abs(float(bases.std()) - sigma / math.sqrt(3)) < 0.01
    assert torch.equal(jitter_bases(theta, 12, sigma, 7), jitter_bases(theta, 12, sigma, 7))  # drawn from the seed
    assert not torch.equal(jitter_bases(theta, 12, sigma, 7), jitter_bases(theta, 12, sigma, 8))
    assert torch.equal(jitter_bases(theta, 12, 0.0, 7), torch.full((12,), theta, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        jitter_bases(theta, 12, 1.0, 0)
    with pytest.raises(ValueError, match="rope-jitter"):
        make_policy("attention-sink", rope_jitter=1.5)


def test_per_head_tables():
    rope = JitteredTemporalRope.of(TemporalRope.for_wan_head(128), heads=12, strength=0.8, seed=3)
    omega = rope.omega
    assert omega.shape == (12, 1, 22)
    assert torch.equal(omega[:, 0, 0], torch.ones(12, dtype=torch.float64))  # pair 0 turns once per frame anyway
    assert len({round(float(w), 12) for w in omega[:, 0, 5]}) == 12  # every head its own frequency elsewhere
    for h in range(12):
        assert torch.equal(omega[h, 0], inverse_frequencies(44, float(rope.bases[h])))


def test_call_rope_is_each_heads_wan_rope_with_its_base():
    """Temporal channels of head h = Wan's RoPE with base theta_h; spatial channels = the model's own RoPE."""
    model = WanRope3D(head_dim=24)
    heads, hp, wp, start, frames = 3, 2, 2, 40, 2
    jitter = JitteredTemporalRope.of(model.temporal, heads, 0.8, seed=1)
    bound = model.bind(model.angles(start, frames, hp, wp), wp)
    x = torch.randn(1, heads, frames * hp * wp, 24, dtype=torch.float64)
    out = JitteredCallRope(bound, jitter, start, hp * wp).apply(x)
    plain = bound.apply(x)
    span = model.temporal_dim
    assert torch.equal(out[..., span:], plain[..., span:])
    for h in range(heads):
        own = WanRope3D(24, theta=float(jitter.bases[h]))
        expected = own.apply(x[:, h:h + 1], own.angles(start, frames, hp, wp))
        assert torch.allclose(out[:, h, :, :span], expected[:, 0, :, :span], atol=1e-12, rtol=0)
    assert not torch.allclose(out[..., :span], plain[..., :span])
    # at(): the same rotation at chosen positions
    tokens = torch.arange(frames * hp * wp)
    at = JitteredCallRope(bound, jitter, start, hp * wp).at(x, start + tokens // (hp * wp), tokens % (hp * wp))
    assert torch.equal(at, out)


def test_scores_depend_on_position_differences_per_head():
    jitter = JitteredTemporalRope.of(TemporalRope(pairs=4), heads=4, strength=0.8, seed=0)
    q, k = torch.randn(2, 1, 4, 1, 8, dtype=torch.float64).unbind(0)
    def score(pq, pk):
        rq = jitter.rotate(q, torch.tensor(pq))
        rk = jitter.rotate(k, torch.tensor(pk))
        return (rq * rk).sum(-1).flatten()
    assert torch.allclose(score(5, 2), score(205, 202), atol=1e-9)
    assert not torch.allclose(score(5, 2), score(5, 3), atol=1e-3)


def test_composes_with_a_moving_sink():
    """Deep Sink's post-RoPE sink, re-placed at every roll, equals its raw keys rotated once at the new position
    with each head's own table (the jitter composes with the sink re-alignment)."""
    policy = make_policy("deep-sink", window=4, sink=2, rope_jitter=0.8, rope_jitter_seed=5)
    cache = _cache(policy)
    assert isinstance(cache.jitter, JitteredTemporalRope)
    assert policy.describe()["rope_jitter_source"] == PAPER
    layer, base = cache.layers[0], TemporalRope(pairs=2)
    gen = torch.Generator().manual_seed(0)
    raw_sink = []
    for f in range(9):
        q, k, v = (torch.randn(1, 2, 2, 8, generator=gen) for _ in range(3))
        if f < 2:
            raw_sink.append(k)
        cache.begin_call(f, 1, clean=True, rope=TemporalCallRope(base, f, 2))
        layer.attend(q, k, v)
    store = layer.store
    assert cache.sink_shift_frames != 0
    positions = store.positions[:, :4]
    expected = rotate_pairs(torch.cat(raw_sink, 2)[..., :4], cache.jitter.angles(positions))
    assert torch.allclose(store.keys[:, :, :4, :4], expected, atol=1e-6)
    with pytest.raises(RuntimeError, match="attend"):
        layer.update(q, k, v)
