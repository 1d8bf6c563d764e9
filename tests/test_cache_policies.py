"""Schedules of every policy over 100 chunks: cache length, which tokens remain, which positions they present."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cache_driver import make_cache, run_chunks
from deepforcing.cache import make_policy, policy_names
from deepforcing.cache.plan import simulate

F = 6  # tokens per frame in these tests (the golden geometry)


def frames_after_each_chunk(policy, chunks=100, **kw):
    lengths = []
    cache = make_cache(policy, **kw)
    run_chunks(cache, chunks, calls=2, after_call=lambda i, c, cc: c == 1 and lengths.append(cc.length / F))
    return lengths, cache


def test_deep_forcing_schedule_3_to_21_then_16_19_alternating():
    lengths, cache = frames_after_each_chunk(make_policy("deep-forcing"))
    assert lengths[:7] == [3, 6, 9, 12, 15, 18, 21]
    assert lengths[7] == 16
    assert lengths[7:] == [16, 19] * 46 + [16]
    kinds = [e.kind for e in cache.events]
    assert [i for i, k in enumerate(kinds) if k == "compress"] == list(range(7, 100, 2))


@pytest.mark.parametrize("name", ["self-forcing", "attention-sink", "rolling-sink", "deep-sink"])
def test_fifo_policies_fill_then_stay_at_window(name):
    lengths, _ = frames_after_each_chunk(make_policy(name))
    assert lengths == [3, 6, 9, 12, 15, 18] + [21] * 94


def test_full_policy_grows_without_bound():
    lengths, cache = frames_after_each_chunk(make_policy("full"), chunks=40)
    assert lengths == [3 * (i + 1) for i in range(40)]
    assert cache.layers[0].store.capacity >= 120 * F


def test_window_not_multiple_of_chunk_evicts_exact_overflow():
    lengths, _ = frames_after_each_chunk(make_policy("attention-sink", window=20), chunks=10)
    assert lengths == [3, 6, 9, 12, 15, 18, 20, 20, 20, 20]


def positions_by_frame(store):
    """{source frame: presented position} for a single-batch store (asserts one position per frame)."""
    frames = store.frames()[0].tolist()
    pos = store.positions[0, : store.length].tolist()
    out = {}
    for f, p in zip(frames, pos):
        assert out.setdefault(f, p) == p
    return out


def test_deep_sink_release_placement_has_three_frame_gap():
    cache = make_cache(make_policy("deep-sink"))
    run_chunks(cache, 30, calls=2)
    f0 = 29 * 3
    pos = positions_by_frame(cache.layers[0].store)
    sink = [pos[f] for f in range(14)]
    assert sink == list(range(f0 - 21, f0 - 7))  # sink at [f0-21, f0-8]
    tail = sorted(f for f in pos if f >= 14)
    assert tail == list(range(f0 - 4, f0 + 3))  # 7 tail frames keep true positions [f0-4, f0+2]
    assert all(pos[f] == f for f in tail)
    deltas = [e.decision.sink_delta for e in cache.events if e.kind == "roll"]
    assert deltas[0] == 0 and set(deltas[1:]) == {3}


def test_deep_sink_adjacent_placement_closes_the_gap():
    cache = make_cache(make_policy("deep-sink", placement="adjacent"))
    run_chunks(cache, 30, calls=2)
    pos = positions_by_frame(cache.layers[0].store)
    presented = sorted(pos.values())
    assert presented == list(range(presented[0], presented[0] + 21))  # one contiguous timeline


def test_rolling_sink_sits_right_before_oldest_tail_frame():
    cache = make_cache(make_policy("rolling-sink", sink=3))
    run_chunks(cache, 20, calls=2)
    pos = positions_by_frame(cache.layers[0].store)
    tail_start = min(f for f in pos if f >= 3)
    assert [pos[f] for f in range(3)] == [tail_start - 3, tail_start - 2, tail_start - 1]


@pytest.mark.parametrize("sink", [3, 8])
def test_rolling_sink_is_deep_sink_with_the_adjacent_placement(sink):
    """The documented alias: same cache, bit for bit (one sink-placement function serves both)."""
    a, b = make_cache(make_policy("rolling-sink", sink=sink)), make_cache(make_policy("deep-sink", sink=sink,
                                                                                     placement="adjacent"))
    run_chunks(a, 30, calls=2)
    run_chunks(b, 30, calls=2)
    sa, sb = a.layers[0].store, b.layers[0].store
    assert torch.equal(sa.positions, sb.positions) and torch.equal(sa.token_ids, sb.token_ids)
    assert torch.equal(sa.keys, sb.keys)
    ref = make_cache(make_policy("deep-sink", sink=sink))  # the release placement is not the same cache
    run_chunks(ref, 30, calls=2)
    assert not torch.equal(ref.layers[0].store.positions, sa.positions)


def test_attention_sink_never_moves():
    cache = make_cache(make_policy("attention-sink", sink=3))
    run_chunks(cache, 50, calls=2)
    pos = positions_by_frame(cache.layers[0].store)
    assert [pos[f] for f in range(3)] == [0, 1, 2]


def test_deep_forcing_sink_shifts_5_then_6_and_topc_keeps_original_positions():
    cache = make_cache(make_policy("deep-forcing"), layers=2)
    run_chunks(cache, 40)
    deltas = [e.decision.sink_delta for e in cache.events if e.kind == "compress" and e.layer == 0]
    assert deltas[0] == 5 and set(deltas[1:]) == {6}
    store = cache.layers[1].store
    L = store.length
    ids, pos, frames = store.token_ids[0, :L], store.positions[0, :L], store.frames()[0]
    f0 = 39 * 3
    # chunk 39 compresses (7, 9, ..., 39): the sink presents [f0 - 16, f0 - 7]
    assert torch.equal(pos[:60], frames[:60] + (f0 - 16))
    non_sink = slice(60, L)
    assert torch.equal(pos[non_sink], frames[non_sink])  # Top-C and recent keep their own positions
    assert torch.all(ids[1:] > ids[:-1])  # temporal order preserved
    assert int(store.reuse[0, :L].max()) <= 7


def test_reuse_cap_excludes_tokens_and_they_get_evicted():
    """A token picked ``reuse_cap`` times is no candidate any more, so the next compression evicts it."""
    cap = 2
    capped_after: list[tuple[int, set[int], set[int]]] = []  # (chunk, ids at the cap, ids in the cache)

    def observe(i, call, cache):
        store = cache.layers[0].store
        if call == 1 and cache.events and cache.events[-1].kind == "compress" and cache.events[-1].start_frame == 3 * i:
            ids = store.token_ids[0, : store.length]
            at_cap = set(ids[store.reuse[0, : store.length] >= cap].tolist())
            capped_after.append((i, at_cap, set(ids.tolist())))

    cache = make_cache(make_policy("deep-forcing", reuse_cap=cap), record_events=True)
    run_chunks(cache, 60, calls=2, after_call=observe)
    assert sum(len(at_cap) for _, at_cap, _ in capped_after) > 0  # the cap is reached (else the test says nothing)
    for (_, at_cap, _), (_, _, later) in zip(capped_after, capped_after[1:]):
        assert not (at_cap & later)  # gone at the next compression
    peak = []
    uncapped = make_cache(make_policy("deep-forcing", reuse_cap=None), record_events=True)
    run_chunks(uncapped, 60, calls=2, after_call=lambda i, c, cc: peak.append(int(cc.layers[0].store.reuse.max())))
    assert max(peak) > cap  # without the cap some tokens win more often than the cap allows
    assert int(cache.layers[0].store.reuse.max()) <= cap


def _expected_cache_frames(policy, chunks: int, chunk: int = 3) -> list[float]:
    """Cache length after each chunk from the policy's definition alone (not from KVCache)."""
    out, length, compressed = [], 0, 0
    for i in range(chunks):
        if policy.name == "triattention":  # before a chunk, every compress_every frames: over the budget -> budget
            if i * chunk - compressed >= policy.compress_every and length > policy.budget:
                length, compressed = policy.budget, i * chunk
        length += chunk
        if policy.bounded and length > policy.window:
            length = getattr(policy, "budget", policy.window)  # Top-C compresses to the budget, FIFO rolls
        out.append(float(length))
    return out


