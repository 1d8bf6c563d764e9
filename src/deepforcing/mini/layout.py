"""The start layout: where each object of a prompt begins, drawn as a picture, to condition the first chunk.

Why (design review of v4, issue "mini model v5"): in the mini world an object becomes visible in the latent at a
higher noise level than its colour, so a model that reads only a bag of colour words must decide *where* things go
before it can tell *which* thing is which — and image tokens carry no absolute position to bind a word to a place.
Extra copies and swapped or missing objects follow. A layout, given as an image, removes that guess: it says which
colour and shape starts where, the way a layout planner feeds a layout-to-video model, or the way Wan2.1's
image-to-video model gets its first frame as extra input channels.

The layout of a ``(prompt, seed)`` pair is the world's own start state for that pair (:mod:`deepforcing.mini.world`
draws object positions from the seed): the prompt's objects, at their frame-0 positions, sizes, shapes and colours,
on a dark canvas with no camera pan. The background, the motion and everything after frame 0 are left to the model.
Encoded by the model's codec, it is concatenated to the latents of video frame 0 as ``channels`` extra input
channels; every other frame gets zeros there (``VideoRollout.condition``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch

from .language import BackgroundSpec, SceneSpec, parse_prompt
from .world import render_batch

__all__ = ["layout_scene", "start_layout_frames", "start_layout_latents"]


def layout_scene(spec: SceneSpec) -> SceneSpec:
    """The scene the layout is drawn from: the same objects (so the same seeded start positions) on a dark,
    static canvas."""
    return replace(spec, background=BackgroundSpec(), pan=None)


def start_layout_frames(scenes: Sequence[SceneSpec | str], seeds: Sequence[int], size: int) -> torch.Tensor:
    """Layout pictures ``[B, 3, size, size]`` in ``[-1, 1]``, one per ``(scene, seed)``."""
    specs = [parse_prompt(s) if isinstance(s, str) else s for s in scenes]
    return render_batch([layout_scene(s) for s in specs], seeds, 1, size)[:, 0]


@torch.no_grad()
def start_layout_latents(codec, scenes: Sequence[SceneSpec | str], seeds: Sequence[int], size: int) -> torch.Tensor:
    """The layouts encoded by ``codec``: ``[B, C, 1, h, w]``, the condition of video frame 0."""
    frames = start_layout_frames(scenes, seeds, size)
    return codec.encode(frames[:, :, None])  # [B, 3, 1, H, W] -> [B, C, 1, h, w]
