"""Scores of one mini-model video against its world's ground truth, shared by the long-horizon study
(:mod:`deepforcing.eval.experiment`) and the leaderboard (:mod:`deepforcing.eval.leaderboard`).

:func:`score_video`: object persistence, count accuracy, object colour error and speed ratio (:mod:`deepforcing.mini.
measure`) inside the training horizon (frames ``[0, window)``) and beyond it (frames ``[window, h * window)`` for each
horizon ``h``), per-window series, and the model-free drift metrics of :mod:`deepforcing.eval.metrics` on frames
``[0, h * window)``. :func:`truth_video`: the world's own video of a prompt and seed.
"""

from __future__ import annotations

import math

import torch

from .experiment_arms import DRIFT_KEYS, WORLD_KEYS, horizon_key

__all__ = ["score_video", "truth_video"]


def score_video(video: torch.Tensor, prompt: str, window: int, fps: int, horizons: list[float]) -> dict:
    """Ground-truth metrics inside / beyond the horizon and drift metrics of one video ``[T, 3, H, W]``."""
    from deepforcing.mini.measure import MeasureConfig, score_tracks, track_objects
    from deepforcing.mini.quality import slice_tracks
    from deepforcing.mini.world import to_uint8

    from .flow import FlowConfig
    from .metrics import EvalConfig, evaluate_frames

    tracks = track_objects(video, prompt, MeasureConfig())

    def gt(start: int, stop: int) -> dict:
        m = score_tracks(slice_tracks(tracks, start, stop), prompt)
        # the whole span's speed ratio is VideoMetrics.speed_preservation; the other keys share their names
        return {k: getattr(m, "speed_preservation" if k == "speed_ratio" else k) for k in WORLD_KEYS}

    whole = score_tracks(tracks, prompt)
    out = {"inside": gt(0, window), "beyond": {}, "drift": {}, "window_frames": whole.window,
           "windows": {k: [None if not math.isfinite(x) else round(x, 4) for x in whole.windows[k]] for k in WORLD_KEYS}}
    uint8 = to_uint8(video.clamp(-1, 1))
    # flow at twice the mini frame size: the world's motion is a few pixels per frame; 128 px would cost 4x more
    config = EvalConfig(window_frames=window, flow=FlowConfig(short_side=2 * video.shape[-1]))
    for h in horizons:
        stop = int(round(h * window))
        out["beyond"][horizon_key(h)] = gt(window, stop)
        drift = evaluate_frames(uint8[:stop], fps, config)
        out["drift"][horizon_key(h)] = {k: drift.summary.get(k) for k in DRIFT_KEYS}
    return out


def truth_video(prompt: str, seed: int, frames: int, size: int) -> torch.Tensor:
    from deepforcing.mini.world import render_clip

    return render_clip(prompt, seed=seed, num_frames=frames, size=size).frames