# per-head policies whose plan rows are no function of the options alone: dummy-forcing's head mean follows its online
# head assignment (tests/test_head_group_telemetry.py checks every group), forcing-kv needs a --head-profile
NOT_FROM_OPTIONS = {"dummy-forcing", "forcing-kv"}


@pytest.mark.parametrize("name", [n for n in policy_names() if n not in NOT_FROM_OPTIONS])
def test_plan_frames_match_the_policy_definition(name):
    policy = make_policy(name)
    reports = simulate(policy, 30, tokens_per_frame=F)
    assert [r.cache_frames for r in reports] == _expected_cache_frames(policy, 30)


def test_plan_deep_forcing_regions():
    reports = simulate(make_policy("deep-forcing"), 12, tokens_per_frame=F)
    r7 = reports[7]
    assert (r7.event, r7.sink_frames, r7.topc_frames, r7.recent_frames) == ("compress", 10, 2, 4)
    assert r7.sink_positions == [5, 14] and r7.recent_positions == [20, 23] and r7.sink_delta == 5
    r8 = reports[8]
    assert (r8.event, r8.cache_frames, r8.recent_frames, r8.sink_positions) == ("append", 19, 7, [5, 14])


# --------------------------------------------------------------------- golden bookkeeping (no model needed)
FIFO_SETTINGS = {
    "self_forcing": lambda: make_policy("self-forcing"),
    "deep_sink": lambda: make_policy("deep-sink", sink=14),
    "attention_sink_3": lambda: make_policy("attention-sink", sink=3),
}


