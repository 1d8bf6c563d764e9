"""``deepforcing calibrate --policy forcing-kv`` makes a checkpoint's head profile the way the Forcing-KV release does
(zju-jiyicheng/Forcing-KV@50ac1f4 ``configs_head/head_profile.py`` at the shipped Self Forcing profile's skip 3):
on the tiny model of the release trace, with the profiling video's noise and draws, the engine's probe sees the same
frame-wise attention the release's script read and writes the same JSON (``tests/data/forcing_kv_trace/heads.json``,
made by the release's script); the command runs end to end on a tiny mini model and its file drives the policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deepforcing.cache import make_policy
from deepforcing.cache.forcing_kv import head_profile_json, static_share, write_head_profile
from deepforcing.cli import main
from deepforcing.pipeline.forcing_kv_calibration import HeadProfileProbe, calibration_policy
from release_traces import load_trace

TRACE = Path(__file__).parent / "data" / "forcing_kv_trace"


def test_the_tiny_models_profile_is_the_release_scripts(tmp_path):
    from deepforcing.models.contract import SamplingConfig
    from deepforcing.models.loading import load_causal_wan
    from deepforcing.models.presets import get_preset
    from deepforcing.pipeline.rollout import VideoRollout
    from test_causvid_parity import ReplayedNoise, _chunks

    meta, t = load_trace(TRACE)
    frames = meta["head_profile"]["calibration_frames"]
    spec = get_preset("self-forcing")
    sampling = SamplingConfig(denoising_steps=spec.denoising_steps, warp=spec.warp, shift=spec.shift, chunk_frames=3)
    model = load_causal_wan(TRACE)
    probe = HeadProfileProbe(chunk_start=frames - 3)
    with torch.no_grad():
        rollout = VideoRollout(model=model, policy=calibration_policy(frames), context=model.encode_context(t["context"]),
                               latent_shape=tuple(t["calibration_noise"].shape[2:]), sampling=sampling,
                               noise=ReplayedNoise(_chunks(t["calibration_noise"]), t["calibration_renoise"]))
        rollout.cache.attention_observer = probe
        for _ in range(frames // 3):
            rollout.step()
    mass = probe.frame_mass()  # [layers, heads, queries, key frames]
    assert mass.shape == t["calibration_frame_attention"].shape == (3, 2, 36, 21)
    assert (mass - t["calibration_frame_attention"]).abs().max() < 1e-5
    shares = probe.shares()
    release = static_share(t["calibration_frame_attention"])
    assert (shares - release).abs().max() < 1e-5
    ours = write_head_profile(tmp_path / "heads.json", head_profile_json(shares))
    assert ours.read_bytes() == (TRACE / "heads.json").read_bytes()  # byte for byte the release script's file


def test_the_statistic_skips_the_first_key_frames():
    mass = torch.zeros(1, 1, 2, 10)  # [layers, heads, query rows, key frames]
    mass[..., 0] = 5.0  # frame 0 (the sink) never counts
    mass[..., 3:6] = 0.2
    mass[..., 6:] = 1.0
    assert torch.allclose(static_share(mass), torch.tensor([[4.0 / 4.6]]))
    assert torch.allclose(static_share(mass, skip=1), torch.tensor([[4.0 / 4.6]]))  # frames 1-2 empty
    mass[..., 1:3] = 0.5
    assert torch.allclose(static_share(mass, skip=1), torch.tensor([[4.0 / 5.6]]))
    assert static_share(mass, skip=1) < 0.8 <= static_share(mass)  # the parity trap: the script's 1, the shipped 3


def test_calibrate_command_writes_a_profile_the_policy_reads(tiny_mini, tmp_path, capsys):
    out = tmp_path / "heads.json"
    assert main(["calibrate", "--policy", "forcing-kv", "--out", str(out), "--model", str(tiny_mini)]) == 0
    profile = json.loads(out.read_text())
    assert profile["format"] == "forcingkv_offline" and profile["num_layers"] == 2
    heads = profile["num_heads"]
    for layer in profile["layers"]:
        assert sorted(layer["static_head"] + layer["dynamic_head"]) == list(range(heads))
    assert "static heads" in capsys.readouterr().out
    policy = make_policy("forcing-kv", head_profile=str(out))
    policy.validate_model(2, heads)


def test_generate_refuses_a_foreign_profile_before_the_model_loads(tiny_mini, tmp_path, capsys, monkeypatch):
    from deepforcing.model_spec import CheckedModel

    monkeypatch.setattr(CheckedModel, "open", lambda self: pytest.fail("weights loaded"))
    argv = ["generate", "a red circle", "--model", str(tiny_mini), "--frames", "6", "-o", str(tmp_path / "v.mp4"),
            "--policy", "forcing-kv"]
    assert main(argv) == 2 and "needs --head-profile" in capsys.readouterr().err
    assert main(argv + ["--head-profile", str(TRACE / "heads.json")]) == 2
    assert "is for 3 layers x 2 heads, the model has 2 x" in capsys.readouterr().err


def test_patches_that_do_not_divide_a_frame_are_refused_before_the_model_loads(tiny_mini, tmp_path, capsys,
                                                                                 monkeypatch):
    from deepforcing.model_spec import CheckedModel, ModelSpec, check_model

    out = tmp_path / "heads.json"
    assert main(["calibrate", "--policy", "forcing-kv", "--out", str(out), "--model", str(tiny_mini)]) == 0
    tokens = check_model(ModelSpec(str(tiny_mini))).tokens_per_frame()
    bundle = check_model(ModelSpec(str(tiny_mini))).open().bundle
    assert tokens == bundle.transformer.tokens_per_frame(*bundle.latent_shape[1:])
    bad = next(p for p in range(2, tokens + 2) if tokens % p)
    monkeypatch.setattr(CheckedModel, "open", lambda self: pytest.fail("weights loaded"))
    argv = ["generate", "a red circle", "--model", str(tiny_mini), "--frames", "6", "-o", str(tmp_path / "v.mp4"),
            "--policy", "forcing-kv", "--head-profile", str(out), "--patches", str(bad)]
    assert main(argv) == 2
    assert f"{tokens} tokens per frame do not split into --patches {bad}" in capsys.readouterr().err
    assert not list(tmp_path.glob("v*.mp4"))
