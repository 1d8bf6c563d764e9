"""Forcing-KV (arXiv 2605.09681) replays its release trace: zju-jiyicheng/Forcing-KV@50ac1f4 (recorded by
``scripts/record_forcing_kv_trace.py``: 8 chunks, the head split after chunk 1, six buffer choices) through the
``forcing-kv`` policy with the trace's head profile, same weights, noise and re-noising draws; and the policy refuses a
missing or foreign head profile before any weights load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deepforcing.cache import REGIONS, make_policy
from deepforcing.cache.forcing_kv import HeadProfile, HeadProfileError
from release_traces import load_trace, per_chunk_error, replay_rollout

TRACE = Path(__file__).parent / "data" / "forcing_kv_trace"
RELEASE = "zju-jiyicheng/Forcing-KV@50ac1f4"
HEADS = TRACE / "heads.json"


@pytest.fixture(scope="module")
def replay():
    meta, t = load_trace(TRACE)
    assert meta["release"] == RELEASE
    fkv = meta["forcingkv"]
    policy = make_policy("forcing-kv", head_profile=str(HEADS), sink=meta["sink_size"],
                         static_frames=fkv["spatial_context_length"], ring_frames=fkv["temporal_context_length"],
                         buffer_frames=fkv["dynamic_context_length"], patches=fkv["num_frame_patch"],
                         retention=fkv["sim_retention_ratio"], split_after=fkv["ar_start"])
    assert policy == make_policy("forcing-kv", head_profile=str(HEADS))  # the release's defaults are the policy's
    choices = []
    score = policy._score_patches
    policy._score_patches = lambda chain, tokens: choices.append(score(chain, tokens)) or choices[-1]
    ours, rollout = replay_rollout(TRACE, meta, t, policy, meta["chunk_frames"])
    return meta, t, ours, rollout.cache, choices


def test_forcing_kv_replays_its_release_trace(replay):
    _, t, ours, _, _ = replay
    err = per_chunk_error(ours, t["latents"])
    assert len(err) == 8 and err.max() <= 1e-5, err


def test_the_buffer_keeps_the_releases_patches_scored_once_per_chunk(replay):
    _, t, _, _, choices = replay
    assert len(choices) == 5  # layer 1 at chunks 3..7's first call = the release's clean passes of chunks 2..6
    for ours, release in zip(choices, t["kept_patches"][:5]):  # (its 6th choice, at chunk 7, has no reader)
        assert torch.equal(ours, release)


def test_another_head_assignment_does_not_replay(tmp_path):
    meta, t = load_trace(TRACE)
    swapped = json.loads(HEADS.read_text())
    for layer in swapped["layers"]:
        layer["static_head"], layer["dynamic_head"] = layer["dynamic_head"], layer["static_head"]
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    ours, _ = replay_rollout(TRACE, meta, t, make_policy("forcing-kv", head_profile=str(tmp_path / "swapped.json")),
                             meta["chunk_frames"])
    err = per_chunk_error(ours, t["latents"])
    assert err[:3].max() == 0 and err[3:].min() > 1e-3, err  # both groups read [f0][f5][chunk] at chunk 2


def test_the_split_layers_hold_the_releases_groups(replay):
    meta, t, _, cache, _ = replay
    F, fields = meta["tokens_per_frame"], meta["grouped_cache_fields"]
    assert len(cache.layers[0].views()) == 1 and cache.layers[0].store.length == 5 * F  # layer 0: plain, 5 frames
    release = t["grouped_caches"][5]  # after chunk 6's clean pass: what chunk 7 read
    for i, layer in enumerate(cache.layers[1:]):
        static, dynamic = (view.store for view in layer.views())
        assert [v.group.name for v in layer.views()] == ["static", "dynamic"]
        assert [v.group.heads for v in layer.views()] == [tuple(meta["heads"]["layers"][i + 1][k])
                                                           for k in ("static_head", "dynamic_head")]
        parts = dict(zip(fields, release[i].split(F * 24)))  # every field: 1 frame x 1 head x 24
        assert static.length == 5 * F and dynamic.length == 6 * F
        k, v = static.keys[0, 0], static.values[0, 0]  # [slots, D]: [f0][f20][f21 f22 f23]
        for name, got in (("sink_spatial_k", k[:F]), ("sink_spatial_v", v[:F]), ("spatial_k", k[F:2 * F]),
                          ("spatial_v", v[F:2 * F])):
            assert (got.flatten() - parts[f"group_{name}"]).abs().max() < 1e-5, name
        k, v = dynamic.keys[0, 0], dynamic.values[0, 0]  # [f0][12 kept tokens][f20][f21 f22 f23]
        for name, got in (("sink_temporal_k", k[:F]), ("sink_temporal_v", v[:F]),
                          ("dynamic_temporal_k", k[F:2 * F]), ("dynamic_temporal_v", v[F:2 * F]),
                          ("temporal_k", k[2 * F:3 * F]), ("temporal_v", v[2 * F:3 * F])):
            assert (got.flatten() - parts[f"group_{name}"]).abs().max() < 1e-5, name


def test_regions_name_the_buffer_kept(replay):
    _, _, _, cache, _ = replay
    static, dynamic = cache.layers[1].views()
    F = cache.geometry.tokens_per_frame
    codes = [REGIONS[int(c)] for c in cache.policy.regions(dynamic)[0, ::F]]
    assert codes == ["sink", "kept", "recent", "recent", "recent", "recent"]
    assert [REGIONS[int(c)] for c in cache.policy.regions(static)[0, ::F]] == ["sink"] + ["recent"] * 4


def test_a_missing_or_foreign_head_profile_is_refused_before_weights_load(tmp_path):
    from deepforcing.model_spec import ModelSpec, check_model

    model = check_model(ModelSpec(model=str(TRACE), device="cpu"))  # the tiny Wan folder: 3 layers x 2 heads
    assert model.attention_shape() == (3, 2)
    with pytest.raises(HeadProfileError, match="needs --head-profile"):
        model.policy("forcing-kv")
    with pytest.raises(HeadProfileError, match="not found"):
        model.policy("forcing-kv", head_profile=str(tmp_path / "none.json"))
    shipped_shape = {"num_layers": 30, "num_heads": 12, "layers": [
        {"layer_idx": i, "static_head": [0], "dynamic_head": list(range(1, 12))} for i in range(30)]}
    (tmp_path / "sf.json").write_text(json.dumps(shipped_shape))
    with pytest.raises(HeadProfileError, match="30 layers x 12 heads, the model has 3 x 2"):
        model.policy("forcing-kv", head_profile=str(tmp_path / "sf.json"))
    (tmp_path / "twice.json").write_text(json.dumps({"layers": [{"static_head": [0, 1], "dynamic_head": [1]}]}))
    with pytest.raises(HeadProfileError, match="once each"):
        model.policy("forcing-kv", head_profile=str(tmp_path / "twice.json"))
    assert model.policy("forcing-kv", head_profile=str(HEADS)).profile() == HeadProfile.load(HEADS)


def test_impossible_settings_are_refused():
    with pytest.raises(ValueError, match="round"):
        make_policy("forcing-kv", retention=0.5)  # 9 patches kept, the 1-frame buffer holds 6 (the release raises)
    with pytest.raises(ValueError, match="3-frame chunks"):
        make_policy("forcing-kv").validate(1)
    with pytest.raises(ValueError, match="drop --window"):
        make_policy("forcing-kv", window=21).validate(3)
    with pytest.raises(ValueError, match="not reproduced"):
        make_policy("forcing-kv").validate_event("prompt-switch", 3)


def test_plan_shows_the_split_and_the_buffer(tmp_path):
    from deepforcing.cache.plan import GROUP_HEADS, simulate

    profile = {"num_layers": 2, "num_heads": GROUP_HEADS, "layers": [
        {"layer_idx": 0, "static_head": [0, 1, 2, 3], "dynamic_head": []},
        {"layer_idx": 1, "static_head": [0, 3], "dynamic_head": [1, 2]}]}
    (tmp_path / "heads.json").write_text(json.dumps(profile))
    reports = simulate(make_policy("forcing-kv", head_profile=str(tmp_path / "heads.json")), 8, tokens_per_frame=6)
    assert [r.cache_frames for r in reports] == [3, 5, 5] + [5.5] * 5  # heads' mean of the last layer
    assert [r.groups for r in reports[:2]] == [None, None]  # plain until AR step 1's clean pass
    rows = {g["group"]: g for g in reports[-1].groups}
    assert (rows["static"]["heads"], rows["dynamic"]["heads"]) == (2, 2)
    assert [rows["static"][k] for k in ("sink_frames", "topc_frames", "recent_frames")] == [1, 0, 4]
    assert [rows["dynamic"][k] for k in ("sink_frames", "topc_frames", "recent_frames")] == [1, 1, 4]
    lo, hi = rows["dynamic"]["topc_positions"]  # the buffer at chunk 7: patches of frame 17 (the ring) and 18-19
    assert 17 <= lo <= hi <= 19 and rows["dynamic"]["recent_positions"] == [20, 23]
