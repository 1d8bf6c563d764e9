"""Ground-truth metrics of the mini world: perfect on true clips, and each failure mode moves the right metric."""

import json
import math

import numpy as np
import pytest
import torch

from deepforcing.mini.language import parse_prompt, sample_scene
from deepforcing.mini.measure import MeasureConfig, measure_video, track_objects, video_to_rgb
from deepforcing.mini.world import render_clip

FRAMES = 32
# dark background: the blue square's pixels are exactly those with a blue channel above the background's
PROMPT = "a red circle and a big blue square bounce on a dark background"


@pytest.fixture(scope="module")
def clip():
    return render_clip(PROMPT, seed=5, num_frames=FRAMES)


def _paint_out_blue(frames: torch.Tensor) -> torch.Tensor:
    """Replace the blue square (and its anti-aliased edge) by the dark background tone."""
    rgb = (frames + 1) / 2
    blue = rgb[:, 2:3] > 0.1
    dark = torch.tensor([0.06, 0.06, 0.08]).view(1, 3, 1, 1) * 2 - 1
    return torch.where(blue, dark, frames)


def _assert_perfect(metrics, count):
    assert metrics.object_persistence == 1.0 and metrics.count_accuracy == 1.0
    assert metrics.persistence_per_object == [1.0] * count
    assert metrics.object_colour_error < 0.05 and metrics.background_colour_error < 0.05
    assert metrics.colour_error < 0.05
    for ratio in metrics.speed_ratio:
        assert abs(ratio - 1.0) < 0.06
    assert metrics.position_error < 0.1
    assert metrics.unexplained_fraction < 0.002


@pytest.mark.parametrize(
    "prompt",
    [
        PROMPT,
        "a small slow yellow triangle and a fast orange circle move on a striped red background, camera pans left",
        "a big white square, a small fast cyan circle and a slow magenta triangle on a checkered blue background",
        "a small green square on a plain yellow background, camera pans up",
    ],
)
def test_true_clip_scores_perfectly(prompt):
    clip = render_clip(prompt, seed=1, num_frames=FRAMES)
    metrics = measure_video(clip.frames, clip.spec, clip.states)
    _assert_perfect(metrics, len(clip.spec.objects))
    assert all(type(v) is float for v in [*metrics.speed, *metrics.speed_ratio, metrics.colour_error])  # plain floats
    # uint8 frames, channels last, and a prompt string measure the same
    from_uint8 = measure_video(clip.to_uint8(), prompt, clip.states)
    _assert_perfect(from_uint8, len(clip.spec.objects))
    assert abs(from_uint8.position_error - metrics.position_error) < 0.02


def test_true_clips_of_sampled_scenes_score_perfectly():
    for seed in range(12):
        spec = sample_scene(seed)
        clip = render_clip(spec, seed=seed, num_frames=24)
        _assert_perfect(measure_video(clip.frames, spec, clip.states), len(spec.objects))


