"""Training targets that continue the model's own rollout: the world re-simulated from where the rollout put the
objects.

Training on the model's own rollout (Self Forcing, arXiv 2506.08009 §3) with the *true* continuation as the target
is inconsistent once the rollout drifts: the context shows an object at one place and the target shows it somewhere
else, and the cheapest prediction that lowers that loss is a second, faint copy at the true place (the ghost copies
measured on v5 leg 2, ``results/mini_quality/v5_design.md``). Here the target of every rolled-out chunk is instead
the world continued from the state the rollout itself reached: the colour tracker (:func:`~deepforcing.mini.measure.
track_objects`) finds each prompt object in the last two context frames before the chunk; an object found once
(one blob) keeps its tracked place and, once off the true track, its tracked direction of motion at the prompt's
speed, and an object the
rollout lost or split is put back where the truth has it (the prompt names it, so it must be there). The physics and
renderer are the world's own (:func:`~deepforcing.mini.world.render_continuation`), so the target is exactly what
the world would show from that state: keep what you drew, drop copies, restore what you lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .language import SceneSpec
from .measure import track_objects
from .world import REFERENCE_SIZE, WorldStates, object_cells, object_speed, render_continuation

__all__ = ["ON_TRACK_PX", "ResimulatedTargets", "resimulated_targets", "rollout_start_state"]

ON_TRACK_PX = 1.5
"""An object tracked this close to its true place (pixels at the world's reference size) keeps the truth's motion:
a step measured across a bounce or a collision is not its direction."""


@dataclass
class ResimulatedTargets:
    """Targets ``[B, C, T, h, w]`` and loss weights ``[B, T, h, w]`` with the rolled-out chunks replaced, and how many
    objects were continued from the rollout (``tracked``) or put back from the truth (``restored``)."""

    clean: torch.Tensor
    cells: torch.Tensor
    tracked: int
    restored: int


def rollout_start_state(frames: np.ndarray, spec: SceneSpec, truth: WorldStates, frame: int, size: int,
                        restore: bool = True) -> tuple[dict, int]:
    """The world state at a rollout's frame ``frame - 1`` to continue from: ``frames`` are the rollout's last two
    pixel frames ``[2, 3, H, W]`` (``frame - 1``, ``frame``). Starting one frame back lets the physics replay a
    bounce that happened between the two frames (the tracked step is the pre-bounce direction). Returns the start
    dict of :func:`~deepforcing.mini.world.render_continuation` (whose first rendered frame is then ``frame``) and
    how many objects were taken from the rollout (the others from ``truth``). ``restore=False``: an object the
    rollout lost or split stays out of the target (the dict's ``present`` mask says which objects are rendered)."""
    tracks = track_objects(frames, spec)
    positions = truth.positions[frame - 1].astype(np.float64).copy()
    velocities = truth.velocities[frame - 1].astype(np.float64).copy()
    tracked = 0
    present = np.ones(len(spec.objects), bool)
    for k, obj in enumerate(spec.objects):
        if not (tracks.present[1, k] and tracks.blobs[1, k] == 1):
            present[k] = restore  # lost or split: the truth's place and motion, or left out
            continue
        tracked += 1
        speed = object_speed(obj.speed, size)
        if tracks.present[0, k] and tracks.blobs[0, k] == 1:
            step = tracks.centroid[1, k] - tracks.centroid[0, k]
            norm = float(np.hypot(*step))
            on_track = np.hypot(*(tracks.centroid[0, k] - positions[k])) <= ON_TRACK_PX * size / REFERENCE_SIZE
            if not on_track and norm > 0.25 * speed:  # drifted, visibly moving: its direction at the prompt's speed
                velocities[k] = step / norm * speed
            positions[k] = tracks.centroid[0, k]
        else:  # found in the last frame only: one step back along the truth's motion
            positions[k] = tracks.centroid[1, k] - velocities[k]
    return {"positions": positions, "velocities": velocities, "camera_offset": truth.camera_offsets[frame - 1],
            "present": present}, tracked


@torch.no_grad()
def resimulated_targets(codec, clean: torch.Tensor, context: torch.Tensor, cells: torch.Tensor,
                        specs: Sequence[SceneSpec], states: Sequence[WorldStates], rows: Sequence[int],
                        true_chunks: int, chunk_frames: int, frame_size: int, object_weight: float,
                        restore: bool = True) -> ResimulatedTargets:
    """Replace the targets of every chunk after ``true_chunks`` of the clips ``rows`` (those whose context is the
    model's rollout) by the world continued from the rollout's state at the frame before the chunk.

    ``clean``: true latents ``[B, C, T, h, w]``; ``context``: the rolled-out context of the same shape; ``cells``:
    loss weights ``[B, T, h, w]`` (``object_weight`` on the cells that carry an object). ``codec`` encodes and
    decodes latents (the frozen mini autoencoder). ``restore=False`` leaves lost objects out of the targets."""
    frames = clean.shape[2]
    chunk_starts = list(range(true_chunks * chunk_frames, frames, chunk_frames))
    if not len(rows) or not chunk_starts:
        return ResimulatedTargets(clean, cells, 0, 0)
    jobs = [(r, start) for r in rows for start in chunk_starts]
    last = torch.stack([context[r, :, start - 2:start] for r, start in jobs])  # [N, C, 2, h, w]
    pixels = codec.decode(last).permute(0, 2, 1, 3, 4).numpy()  # [N, 2, 3, H, W]
    starts, tracked = [], 0
    for (r, start), pair in zip(jobs, pixels):
        state, found = rollout_start_state(pair, specs[r], states[r], start - 1, frame_size,  # from frame start - 2
                                           restore=restore)
        starts.append(state)
        tracked += found
    total = sum(len(specs[r].objects) for r, _ in jobs)
    video, new_states = render_continuation([specs[r] for r, _ in jobs], starts, chunk_frames + 1, frame_size)
    video = video[:, 1:]  # frames start - 1 (the tracked last context frame, re-simulated) are context, not target
    for st, start in zip(new_states, starts):
        shown = start["present"]  # left-out objects carry no object-cell weight
        st.positions, st.velocities, st.camera_offsets = st.positions[1:, shown], st.velocities[1:, shown], \
            st.camera_offsets[1:]
        st.extents = st.extents[shown]
    latents = codec.encode(video.permute(0, 2, 1, 3, 4).contiguous())  # [N, C, chunk, h, w]
    new_cells = 1.0 + (object_weight - 1.0) * object_cells(new_states, frame_size, clean.shape[-1])
    clean, cells = clean.clone(), cells.clone()
    for i, (r, start) in enumerate(jobs):
        clean[r, :, start:start + chunk_frames] = latents[i].to(clean.dtype)
        cells[r, start:start + chunk_frames] = new_cells[i].to(cells.dtype)
    return ResimulatedTargets(clean, cells, tracked, total - tracked)
