"""Rolling Sink (arXiv 2602.07775) replays its release trace: Rolling-Sink/Rolling-Sink@d7fc0d9 (recorded by
``scripts/record_rolling_sink_trace.py``: 21 chunks, the archive replay time-reversed over chunks 7-12 and 19-20 and
forward over 13-18) through the ``rolling-sink-replay`` policy, same weights, noise and re-noising draws."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepforcing.cache import make_policy
from release_traces import load_trace, per_chunk_error, replay_rollout

TRACE = Path(__file__).parent / "data" / "rolling_sink_trace"
RELEASE = "Rolling-Sink/Rolling-Sink@d7fc0d9"


@pytest.fixture(scope="module")
def replay():
    meta, t = load_trace(TRACE)
    assert meta["release"] == RELEASE
    policy = make_policy("rolling-sink-replay", window=meta["window_frames"])
    ours, rollout = replay_rollout(TRACE, meta, t, policy, meta["chunk_frames"])
    rollout.cache.settle()
    return meta, t, ours, rollout.cache


def test_rolling_sink_replays_its_release_trace(replay):
    meta, t, ours, _ = replay
    err = per_chunk_error(ours, t["latents"])
    assert len(err) == 21 and err.max() < 1e-5, err


def test_the_cache_holds_the_release_slot_map_after_the_last_chunk(replay):
    meta, t, _, cache = replay
    F = meta["tokens_per_frame"]
    store = cache.layers[0].store
    slots = meta["chunks"][-1]["slots"]
    assert store.frames()[0, ::F].tolist() == [s["frame"] for s in slots]
    assert store.positions[0, : store.length : F].tolist() == [s["position"] for s in slots]
    for layer in range(2):  # values: the release's cache after chunk 20, token for token; keys to rounding
        s = cache.layers[layer].store
        k, v = (x.permute(1, 0, 2) for x in (t["cache_k_after_chunk_20"][layer], t["cache_v_after_chunk_20"][layer]))
        assert (s.values[0, :, : s.length] - v).abs().max() < 1e-5
        assert (s.keys[0, :, : s.length] - k).abs().max() < 1e-5
    regions = cache.policy.regions(cache.layers[0])[0, ::F].tolist()
    assert regions == [1] * 18 + [3] * 3  # 18 replayed (kept) frames, 3 live (recent)
