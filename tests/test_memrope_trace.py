"""The MemRoPE release trace (YoungRaeKimm/MemRoPE@b89bf5b, recorded by ``scripts/record_memrope_trace.py``) is whole
and says what its README claims: 10 chunks, the 12-frame cache filling over chunks 0-3, the first eviction (chunk 4)
initialising both memory frames to the mean of frames 5-7 (frames 3-4 dropped unfolded), five later EMA updates
(alpha 0.01 long, 0.1 short) and block-relative positions (cache 0..11, queries 9..11); and up to where the method
first acts it replays exactly through the engine's Self Forcing. The policy's own replay of the whole trace is its
parity test, not here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from release_traces import load_trace, per_chunk_error, replay_rollout

TRACE = Path(__file__).parent / "data" / "memrope_trace"


@pytest.fixture(scope="module")
def trace():
    return load_trace(TRACE)


def evicted_mean(t: dict, frames: list[int]) -> torch.Tensor:
    """Mean over every token of ``frames``' clean-pass pre-RoPE keys and values: ``[layers, 2 (k, v), H, D]``."""
    return torch.stack([t[name][:, frames].flatten(1, 2).mean(dim=1) for name in ("clean_k", "clean_v")], dim=1)


def test_the_trace_is_whole(trace):
    meta, t = trace
    assert meta["release"] == "YoungRaeKimm/MemRoPE@b89bf5b" and meta["context_noise"] == 0
    assert (meta["local_attn_size"], meta["sink_size"], meta["recent_size"]) == (12, 3, 4)
    assert (meta["ema_alpha_long"], meta["ema_alpha_short"], meta["use_block_rope"]) == (0.01, 0.1, True)
    chunks, steps = meta["frames"] // meta["chunk_frames"], len(meta["denoising_step_list"])
    latent = (meta["frames"], 4, *meta["latent_hw"])
    assert chunks == 10 and t["noise"].shape == t["latents"].shape == (1, *latent)
    assert t["renoise"].shape == (chunks * (steps - 1), 3, *latent[1:]) == (meta["renoise_draws"], 3, *latent[1:])
    assert len(meta["calls"]) == chunks * (steps + 1)
    assert t["call_inputs"].shape == t["call_outputs"].shape == (len(meta["calls"]), 3, *latent[1:])
    assert [c["clean_pass"] for c in meta["calls"]] == ([False] * steps + [True]) * chunks
    assert t["clean_k"].shape == t["clean_v"].shape == (2, meta["frames"], meta["tokens_per_frame"], 2, 24)
    assert t["memory"].shape == (len(meta["memory_update_chunks"]), 2, 2, 2, 2, 24)
    finals = t["call_outputs"][steps - 1::steps + 1]
    assert torch.equal(torch.cat(list(finals)), t["latents"][0])
    assert torch.equal(t["call_inputs"][steps::steps + 1], finals)


def test_the_cache_fills_then_keeps_sink_memories_recent_and_new(trace):
    meta, _ = trace
    for call in meta["calls"]:
        c, slots = call["chunk"], call["slots"]
        if c < 4:  # filling: every frame so far, in order
            assert [s.get("frame") for s in slots] == list(range(3 * c + 3))
            continue
        assert [s.get("frame") for s in slots[:3]] == [0, 1, 2]  # sink: the first chunk
        assert [s["source"] for s in slots[3:5]] == ["memory_long", "memory_short"]
        assert [s["frame"] for s in slots[5:9]] == list(range(3 * c - 4, 3 * c))  # recent: the 4 frames before
        assert [s["frame"] for s in slots[9:]] == [3 * c, 3 * c + 1, 3 * c + 2]
        assert all(s["source"] == "this call" for s in slots[9:])
        assert all(s["source"] == "clean pass" for s in slots[:3] + slots[5:9])  # stored keys are pre-RoPE


