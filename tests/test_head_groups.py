"""Head groups in the cache API (issue 24 part 1): a policy splits a layer's heads into groups with their own
stores, key sets and attention calls; a policy without groups runs the plain path bit-identically."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from deepforcing.cache import AttentionSink, CacheGeometry, HeadGroup, KVCache, SelfForcing
from deepforcing.cache.base import RECENT, SINK
from deepforcing.cache.rope import TemporalCallRope, TemporalRope

TPF, CHUNK, HEADS, DIM = 2, 2, 4, 8


@dataclass
class ToyGroups(AttentionSink):
    """FIFO over 5 frames with a 1-frame sink until chunk ``split_chunk``; then heads (0, 2) keep [sink | current],
    head 1 [last frame | current] (packed with them), head 3 the last 2 chunks."""

    name: ClassVar[str] = "toy-groups"
    window: int = 5
    sink: int = 1
    split_chunk: int = 2
    pack: str | None = "p"

    def head_groups(self, layer):
        if layer.call.start_frame < self.split_chunk * CHUNK:
            return None
        return (HeadGroup("sink", (0, 2), window=1 + CHUNK, sink_frames=1, pack=self.pack),
                HeadGroup("dummy", (1,), window=1 + CHUNK, pack=self.pack),
                HeadGroup("neighbour", (3,), window=2 * CHUNK))


def _fifo(frames: list[int], window: int, sink: int) -> list[int]:
    return frames if len(frames) <= window else frames[:sink] + frames[len(frames) - (window - sink):]


def _kernel(calls: list):
    def kernel(q, k, v):
        calls.append((q.shape[1], k.shape[2]))
        return F.scaled_dot_product_attention(q, k, v)
    return kernel


def _run(policy, chunks: int, seed: int = 0, check=None):
    rope = TemporalRope(pairs=2)
    cache = KVCache(policy, CacheGeometry(TPF, CHUNK), num_layers=2, batch=1, heads=HEADS, head_dim=DIM, rope=rope)
    gen = torch.Generator().manual_seed(seed)
    n = TPF * CHUNK
    history: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # frame -> post-RoPE k, v (newest write)
    outputs, calls = [], []
    for c in range(chunks):
        f0 = c * CHUNK
        for clean in (False, False, True):
            call_rope = TemporalCallRope(rope, f0, TPF)
            q, k, v = (torch.randn(1, HEADS, n, DIM, generator=gen) for _ in range(3))
            cache.begin_call(f0, CHUNK, clean=clean, rope=call_rope)
            for i, layer in enumerate(cache.layers):
                out = layer.attention(q, k, v, _kernel(calls))
                outputs.append(out)
                if i == 0 and check is not None:
                    k_rot = call_rope.apply(k)
                    for j in range(CHUNK):
                        history[f0 + j] = (k_rot[:, :, j * TPF:(j + 1) * TPF], v[:, :, j * TPF:(j + 1) * TPF])
                    check(c, call_rope.apply(q), out, history, cache)
    return cache, outputs, calls


def test_groups_attend_to_their_own_frames_and_outputs_return_in_head_order():
    """Every head's output equals attention over exactly its group's frames: the plain FIFO before the split, then
    [frame 0 | current], [last frame | current], [last 2 chunks | current] — from the store's keys as written."""
    policy = ToyGroups()
    sets: dict[str, list[int]] = {}

    def expected(c: int) -> dict[int, list[int]]:
        frames = list(range((c + 1) * CHUNK))
        unified = _fifo(frames, 5, 1)
        if c < policy.split_chunk:
            return {h: unified for h in range(HEADS)}
        if c == policy.split_chunk:
            sets.update(sink=_fifo(unified, 3, 1), dummy=_fifo(unified, 3, 0), neighbour=_fifo(unified, 4, 0))
        elif "seen" not in sets or sets["seen"] != [c]:
            new = list(range(c * CHUNK, (c + 1) * CHUNK))
            sets.update(sink=_fifo(sets["sink"] + new, 3, 1), dummy=_fifo(sets["dummy"] + new, 3, 0),
                        neighbour=_fifo(sets["neighbour"] + new, 4, 0))
        sets["seen"] = [c]
        return {0: sets["sink"], 2: sets["sink"], 1: sets["dummy"], 3: sets["neighbour"]}

    seen_sets = {}

    def check(c, q_rot, out, history, cache):
        if c not in seen_sets:
            seen_sets[c] = expected(c)
        for h, frames in seen_sets[c].items():
            k = torch.cat([history[f][0][:, h:h + 1] for f in frames], 2)
            v = torch.cat([history[f][1][:, h:h + 1] for f in frames], 2)
            ref = F.scaled_dot_product_attention(q_rot[:, h:h + 1], k, v)
            torch.testing.assert_close(out[:, h:h + 1], ref, rtol=0, atol=1e-6)

    cache, _, calls = _run(policy, 6, check=check)
    assert seen_sets[5] == {0: [0, 10, 11], 2: [0, 10, 11], 1: [9, 10, 11], 3: [8, 9, 10, 11]}
    layer = cache.layers[0]
    assert layer.store is None and [v.group.name for v in layer.views()] == ["sink", "dummy", "neighbour"]
    assert [v.store.keys.shape[1] for v in layer.views()] == [2, 1, 1]
    assert [v.store.capacity for v in layer.views()] == [(3 + CHUNK) * TPF] * 2 + [(4 + CHUNK) * TPF]
    # the packed sink + dummy heads are one kernel call of 3 heads; the neighbour head its own
    assert calls[-2:] == [(3, 3 * TPF), (1, 4 * TPF)]


