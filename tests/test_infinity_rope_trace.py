"""The ∞-RoPE release trace (yesiltepe-hidir/infinity-rope@63d7b84, recorded by
``scripts/record_infinity_rope_trace.py``) is whole and says what its README claims, before any policy replays it.

Checked from the trace alone: shapes and chunk counts; every model call chained to the next by the recorded draws
(x_next = (1 - s) x0 + s eps, s = t / 1000); the KV Flush at chunk 4 and the flush + RoPE Cut at chunk 8 where the
prompt DSL puts them; the cross-attention cache rebuilt exactly there; the temporal RoPE positions of queries and
keys (block-relativistic; 45..47 on the cut chunk); which frame each window slot holds at read; and the stored
rotations reproduced in float64 complex from Wan's RoPE table. One replay through the engine: the plain video is
``rolling-forcing-sink`` at sink 1, window 6 (RoPE scores depend on position differences only).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepforcing.cache import make_policy
from deepforcing.models.loading import load_causal_wan
from deepforcing.models.presets import get_preset
from deepforcing.pipeline.rollout import VideoRollout
from test_causvid_parity import ReplayedNoise, _chunks

TRACE = Path(__file__).parent / "data" / "infinity_rope_trace"
VIDEOS = ("plain", "events")


@pytest.fixture(scope="module")
def trace():
    return load_file(str(TRACE / "trace.safetensors")), json.loads((TRACE / "trace.json").read_text())


def _calls(t, video: str) -> torch.Tensor:
    return (t["call_video"] == VIDEOS.index(video)).nonzero().flatten()


def test_the_trace_names_its_release_and_the_window_it_ran():
    meta = json.loads((TRACE / "trace.json").read_text())
    assert meta["commit"] == "63d7b84f043a2536ccb62d5171ed54dfadc0a721"
    assert (meta["local_attn_size"], meta["sink_size"], meta["chunk_frames"]) == (6, 1, 3)
    assert meta["denoising_step_list"] == [1000, 750, 500, 250] and meta["warp"] and meta["shift"] == 5.0
    assert meta["rope_cut_defaults"] == {"transition_frames": 3, "transition_from": 45}


def test_shapes_and_chunk_counts(trace):
    t, meta = trace
    steps, chunk = len(meta["denoising_step_list"]), meta["chunk_frames"]
    frame = (json.loads((TRACE / "config.json").read_text())["in_dim"], *meta["latent_hw"])
    for video in VIDEOS:
        frames = meta["frames"][video]
        chunks = frames // chunk
        assert tuple(t[f"noise_{video}"].shape) == tuple(t[f"latents_{video}"].shape) == (1, frames, *frame)
        assert meta["events"][video]["chunks"] == chunks == len(t[f"chunk_flush_{video}"])
        assert meta["renoise_draws"][video] == chunks * (steps - 1)
        assert len(_calls(t, video)) == chunks * (steps + 1)  # each step + the clean context pass
    n_calls = meta["model_calls"]
    assert t["renoise"].shape == (sum(meta["renoise_draws"].values()), chunk, *frame)
    assert t["call_input"].shape == t["call_x0"].shape == (n_calls, chunk, *frame)
    assert meta["attention_calls"] == 2 * n_calls == len(t["attn_model_call"])  # two layers per call


def test_every_call_is_chained_by_the_recorded_draws(trace):
    t, meta = trace
    steps, chunk, draws = len(meta["denoising_step_list"]), meta["chunk_frames"], iter(t["renoise"])
    for video in VIDEOS:
        calls = _calls(t, video).view(-1, steps + 1)  # per chunk: steps 0..S-1, then the clean pass
        for i, chunk_calls in enumerate(calls):
            frames = slice(i * chunk, (i + 1) * chunk)
            assert torch.equal(t["call_input"][chunk_calls[0]], t[f"noise_{video}"][0, frames])
            assert t["call_kind"][chunk_calls].tolist() == list(range(steps + 1))
            assert (t["call_start_frame"][chunk_calls] == i * chunk).all()
            for a, b in zip(chunk_calls[:steps - 1], chunk_calls[1:steps]):
                s = t["call_timestep"][b].double() / 1000
                expected = (1 - s) * t["call_x0"][a].double() + s * next(draws).double()
                assert (t["call_input"][b] - expected).abs().max() < 1e-6
            last, clean = chunk_calls[steps - 1], chunk_calls[steps]
            assert torch.equal(t["call_x0"][last], t[f"latents_{video}"][0, frames])
            assert torch.equal(t["call_input"][clean], t["call_x0"][last]) and t["call_timestep"][clean] == 0
    assert next(draws, None) is None


def test_flush_and_cut_are_where_the_prompt_dsl_puts_them(trace):
    t, meta = trace
    parsed = meta["events_parsed"]
    boundaries = torch.tensor(parsed["scene_chunks"][:-1]).cumsum(0).tolist()
    cuts = [b for b, cut in zip(boundaries, parsed["scene_cut_flags"]) if cut]  # '#' on scene i: cut entering i+1
    assert (boundaries, cuts) == ([4, 8], [8])
    assert meta["events"]["events"]["flush_chunks"] == boundaries and meta["events"]["events"]["cut_chunks"] == cuts
    assert t["chunk_flush_events"].nonzero().flatten().tolist() == boundaries
    assert t["chunk_cut_events"].nonzero().flatten().tolist() == cuts
    assert not t["chunk_flush_plain"].any() and not t["chunk_cut_plain"].any()
    assert t["chunk_prompt_events"].tolist() == [0] * 4 + [1] * 4 + [2] * 3
    assert (t["chunk_prompt_plain"] == 0).all()
    for video, firsts in (("plain", [0]), ("events", [0, *boundaries])):  # cross-attention K/V rebuilt only there
        calls = _calls(t, video)
        fresh = t["call_crossattn_fresh"][calls].nonzero().flatten()
        assert (t["call_start_frame"][calls][fresh] // 3).tolist() == firsts
        assert (t["call_kind"][calls][fresh] == 0).all()
        flushed = t["call_local_end_before"][calls][fresh[1:]]
        assert (flushed == 3).all()  # the flush leaves sink + 2 frames: local_end = 3 frames
    cut_calls = _calls(t, "events")[t["call_start_frame"][_calls(t, "events")] == 8 * 3]
    assert t["call_scene_cut"][cut_calls].all() and t["call_scene_cut"].sum() == len(cut_calls)  # all 5 calls


def test_positions_and_slots_follow_the_block_relativistic_window(trace):
    t, meta = trace
    window, chunk = meta["local_attn_size"], meta["chunk_frames"]
    for a in range(meta["attention_calls"]):
        call = t["attn_model_call"][a]
        start, kind = int(t["call_start_frame"][call]), int(t["call_kind"][call])
        cut = bool(t["attn_scene_cut"][a])
        assert cut == bool(t["call_scene_cut"][call])
        if start == 0:  # the first chunk: a plain causal chunk at 0..2
            q, k, frames = [0, 1, 2], [0, 1, 2], [0, 1, 2]
        else:  # sink, the previous chunk's last two frames, the current chunk
            q = [45, 46, 47] if cut else [window - 3, window - 2, window - 1]
            k = [0, 1, 2, 45, 46, 47] if cut else list(range(window))
            frames = [0, start - 2, start - 1, start, start + 1, start + 2]
        pad = [-1] * (window - len(k))
        assert t["attn_query_pos"][a].tolist() == q
        assert t["attn_key_pos"][a].tolist() == k + pad
        assert t["attn_slot_frame"][a].tolist() == frames + pad
        assert t["attn_local_end_after"][a] == len(k) and t["attn_global_end_after"][a] == start + chunk
        writers = t["attn_slot_writer"][a].tolist()[:len(k)]
        assert writers[-chunk:] == [int(call)] * chunk  # the current chunk: this call's own keys
        if start > 0:  # older slots: written by clean context passes (kind = number of steps)
            clean = len(meta["denoising_step_list"])
            assert all(t["call_kind"][w] == clean for w in writers[:-chunk])
        assert t["attn_slot_post_rope"][a].tolist()[:len(k)] == [1] + [0] * (len(k) - 1)  # only the sink
        assert bool(t["attn_sink_read_stored"][a]) == (start > 0) and t["attn_sink_as_rotated"][a]


def _wan_rope_table(head_dim: int, positions: int = 1024) -> list[torch.Tensor]:
    """Wan's RoPE table (``wan/modules/model.py: rope_params``), split into temporal / height / width parts."""
    def params(dim):
        angles = torch.outer(torch.arange(positions),
                             1.0 / torch.pow(10000, torch.arange(0, dim, 2).to(torch.float64).div(dim)))
        return torch.polar(torch.ones_like(angles), angles)

    d = head_dim
    return [params(d - 4 * (d // 6)), params(2 * (d // 6)), params(2 * (d // 6))]


@pytest.mark.parametrize("example, q_pos, k_pos", [("rolling", [3, 4, 5], [0, 1, 2, 3, 4, 5]),
                                                    ("cut", [45, 46, 47], [0, 1, 2, 45, 46, 47])])
def test_rotations_are_float64_complex_products_at_the_recorded_positions(trace, example, q_pos, k_pos):
    t, meta = trace
    h, w = meta["latent_hw"][0] // 2, meta["latent_hw"][1] // 2
    for name, pos in (("q", q_pos), ("k", k_pos)):
        x, out = t[f"rope_{example}_{name}_in"], t[f"rope_{example}_{name}_out"]
        temporal, height, width = _wan_rope_table(x.shape[-1])
        f = len(pos)
        table = torch.cat([temporal[pos].view(f, 1, 1, -1).expand(f, h, w, -1),
                           height[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                           width[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, 1, -1)
        rotated = torch.view_as_real(torch.view_as_complex(x.double().reshape(*x.shape[:2], -1, 2)) * table)
        assert torch.equal(rotated.flatten(2).float(), out), f"{example} {name}"
        wrong = torch.view_as_real(torch.view_as_complex(x.double().reshape(*x.shape[:2], -1, 2)) * table.conj())
        assert (wrong.flatten(2).float() - out).abs().max() > 1e-2  # the check can tell positions apart


def test_plain_rollout_replays_through_the_rolling_forcing_sink_timeline(trace):
    """Block-relativistic RoPE only shifts every position of a read by one constant (keys 0..5, queries 3..5 instead
    of the contiguous 3c-3..3c+2 / 3c..3c+2 of a sink re-placed before the window's oldest frame), and RoPE scores
    depend on differences only: the plain video is ``rolling-forcing-sink`` at sink 1, window 6, to float rounding.
    A sink left at position 0 (``attention-sink``) is off from chunk 2 on."""
    t, meta = trace
    model = load_causal_wan(TRACE)
    sampling = get_preset("self-forcing").sampling
    assert list(sampling.denoising_steps) == meta["denoising_step_list"] and sampling.shift == meta["shift"]
    with torch.no_grad():
        context = model.encode_context(t["context_first"])
    errors = {}
    for name in ("rolling-forcing-sink", "attention-sink"):
        noise = ReplayedNoise(_chunks(t["noise_plain"]), t["renoise"][: meta["renoise_draws"]["plain"]])
        rollout = VideoRollout(model=model, policy=make_policy(name, window=meta["local_attn_size"], sink=1),
                               context=context, sampling=sampling, noise=noise,
                               latent_shape=tuple(t["noise_plain"].shape[2:]))
        with torch.no_grad():
            ours = torch.cat([rollout.step().latents for _ in range(meta["events"]["plain"]["chunks"])], dim=2)
        assert not noise.initial_draws and not noise.renoise_draws
        errors[name] = (ours.permute(0, 2, 1, 3, 4) - t["latents_plain"]).abs().max().item()
    assert errors["rolling-forcing-sink"] < 1e-5, errors
    assert errors["attention-sink"] > 1e-3, errors