def test_memories_update_once_per_chunk_on_its_first_call(trace):
    meta, _ = trace
    updated = [(c["chunk"], c["timestep"]) for c in meta["calls"] if c["memory_updated"]]
    assert updated == [(c, 1000.0) for c in range(4, 10)] and meta["memory_update_chunks"] == list(range(4, 10))
    first = next(c for c in meta["calls"] if c["memory_updated"])
    assert first["frames_folded_into_memory"] == [5, 6, 7] and first["frames_dropped_unfolded"] == [3, 4]
    for call in meta["calls"]:
        if call["memory_updated"] and call["chunk"] > 4:
            c = call["chunk"]
            assert call["frames_folded_into_memory"] == [3 * c - 7, 3 * c - 6, 3 * c - 5]
            assert call["frames_dropped_unfolded"] == []


def test_memories_follow_the_ema_rule_for_keys_and_values(trace):
    meta, t = trace
    updates = [c for c in meta["calls"] if c["memory_updated"]]
    memory = t["memory"]  # [update, layer, long/short, k/v, H, D]
    first = evicted_mean(t, updates[0]["frames_folded_into_memory"])
    assert (memory[0, :, 0] - first).abs().max() < 1e-6 and (memory[0, :, 1] - first).abs().max() < 1e-6
    for i, call in enumerate(updates[1:], start=1):
        mean = evicted_mean(t, call["frames_folded_into_memory"])
        for j, alpha in enumerate((meta["ema_alpha_long"], meta["ema_alpha_short"])):
            expected = alpha * mean + (1 - alpha) * memory[i - 1, :, j]
            assert (memory[i, :, j] - expected).abs().max() < 1e-6
    assert (memory[-1, :, 0] - memory[-1, :, 1]).abs().max() > 1e-3  # the two rates have drifted apart


def test_positions_are_block_relative(trace):
    meta, _ = trace
    for call in meta["calls"]:
        c, frames = call["chunk"], len(call["slots"])
        assert call["cache_positions"] == list(range(frames))
        if c < 4:
            assert call["query_positions"] == [3 * c, 3 * c + 1, 3 * c + 2]
        else:
            assert call["query_positions"] == [9, 10, 11] and frames == meta["local_attn_size"]


def test_the_final_cache_holds_pre_rope_frames_and_broadcast_memories(trace):
    meta, t = trace
    k, v, tokens = t["cache_k_final"], t["cache_v_final"], meta["tokens_per_frame"]
    last = meta["calls"][-1]
    for s in last["slots"]:
        rows = slice(s["slot"] * tokens, (s["slot"] + 1) * tokens)
        if "frame" in s:
            assert torch.equal(k[:, rows], t["clean_k"][:, s["frame"]])
            assert torch.equal(v[:, rows], t["clean_v"][:, s["frame"]])
        else:
            j = ("memory_long", "memory_short").index(s["source"])
            assert torch.equal(k[:, rows], t["memory"][-1, :, j, 0][:, None].expand_as(k[:, rows]))
            assert torch.equal(v[:, rows], t["memory"][-1, :, j, 1][:, None].expand_as(v[:, rows]))


def test_until_the_method_acts_it_is_plain_self_forcing_in_the_engine(trace):
    """The trace replays through the engine's Self Forcing (12-frame window) exactly up to where the method first
    acts (chunk 4: the first eviction brings the memories and block-relative positions), and not after: the weights,
    noise and draws fit the engine, and the method matters."""
    from deepforcing.cache import make_policy
    from deepforcing.models.presets import get_preset

    meta, t = trace
    spec = get_preset("self-forcing")
    assert meta["denoising_step_list"] == list(spec.denoising_steps) and meta["shift"] == spec.shift
    ours, _ = replay_rollout(TRACE, meta, t, make_policy("self-forcing", window=12), spec.chunk_frames)
    err = per_chunk_error(ours, t["latents"])
    assert err[:4].max() < 1e-5, err
    assert err[4:].min() > 1e-3, err