@pytest.mark.golden
@pytest.mark.parametrize("source", ["in-repo", "shared"])  # tests/data/deep_forcing_trace; ../shared/golden
@pytest.mark.parametrize("setting", list(FIFO_SETTINGS))
def test_fifo_bookkeeping_matches_reference_traces(request, source, setting):
    """FIFO decisions do not depend on values: replay with random q/k/v and compare the bookkeeping recorded from the
    Deep Forcing release (ea9961a; attention_sink_3 from Self-Forcing 33593df)."""
    folder = Path(__file__).parent / "data" / "deep_forcing_trace" if source == "in-repo" else (
        request.getfixturevalue("golden") / "traces")
    trace = load_file(folder / f"{setting}.safetensors")
    meta = json.loads((folder / f"{setting}.json").read_text())
    cache = make_cache(FIFO_SETTINGS[setting](), layers=meta["n_layers"], record_events=True)
    lengths = torch.zeros_like(trace["cache_len"])
    slot_ids = torch.full_like(trace["slot_token_id"], -1)
    slot_pos = torch.zeros_like(trace["slot_rope_frame"])

    def record(i, c, cc):
        for li, layer in enumerate(cc.layers):
            lengths[i, c, li] = layer.store.length
            if c == 0:
                L = layer.store.length
                slot_ids[i, li, :L] = layer.store.token_ids[0, :L].int()
                slot_pos[i, li, :L] = layer.store.positions[0, :L].int()

    run_chunks(cache, meta["n_chunks"], after_call=record)
    assert torch.equal(lengths, trace["cache_len"])
    assert torch.equal(slot_ids, trace["slot_token_id"])
    filled = trace["slot_token_id"] >= 0
    assert torch.equal(slot_pos[filled], trace["slot_rope_frame"][filled])
    ours = [(e.start_frame // 3, e.layer, e.decision.sink_delta) for e in cache.events if e.kind == "roll"]
    recorded = [(d["chunk"], d["layer"], d["delta_frames"]) for d in meta["sink_rope_deltas"]]
    assert [x for x in ours if setting == "deep_sink"] == recorded


def test_topc_rope_unify_places_picks_right_before_the_recent_frames():
    """Eq. 10-11 option: Top-C tokens present consecutive positions ending just before the recent region, one
    position per distinct source frame, in temporal order; their keys are rotated to match."""
    keep_cache = make_cache(make_policy("deep-forcing"), layers=1)
    unify_cache = make_cache(make_policy("deep-forcing", topc_rope="unify"), layers=1)
    run_chunks(keep_cache, 8)
    run_chunks(unify_cache, 8)
    a, b = keep_cache.layers[0].store, unify_cache.layers[0].store
    assert torch.equal(a.token_ids[:, : a.length], b.token_ids[:, : b.length])  # same picks
    topc = slice(60, 72)
    frames = b.frames()[0, topc]
    pos = b.positions[0, topc]
    recent_start = int(b.positions[0, 72])
    distinct = torch.unique(frames)
    assert pos.max().item() == recent_start - 1 and pos.min().item() == recent_start - distinct.numel()
    assert torch.all(pos[1:] >= pos[:-1])
    expected = b.rope.rotate(a.keys[:, :, topc], (pos - a.positions[0, topc])[None])
    assert torch.allclose(b.keys[:, :, topc], expected, atol=1e-6)
