"""`deepforcing generate` end to end on tiny random models saved in both real folder layouts (DiT + VAE + umT5)."""

import json

import av
from safetensors.torch import load_file
import pytest
import torch

from deepforcing.cli import main
from deepforcing.models.bundle import wan_bundle
from deepforcing.models.loading import load_causal_wan
from deepforcing.models.presets import get_preset
from deepforcing.pipeline.generate import VideoGenerator
from tiny_layouts import TINY_VAE_CONFIG, write_tiny_umt5, write_tiny_wan_vae
from tiny_transformer_layouts import TINY_WAN_CONFIG, original_wan_state_dict, write_original_folder, \
    write_self_forcing_checkpoint

CFG = {**TINY_WAN_CONFIG, "text_dim": 16}  # = the tiny umT5's d_model; in_dim 4 = the tiny VAE's z_dim


@pytest.fixture(scope="module")
def original_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan_original")
    write_original_folder(folder, original_wan_state_dict(CFG, seed=1), CFG)
    write_tiny_wan_vae(folder, layout="original")
    write_tiny_umt5(folder, layout="original")
    return folder


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory, original_folder):
    folder = tmp_path_factory.mktemp("wan_diffusers")
    load_causal_wan(original_folder).save_pretrained(str(folder / "transformer"))
    write_tiny_wan_vae(folder, layout="diffusers")
    write_tiny_umt5(folder, layout="diffusers")
    return folder


def run(folder, out, *extra):
    return main(["generate", "a red cat runs on the green grass", "--model", str(folder), "--frames", "9",
                 "--resolution", "32x48", "--policy", "deep-forcing", "-o", str(out), "--quiet", *extra])


