"""Property tests over random valid configurations: bounded, sink kept, temporal order, isolation."""

import torch
from hypothesis import given, settings, strategies as st

from cache_driver import make_cache, run_chunks
from deepforcing.cache import make_policy


@st.composite
def configurations(draw):
    chunk = draw(st.integers(1, 4))
    window = draw(st.integers(chunk + 2, 24))
    name = draw(st.sampled_from(["self-forcing", "attention-sink", "rolling-sink", "deep-sink", "deep-forcing", "random-topc"]))
    if name == "self-forcing":
        return name, {"window": window}, chunk
    if name in ("attention-sink", "rolling-sink", "deep-sink"):
        return name, {"window": window, "sink": draw(st.integers(0, window - chunk))}, chunk
    recent = draw(st.integers(chunk, window - 1))
    sink = draw(st.integers(0, window - recent - 1))
    budget = draw(st.integers(sink + recent + 1, window))
    cap = draw(st.one_of(st.none(), st.integers(1, 8)))
    return name, {"window": window, "sink": sink, "recent": recent, "budget": budget, "reuse_cap": cap}, chunk


@settings(max_examples=40, deadline=None)
@given(configurations(), st.integers(1, 40), st.integers(1, 3))
def test_invariants(config, chunks, tokens_per_frame):
    name, sizes, chunk = config
    policy = make_policy(name, **sizes)
    cache = make_cache(policy, tokens_per_frame=tokens_per_frame, chunk_frames=chunk, layers=2, heads=1, head_dim=12)
    window_tokens = sizes["window"] * tokens_per_frame
    sink_tokens = policy.sink_frames * tokens_per_frame
    seen = {}

    def check(i, c, cc):
        for layer in cc.layers:
            s = layer.store
            L = s.length
            ids = s.token_ids[0, :L]
            assert L <= window_tokens  # never exceeds its bound
            assert torch.all(ids[1:] > ids[:-1])  # temporal order preserved
            newest = (i * chunk + chunk) * tokens_per_frame
            assert ids[-1].item() == newest - 1  # the current chunk is always present
            if newest >= sink_tokens:  # sink tokens are never evicted
                assert torch.equal(ids[:sink_tokens], torch.arange(sink_tokens))
            if "reuse_cap" in sizes and sizes["reuse_cap"] is not None:
                assert L == 0 or int(s.reuse[0, :L].max()) <= sizes["reuse_cap"]
            seen[layer.index] = L

    run_chunks(cache, chunks, calls=2, after_call=check)


def test_two_videos_in_one_cache_equal_each_alone():
    policy = make_policy("deep-forcing")
    a, b = make_cache(policy, layers=2), make_cache(policy, layers=2)
    run_chunks(a, 20, seed=1)
    run_chunks(b, 20, seed=2)
    a.reset()
    run_chunks(a, 20, seed=2)
    for la, lb in zip(a.layers, b.layers):
        assert la.store.length == lb.store.length
        ka, _ = la.store.view()
        kb, _ = lb.store.view()
        assert torch.equal(ka, kb)
        assert torch.equal(la.store.positions[:, : la.store.length], lb.store.positions[:, : lb.store.length])
