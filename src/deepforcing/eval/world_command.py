"""Checks shared by the commands that score videos against the mini world's ground truth (``deepforcing experiment``
and ``experiment --board``): both run before any weights load."""

from __future__ import annotations

import argparse

from deepforcing.model_spec import CheckedModel, ModelSpec, check_model

__all__ = ["world_model", "true_start_frames"]


def world_model(args: argparse.Namespace, who: str, hint: str = "") -> CheckedModel:
    """The checked model of ``args``; refused unless it is the mini model, whose world gives the ground truth."""
    model = check_model(ModelSpec.from_args(args))
    if not model.is_mini:
        raise ValueError(f"{who} scores videos against the mini world's ground truth, so it runs the mini model only "
                         f"(--model mini or a mini model file){hint}")
    return model


def true_start_frames(model: CheckedModel, frames: int | None) -> int:
    """True frames given to a truth-start rollout: ``frames``, by default one chunk; at least 1 and below the window."""
    frames = model.chunk_frames if frames is None else frames
    window = model.policy().window
    if not 1 <= frames < window:
        raise ValueError(f"--start-frames must be at least 1 and below the attention window ({window} frames), "
                         f"got {frames}")
    return frames
