"""CausVid's long videos (``pipeline.restart``) on a tiny random Wan model with the real VAE code (4 pixel frames per
latent): every window a fresh rollout, started from pixel frame -9 re-encoded + the last 2 latents, the tail dropped."""

import json

import av
import pytest
import torch

from deepforcing.cli import main
from deepforcing.models.bundle import wan_bundle
from deepforcing.models.loading import load_causal_wan
from deepforcing.pipeline.generate import VideoGenerator
from deepforcing.pipeline.restart import RestartingRollout
from tiny_layouts import write_tiny_umt5, write_tiny_wan_vae
from tiny_transformer_layouts import TINY_WAN_CONFIG, original_wan_state_dict, write_original_folder

CFG = {**TINY_WAN_CONFIG, "text_dim": 16}
PROMPT = "a red cat runs on the green grass"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    original = tmp_path_factory.mktemp("wan_original")
    write_original_folder(original, original_wan_state_dict(CFG, seed=5), CFG)
    folder = tmp_path_factory.mktemp("wan_diffusers")
    load_causal_wan(original).save_pretrained(str(folder / "transformer"))
    write_tiny_wan_vae(folder, layout="diffusers")
    write_tiny_umt5(folder, layout="diffusers")
    return folder


@pytest.fixture(scope="module")
def generator(folder):
    return VideoGenerator(wan_bundle(folder, preset="causvid", resolution=(32, 48)))


def test_causvid_preset_restarts_every_window_from_three_latents(generator):
    bundle = generator.bundle
    assert bundle.sampling.restart_overlap == 3 and bundle.default_policy["window"] == 21
    policy = generator.resolve_policy(None)
    with pytest.raises(ValueError, match="--no-restart"):  # the API refuses a policy that would not act
        generator.open_rollout(PROMPT, generator.resolve_policy("deep-forcing"), max_frames=39)
    within = generator.open_rollout(PROMPT, generator.resolve_policy("deep-forcing"), max_frames=21)
    assert not isinstance(within, RestartingRollout)  # one window: a plain rollout, where every policy is full
    rollout = generator.open_rollout(PROMPT, policy, max_frames=39)
    assert isinstance(rollout, RestartingRollout)
    seen = []
    rollout.cache.attention_observer = lambda layer, call, q: seen.append(call.start_frame)
    results = [rollout.step() for _ in range(7)]  # segment 0: 7 sampled chunks = 21 latent frames
    first_cache = rollout.cache
    seg0 = torch.cat([r.latents for r in results], dim=2)
    assert [r.start_frame for r in results] == list(range(0, 21, 3))
    # the segment's own decode: 81 pixel frames, of which the last 9 are held back
    pixels = bundle.codec.streaming_decoder().decode_chunk(seg0.permute(0, 2, 1, 3, 4))
    emitted = torch.cat([r.frames for r in results], dim=1)
    assert pixels.shape[1] == 81 and emitted.shape[1] == 72
    torch.testing.assert_close(emitted, pixels[:, :72])

    prefix = rollout.step()  # segment 1 begins: the prefix chunk, written at t = 0 into a fresh cache
    assert rollout.cache is not first_cache and rollout.segment == 1
    assert prefix.start_frame == 18 and rollout.next_frame == 21  # it re-makes frames 18-20, adds none
    image_latent = bundle.codec.encode_chunk(pixels[:, 72:73]).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(prefix.latents[:, :, :1], image_latent)  # pixel frame -9, re-encoded alone
    torch.testing.assert_close(prefix.latents[:, :, 1:], seg0[:, :, 19:21])  # + the last 2 latents
    assert rollout.rollout.next_frame == 3  # RoPE positions restarted at 0
    assert seen[-1] == 0  # the observer moved to the new cache (the prefix call, at frame 0 again)
    # its frames come from a fresh decoder: the re-encoded image latent decodes as a first frame (1 + 4 + 4)
    fresh = bundle.codec.streaming_decoder().decode_chunk(prefix.latents.permute(0, 2, 1, 3, 4))
    assert prefix.frames.shape[1] == 9
    torch.testing.assert_close(prefix.frames, fresh)

    rest = [rollout.step() for _ in range(6)]  # 6 sampled chunks: frames 21-38, the video's end keeps its tail
    assert rollout.next_frame == 39 and rest[-1].start_frame == 36
    assert sum(r.frames.shape[1] for r in [prefix, *rest]) == 81  # nothing re-makes the last tail


def test_causvid_long_video_from_the_cli(folder, tmp_path, capsys, monkeypatch):
    base = ["generate", PROMPT, "--model", str(folder), "--preset", "causvid", "--resolution", "32x48", "--quiet",
            "--frames", "39"]
    out = tmp_path / "cv.mp4"
    assert main([*base, "-o", str(out), "--save-latents"]) == 0
    from safetensors.torch import load_file

    saved = load_file(str(out.with_suffix(".latents.safetensors")))["latents"]
    assert saved.shape[1] == 39  # the prefix chunk replaced the 3 frames it re-makes, nothing doubled
    with av.open(str(out)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    assert frames == 1 + 4 * 38  # 72 from the first rollout + 81 from the second
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["sampling"]["restart_overlap"] == 3 and meta["latent_frames"] == 39
    assert meta["chunks"] == {"planned": 13, "written": 13}  # the prefix chunk re-makes frames 18-20

    capsys.readouterr()
    assert main([*base, "--policy", "deep-forcing", "-o", str(tmp_path / "df.mp4")]) == 2
    assert "--no-restart" in capsys.readouterr().err
    import deepforcing.models.bundle as bundle_module

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded before the request was refused")

    monkeypatch.setattr(bundle_module, "wan_bundle", no_loading)  # --frames is known: refused before any load
    assert main([*base, "--policy", "deep-forcing", "-o", str(tmp_path / "df.mp4")]) == 2
    assert "restarts its rollout every 21 frames" in capsys.readouterr().err
    monkeypatch.undo()
    rolled = tmp_path / "rolled.mp4"
    assert main([*base, "--policy", "deep-forcing", "--no-restart", "-o", str(rolled)]) == 0
    meta = json.loads(rolled.with_suffix(".json").read_text())
    assert meta["sampling"]["restart_overlap"] == 0 and meta["policy"]["policy"] == "deep-forcing"


def test_restart_needs_an_overlap_of_whole_chunks():
    from deepforcing.models.contract import SamplingConfig

    with pytest.raises(ValueError, match="multiple of chunk_frames"):
        SamplingConfig(restart_overlap=2)
