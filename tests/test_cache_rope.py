"""Temporal RoPE: exact, composable, unbounded; sink re-alignment from an exact base."""

import math

import pytest
import torch

from cache_driver import make_cache, run_chunks
from deepforcing.cache import TemporalRope, inverse_frequencies, make_policy, rotate_pairs
from deepforcing.cache.store import LayerKVStore


def test_wan_split_matches_reference_layout():
    assert TemporalRope.for_wan_head(128).pairs == 22  # real dims 0-43
    assert TemporalRope.for_wan_head(32).pairs == 6  # golden model: dims 0-11
    omega = inverse_frequencies(12)
    assert torch.allclose(omega, torch.tensor([10000 ** (-2 * k / 12) for k in range(6)], dtype=torch.float64))


def test_rotation_matches_complex_multiplication():
    x = torch.randn(2, 3, 5, 12)
    angles = torch.rand(5, 6, dtype=torch.float64) * 10
    ref = torch.view_as_real(torch.view_as_complex(x.double().unflatten(-1, (6, 2))) * torch.polar(torch.ones_like(angles), angles))
    assert torch.equal(rotate_pairs(x, angles), ref.flatten(-2).float())


def test_rotations_compose_and_invert():
    rope = TemporalRope(pairs=6)
    k = torch.randn(1, 2, 7, 32)
    a, b = torch.tensor(37), torch.tensor(-12)
    twice = rope.rotate(rope.rotate(k, a), b)
    once = rope.rotate(k, a + b)
    assert torch.allclose(twice, once, atol=2e-6)
    assert torch.equal(rope.rotate(k, torch.tensor(0)), k)
    assert torch.equal(rope.rotate(k, a)[..., 12:], k[..., 12:])  # spatial channels untouched


def test_positions_beyond_100k_frames_are_exact():
    rope = TemporalRope(pairs=6)
    k = torch.randn(1, 2, 4, 32, dtype=torch.float64)
    far = 123_457
    there = rope.rotate(k, torch.tensor(far))
    back = rope.rotate(there, torch.tensor(-far))
    assert torch.allclose(back, k, atol=1e-9)
    # the phase of pair 0 equals the angle reduced exactly (omega_0 = 1 rad/frame)
    expected = math.remainder(far, 2 * math.pi)
    z = torch.complex(there[0, 0, 0, 0], there[0, 0, 0, 1]) / torch.complex(k[0, 0, 0, 0], k[0, 0, 0, 1])
    assert abs(math.remainder(torch.angle(z).item() - expected, 2 * math.pi)) < 1e-9


def test_sink_realigned_10000_times_equals_one_rotation():
    rope = TemporalRope(pairs=6)
    store = LayerKVStore(batch=1, heads=2, head_dim=32, capacity=12, anchor_tokens=6, tokens_per_frame=6,
                         rope=rope, dtype=torch.float32, device="cpu")
    keys = torch.randn(1, 2, 6, 32)
    store.write(0, keys, torch.randn(1, 2, 6, 32), torch.arange(6))
    gen = torch.Generator().manual_seed(1)
    deltas = torch.randint(-5, 40, (10_000,), generator=gen)
    for d in deltas.tolist():
        store.shift_anchor(d)
    total = int(deltas.sum())
    once = rope.rotate(keys, torch.tensor(total))
    assert (store.positions[0, :6] == total).all()
    assert torch.equal(store.keys[:, :, :6], once)  # one rotation from the exact base, bit for bit


@pytest.mark.slow  # 20 s; test_sink_realigned_10000_times_equals_one_rotation proves the same exactness in 1 s
def test_realignment_in_a_100k_frame_rollout_stays_exact():
    """Deep Sink over >100,000 latent frames: sink keys equal a single rotation of their original keys."""
    cache = make_cache(make_policy("deep-sink", sink=14), tokens_per_frame=1, heads=1, head_dim=12)
    store = cache.layers[0].store
    first = {}

    def grab(i, c, cc):
        if i < 5 and c == 1:
            first["keys"] = store.keys[:, :, :14].clone()

    run_chunks(cache, 34_000, calls=2, after_call=grab)
    last_f0 = 33_999 * 3
    assert last_f0 > 100_000
    assert store.positions[0, 0].item() == last_f0 - 21
    expected = cache.layers[0].store.rope.rotate(first["keys"], torch.tensor(last_f0 - 21))
    assert torch.equal(store.keys[:, :, :14], expected)  # one rotation from the exact base, bit for bit
