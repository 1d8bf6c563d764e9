"""Starting a video from given frames: `generate --image / --video / --keep-input` and `start_image=` /
`start_video=` (issue 22 items 1 and 5).

Bad starts are refused before any model loads (exit 2, one line, nothing written); a 9-frame clip made by `generate`
is extended: the output's first frames are the clip's own (``--keep-input``), and the continuation's first chunk
attends to the clip's K/V, unchanged in the cache (checked with an attention observer).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepforcing.cli import main
from deepforcing.pipeline import start as start_module
from deepforcing.pipeline.start import StartGeometry, StartProbe, check_start_length, load_start

WAN_LIKE = StartGeometry(height=480, width=832, temporal_scale=4, chunk_frames=3, window=21)


def _mp4(path, frames: np.ndarray, fps: int = 16) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for img in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode(None))


def _read_mp4(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture()
def starts(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "notes.png").write_text("not an image")
    frames = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(2)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    _audio_only(tmp_path / "audio.mp4")
    _mp4(tmp_path / "long.mp4", rng.integers(0, 255, (30, 16, 16, 3), dtype=np.uint8))
    return tmp_path


def _audio_only(path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), dtype=np.float32)
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


BAD = [
    (["--image", "OUT/missing.png"], "--image file not found"),
    (["--image", "OUT/notes.png"], "is not a readable image; give a PNG or JPEG"),
    (["--image", "OUT/anim.gif"], "is an animated image (2 frames)"),
    (["--image", "OUT/deep.png"], "has 16 bits per channel"),
    (["--image", "OUT/big.png"], "resize it to at most"),
    (["--video", "OUT/audio.mp4"], "has no video stream"),
    (["--video", "OUT/notes.png"], "is not a readable video"),
    (["--video", "OUT/long.mp4"], "30 frames (30 latent frames) but the attention window is 21"),
    (["--keep-input"], "--keep-input writes the given frames: use it with --image or --video"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[m[:24] for _, m in BAD])
def test_bad_start_exits_2_with_one_line_before_the_model_loads(tiny_mini, starts, capsys, monkeypatch, argv,
                                                                 message):
    monkeypatch.setattr(start_module, "MAX_START_PIXELS", 1000)  # "huge": 40 x 40 here
    monkeypatch.setattr("deepforcing.model_spec.CheckedModel.open",
                        lambda self: pytest.fail("the model must not be opened for a bad start"))
    before = sorted(p.name for p in starts.iterdir())
    out = starts / "out.mp4"
    code = main(["generate", "--quiet", "--frames", "3", "--model", str(tiny_mini), "-o", str(out),
                 *[a.replace("OUT", str(starts)) for a in argv]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("deepforcing generate: error:"), lines
    assert message in lines[0]
    assert sorted(p.name for p in starts.iterdir()) == before  # nothing written


def test_a_wan_clip_needs_one_latent_frame_after_the_first_and_fits_the_window(tmp_path):
    probe = lambda frames: StartProbe(tmp_path / "c.mp4", "video", 832, 480, frames)  # noqa: E731
    with pytest.raises(ValueError, match="has 4 frames; continuing a video needs at least 5"):
        check_start_length(probe(4), WAN_LIKE)
    assert check_start_length(probe(5), WAN_LIKE) == 2
    assert check_start_length(probe(81), WAN_LIKE) == 21  # 1 + 4 x 20: the whole window
    with pytest.raises(ValueError, match=r"22 latent frames\) but the attention window is 21.*last 81 frames"):
        check_start_length(probe(85), WAN_LIKE)
    assert check_start_length(StartProbe(tmp_path / "i.png", "image", 10, 10, 1), WAN_LIKE) == 1


def test_a_clip_keeps_its_last_whole_latents_and_the_resize_is_reported():
    clip = np.zeros((11, 30, 40, 3), dtype=np.uint8)
    clip[-9:] = 200  # the 9 frames kept: 1 + 4 x 2 of 11
    geometry = StartGeometry(height=16, width=16, temporal_scale=4, chunk_frames=3, window=21)
    start = load_start(clip, "video", geometry)
    assert tuple(start.frames.shape) == (9, 3, 16, 16)
    assert torch.allclose(start.frames, torch.full_like(start.frames, 200 / 127.5 - 1))
    assert "used its last 9 of 11 frames" in start.note and "40x30 -> 16x16" in start.note
    assert "changes the aspect" in start.note
    same = load_start(np.full((16, 16, 3), 7, np.uint8), "image", geometry)
    assert same.note is None and tuple(same.frames.shape) == (1, 3, 16, 16)


def test_extending_a_generated_clip_keeps_it_and_the_first_chunk_attends_to_it(tiny_mini, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    assert main(["generate", "--quiet", "--frames", "9", "--model", str(tiny_mini), "-o", str(clip),
                 "--seed", "1"]) == 0
    given = _read_mp4(clip)
    assert given.shape[0] == 9
    out = tmp_path / "more.mp4"
    assert main(["generate", "--quiet", "--frames", "6", "--model", str(tiny_mini), "-o", str(out), "--video",
                 str(clip), "--keep-input", "--save-frames", "--seed", "2"]) == 0
    pngs = sorted((tmp_path / "more").glob("*.png"))
    assert len(pngs) == 9 + 6 and _read_mp4(out).shape[0] == 15
    import av

    written = np.stack([next(av.open(str(p)).decode(video=0)).to_ndarray(format="rgb24") for p in pngs[:9]])
    assert np.array_equal(written, given)  # --keep-input: the given frames themselves, first

    # the continuation's first chunk attends to the given frames' K/V, as the prefill wrote them
    from deepforcing.model_spec import ModelSpec, open_generator

    gen = open_generator(ModelSpec(str(tiny_mini), device="cpu"))
    seen = []

    def observe(layer, call, q):
        if layer.index == 0:
            keys, values = layer.attended
            seen.append((call.start_frame, call.num_frames, call.clean, layer.store.frames()[0].tolist(),
                         values[0].clone()))

    with pytest.warns(UserWarning, match="resized 128x128 -> 16x16"):  # the clip is written at display size
        chunks = list(gen.stream("a red circle", latent_frames=3, start_video=str(clip), keep_input=True,
                                 attention_observer=observe, seed=2))
    tokens = seen[0][4].shape[1] // 3
    assert [(s[0], s[1], s[2]) for s in seen[:3]] == [(0, 3, True), (3, 3, True), (6, 3, True)]  # the prefill
    first = next(s for s in seen if not s[2])  # the first sampled call
    assert first[0] == 9 and first[3][: 12 * tokens] == sorted(first[3][: 12 * tokens])
    assert set(range(12)) <= set(first[3])  # given frames 0-8 and the chunk 9-11 in the cache
    prefill_values = torch.cat([s[4][:, s[0] * tokens:(s[0] + 3) * tokens] for s in seen[:3]], dim=1)
    assert torch.equal(first[4][:, : 9 * tokens], prefill_values)  # the given frames' values, unchanged
    assert [c.start_frame for c in chunks] == [0, 3, 6, 9]  # the given frames, chunk by chunk, then the new chunk
    assert all(c.given is not None for c in chunks[:3]) and chunks[3].given is None

    # and they matter: another start gives another continuation
    other = list(gen.stream("a red circle", latent_frames=3, start_image=np.zeros((16, 16, 3), np.uint8), seed=2))
    assert (other[0].latents - chunks[3].latents).abs().max() > 1e-3


def test_the_study_can_start_every_policy_from_the_worlds_true_first_chunk(tiny_mini):
    """``experiment --start truth``: the world's true first frames, encoded and prefilled, then each policy samples;
    the videos start with the true frames and the continuation depends on them."""
    from deepforcing.cache import make_policy
    from deepforcing.eval.experiment import _truth_video, truth_start_rollout
    from deepforcing.model_spec import ModelSpec, open_generator

    bundle = open_generator(ModelSpec(str(tiny_mini), device="cpu")).bundle
    prompts, seeds = ["a red circle", "a blue square"], [3, 4]
    policies = {"self-forcing": make_policy("self-forcing", window=6),
                "attention-sink": make_policy("attention-sink", window=6, sink=3)}
    videos = {name: truth_start_rollout(bundle, policy, prompts, seeds, frames=12, start_frames=3)
              for name, policy in policies.items()}
    truth = torch.stack([_truth_video(p, s, 3, 16) for p, s in zip(prompts, seeds)])
    for video in videos.values():
        assert tuple(video.shape) == (2, 12, 3, 16, 16)
        assert torch.equal(video[:, :3], truth)  # the same correct start for every policy
    assert (videos["self-forcing"][:, 9:] - videos["attention-sink"][:, 9:]).abs().max() > 0  # the policies differ
    other = truth_start_rollout(bundle, make_policy("self-forcing", window=6), prompts, [5, 6], frames=9,
                                start_frames=3)
    assert (other[:, 3:6] - videos["self-forcing"][:, 3:6]).abs().max() > 1e-3


@pytest.mark.parametrize("argv, message", [
    (["--start-frames", "3"], "--start-frames gives true frames: use it with --start truth"),
    (["--start", "truth", "--start-frames", "0"], "--start-frames must be at least 1 and below the attention window"),
    (["--board", "--start-frames", "99"], "--start-frames must be at least 1 and below the attention window"),
])
def test_experiment_start_options_are_checked_before_the_model_loads(tiny_mini, tmp_path, capsys, argv, message):
    code = main(["experiment", "--model", str(tiny_mini), "--out", str(tmp_path / "study"), *argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "study").exists()


def test_a_wan_model_starts_from_an_image_latent_and_continues_a_clip_of_whole_latents(tmp_path, capsys):
    """Wan's causal VAE (tiny random, diffusers layout): an image is one latent (prefilled alone, then chunks from
    latent frame 1); a 9-frame clip is 1 + 4 x 2 frames = 3 latents; the output's frame counts follow the VAE."""
    import json

    from PIL import Image
    from tiny_layouts import write_tiny_umt5, write_tiny_wan_vae
    from tiny_transformer_layouts import TINY_WAN_CONFIG, original_wan_state_dict, write_original_folder

    from deepforcing.models.loading import load_causal_wan
    from deepforcing.model_spec import ModelSpec, open_generator

    cfg = {**TINY_WAN_CONFIG, "text_dim": 16}
    original, folder = tmp_path / "original", tmp_path / "wan"
    write_original_folder(original, original_wan_state_dict(cfg, seed=1), cfg)
    load_causal_wan(original).save_pretrained(str(folder / "transformer"))
    write_tiny_wan_vae(folder, layout="diffusers")
    write_tiny_umt5(folder, layout="diffusers")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    out = tmp_path / "i2v.mp4"
    assert main(["generate", "a red cat runs", "--model", str(folder), "--resolution", "32x48", "--frames", "6",
                 "--image", str(tmp_path / "i.png"), "-o", str(out)]) == 0
    assert "resized 40x40 -> 48x32 (bilinear, as the release does; this changes the aspect)" in capsys.readouterr().err
    assert _read_mp4(out).shape[0] == 4 * 6  # the image's latent decodes to its frame (not kept), then 6 latents
    assert json.loads(out.with_suffix(".json").read_text())["start"]["kind"] == "image"

    gen = open_generator(ModelSpec(str(folder), resolution="32x48", device="cpu"))
    clip = np.random.default_rng(2).integers(0, 255, (9, 32, 48, 3), dtype=np.uint8)
    chunks = list(gen.stream("a red cat runs", latent_frames=3, start_video=clip, keep_input=True))
    assert [(c.start_frame, c.latents.shape[2], c.frames.shape[1]) for c in chunks] == [(0, 3, 9), (3, 3, 12)]
    assert np.array_equal(chunks[0].given, clip)
    image = list(gen.stream("a red cat runs", latent_frames=3, start_image=clip[0]))
    assert [(c.start_frame, c.latents.shape[2]) for c in image] == [(1, 3)]  # positions from the given frame


def test_a_prompt_switch_after_an_image_start_re_caches_whole_chunks(tiny_mini):
    """A timeline with an image start: the switch re-caches the chunks after the lone image frame (which stays)."""
    from deepforcing.model_spec import ModelSpec, open_generator
    from deepforcing.pipeline.timeline import TimelineEntry

    gen = open_generator(ModelSpec(str(tiny_mini), device="cpu"))
    timeline = [TimelineEntry("a red circle", frames=6), TimelineEntry("a blue square", frames=6)]
    chunks = list(gen.stream(timeline, latent_frames=12, start_image=np.zeros((16, 16, 3), np.uint8),
                             policy="self-forcing", window=21))
    assert [c.start_frame for c in chunks] == [1, 4, 7, 10]
    assert [c.prompt for c in chunks] == ["a red circle"] * 2 + ["a blue square"] * 2
    assert chunks[-1].cache.length == 13 * chunks[-1].cache.geometry.tokens_per_frame
