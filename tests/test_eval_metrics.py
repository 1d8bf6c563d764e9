"""Long-horizon metrics on synthetic videos whose drift, motion, flicker and repetition are known by construction."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from deepforcing.eval.metrics import (
    EvalConfig,
    aggregate,
    evaluate_frames,
    student_t_quantile,
    window_starts,
)
from deepforcing.eval.video_io import VideoReadError, read_video

FPS = 16.0
SIZE = 48


def texture(seed: int, height: int, width: int, sigma: float = 1.5) -> np.ndarray:
    """Full-contrast smooth random RGB texture (enough detail for optical flow everywhere)."""
    noise = cv2.GaussianBlur(np.random.default_rng(seed).normal(0, 1, (height, width, 3)), (0, 0), sigma)
    return ((noise - noise.min()) / (noise.max() - noise.min()) * 255).astype(np.uint8)


def translating(frames: int, speed: int, seed: int = 0) -> np.ndarray:
    """A window sliding ``speed`` px/frame over a wide texture: constant motion, never repeats."""
    wide = texture(seed, SIZE, SIZE + speed * frames)
    return np.stack([wide[:, speed * t: speed * t + SIZE] for t in range(frames)])


def static(frames: int) -> np.ndarray:
    return np.repeat(texture(1, SIZE, SIZE)[None], frames, 0)


def uniform(levels: list[float]) -> np.ndarray:
    return np.stack([np.full((SIZE, SIZE, 3), level, dtype=np.uint8) for level in levels])


CONFIG = EvalConfig(window_frames=12)


def test_static_video_has_no_motion_flicker_or_drift_and_is_all_repetition():
    result = evaluate_frames(static(48), FPS, CONFIG)
    assert result.num_windows == 4
    assert result.summary["motion"] < 0.01
    assert result.summary["dynamic_degree"] == 0.0
    assert result.summary["flicker"] == 0.0 and result.summary["flicker_hf"] == 0.0
    assert result.summary["color_drift_max"] == 0.0
    assert result.summary["sharpness_change_last"] == 0.0
    # a frozen video is the extreme of stagnation: every later frame is a copy of the reference window
    assert result.summary["near_copy_fraction"] == 1.0


def test_translating_texture_motion_matches_its_speed_and_does_not_repeat():
    speed = 2  # px/frame at 48 px; the flow runs at a 128-px short side
    result = evaluate_frames(translating(48, speed), FPS, CONFIG)
    expected = speed * CONFIG.flow.short_side / SIZE
    assert result.summary["motion"] == pytest.approx(expected, rel=0.2)
    assert all(m > 0.5 * expected for m in result.series["motion"])
    assert result.summary["motion_ratio"] == pytest.approx(1.0, abs=0.2)  # constant speed: no deceleration
    assert result.summary["dynamic_degree"] == 1.0
    assert result.summary["near_copy_fraction"] == 0.0
    assert result.summary["rollback_similarity"] < 0.6


def test_decelerating_video_has_negative_motion_slope_and_low_last_first_ratio():
    wide = texture(2, SIZE, SIZE + 200)
    positions = np.concatenate([np.arange(0, 60, 3), 60 + np.arange(0, 20, 1), [80] * 8])  # 3, then 1, then 0 px/frame
    video = np.stack([wide[:, p: p + SIZE] for p in positions])
    result = evaluate_frames(video, FPS, EvalConfig(window_frames=16))
    assert result.summary["motion_slope"] < 0
    assert result.summary["motion_ratio"] < 0.5
    assert result.series["motion"] == sorted(result.series["motion"], reverse=True)


def test_colour_drift_grows_over_windows():
    base = texture(3, SIZE, SIZE).astype(np.float64)
    video = np.stack([np.clip(base + [2.0 * t, 0, -2.0 * t], 0, 255).astype(np.uint8) for t in range(48)])
    result = evaluate_frames(video, FPS, CONFIG)
    drift = result.series["color_drift"]
    assert drift[0] == 0.0
    assert all(later > earlier for earlier, later in zip(drift, drift[1:]))
    # mean red rises and mean blue falls by about 2*36/255 between window 0 and window 3 (some clipping)
    assert drift[-1] == pytest.approx(math.sqrt(2) * 2 * 36 / 255, rel=0.25)
    assert result.series["mean_r"][-1] > result.series["mean_r"][0]
    assert result.series["mean_b"][-1] < result.series["mean_b"][0]
    assert result.summary["saturation_drift_last"] > 0.05
    static_result = evaluate_frames(static(48), FPS, CONFIG)
    assert static_result.summary["color_drift_last"] == 0.0


def test_blurred_late_half_lowers_sharpness():
    video = translating(48, 1)
    video[24:] = np.stack([cv2.GaussianBlur(frame, (0, 0), 2.0) for frame in video[24:]])
    result = evaluate_frames(video, FPS, CONFIG)
    sharpness = result.series["sharpness"]
    assert sharpness[2] < 0.3 * sharpness[0] and sharpness[3] < 0.3 * sharpness[1]
    assert result.summary["sharpness_change_last"] < -0.7
    assert result.series["sharpness_change"][1] == pytest.approx(0.0, abs=0.3)


def test_video_that_loops_back_to_its_first_frames_scores_high_repetition():
    moving = translating(24, 2)
    looped = np.concatenate([moving, moving])  # frames 24..47 replay the first window exactly
    config = EvalConfig(window_frames=24)
    looping = evaluate_frames(looped, FPS, config)
    assert looping.summary["near_copy_fraction"] == 1.0
    assert looping.summary["rollback_similarity"] == pytest.approx(1.0, abs=1e-9)
    not_looping = evaluate_frames(translating(48, 2), FPS, config)
    assert not_looping.summary["near_copy_fraction"] == 0.0
    assert not_looping.summary["rollback_similarity"] < 0.6


def test_flicker_measures_alternation_but_not_a_smooth_ramp():
    alternating = evaluate_frames(uniform([100, 120] * 12), FPS, CONFIG)
    assert alternating.summary["flicker"] == pytest.approx(20.0, abs=0.5)
    assert alternating.summary["flicker_hf"] == pytest.approx(40.0, abs=1.0)  # |x[t+1] - 2x[t] + x[t-1]| = 2*20
    ramp = evaluate_frames(uniform(list(range(100, 124))), FPS, CONFIG)
    assert ramp.summary["flicker"] == pytest.approx(1.0, abs=0.05)
    assert ramp.summary["flicker_hf"] < 0.1
    assert evaluate_frames(static(24), FPS, CONFIG).summary["flicker"] == 0.0


def test_noise_estimate_recovers_gaussian_sigma():
    rng = np.random.default_rng(4)
    grey_noise = rng.normal(0, 10.0, (12, 64, 64, 1))
    video = np.clip(128 + np.repeat(grey_noise, 3, axis=-1), 0, 255).astype(np.uint8)
    result = evaluate_frames(video, FPS, CONFIG)
    assert result.series["noise"][0] == pytest.approx(10.0, rel=0.1)
    assert evaluate_frames(uniform([128] * 12), FPS, CONFIG).series["noise"][0] == 0.0


def test_window_layout_keeps_the_last_window_at_the_end():
    assert window_starts(501, 81) == [0, 81, 162, 243, 324, 405, 420]
    assert window_starts(162, 81) == [0, 81]
    assert window_starts(50, 81) == [0]
    assert EvalConfig(window_seconds=1.0).window_length(16.0) == 16
    assert EvalConfig().window_length(16.0) == 81
    short = evaluate_frames(static(10), FPS, EvalConfig(window_frames=81))
    assert short.num_windows == 1 and short.window_frames == 10
    assert math.isnan(short.summary["near_copy_fraction"])  # nothing after the reference window
    with pytest.raises(ValueError, match="window"):
        EvalConfig(window_seconds=0.05).window_length(16.0)
    with pytest.raises(ValueError):
        EvalConfig(window_frames=1)


def test_to_dict_is_strict_json_and_lists_every_series():
    result = evaluate_frames(static(10), FPS, EvalConfig(window_frames=81), label="clip", source="clip.mp4")
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["label"] == "clip" and data["num_windows"] == 1 and data["duration_s"] == pytest.approx(10 / FPS)
    assert data["summary"]["near_copy_fraction"] is None
    assert set(data["series"]) >= {"sharpness", "noise", "color_drift", "flicker", "motion", "near_copy_fraction"}


def test_bad_frames_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        evaluate_frames(np.zeros((4, 8, 8, 3), dtype=np.float32), FPS)
    with pytest.raises(ValueError, match="at least 2 frames"):
        evaluate_frames(np.zeros((1, 8, 8, 3), dtype=np.uint8), FPS)


def test_student_t_quantiles_match_tables():
    assert student_t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-3)
    assert student_t_quantile(0.975, 3) == pytest.approx(3.1824, abs=1e-3)
    assert student_t_quantile(0.975, 31) == pytest.approx(2.0395, abs=1e-3)
    assert student_t_quantile(0.975, 10_000) == pytest.approx(1.9602, abs=1e-3)
    assert student_t_quantile(0.025, 5) == pytest.approx(-2.5706, abs=1e-3)


def test_aggregate_gives_mean_and_student_t_interval():
    evaluations = []
    for level in (1, 2, 3, 4):  # alternating uniform frames: flicker = level exactly
        evaluations.append(evaluate_frames(uniform([100, 100 + level] * 6), FPS, CONFIG))
    result = aggregate(evaluations)
    flicker = result["summary"]["flicker"]
    assert result["n_videos"] == 4 and flicker["n"] == 4
    assert flicker["mean"] == pytest.approx(2.5, abs=0.01)
    half_width = 3.1824 * np.std([1, 2, 3, 4], ddof=1) / 2
    assert flicker["ci_high"] - flicker["mean"] == pytest.approx(half_width, rel=0.02)
    assert flicker["mean"] - flicker["ci_low"] == pytest.approx(half_width, rel=0.02)
    assert "Student-t" in result["ci_method"]
    assert result["series"]["flicker"]["mean"] == pytest.approx([2.5], abs=0.01)
    json.dumps(result, allow_nan=False)
    single = aggregate(evaluations[:1])
    assert single["summary"]["flicker"]["ci_low"] is None  # no interval from one video
    with pytest.raises(ValueError):
        aggregate([])


def test_read_video_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_video(tmp_path / "missing.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01 this is not a video" * 100)
    with pytest.raises(VideoReadError):
        read_video(corrupt)
    with pytest.raises(VideoReadError, match="not a file"):
        read_video(tmp_path)
