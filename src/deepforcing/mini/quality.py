"""The mini model's quality bar inside the training horizon, against the world's ground truth.

Protocol (conditional prediction, the situation of every chunk after the first): render a true clip; write its first
``context_chunks`` chunks into the KV cache through the model's clean pass (t = 0), exactly as a rollout writes its
own past; then sample the next chunk with the model's few-step schedule and compare it with the true next frames:

* ``pixel_mse`` — mean squared error in [-1, 1] units;
* ``position_error`` — pixels between each object's centroid in the prediction and its true position;
* ``object_found`` — fraction of (frame, object) pairs where the object is detected;
* ``object_colour_error`` — RGB (0–1) error of the detected objects.

Baselines: **copy-last-frame** (the last context frame repeated) and an **untrained** model of the same shape
(random initialisation, same protocol). A useful model must beat both clearly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .language import sample_scene
from .measure import MeasureConfig, track_objects
from .world import render_clip

__all__ = ["PredictionScores", "predict_next_chunk", "quality_bar"]


@dataclass
class PredictionScores:
    pixel_mse: float
    position_error: float
    object_found: float
    object_colour_error: float

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def predict_next_chunk(bundle, clip_frames: torch.Tensor, prompt: str, context_chunks: int, seed: int) -> torch.Tensor:
    """Sample the chunk after ``context_chunks`` true chunks; ``clip_frames`` ``[T, 3, H, W]``; returns ``[f, 3, H, W]``."""
    from deepforcing.cache import make_policy
    from deepforcing.pipeline.rollout import VideoRollout

    chunk = bundle.sampling.chunk_frames
    with torch.no_grad():
        ctx = bundle.transformer.encode_context(bundle.encode_text([prompt]))
        rollout = VideoRollout(model=bundle.transformer, policy=make_policy("full"), context=ctx,
                               latent_shape=bundle.latent_shape, sampling=bundle.sampling, seeds=[seed])
        latents = clip_frames.permute(1, 0, 2, 3)[None]  # [1, 3, T, H, W]
        for c in range(context_chunks):
            rollout._call(latents[:, :, c * chunk:(c + 1) * chunk], bundle.sampling.context_noise, c * chunk, clean=True)
        rollout.next_chunk = context_chunks
        return rollout.step().latents[0].permute(1, 0, 2, 3).clamp(-1, 1)


def _score(pred: torch.Tensor, clip, t0: int) -> PredictionScores:
    f = pred.shape[0]
    truth = clip.frames[t0:t0 + f]
    tracks = track_objects(pred, clip.spec, MeasureConfig())
    true_pos = clip.states.positions[t0:t0 + f]  # [f, K, 2]
    found = tracks.present
    dist = np.linalg.norm(tracks.centroid - true_pos, axis=-1)
    return PredictionScores(
        pixel_mse=float(((pred - truth) ** 2).mean()),
        position_error=float(np.nanmean(np.where(found, dist, np.nan))) if found.any() else float("nan"),
        object_found=float(found.mean()),
        object_colour_error=float(np.nanmean(np.where(found, tracks.colour_error, np.nan))) if found.any()
        else float("nan"),
    )


def quality_bar(bundle, untrained_bundle=None, clips: int = 32, context_chunks: int = 4, seed: int = 0) -> dict:
    """Mean scores of the model, the untrained model and copy-last-frame over ``clips`` world clips."""
    chunk = bundle.sampling.chunk_frames
    t0 = context_chunks * chunk
    rows: dict[str, list[PredictionScores]] = {"model": [], "copy_last_frame": []}
    if untrained_bundle is not None:
        rows["untrained"] = []
    size = bundle.latent_shape[-1]
    for k in range(clips):
        scene = sample_scene(np.random.default_rng(50_000 + seed + k))
        clip = render_clip(scene, seed=seed + k, num_frames=t0 + chunk, size=size)
        prompt = scene.to_prompt()
        rows["model"].append(_score(predict_next_chunk(bundle, clip.frames, prompt, context_chunks, k), clip, t0))
        copy = clip.frames[t0 - 1:t0].expand(chunk, -1, -1, -1)
        rows["copy_last_frame"].append(_score(copy, clip, t0))
        if untrained_bundle is not None:
            pred = predict_next_chunk(untrained_bundle, clip.frames, prompt, context_chunks, k)
            rows["untrained"].append(_score(pred, clip, t0))
    out = {}
    for name, scores in rows.items():
        out[name] = {key: float(np.nanmean([getattr(s, key) for s in scores])) for key in PredictionScores.__annotations__}
        out[name]["n"] = len(scores)
    return out


def format_quality_table(result: dict) -> str:
    keys = [("pixel_mse", "pixel MSE ↓"), ("position_error", "position error px ↓"),
            ("object_found", "objects found ↑"), ("object_colour_error", "object colour error ↓")]
    lines = ["| predictor | " + " | ".join(k[1] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for name, row in result.items():
        lines.append(f"| {name} | " + " | ".join(
            "–" if not math.isfinite(row[k]) else f"{row[k]:.4f}" for k, _ in keys) + " |")
    return "\n".join(lines)