def test_painted_out_object_breaks_persistence_and_count(clip):
    gone = measure_video(_paint_out_blue(clip.frames), clip.spec, clip.states)
    assert gone.object_persistence == 0.0 and gone.count_accuracy == 0.0
    assert gone.persistence_per_object == [1.0, 0.0]
    assert math.isnan(gone.speed[1]) and abs(gone.speed_ratio[0] - 1) < 0.06  # the red circle is unaffected

    half = clip.frames.clone()
    half[FRAMES // 2 :] = _paint_out_blue(clip.frames[FRAMES // 2 :])
    metrics = measure_video(half, clip.spec, clip.states, MeasureConfig(window=8))
    assert metrics.object_persistence == 0.5 and metrics.count_accuracy == 0.5
    assert metrics.windows["object_persistence"] == [1.0, 1.0, 0.0, 0.0]
    assert metrics.windows["start_frame"] == [0.0, 8.0, 16.0, 24.0]


def test_colour_shift_raises_colour_error(clip):
    shift = torch.tensor([0.3, -0.2, 0.0]).view(1, 3, 1, 1)  # +0.15 red, -0.1 green in 0-1 units
    metrics = measure_video((clip.frames + shift).clamp(-1, 1), clip.spec, clip.states)
    assert 0.1 < metrics.object_colour_error < 0.2
    assert 0.1 < metrics.background_colour_error < 0.2
    assert metrics.colour_error > 0.1
    assert metrics.object_persistence == 1.0  # still found, only off-colour


def test_frozen_video_loses_speed(clip):
    static = clip.frames[:1].repeat(FRAMES, 1, 1, 1)
    metrics = measure_video(static, clip.spec, clip.states)
    assert max(metrics.speed_ratio) < 0.01 and metrics.speed_preservation < 0.01
    assert metrics.object_persistence == 1.0
    assert metrics.position_error > 2.0  # the true objects moved on

    frozen = clip.frames.clone()
    frozen[16:] = clip.frames[16]
    metrics = measure_video(frozen, clip.spec, config=MeasureConfig(window=8))
    early, late = metrics.windows["speed_ratio"][:2], metrics.windows["speed_ratio"][-2:]
    assert all(abs(r - 1) < 0.1 for r in early) and all(r < 0.01 for r in late)
    assert metrics.position_error is None and all(v is None for v in metrics.to_dict()["windows"]["position_error"])


def test_duplicated_object_breaks_count(clip):
    rgb = (clip.frames + 1) / 2
    red = ((rgb[:, 0] > 0.3) & (rgb[:, 2] < 0.3)).unsqueeze(1)  # the red circle and its edge
    copy_mask = torch.roll(red, shifts=(16, 16), dims=(2, 3))
    duplicated = torch.where(copy_mask, torch.roll(clip.frames, shifts=(16, 16), dims=(2, 3)), clip.frames)
    tracks = track_objects(duplicated, clip.spec)
    overlapping = np.nonzero(tracks.blobs[:, 0] != 2)[0]  # frames where the copy lands on the original
    assert len(overlapping) < FRAMES // 4
    metrics = measure_video(duplicated, clip.spec)
    assert metrics.count_accuracy < 0.25


def test_displaced_or_reversed_motion_shows_position_error(clip):
    reversed_clip = measure_video(clip.frames.flip(0), clip.spec, clip.states)
    assert reversed_clip.position_error > 3.0 and abs(reversed_clip.speed_ratio[0] - 1) < 0.06
    only_first = measure_video(clip.frames, clip.spec, clip.states.positions[:4] + 2.0)
    assert abs(only_first.position_error - 2 * math.sqrt(2)) < 0.1
    assert only_first.windows["position_error"][1] is None or math.isnan(only_first.windows["position_error"][1])


def test_blur_and_noise_are_tolerated(clip):
    blurred = torch.nn.functional.avg_pool2d(clip.frames, 3, stride=1, padding=1, count_include_pad=False)
    noise = torch.randn(clip.frames.shape, generator=torch.Generator().manual_seed(0))
    noisy = (clip.frames + 0.1 * noise).clamp(-1, 1)
    for video in (blurred, noisy):
        metrics = measure_video(video, clip.spec, clip.states)
        assert metrics.object_persistence == 1.0 and metrics.count_accuracy == 1.0
        assert metrics.position_error < 0.2 and all(abs(r - 1) < 0.06 for r in metrics.speed_ratio)
        assert metrics.object_colour_error < 0.05


def test_metrics_are_json_serialisable(clip):
    metrics = measure_video(_paint_out_blue(clip.frames), clip.spec, clip.states, MeasureConfig(window=10))
    payload = json.loads(json.dumps(metrics.to_dict(), allow_nan=False))
    assert payload["speed"][1] is None and payload["num_frames"] == FRAMES
    assert len(payload["windows"]["speed_ratio"]) == math.ceil(FRAMES / 10)
    assert set(payload["windows"]) >= {"object_persistence", "count_accuracy", "object_colour_error", "speed_ratio"}


def test_tracks_layouts_and_bad_input(clip):
    rgb = video_to_rgb(clip.frames)
    assert rgb.shape == (FRAMES, 32, 32, 3) and rgb.min() >= 0 and rgb.max() <= 1
    np.testing.assert_allclose(video_to_rgb(clip.to_uint8()), rgb, atol=1 / 255)
    np.testing.assert_allclose(video_to_rgb(clip.frames.numpy()), rgb)
    tracks = track_objects(clip.frames, PROMPT)
    assert tracks.present.all() and (tracks.blobs == 1).all() and tracks.size == 32
    np.testing.assert_allclose(tracks.centroid, clip.states.positions, atol=0.1)
    with pytest.raises(ValueError, match="square"):
        measure_video(torch.zeros(2, 3, 16, 32), PROMPT)
    with pytest.raises(ValueError, match="colour channels"):
        measure_video(torch.zeros(2, 4, 16, 16), PROMPT)
    with pytest.raises(ValueError, match="uint8 or float"):
        measure_video(torch.zeros(2, 3, 16, 16, dtype=torch.int32), PROMPT)
    with pytest.raises(ValueError, match="true positions"):
        measure_video(clip.frames, PROMPT, np.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match="colour_radius"):
        MeasureConfig(colour_radius=0)
    assert parse_prompt(PROMPT) == clip.spec
