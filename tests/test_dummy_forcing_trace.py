"""The Dummy Forcing release trace (csguoh/DummyForcing@28128ed, recorded by ``scripts/record_dummy_forcing_trace.py``)
is whole and says what the release does: 8 chunks of a 3-layer, 4-head tiny model; every head reads frame 0, the
last chunk and the current one until chunk 1's clean pass samples 2 query rows per layer (its ``torch.randint``,
recorded), and its head assignment — reproduced here from the recorded statistics by the engine's
:func:`assign_heads` — splits the heads into 6 dummy heads (the release's 180 / 360), sink and neighbour heads, whose
caches from then on hold frame 0, the last frame and the last 3 frames. Up to the split it replays exactly through a
plain sink + FIFO; after it the outputs depart from that. The policy's own replay is its parity test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepforcing.cache import make_policy
from deepforcing.cache.dummy_forcing import HEAD_KINDS, assign_heads
from release_traces import load_trace, per_chunk_error, replay_rollout

TRACE = Path(__file__).parent / "data" / "dummy_forcing_trace"


@pytest.fixture(scope="module")
def trace():
    return load_trace(TRACE)


def test_the_trace_is_whole(trace):
    meta, t = trace
    assert meta["release"] == "csguoh/DummyForcing@28128ed" and meta["context_noise"] == 0
    assert (meta["ar_start"], meta["denoise_start"], meta["local_context_length"]) == (1, 0, 1)
    assert (meta["layers"], meta["heads"], meta["num_dummy"]) == (3, 4, 6)  # 180 / 360 of the 1.3B's heads
    chunks, steps, F = meta["frames"] // meta["chunk_frames"], len(meta["denoising_step_list"]), meta["tokens_per_frame"]
    latent = (meta["frames"], 4, *meta["latent_hw"])
    assert chunks == 8 and t["noise"].shape == t["latents"].shape == (1, *latent)
    assert t["renoise"].shape == (chunks * (steps - 1), 3, *latent[1:]) == (meta["renoise_draws"], 3, *latent[1:])
    assert len(meta["calls"]) == chunks * (steps + 1)
    assert [c["clean_pass"] for c in meta["calls"]] == ([False] * steps + [True]) * chunks
    finals = t["call_outputs"][steps - 1::steps + 1]
    assert torch.equal(torch.cat(list(finals)), t["latents"][0])
    assert torch.equal(t["call_inputs"][steps::steps + 1], finals)
    # one randint per layer at chunk 1's clean pass: F // 3 rows of the chunk's 3F query rows
    assert meta["randint_draws"] == 3 and t["sampled_rows"].shape == (3, F // 3)
    assert int(t["sampled_rows"].min()) >= 0 and int(t["sampled_rows"].max()) < 3 * F


def test_the_head_assignment_is_the_engines_from_the_releases_statistics(trace):
    meta, t = trace
    mass = t["frame_attn_score"][:, :, 0].transpose(1, 2)  # [layers, heads, 3 (first, middle, current)]
    kinds = assign_heads(mass, meta["num_dummy"])
    for layer, groups in enumerate(meta["head_groups"]):
        for kind, name in enumerate(HEAD_KINDS):
            assert groups[name] == torch.nonzero(kinds[layer] == kind).flatten().tolist()
    heads = sorted(h for groups in meta["head_groups"] for name in HEAD_KINDS for h in groups[name])
    assert len(heads) == 12 and sum(len(g["dummy"]) for g in meta["head_groups"]) == 6
    assert {name for g in meta["head_groups"] for name in HEAD_KINDS if g[name]} == set(HEAD_KINDS)


def test_the_caches_hold_frame_0_the_last_frame_and_the_last_chunk(trace):
    meta, t = trace
    F = meta["tokens_per_frame"]
    for entry in meta["chunks"]:
        c = entry["chunk"]
        for layer, frames in enumerate(entry["cache_frames"]):
            if c == 0:  # before the split: frame 0 and the chunk's other frames, for every head
                assert frames == {"all": [0, 1, 2]}
                continue
            groups = meta["head_groups"][layer]
            last = 3 * c + 2
            assert frames == {"sink": [0] if groups["sink"] else [], "dummy": [last] if groups["dummy"] else [],
                              "neighbour": [last - 2, last - 1, last] if groups["neighbour"] else []}
    for layer, groups in enumerate(meta["head_groups"]):
        packed = len(groups["sink"]) + len(groups["dummy"])
        assert t[f"sink_k_layer{layer}"].shape == (F, packed, 24)
        assert t[f"local_k_layer{layer}"].shape == (3 * F, len(groups["neighbour"]), 24)


def test_up_to_the_split_a_plain_sink_fifo_replays_it_exactly(trace):
    meta, t = trace
    plain = make_policy("attention-sink", window=7, sink=1)  # frame 0 + the last chunk + the current chunk
    ours, _ = replay_rollout(TRACE, meta, t, plain, meta["chunk_frames"])
    err = per_chunk_error(ours, t["latents"])
    assert err[:2].max() == 0.0  # chunks 0-1: the release's cache is exactly this
    assert err[2:].min() > 1e-4, err  # from chunk 2 the head groups read other keys
