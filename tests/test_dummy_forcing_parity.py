"""Dummy Forcing (arXiv 2601.20499) replays its release trace: csguoh/DummyForcing@28128ed (recorded by
``scripts/record_dummy_forcing_trace.py``: 8 chunks, heads classified at chunk 1's clean pass, split from chunk 2)
through the ``dummy-forcing`` policy, same weights, noise, re-noising draws and the classification's sampled rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepforcing.cache import make_policy
from deepforcing.cache.dummy_forcing import HEAD_KINDS
from release_traces import load_trace, per_chunk_error, replay_rollout

TRACE = Path(__file__).parent / "data" / "dummy_forcing_trace"
RELEASE = "csguoh/DummyForcing@28128ed"


@pytest.fixture(scope="module")
def replay():
    meta, t = load_trace(TRACE)
    assert meta["release"] == RELEASE
    chunk = meta["chunk_frames"]
    policy = make_policy("dummy-forcing", window=1 + meta["local_context_length"] * chunk + chunk, sink=1,
                         ar_start=meta["ar_start"], dummy_fraction=180 / 360)
    assert policy == make_policy("dummy-forcing")  # the release's defaults are the policy's
    assert round(policy.dummy_fraction * meta["layers"] * meta["heads"]) == meta["num_dummy"]
    rows = list(t["sampled_rows"])  # the release's torch.randint draws, layer by layer
    asked = []

    def recorded_rows(layer, count, high):
        asked.append((layer.index, count, high))
        return rows.pop(0)

    policy.sample_rows = recorded_rows
    ours, rollout = replay_rollout(TRACE, meta, t, policy, chunk)
    assert not rows and asked == [(i, meta["tokens_per_frame"] // 3, 3 * meta["tokens_per_frame"]) for i in range(3)]
    return meta, t, ours, rollout.cache


def test_dummy_forcing_replays_its_release_trace(replay):
    meta, t, ours, _ = replay
    err = per_chunk_error(ours, t["latents"])
    assert len(err) == 8 and err.max() <= 1e-5, err


def test_the_head_assignment_and_its_statistics_are_the_releases(replay):
    meta, t, _, cache = replay
    for layer, groups in zip(cache.layers, meta["head_groups"]):
        assert (layer.state["frame_mass"] - t["frame_attn_score"][layer.index]).abs().max() < 1e-6
        views = {v.group.name: list(v.group.heads) for v in layer.views()}
        assert views == {name: groups[name] for name in HEAD_KINDS if groups[name]}


def test_each_group_holds_the_releases_keys_and_values(replay):
    """After the last clean pass: sink heads' frame 0, dummy heads' last frame, neighbour heads' last chunk, post-RoPE
    at their absolute frames, equal to the release's packed ``sink_k`` and ``local_k``."""
    meta, t, _, cache = replay
    F = meta["tokens_per_frame"]
    for layer in cache.layers:
        views = {v.group.name: v for v in layer.views()}
        n_sink = len(views["sink"].group.heads) if "sink" in views else 0
        expected = {"sink": ("sink", slice(0, n_sink), slice(0, F)),
                    "dummy": ("sink", slice(n_sink, None), slice(-F, None)),
                    "neighbour": ("local", slice(None), slice(-3 * F, None))}
        for name, view in views.items():
            release, heads, slots = expected[name]
            for kind, stored in (("k", view.store.keys), ("v", view.store.values)):
                want = t[f"{release}_{kind}_layer{layer.index}"][:, heads].transpose(0, 1)  # [h, tokens, D]
                got = stored[0, :, : view.store.length][:, slots]
                assert (got - want).abs().max() < 1e-5, (layer.index, name, kind)
        assert views["neighbour"].store.frames()[0, ::F].tolist() == list(range(18, 24))


def test_the_classification_draws_do_not_touch_the_global_generator():
    """The engine samples the query rows from the cache's own generator: the noise stream is unchanged."""
    from deepforcing.cache import CacheGeometry, KVCache
    from deepforcing.cache.rope import TemporalCallRope, TemporalRope

    policy, rope = make_policy("dummy-forcing"), TemporalRope(pairs=2)
    cache = KVCache(policy, CacheGeometry(6, 3), num_layers=2, batch=1, heads=4, head_dim=8, rope=rope)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for f0 in (0, 3, 6, 9):
        for clean in (False, True):
            cache.begin_call(f0, 3, clean=clean, rope=TemporalCallRope(rope, f0, 6))
            for layer in cache.layers:
                q, k, v = (torch.randn(1, 4, 18, 8, generator=gen) for _ in range(3))
                layer.attention(q, k, v, torch.nn.functional.scaled_dot_product_attention)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(layer.groups for layer in cache.layers)
    assert sum(len(v.group.heads) for layer in cache.layers for v in layer.groups if v.group.name == "dummy") == 4


def test_options_are_checked():
    with pytest.raises(ValueError, match="dummy-fraction"):
        make_policy("dummy-forcing", dummy_fraction=1.5)
    with pytest.raises(ValueError, match="raise --window to at least 5"):
        make_policy("dummy-forcing", window=4).validate(3)
