"""Checkpoint loading: original Wan / diffusers / Self-Forcing layouts, errors naming keys, LoRA merge, presets."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from deepforcing.models.loading import load_causal_wan, merge_lora, read_model_config
from deepforcing.models.presets import PRESETS, get_preset
from tiny_transformer_layouts import (
    TINY_WAN_CONFIG,
    original_wan_state_dict,
    write_original_folder,
    write_self_forcing_checkpoint,
)


@pytest.fixture(scope="module")
def sd():
    return original_wan_state_dict(seed=0)


def test_original_folder_maps_keys_like_diffusers(tmp_path, sd):
    model = load_causal_wan(write_original_folder(tmp_path / "wan", sd))
    assert model.config.num_attention_heads == 2 and model.config.attention_head_dim == 32
    assert model.config.text_len == 12 and model.config.text_dim == 24
    b = model.blocks[1]
    assert torch.equal(b.attn1.to_q.weight, sd["blocks.1.self_attn.q.weight"])
    assert torch.equal(b.attn2.to_out[0].bias, sd["blocks.1.cross_attn.o.bias"])
    assert torch.equal(b.norm2.weight, sd["blocks.1.norm3.weight"])  # cross-attn norm: Wan norm3 = diffusers norm2
    assert torch.equal(b.scale_shift_table, sd["blocks.1.modulation"])
    assert torch.equal(b.ffn.net[0].proj.weight, sd["blocks.1.ffn.0.weight"])
    assert torch.equal(model.scale_shift_table, sd["head.modulation"])
    assert torch.equal(model.proj_out.weight, sd["head.head.weight"])
    assert torch.equal(model.condition_embedder.time_proj.weight, sd["time_projection.1.weight"])


def test_sharded_and_diffusers_layouts_give_the_same_model(tmp_path, sd):
    ref = load_causal_wan(write_original_folder(tmp_path / "single", sd)).state_dict()
    sharded = load_causal_wan(write_original_folder(tmp_path / "sharded", sd, shards=3)).state_dict()
    assert all(torch.equal(ref[k], sharded[k]) for k in ref)

    model = load_causal_wan(tmp_path / "single")
    model.save_pretrained(tmp_path / "pipe" / "transformer")  # diffusers layout, inside a pipeline folder
    assert "num_attention_heads" in json.loads((tmp_path / "pipe" / "transformer" / "config.json").read_text())
    again = load_causal_wan(tmp_path / "pipe").state_dict()
    assert all(torch.equal(ref[k], again[k]) for k in ref)


def test_missing_shard_is_named(tmp_path, sd):
    folder = write_original_folder(tmp_path / "sharded", sd, shards=2)
    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="00002-of-00002"):
        load_causal_wan(folder)


def test_self_forcing_checkpoint_ema_by_default_and_generator_selectable(tmp_path, sd):
    other = original_wan_state_dict(seed=1)
    ckpt = write_self_forcing_checkpoint(tmp_path / "sf.pt", ema=sd, generator=other)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY_WAN_CONFIG))
    ema = load_causal_wan(ckpt, config=cfg)
    gen = load_causal_wan(ckpt, config=cfg, use_ema=False)
    assert torch.equal(ema.blocks[0].attn1.to_k.weight, sd["blocks.0.self_attn.k.weight"])
    assert torch.equal(gen.blocks[0].attn1.to_k.weight, other["blocks.0.self_attn.k.weight"])

    only_ema = write_self_forcing_checkpoint(tmp_path / "ema.pt", ema=sd, fsdp=False)
    with pytest.raises(ValueError, match="'generator'.*use_ema=True"):
        load_causal_wan(only_ema, config=cfg, use_ema=False)


def test_bare_files_need_a_config_and_plain_state_dicts_load(tmp_path, sd):
    path = tmp_path / "plain.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ValueError, match="config"):
        load_causal_wan(path)
    model = load_causal_wan(path, config=dict(TINY_WAN_CONFIG))
    assert torch.equal(model.patch_embedding.weight, sd["patch_embedding.weight"])


def test_wrong_keys_error_names_file_and_first_mismatches(tmp_path, sd):
    bad = dict(sd)
    del bad["blocks.0.self_attn.q.weight"]
    bad["blocks.0.self_attn.q_proj.weight"] = torch.zeros(64, 64)
    path = tmp_path / "bad.safetensors"
    save_file(bad, str(path))
    with pytest.raises(ValueError) as err:
        load_causal_wan(path, config=dict(TINY_WAN_CONFIG))
    msg = str(err.value)
    assert "bad.safetensors" in msg and "blocks.0.attn1.to_q.weight" in msg and "q_proj" in msg
    assert "missing 1 keys" in msg and "unexpected 1 keys" in msg

    wrong = dict(sd)
    wrong["blocks.1.ffn.0.weight"] = torch.zeros(7, 64)
    save_file(wrong, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match="wrong shape.*ffn.net.0.proj.weight"):
        load_causal_wan(tmp_path / "shape.safetensors", config=dict(TINY_WAN_CONFIG))


def test_not_a_checkpoint_and_missing_paths(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_causal_wan(junk, config=dict(TINY_WAN_CONFIG))
    with pytest.raises(FileNotFoundError):
        load_causal_wan(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="neither a Wan config"):
        read_model_config({"foo": 1})


def test_lora_is_merged_exactly(tmp_path, sd):
    """LongLive-style PEFT adapter on the original module names, stored under ``generator_lora``."""
    g = torch.Generator().manual_seed(7)
    rank, alpha, scale = 4, 8.0, 0.5
    a = torch.randn(rank, 64, generator=g)
    b = torch.randn(64, rank, generator=g)
    lora = {
        "base_model.model.blocks.1.self_attn.q.lora_A.weight": a,
        "base_model.model.blocks.1.self_attn.q.lora_B.weight": b,
        "base_model.model.blocks.0.ffn.2.lora_A.weight": torch.randn(rank, 96, generator=g),
        "base_model.model.blocks.0.ffn.2.lora_B.weight": torch.randn(64, rank, generator=g),
    }
    torch.save({"generator_lora": lora}, tmp_path / "lora.pt")
    folder = write_original_folder(tmp_path / "base", sd)
    base = load_causal_wan(folder)
    merged = load_causal_wan(folder, lora=tmp_path / "lora.pt", lora_alpha=alpha, lora_scale=scale)
    x = torch.randn(5, 64, generator=g)
    expected = base.blocks[1].attn1.to_q(x) + scale * (alpha / rank) * (x @ a.T @ b.T)
    torch.testing.assert_close(merged.blocks[1].attn1.to_q(x), expected, atol=1e-5, rtol=1e-5)
    assert not torch.equal(merged.blocks[0].ffn.net[2].weight, base.blocks[0].ffn.net[2].weight)
    assert torch.equal(merged.blocks[0].attn1.to_k.weight, base.blocks[0].attn1.to_k.weight)

    with pytest.raises(ValueError, match="not in the model"):
        merge_lora(base.state_dict(), {"blocks.0.self_attn.nope.lora_A.weight": a, "blocks.0.self_attn.nope.lora_B.weight": b})
    with pytest.raises(ValueError, match="lora_A of rank 4 but lora_B of rank 3"):
        merge_lora(base.state_dict(), {"blocks.1.self_attn.q.lora_A.weight": a,
                                       "blocks.1.self_attn.q.lora_B.weight": b[:, :3]})


def test_truncated_safetensors_is_named(tmp_path, sd):
    from safetensors.torch import save_file

    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(full))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.safetensors: cannot be read as safetensors"):
        load_causal_wan(cut, config=dict(TINY_WAN_CONFIG))


def test_half_precision_load_keeps_norms_and_modulation_in_float32(tmp_path, sd):
    model = load_causal_wan(write_original_folder(tmp_path / "wan", sd), dtype=torch.bfloat16)
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.blocks[0].scale_shift_table.dtype == torch.float32
    assert model.blocks[0].norm2.weight.dtype == torch.float32


def test_presets_cite_sources_and_do_not_invent():
    sf = get_preset("self-forcing")
    assert (sf.chunk_frames, sf.window_frames, sf.denoising_steps, sf.shift, sf.warp) == (3, 21, (1000, 750, 500, 250), 5.0, True)
    assert sf.model_config["num_layers"] == 30 and sf.model_config["attention_head_dim"] == 128
    ll = get_preset("longlive")
    assert (ll.window_frames, ll.policy_sizes, ll.lora_rank, ll.lora_alpha) == (12, {"sink": 3}, 256, 256.0)
    cv = get_preset("causvid")  # 3 steps without warp at shift 8, the 'generator' weights (no EMA in its release)
    assert (cv.chunk_frames, cv.window_frames, cv.denoising_steps, cv.warp, cv.shift, cv.use_ema, cv.restart_overlap) == (
        3, 21, (1000, 757, 522), False, 8.0, False, 3)
    cf2 = get_preset("causal-forcing++-2step")  # frame-wise, 2 steps after a 4-step first frame, its EMA weights
    assert (cf2.chunk_frames, cf2.denoising_steps, cf2.first_chunk_steps, cf2.use_ema) == (
        1, (1000, 500), (1000, 750, 500, 250), True)
    cf = get_preset("causal-forcing")  # Self Forcing's inference; the chunk-wise release loads 'generator'
    assert (cf.chunk_frames, cf.window_frames, cf.denoising_steps, cf.shift, cf.use_ema) == (
        3, 21, (1000, 750, 500, 250), 5.0, False)
    for p in PRESETS.values():  # every value names the release file it came from (repo@commit:file)
        named = ["chunk_frames", "window_frames", "denoising_steps", "warp", "shift", "use_ema", "policy"]
        named += ["first_chunk_steps"] * bool(p.first_chunk_steps) + ["restart_overlap"] * bool(p.restart_overlap)
        for value in named:
            source = p.sources[value]
            assert "@" in source and ":" in source.split("@", 1)[1], (p.name, value, source)
        assert all(getattr(p, k) is not None for k in ("chunk_frames", "window_frames", "denoising_steps", "warp",
                                                       "shift"))
    with pytest.raises(ValueError, match="self-forcing"):
        get_preset("nope")


def test_a_preset_holds_its_release_sampler():
    """One SamplingConfig per preset (its fields read through as the preset's), handed to the bundle as it is."""
    from deepforcing.models.contract import SamplingConfig

    rf, ll, cv = get_preset("rolling-forcing"), get_preset("longlive"), get_preset("causvid")
    assert all(isinstance(p.sampling, SamplingConfig) for p in PRESETS.values())
    assert (rf.sampling.solver, ll.sampling.recache, cv.sampling.restart_overlap) == ("rolling-forcing", "joint", 3)
    assert rf.chunk_frames == rf.sampling.chunk_frames == 3 and rf.solver == "rolling-forcing"
    assert get_preset("self-forcing").sampling == SamplingConfig()  # Self Forcing's sampler is the default one
    with pytest.raises(AttributeError, match="no attribute 'chunk_frame'"):
        rf.chunk_frame  # noqa: B018  (a misspelt name is not read through)
