"""The Rolling Sink release trace (Rolling-Sink/Rolling-Sink@d7fc0d9, recorded by
``scripts/record_rolling_sink_trace.py``) is whole and says what its README claims: 21 chunks, the archive replay
from chunk 7 on in both directions (time-reversed over chunks 7-12 and 19-20, forward over 13-18), each replayed
frame's key the archived pre-RoPE key rotated once at its slot's absolute position, and no replay when the context
noise is not 0; and up to where the method first acts it replays exactly through the engine's Self Forcing.
The policy's own replay of the whole trace is its parity test, not here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from release_traces import load_trace, per_chunk_error, replay_rollout

TRACE = Path(__file__).parent / "data" / "rolling_sink_trace"
REVERSED, FORWARD = (*range(7, 13), 19, 20), tuple(range(13, 19))


@pytest.fixture(scope="module")
def trace():
    return load_trace(TRACE)


def wan_rope_frame(x: torch.Tensor, position: int, h: int, w: int) -> torch.Tensor:
    """Wan's 3-axis RoPE of one frame's ``[h*w, heads, head_dim]`` tokens at temporal ``position``, in float64
    complex then cast (the release's ``causal_rope_apply``; table ``1 / 10000^(2i/dim)`` per axis)."""
    c = x.shape[-1] // 2
    dims = (c - 2 * (c // 3), c // 3, c // 3)

    def angles(n: int, pos: torch.Tensor) -> torch.Tensor:
        return torch.outer(pos.double(), 1.0 / torch.pow(10000, torch.arange(0, 2 * n, 2).double() / (2 * n)))

    hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    theta = torch.cat([angles(dims[0], torch.full((h * w,), position)), angles(dims[1], hh.flatten()),
                       angles(dims[2], ww.flatten())], dim=-1)  # [h*w, c]
    rotated = torch.view_as_complex(x.double().reshape(*x.shape[:-1], c, 2)) * torch.polar(
        torch.ones_like(theta), theta)[:, None]
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)


def replayed_slice(meta: dict, chunk: int) -> list[int]:
    """The archive frames the clean pass of ``chunk`` wrote into the slot just before it, oldest slot first."""
    start = meta["chunks"][chunk]["start_frame"]
    return [s["frame"] for s in meta["chunks"][chunk]["slots"] if start - 3 <= s["position"] < start]


def test_the_trace_is_whole(trace):
    meta, t = trace
    assert meta["release"] == "Rolling-Sink/Rolling-Sink@d7fc0d9" and meta["context_noise"] == 0
    chunks, tokens = meta["frames"] // meta["chunk_frames"], meta["tokens_per_frame"]
    steps = len(meta["denoising_step_list"])
    latent = (meta["frames"], 4, *meta["latent_hw"])
    assert chunks >= 20 and len(meta["chunks"]) == chunks and meta["rope_table_frames"] == 8192
    assert t["noise"].shape == t["latents"].shape == (1, *latent)
    assert t["renoise"].shape == (chunks * (steps - 1), 3, *latent[1:]) == (meta["renoise_draws"], 3, *latent[1:])
    assert len(meta["calls"]) == chunks * (steps + 1)
    assert t["call_inputs"].shape == t["call_outputs"].shape == (len(meta["calls"]), 3, *latent[1:])
    assert [c["clean_pass"] for c in meta["calls"]] == ([False] * steps + [True]) * chunks
    assert [c["start_frame"] for c in meta["calls"]] == [3 * i for i in range(chunks) for _ in range(steps + 1)]
    window = meta["window_frames"] * tokens
    assert t["archive_k"].shape == t["archive_v"].shape == (2, window, 2, 24)
    # the final x0 of every chunk is its latent, and its clean pass re-reads exactly that
    finals = t["call_outputs"][steps - 1::steps + 1]
    assert torch.equal(torch.cat(list(finals)), t["latents"][0])
    assert torch.equal(t["call_inputs"][steps::steps + 1], finals)


def test_cache_positions_are_contiguous_and_live_frames_sit_at_their_own(trace):
    meta, _ = trace
    for chunk in meta["chunks"]:
        positions = [s["position"] for s in chunk["slots"]]
        end = chunk["global_end_frame"]
        assert positions == list(range(end - chunk["local_end_frame"], end))
        assert all(s["frame"] == s["position"] for s in chunk["slots"] if s["source"] == "live")
        assert [s["source"] for s in chunk["slots"][-3:]] == ["live"] * 3  # the chunk just made
        assert all(s["frame"] < 18 for s in chunk["slots"] if s["source"] == "archive")  # archive frames 0..17


def test_no_replay_until_the_window_is_full_then_one_slice_per_chunk(trace):
    meta, _ = trace
    first = next(c["chunk"] for c in meta["chunks"] if c["archive_reroped_at"] is not None)
    assert first == 7 and meta["chunks"][first]["start_frame"] == meta["window_frames"]
    for chunk in meta["chunks"]:
        archived = [s for s in chunk["slots"] if s["source"] == "archive"]
        if chunk["chunk"] < first:
            assert not archived and chunk["archive_reroped_at"] is None
        else:
            assert chunk["archive_reroped_at"] == chunk["start_frame"] - 3
            assert len(archived) == min(3 * (chunk["chunk"] - first + 1), 18)


def test_the_slice_ping_pongs_over_archive_frames_0_to_17(trace):
    meta, _ = trace
    for c in REVERSED:
        frames = replayed_slice(meta, c)
        step = (c - 7) % 6 if c < 13 else c - 19
        assert frames == [17 - 3 * step, 16 - 3 * step, 15 - 3 * step], c  # time-reversed
    for c in FORWARD:
        assert replayed_slice(meta, c) == [3 * (c - 13), 3 * (c - 13) + 1, 3 * (c - 13) + 2], c
    # the release's own log line for each replay says the same
    prints = [(*map(int, re.findall(r"\d+", line)), "Reversed" in line) for line in meta["release_prints"]]
    assert len(prints) == len(REVERSED) + len(FORWARD)
    for (a, b, current, reversed_), c in zip(prints, range(7, 21)):
        assert current == 3 * c and reversed_ == (c in REVERSED)
        assert sorted(replayed_slice(meta, c)) == list(range(min(a, b), max(a, b)))


def test_replayed_keys_are_the_archive_rotated_once_at_the_slot_position(trace):
    meta, t = trace
    chunk = meta["snapshot_chunks"][-1]
    k, v = t[f"cache_k_after_chunk_{chunk:02d}"], t[f"cache_v_after_chunk_{chunk:02d}"]
    tokens, (h, w) = meta["tokens_per_frame"], (meta["latent_hw"][0] // 2, meta["latent_hw"][1] // 2)
    slots = meta["chunks"][chunk]["slots"]
    archived = [s for s in slots if s["source"] == "archive"]
    assert len(archived) == 18
    for s in archived:
        rows, src = slice(s["slot"] * tokens, (s["slot"] + 1) * tokens), slice(s["frame"] * tokens,
                                                                             (s["frame"] + 1) * tokens)
        assert torch.equal(v[:, rows], t["archive_v"][:, src])  # values: the archive's, token order kept
        for layer in range(k.shape[0]):
            expected = wan_rope_frame(t["archive_k"][layer, src], s["position"], h, w)
            assert (k[layer, rows] - expected).abs().max() < 1e-6
            assert (k[layer, rows] - t["archive_k"][layer, src]).abs().max() > 1e-3  # rotated, not raw


def test_the_replay_is_silently_off_unless_context_noise_is_0(trace):
    meta, _ = trace
    quirk = meta["quirk_run"]
    assert quirk["context_noise"] != 0 and quirk["frames"] > meta["window_frames"] + 3 and quirk["replays"] == 0


def test_until_the_method_acts_it_is_plain_self_forcing_in_the_engine(trace):
    """The trace replays through the engine's Self Forcing (21-frame window) exactly up to where the method first
    acts (the archive replay first changes the cache at chunk 7's clean pass, so chunk 8 is the first to differ),
    and not after: the weights, noise and draws fit the engine, and the method matters."""
    from deepforcing.cache import make_policy
    from deepforcing.models.presets import get_preset

    meta, t = trace
    spec = get_preset("self-forcing")
    assert meta["denoising_step_list"] == list(spec.denoising_steps) and meta["shift"] == spec.shift
    ours, _ = replay_rollout(TRACE, meta, t, make_policy("self-forcing", window=21), spec.chunk_frames)
    err = per_chunk_error(ours, t["latents"])
    assert err[:8].max() < 1e-5, err
    assert err[8:].min() > 1e-3, err
