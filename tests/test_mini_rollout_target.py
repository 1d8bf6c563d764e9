"""Re-simulated rollout targets (``mini.rollout_target``): the world continued from where a rollout put the objects.

The codec here is the identity on pixels, so the "latents" are frames the tracker reads directly and every number
is in pixels of the 32 x 32 world."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepforcing.mini.language import parse_prompt
from deepforcing.mini.measure import track_objects
from deepforcing.mini.rollout_target import resimulated_targets
from deepforcing.mini.world import object_cells, render_batch_with_states, render_continuation

PROMPT = "a big red circle and a medium blue square bounce on a striped green background, the camera pans left"
SIZE, CHUNK, FRAMES = 32, 3, 12


class PixelCodec:
    """Identity codec: ``[B, 3, T, H, W]`` frames are their own latents."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.clone()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clone()


@pytest.fixture(scope="module")
def clip():
    spec = parse_prompt(PROMPT)
    frames, states = render_batch_with_states([spec], [11], FRAMES, SIZE)
    clean = frames.permute(0, 2, 1, 3, 4).contiguous()  # [1, 3, T, H, W]
    cells = 1.0 + 7.0 * object_cells(states, SIZE, SIZE)
    return spec, clean, cells, states


def _centroids(video: torch.Tensor, spec) -> np.ndarray:
    return track_objects(video[0].permute(1, 0, 2, 3), spec).centroid  # [T, K, 2]


def test_a_continuation_from_a_clips_own_state_is_the_clip():
    spec = parse_prompt(PROMPT)
    frames, states = render_batch_with_states([spec], [5], 20, SIZE)
    st, t = states[0], 7
    start = {"positions": st.positions[t], "velocities": st.velocities[t], "camera_offset": st.camera_offsets[t]}
    more, more_states = render_continuation([spec], [start], 10, SIZE)
    assert more.shape == (1, 10, 3, SIZE, SIZE)
    assert (more[0] - frames[0, t + 1:t + 11]).abs().max() < 1e-4  # same physics, renderer, pan
    assert np.abs(more_states[0].positions - st.positions[t + 1:t + 11]).max() < 1e-4
    assert np.allclose(more_states[0].camera_offsets, st.camera_offsets[t + 1:t + 11])
    outside = {"positions": [[-5.0, 40.0], [16.0, 16.0]], "velocities": st.velocities[t]}  # clamped into the view
    _, clamped = render_continuation([spec], [outside], 1, SIZE)
    assert (clamped[0].positions[0, 0] >= clamped[0].extents[0]).all()
    assert (clamped[0].positions[0, 0] <= SIZE - clamped[0].extents[0]).all()
    with pytest.raises(ValueError, match="one start state per scene"):
        render_continuation([spec, spec], [start], 3, SIZE)


def test_a_rollout_on_the_true_track_keeps_the_true_targets(clip):
    spec, clean, cells, states = clip
    out = resimulated_targets(PixelCodec(), clean, clean, cells, [spec], states, [0], 1, CHUNK, SIZE, 8.0)
    assert (out.tracked, out.restored) == (2 * (FRAMES // CHUNK - 1), 0)
    assert torch.equal(out.clean[:, :, :CHUNK], clean[:, :, :CHUNK])  # the true chunks are not touched
    error = np.linalg.norm(_centroids(out.clean, spec) - states[0].positions, axis=-1)
    assert error.max() < 0.75  # tracker centroids of the re-rendered targets, pixels
    assert (out.cells - cells).abs().mean() < 0.1


def test_a_drifted_rollout_is_continued_where_it_is_and_a_lost_object_comes_back(clip):
    spec, clean, cells, states = clip
    st = states[0]
    shift = np.array([[5.0, -4.0], [0.0, 0.0]])  # the red circle drifted; the blue square stays on track
    start = {"positions": st.positions[2] + shift, "velocities": st.velocities[2], "camera_offset": st.camera_offsets[2]}
    drifted, drifted_states = render_continuation([spec], [start], FRAMES - 3, SIZE)
    context = clean.clone()
    context[:, :, 3:] = drifted.permute(0, 2, 1, 3, 4)
    out = resimulated_targets(PixelCodec(), clean, context, cells, [spec], states, [0], 1, CHUNK, SIZE, 8.0)
    assert out.tracked == 2 * (FRAMES // CHUNK - 1)
    found = _centroids(out.clean, spec)[6:]  # chunks 2-3: continued from the drifted context
    follows = np.linalg.norm(found - drifted_states[0].positions[3:], axis=-1)
    assert follows.max() < 1.0 and np.linalg.norm(found[:, 0] - st.positions[6:, 0], axis=-1).min() > 3.0
    # an object missing from the context is put back where the truth has it
    only_blue = parse_prompt("a medium blue square bounces on a striped green background, the camera pans left")
    lost = render_continuation([only_blue], [{"positions": st.positions[2, 1:], "velocities": st.velocities[2, 1:],
                                              "camera_offset": st.camera_offsets[2]}], FRAMES - 3, SIZE)[0]
    context[:, :, 3:] = lost.permute(0, 2, 1, 3, 4)
    out = resimulated_targets(PixelCodec(), clean, context, cells, [spec], states, [0], 1, CHUNK, SIZE, 8.0)
    rolled = FRAMES // CHUNK - 1  # chunks 1-3; chunk 1 continues the true frames 1-2, where the red circle still is
    assert (out.tracked, out.restored) == (rolled + 1, rolled - 1)
    back = np.linalg.norm(_centroids(out.clean, spec)[3:, 0] - st.positions[3:, 0], axis=-1)
    assert back.max() < 0.75


def test_without_restoring_a_lost_object_stays_out_of_the_target(clip):
    spec, clean, cells, states = clip
    st = states[0]
    only_blue = parse_prompt("a medium blue square bounces on a striped green background, the camera pans left")
    lost = render_continuation([only_blue], [{"positions": st.positions[2, 1:], "velocities": st.velocities[2, 1:],
                                              "camera_offset": st.camera_offsets[2]}], FRAMES - 3, SIZE)[0]
    context = clean.clone()
    context[:, :, 3:] = lost.permute(0, 2, 1, 3, 4)
    out = resimulated_targets(PixelCodec(), clean, context, cells, [spec], states, [0], 1, CHUNK, SIZE, 8.0,
                              restore=False)
    tracks = track_objects(out.clean[0].permute(1, 0, 2, 3), spec)
    assert tracks.present[3:6, 0].all() and not tracks.present[6:, 0].any()  # chunk 1 still continues frames 1-2
    assert tracks.present[:, 1].all()  # the blue square, on track, stays
    assert out.cells[0, 6:].sum() < cells[0, 6:].sum()  # the left-out circle's cells carry no object weight