def test_regions_memory_and_length_describe_every_group():
    cache, _, _ = _run(ToyGroups(), 5)
    layer = cache.layers[0]
    regions = {v.group.name: cache.policy.regions(v)[0].tolist() for v in layer.views()}
    assert regions["sink"] == [SINK] * TPF + [RECENT] * CHUNK * TPF
    assert regions["dummy"] == [RECENT] * 3 * TPF and regions["neighbour"] == [RECENT] * 4 * TPF
    assert cache.length == (2 * 3 + 3 + 4) * TPF // HEADS  # head-weighted filled slots
    stored = sum(s.keys.nbytes + s.values.nbytes + s.anchor_keys.nbytes + s.token_ids.nbytes + s.positions.nbytes
                 + s.reuse.nbytes for lay in cache.layers for s in lay.stores())
    assert cache.memory_bytes() == stored
    plain = KVCache(SelfForcing(window=5), CacheGeometry(TPF, CHUNK), num_layers=2, batch=1, heads=HEADS,
                    head_dim=DIM, rope=TemporalRope(pairs=2))
    assert cache.memory_bytes() < plain.memory_bytes()  # the groups hold fewer head-frames than one 5-frame store


def test_packing_changes_no_number():
    _, packed, calls_p = _run(ToyGroups(), 5, seed=3)
    _, apart, calls_a = _run(ToyGroups(pack=None), 5, seed=3)
    assert len(calls_a) > len(calls_p)
    for a, b in zip(packed, apart):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_policy_without_groups_runs_the_plain_path_bit_identically():
    """attention() is kernel(*attend()) exactly: same outputs to the bit as the model's old entry."""
    rope = TemporalRope(pairs=2)
    policy = SelfForcing(window=5)
    caches = [KVCache(policy, CacheGeometry(TPF, CHUNK), num_layers=1, batch=1, heads=HEADS, head_dim=DIM, rope=rope)
              for _ in range(2)]
    assert not caches[0].splits_heads and not caches[0].observes
    gen = torch.Generator().manual_seed(1)
    for c in range(5):
        for clean in (False, True):
            q, k, v = (torch.randn(1, HEADS, TPF * CHUNK, DIM, generator=gen) for _ in range(3))
            outs = []
            for cache in caches:
                cache.begin_call(c * CHUNK, CHUNK, clean=clean, rope=TemporalCallRope(rope, c * CHUNK, TPF))
            outs.append(caches[0].layers[0].attention(q, k, v, F.scaled_dot_product_attention))
            outs.append(F.scaled_dot_product_attention(*caches[1].layers[0].attend(q, k, v)))
            assert torch.equal(*outs)


def test_head_groups_must_cover_every_head_and_reset_restores_one_store():
    @dataclass
    class Missing(ToyGroups):
        def head_groups(self, layer):
            groups = super().head_groups(layer)
            return None if groups is None else groups[:2]

    with pytest.raises(ValueError, match="cover heads 0..3 once each"):
        _run(Missing(), 3)
    with pytest.raises(ValueError, match="ascending"):
        HeadGroup("x", (2, 1), window=3)
    cache, _, _ = _run(ToyGroups(), 3)
    with pytest.raises(RuntimeError, match="must call LayerCache.attention"):
        cache.layers[0].attend(*(torch.zeros(1, HEADS, TPF * CHUNK, DIM) for _ in range(3)))
    cache.reset()
    assert not cache.layers[0].groups and cache.layers[0].store.keys.shape[1] == HEADS and cache.length == 0