def decoded(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def original_api(folder, out, checkpoint=None, **kw):
    """The original layout through the Python API (its Wan2.1_VAE.pth carries no config: pass the tiny one)."""
    gen = VideoGenerator(wan_bundle(folder, checkpoint=checkpoint, resolution=(32, 48), vae_config=TINY_VAE_CONFIG))
    return gen.generate("a red cat runs on the green grass", output=out, latent_frames=9, policy="deep-forcing", **kw)


def test_original_and_diffusers_layouts_generate_the_same_video(original_folder, diffusers_folder, tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    original_api(original_folder, a, save_latents_to=a.with_suffix(".latents.safetensors"))
    assert run(diffusers_folder, b, "--save-latents") == 0
    fa, fb = decoded(a), decoded(b)
    assert len(fa) == len(fb) == 1 + 4 * 8 and fa[0].shape == (32, 48, 3)  # causal VAE: 1 + 4 (F - 1) frames
    from safetensors.torch import load_file

    la = next(iter(load_file(str(a.with_suffix(".latents.safetensors"))).values()))
    lb = next(iter(load_file(str(b.with_suffix(".latents.safetensors"))).values()))
    assert torch.allclose(la, lb, atol=1e-5)
    meta = json.loads(a.with_suffix(".json").read_text())
    assert meta["model"].startswith("self-forcing") and meta["latent_shape"] == [4, 4, 6]


def test_self_forcing_checkpoint_overrides_the_folder_weights(original_folder, tmp_path):
    ckpt = write_self_forcing_checkpoint(tmp_path / "sf.pt", original_wan_state_dict(CFG, seed=7))
    base, tuned = tmp_path / "base.mp4", tmp_path / "tuned.mp4"
    original_api(original_folder, base)
    original_api(original_folder, tuned, checkpoint=ckpt)
    assert any((x != y).any() for x, y in zip(decoded(base), decoded(tuned)))


def test_wrong_checkpoint_is_a_clear_error(diffusers_folder, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"generator_ema": {"model.not_a_key": torch.zeros(1)}}, bad)
    assert run(diffusers_folder, tmp_path / "x.mp4", "--checkpoint", str(bad)) == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "missing" in err and "Traceback" not in err
    assert run(diffusers_folder, tmp_path / "x.mp4", "--resolution", "30x40") == 2
    assert "multiple of 16" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("dtype, tolerance", [("bfloat16", 0.05), ("float16", 0.01)])
def test_half_precision_generates_close_to_float32(diffusers_folder, tmp_path, dtype, tolerance):
    """Real layouts in bf16 / fp16 through the CLI: the KV cache and every attention input follow the compute dtype
    (the cache once took fp32 from the first parameter and SDPA refused the mix). Measured on the tiny model:
    bf16 max |diff| 0.015, fp16 0.002, latents up to |4|."""
    from safetensors.torch import load_file

    ref, half = tmp_path / "fp32.mp4", tmp_path / f"{dtype}.mp4"
    assert run(diffusers_folder, ref, "--save-latents") == 0
    assert run(diffusers_folder, half, "--save-latents", "--dtype", dtype) == 0
    a = load_file(str(ref.with_suffix(".latents.safetensors")))["latents"]
    b = load_file(str(half.with_suffix(".latents.safetensors")))["latents"]
    assert b.dtype == getattr(torch, dtype)
    assert torch.isfinite(b.float()).all()
    deviation = (a - b.float()).abs().max().item()
    assert 0 < deviation < tolerance * a.abs().max().item()
    assert len(decoded(half)) == len(decoded(ref))


def test_impossible_resolution_is_refused_with_the_estimate(diffusers_folder, tmp_path, capsys):
    out = tmp_path / "huge.mp4"
    assert run(diffusers_folder, out, "--resolution", "160000x160000") == 2
    err = capsys.readouterr().err
    assert "the KV cache of this request needs" in err and "is free" in err
    assert "PiB" in err or "TiB" in err
    assert not list(tmp_path.iterdir())


def test_attention_backend_is_switched_through_diffusers_dispatcher(diffusers_folder, tmp_path, capsys, monkeypatch):
    """Every attention call goes through diffusers' dispatch_attention_fn: the math backend gives the same video
    as native SDPA, a spy sees the backend, and an unknown name is refused before loading."""
    from safetensors.torch import load_file
    from diffusers.models import attention_dispatch

    seen = []
    real = attention_dispatch.dispatch_attention_fn

    def spy(*a, backend=None, **kw):
        seen.append(backend)
        return real(*a, backend=backend, **kw)

    monkeypatch.setattr(attention_dispatch, "dispatch_attention_fn", spy)  # wan_causal calls it through the module
    registry = attention_dispatch._AttentionBackendRegistry  # diffusers' switch also sets its process-wide default:
    monkeypatch.setattr(registry, "_active_backend", registry._active_backend)  # restored after this test
    native, math_ = tmp_path / "native.mp4", tmp_path / "math.mp4"
    assert run(diffusers_folder, native, "--save-latents") == 0
    calls = len(seen)
    assert run(diffusers_folder, math_, "--save-latents", "--attention-backend", "_native_math") == 0
    assert set(seen[:calls]) == {None} and set(seen[calls:]) == {attention_dispatch.AttentionBackendName("_native_math")}
    a = load_file(str(native.with_suffix(".latents.safetensors")))["latents"]
    b = load_file(str(math_.with_suffix(".latents.safetensors")))["latents"]
    assert (a - b).abs().max().item() < 1e-4
    assert run(diffusers_folder, tmp_path / "x.mp4", "--attention-backend", "warp-drive") == 2
    assert "unknown attention backend 'warp-drive'" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["causvid", "causal-forcing", "self-forcing"])
def test_presets_load_the_weights_their_release_loads(diffusers_folder, tmp_path, preset):
    """CausVid and chunk-wise Causal Forcing ship a 'generator' only (their inference scripts load it); Self Forcing
    runs 'generator_ema'. A checkpoint with both, different: each preset must pick its own."""
    ema, raw = original_wan_state_dict(CFG, seed=11), original_wan_state_dict(CFG, seed=12)
    both = write_self_forcing_checkpoint(tmp_path / "both.pt", ema, generator=raw, fsdp=False)
    only_raw = tmp_path / "raw.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in raw.items()}}, only_raw)
    out_both, out_raw = tmp_path / "both.mp4", tmp_path / "raw.mp4"
    # the latents are compared (bit-exact), not the MP4s: x264 is not bit-reproducible from run to run
    extra = ("--preset", preset, "--frames", "6", "--save-latents")
    assert run(diffusers_folder, out_both, "--checkpoint", str(both), *extra) == 0
    same_as_raw = load_file(str(out_both.with_suffix(".latents.safetensors")))["latents"]
    if preset == "self-forcing":
        assert run(diffusers_folder, out_raw, "--checkpoint", str(only_raw), *extra) == 2  # no EMA in that file
        return
    assert run(diffusers_folder, out_raw, "--checkpoint", str(only_raw), *extra) == 0
    assert torch.equal(same_as_raw, load_file(str(out_raw.with_suffix(".latents.safetensors")))["latents"])
    meta = json.loads(out_raw.with_suffix(".json").read_text())
    assert meta["sampling"]["denoising_steps"] == list(get_preset(preset).denoising_steps)


