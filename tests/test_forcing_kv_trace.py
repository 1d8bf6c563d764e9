"""The Forcing-KV release trace (zju-jiyicheng/Forcing-KV@50ac1f4, arXiv 2605.09681, recorded by
``scripts/record_forcing_kv_trace.py``) is whole and says what the release does: 8 chunks, plain caches until AR step
1's clean pass, then per-head groups on layers >= 1 (layer 0 untouched) from the tiny model's head profile, which
``configs_head/head_profile.py`` made with the shipped Self Forcing profile's settings (skip 3, last 4, threshold
0.8); from chunk 2 on a 1-frame dynamic buffer of the 6 least self-similar of 18 patches, scored once per chunk and
shared by the layers. Chunk 0 (no cache yet) replays exactly through the engine's Self Forcing. The policy's own
replay of the whole trace is its parity test, not here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from release_traces import load_trace, per_chunk_error, replay_rollout

TRACE = Path(__file__).parent / "data" / "forcing_kv_trace"
RELEASE = "zju-jiyicheng/Forcing-KV@50ac1f4"


@pytest.fixture(scope="module")
def trace():
    return load_trace(TRACE)


def test_the_trace_is_whole_and_names_its_release(trace):
    meta, t = trace
    assert meta["release"] == RELEASE and meta["context_noise"] == 0 and meta["sink_size"] == 1
    fkv = meta["forcingkv"]
    assert (fkv["ar_start"], fkv["spatial_context_length"], fkv["temporal_context_length"],
            fkv["dynamic_context_length"]) == (1, 1, 1, 1)
    assert (fkv["num_frame_patch"], fkv["sim_retention_ratio"], fkv["dynamic_temporal_enabled"]) == (6, 0.33, True)
    chunks, steps, F = meta["frames"] // meta["chunk_frames"], len(meta["denoising_step_list"]), meta["tokens_per_frame"]
    latent = (meta["frames"], 4, *meta["latent_hw"])
    assert chunks == 8 and F == 12 and F % fkv["num_frame_patch"] == 0
    assert t["noise"].shape == t["latents"].shape == (1, *latent)
    assert t["renoise"].shape == (chunks * (steps - 1), 3, *latent[1:]) == (meta["renoise_draws"], 3, *latent[1:])
    assert len(meta["calls"]) == chunks * (steps + 1)
    assert t["call_inputs"].shape == t["call_outputs"].shape == (len(meta["calls"]), 3, *latent[1:])
    assert [c["clean_pass"] for c in meta["calls"]] == ([False] * steps + [True]) * chunks
    finals = t["call_outputs"][steps - 1::steps + 1]
    assert torch.equal(torch.cat(list(finals)), t["latents"][0])
    assert torch.equal(t["call_inputs"][steps::steps + 1], finals)


def test_the_switch_comes_after_ar_step_one_and_the_buffer_a_chunk_later(trace):
    meta, t = trace
    clean = [c for c in meta["calls"] if c["clean_pass"]]
    assert [all(c["switched"]) for c in clean] == [False] + [True] * 7  # after chunk 1's clean pass (ar_start 1)
    assert all(c["plain_frames"] == [2, 2, 2] for c in clean)  # before the switch: sink 1 frame + last 1 frame
    assert [c.get("dynamic_valid_tokens") for c in clean[1:]] == [[0, 0]] + [[12, 12]] * 6  # layers 1, 2
    assert [c.get("patch_scores_index") for c in clean] == [None, None, 0, 1, 2, 3, 4, 5]
    assert t["grouped_caches"].shape[:2] == (7, 2)


def test_the_buffer_keeps_the_six_least_self_similar_of_eighteen_patches(trace):
    _, t = trace
    scores, kept = t["patch_scores"], t["kept_patches"]
    assert scores.shape == (6, 3, 6) and kept.shape == (6, 6)  # 3 candidate frames x 6 patches; round(18 * 0.33)
    for s, k in zip(scores, kept):
        assert torch.equal(k, torch.sort(torch.topk(s.flatten(), 6, largest=False).indices).values)
        assert s.flatten()[k].max() < s.flatten()[[i for i in range(18) if i not in k]].min()
    assert len({tuple(k.tolist()) for k in kept}) == 6  # a different choice every chunk


def test_the_head_profile_is_the_releases_statistic_at_skip_three(trace):
    meta, t = trace
    prof = meta["head_profile"]
    assert (prof["SKIP_FIRST_K"], prof["LAST_K"], prof["THRESHOLD"]) == (3, 4, 0.8)
    attn = t["calibration_frame_attention"]  # [layers, heads, query tokens, key frames] at the last AR step
    assert attn.shape == (3, 2, 3 * meta["tokens_per_frame"], prof["calibration_frames"])
    assert torch.allclose(attn.sum(dim=-1), torch.ones(()))  # each query row's softmax, summed per key frame
    ratio = attn[..., -4:].sum(dim=(-1, -2)) / attn[..., 3:].sum(dim=(-1, -2))
    static = ratio >= 0.8
    heads = meta["heads"]
    assert heads == __import__("json").loads((TRACE / "heads.json").read_text())
    assert (heads["num_layers"], heads["num_heads"]) == (3, 2)
    for layer in heads["layers"]:
        i = layer["layer_idx"]
        assert layer["static_head"] == [h for h in range(2) if static[i, h]]
        assert layer["dynamic_head"] == [h for h in range(2) if not static[i, h]]
    assert [(l["static_head"], l["dynamic_head"]) for l in heads["layers"]] == [([1], [0]), ([0], [1]), ([1], [0])]
    assert ((ratio - 0.8).abs() > 0.05).all()  # no head near the threshold


def test_chunk_zero_replays_exactly_through_self_forcing(trace):
    from deepforcing.cache import make_policy

    meta, t = trace
    ours, _ = replay_rollout(TRACE, meta, t, make_policy("self-forcing"), meta["chunk_frames"])
    err = per_chunk_error(ours, t["latents"])
    assert err[0] < 1e-5 and err[1:].min() > 1e-3, err  # from chunk 1 on the release's 2-frame cache matters