def test_rolling_forcing_preset_runs_its_own_loop(diffusers_folder, tmp_path, capsys):
    """Its release layout (generator_ema with FSDP segments), its window loop, and a clear error for a policy that
    has no meaning with its cache."""
    ckpt = write_self_forcing_checkpoint(tmp_path / "rf.pt", original_wan_state_dict(CFG, seed=3))  # fsdp=True
    out = tmp_path / "rf.mp4"
    base = ["generate", "a red cat runs on the green grass", "--model", str(diffusers_folder), "--resolution",
            "32x48", "--checkpoint", str(ckpt), "--preset", "rolling-forcing", "--quiet"]
    assert main([*base, "--frames", "18", "-o", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["sampling"]["solver"] == "rolling-forcing" and meta["policy"]["policy"] == "rolling-forcing-sink"
    assert meta["chunks"] == {"planned": 6, "written": 6} and len(decoded(out)) == 1 + 4 * 17
    capsys.readouterr()
    assert main([*base, "--frames", "18", "--policy", "deep-forcing", "-o", str(tmp_path / "x.mp4")]) == 2
    assert "use --policy rolling-forcing-sink --sink 3" in capsys.readouterr().err
    assert main([*base, "--frames", "9", "-o", str(tmp_path / "y.mp4")]) == 2  # fewer chunks than its window
    assert "needs at least 5 chunks" in capsys.readouterr().err


@pytest.mark.parametrize("preset, later", [("causal-forcing++-2step", [1000.0, 833.3333]),
                                           ("causal-forcing++-1step", [1000.0]),
                                           ("causal-forcing-framewise", [1000.0, 937.5, 833.3333, 625.0])])
def test_causal_forcing_framewise_presets_step_frame_by_frame_with_a_4_step_first_frame(diffusers_folder, tmp_path,
                                                                                        preset, later):
    """One latent frame per step; Causal Forcing++ denoises frame 0 with its 4-step list and every later frame with
    its 1 or 2 steps (both warped through the shift-5 table), then the clean pass at t = 0."""
    ckpt = write_self_forcing_checkpoint(tmp_path / "cf.pt", original_wan_state_dict(CFG, seed=4))  # generator_ema
    gen = VideoGenerator(wan_bundle(diffusers_folder, checkpoint=ckpt, preset=preset, resolution=(32, 48)))
    assert gen.bundle.sampling.chunk_frames == 1
    rollout = gen.open_rollout("a red cat", gen.resolve_policy(None), max_frames=3)
    calls = []
    inner = rollout._call
    rollout._call = lambda x, t, start, clean: calls.append((start, round(float(t), 4), clean, x.shape[2])) or \
        inner(x, t, start, clean)
    for _ in range(3):
        rollout.step()
    first = [1000.0, 937.5, 833.3333, 625.0]
    expected = [(0, t, False, 1) for t in first] + [(0, 0.0, True, 1)]
    for f in (1, 2):
        expected += [(f, t, False, 1) for t in later] + [(f, 0.0, True, 1)]
    assert calls == expected
    out = tmp_path / f"{preset}.mp4"
    assert main(["generate", "a red cat", "--model", str(diffusers_folder), "--checkpoint", str(ckpt), "--preset",
                 preset, "--resolution", "32x48", "--frames", "4", "-o", str(out), "--quiet"]) == 0
    assert len(decoded(out)) == 1 + 4 * 3  # frame 0 decodes to 1 pixel frame, each later latent to 4
