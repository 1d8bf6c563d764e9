"""The mini world's renderer: deterministic clips with ground-truth states from (scene, seed).

Units and conventions (all lengths scale with the frame ``size``; numbers below are for ``size=32``):

* Pixel ``(row i, column j)`` covers ``[j, j+1) x [i, i+1)``; its centre is ``(j + 0.5, i + 0.5)``. Positions are
  ``(x, y)`` floats in these *view* (screen) coordinates, ``x`` to the right, ``y`` down.
* Speeds in pixels/frame: slow 0.5, normal 1.0, fast 2.0 (``SPEED_PX`` times ``size / 32``). Each object moves at
  a constant speed in a direction drawn from the seed.
* Size classes set an *equal-area radius* ``r`` (small 0.08, medium 0.11, big 0.14 of ``size``): every shape has
  area ``pi r^2``; a square has half-side ``r sqrt(pi)/2``, an (upward) equilateral triangle circumradius
  ``r sqrt(4 pi / (3 sqrt 3))`` with its centroid at the position. ``extent`` is the circumradius.
* Physics: objects bounce elastically (mirror reflection, speed kept) off the view borders, so they are always
  fully visible (centre at least ``extent`` from each border), and off each other (discs of radius ``r``; each
  approaching object mirrors its own velocity about the contact normal, which keeps every object's speed constant
  so speed stays measurable). Motion is integrated in sub-steps of at most half a pixel.
* Camera pan (0.5 px/frame): the camera offset ``c(t)`` moves in the pan direction and the background shows the
  world pattern at ``view + c(t)``, so "camera pans left" scrolls the background to the right. The objects live
  in the camera's frame (their view positions follow the physics above); their world coordinates are
  ``view + c(t)`` (``WorldStates.world_positions``). Pans are visible on striped/checkered backgrounds only.
* Backgrounds: dark; plain; diagonal stripes (width ``size/8``) or checkers (cell ``size/8``) of two tones
  (``BackgroundSpec.tones``). Edges of shapes and patterns are anti-aliased by a one-pixel linear ramp.

``render_clip(spec_or_prompt, seed, num_frames, size=32)`` returns a ``Clip`` with ``frames`` float32
``[T, 3, H, W]`` in ``[-1, 1]`` and ``states``; ``render_batch`` renders many clips at once ``[B, T, 3, H, W]``.
The same ``(scene, seed)`` always gives identical frames; ``render_clip`` is ``render_batch`` with one clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .language import SHAPES, SceneSpec, parse_prompt

__all__ = [
    "PAN_SPEED_PX",
    "RADIUS_FRACTION",
    "SPEED_PX",
    "Clip",
    "WorldStates",
    "expected_area",
    "object_radius",
    "object_speed",
    "object_cells",
    "render_batch",
    "render_batch_with_states",
    "render_clip",
    "render_continuation",
    "to_uint8",
]

REFERENCE_SIZE = 32
SPEED_PX: dict[str, float] = {"slow": 0.5, "normal": 1.0, "fast": 2.0}
"""Pixels per frame at ``REFERENCE_SIZE``; scaled by ``size / REFERENCE_SIZE``."""
PAN_SPEED_PX = 0.5
RADIUS_FRACTION: dict[str, float] = {"small": 0.08, "medium": 0.11, "big": 0.14}
PATTERN_FRACTION = 1 / 8  # stripe width / checker cell as a fraction of the frame size
MAX_SUBSTEP_PX = 0.5
_EXTENT = {"circle": 1.0, "square": math.sqrt(math.pi / 2), "triangle": math.sqrt(4 * math.pi / (3 * math.sqrt(3)))}
_HALF_SIDE = math.sqrt(math.pi) / 2  # square half-side per unit equal-area radius
_PAN = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
_SHAPE_CODE = {shape: i for i, shape in enumerate(SHAPES)}


def object_radius(size_class: str, size: int) -> float:
    """Equal-area radius in pixels of a ``small`` / ``medium`` / ``big`` object in a ``size`` x ``size`` frame."""
    return RADIUS_FRACTION[size_class] * size


def object_speed(speed_class: str, size: int) -> float:
    """Speed in pixels/frame of a ``slow`` / ``normal`` / ``fast`` object in a ``size`` x ``size`` frame."""
    return SPEED_PX[speed_class] * size / REFERENCE_SIZE


def expected_area(size_class: str, size: int) -> float:
    """Area in pixels of any shape of this size class (shapes are equal-area): ``pi r^2``."""
    return math.pi * object_radius(size_class, size) ** 2


@dataclass
class WorldStates:
    """Ground truth of one clip. ``T`` frames, ``K`` objects; arrays are numpy float32.

    ``positions`` / ``velocities`` ``[T, K, 2]`` in view pixels (velocity of frame t is the displacement the
    physics applies from t to t+1 before any bounce); ``colours`` ``[K, 3]`` RGB 0-1; ``shapes`` names;
    ``radii`` ``[K]`` equal-area radii; ``extents`` ``[K]`` circumradii; ``background_tones`` ``[2, 3]``;
    ``camera_offsets`` ``[T, 2]`` in pixels.
    """

    positions: np.ndarray
    velocities: np.ndarray
    colours: np.ndarray
    shapes: tuple[str, ...]
    radii: np.ndarray
    extents: np.ndarray
    background_kind: str
    background_tones: np.ndarray
    camera_offsets: np.ndarray

    @property
    def world_positions(self) -> np.ndarray:
        """Object positions in world coordinates (view position plus camera offset), ``[T, K, 2]``."""
        return self.positions + self.camera_offsets[:, None, :]

    def frame(self, t: int) -> dict:
        """Plain-dict state of frame ``t``: one entry per object plus background and camera."""
        return {
            "objects": [
                {
                    "position": [float(v) for v in self.positions[t, k]],
                    "velocity": [float(v) for v in self.velocities[t, k]],
                    "colour": [float(v) for v in self.colours[k]],
                    "shape": self.shapes[k],
                    "radius": float(self.radii[k]),
                }
                for k in range(len(self.shapes))
            ],
            "background": {"kind": self.background_kind, "tones": self.background_tones.tolist()},
            "camera_offset": [float(v) for v in self.camera_offsets[t]],
        }


@dataclass
class Clip:
    """A rendered clip: ``frames`` float32 ``[T, 3, H, W]`` in ``[-1, 1]``, its scene, seed and ground truth."""

    frames: torch.Tensor
    states: WorldStates
    spec: SceneSpec
    seed: int

    def to_uint8(self) -> np.ndarray:
        """Frames as uint8 ``[T, H, W, 3]`` (for video writers)."""
        return to_uint8(self.frames)


def to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """Convert float frames ``[T, 3, H, W]`` in ``[-1, 1]`` to uint8 ``[T, H, W, 3]``."""
    array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim != 4 or array.shape[1] != 3:
        raise ValueError(f"expected frames [T, 3, H, W], got shape {tuple(array.shape)}")
    return np.clip(np.rint((array.transpose(0, 2, 3, 1) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _as_spec(scene: SceneSpec | str) -> SceneSpec:
    if isinstance(scene, SceneSpec):
        return scene
    if isinstance(scene, str):
        return parse_prompt(scene)
    raise ValueError(f"expected a SceneSpec or a prompt string, got {type(scene).__name__}")


def _initial_state(spec: SceneSpec, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (non-overlapping, fully inside) and velocities ``[K, 2]`` drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    radii = np.array([object_radius(o.size, size) for o in spec.objects])
    extents = radii * np.array([_EXTENT[o.shape] for o in spec.objects])
    best, best_gap = None, -np.inf
    for _ in range(200):
        pos = rng.uniform(extents[:, None], size - extents[:, None], size=(len(radii), 2))
        gap = np.inf
        for i in range(len(radii)):
            for j in range(i + 1, len(radii)):
                gap = min(gap, np.linalg.norm(pos[i] - pos[j]) - radii[i] - radii[j] - 1.0)
        if gap > best_gap:
            best, best_gap = pos, gap
        if gap >= 0:
            break
    angles = rng.uniform(0.0, 2 * np.pi, size=len(radii))
    speeds = np.array([object_speed(o.speed, size) for o in spec.objects])
    velocities = speeds[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return best, velocities


def _simulate(
    pos: np.ndarray, vel: np.ndarray, radii: np.ndarray, extents: np.ndarray, active: np.ndarray, size: int, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Run the physics for ``steps`` frames on a batch ``[B, K, 2]``; returns positions, velocities ``[B, T, K, 2]``."""
    pos, vel = pos.astype(np.float64).copy(), vel.astype(np.float64).copy()
    batch, count = radii.shape
    positions = np.empty((batch, steps, count, 2), np.float64)
    velocities = np.empty_like(positions)
    # A fixed number of sub-steps per size (not per batch), so a clip's motion never depends on its batch-mates.
    substeps = max(1, math.ceil(object_speed("fast", size) / MAX_SUBSTEP_PX))
    low, high = extents[..., None], size - extents[..., None]
    pairs = [
        (i, j, active[:, i] & active[:, j], radii[:, i] + radii[:, j])
        for i in range(count)
        for j in range(i + 1, count)
    ]
    walls_active = active[..., None]
    for t in range(steps):
        positions[:, t], velocities[:, t] = pos, vel
        for _ in range(substeps):
            pos += vel / substeps
            below, above = (pos < low) & walls_active, (pos > high) & walls_active
            pos = np.where(below, 2 * low - pos, np.where(above, 2 * high - pos, pos))
            vel = np.where(below | above, -vel, vel)
            for i, j, both_active, contact in pairs:
                delta = pos[:, j] - pos[:, i]
                dist = np.sqrt(delta[:, 0] * delta[:, 0] + delta[:, 1] * delta[:, 1])
                touching = (dist < contact) & both_active
                if not touching.any():
                    continue
                normal = delta / np.maximum(dist, 1e-9)[:, None]
                along_i = (vel[:, i] * normal).sum(-1, keepdims=True)  # > 0: i moves towards j
                along_j = (vel[:, j] * normal).sum(-1, keepdims=True)  # < 0: j moves towards i
                flip_i = (touching & (along_i[:, 0] > 0))[:, None]
                flip_j = (touching & (along_j[:, 0] < 0))[:, None]
                vel[:, i] = np.where(flip_i, vel[:, i] - 2 * along_i * normal, vel[:, i])
                vel[:, j] = np.where(flip_j, vel[:, j] - 2 * along_j * normal, vel[:, j])
    return positions, velocities


def _band(u: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased indicator of the bands ``[2nw, (2n+1)w)`` along coordinate ``u`` (1 inside, 0 outside)."""
    m = np.mod(u, 2 * width)
    inside = np.where(m < width, np.minimum(m, width - m), -np.minimum(m - width, 2 * width - m))
    return np.clip(inside + 0.5, 0.0, 1.0)


def _background(kinds: list[str], tones: np.ndarray, offsets: np.ndarray, size: int) -> np.ndarray:
    """Background images ``[B, T, 3, H, W]`` from tones ``[B, 2, 3]`` and camera offsets ``[B, T, 2]``."""
    centres = np.arange(size, dtype=np.float32) + 0.5
    u = centres[None, None, None, :] + offsets[:, :, 0, None, None].astype(np.float32)  # [B, T, 1, W]
    v = centres[None, None, :, None] + offsets[:, :, 1, None, None].astype(np.float32)  # [B, T, H, 1]
    width = PATTERN_FRACTION * size
    first = np.ones((len(kinds), offsets.shape[1], size, size), np.float32)
    for b, kind in enumerate(kinds):
        if kind == "striped":
            first[b] = _band((u[b] + v[b]) / math.sqrt(2), width)
        elif kind == "checkered":
            bu, bv = _band(u[b], width), _band(v[b], width)
            first[b] = bu * bv + (1 - bu) * (1 - bv)
    tone0, tone1 = tones[:, 0, :, None, None, None], tones[:, 1, :, None, None, None]  # [B, 3, 1, 1, 1]
    image = tone1 + (tone0 - tone1) * first[:, None]  # [B, 3, T, H, W]
    return image.transpose(0, 2, 1, 3, 4)


def _coverage(shape_codes: np.ndarray, radii: np.ndarray, positions: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage ``[B, T, K, H, W]`` of each object from its signed distance field."""
    centres = np.arange(size, dtype=np.float32) + 0.5
    dx = centres[None, None, None, None, :] - positions[..., 0, None, None].astype(np.float32)  # [B, T, K, 1, W]
    dy = centres[None, None, None, :, None] - positions[..., 1, None, None].astype(np.float32)  # [B, T, K, H, 1]
    r = radii[:, None, :, None, None].astype(np.float32)
    codes = shape_codes[:, None, :, None, None]
    circle = np.sqrt(dx * dx + dy * dy) - r
    square = np.maximum(np.abs(dx), np.abs(dy)) - _HALF_SIDE * r
    inradius = 0.5 * _EXTENT["triangle"] * r  # upward triangle: edges at distance R/2 from the centroid
    s, c = math.sin(math.pi / 3), math.cos(math.pi / 3)
    triangle = np.maximum(np.maximum(dy, s * dx - c * dy), -s * dx - c * dy) - inradius
    sdf = np.where(codes == _SHAPE_CODE["circle"], circle, np.where(codes == _SHAPE_CODE["square"], square, triangle))
    return np.clip(0.5 - sdf, 0.0, 1.0)


def render_batch(
    scenes: Sequence[SceneSpec | str], seeds: Sequence[int], num_frames: int, size: int = REFERENCE_SIZE
) -> torch.Tensor:
    """Render one clip per ``(scene, seed)`` pair: float32 ``[B, T, 3, H, W]`` in ``[-1, 1]``."""
    frames, _ = _render(scenes, seeds, num_frames, size)
    return torch.from_numpy(frames)


def render_batch_with_states(
    scenes: Sequence[SceneSpec | str], seeds: Sequence[int], num_frames: int, size: int = REFERENCE_SIZE
) -> tuple[torch.Tensor, list[WorldStates]]:
    """``render_batch`` plus each clip's ground truth (training uses the object positions to weight its loss)."""
    frames, states = _render(scenes, seeds, num_frames, size)
    return torch.from_numpy(frames), states


def object_cells(states: Sequence[WorldStates], size: int, cells: int, margin: float = 0.5) -> torch.Tensor:
    """Float ``[B, T, cells, cells]`` map: 1 where a grid cell (``size / cells`` pixels) lies within an object's
    circumradius plus ``margin`` cells of its centre, else 0 (the latent cells that carry the objects)."""
    cell = size / cells
    centres = (np.arange(cells, dtype=np.float32) + 0.5) * cell
    out = np.zeros((len(states), states[0].positions.shape[0], cells, cells), np.float32)
    for b, st in enumerate(states):
        dx = centres[None, None, None, :] - st.positions[:, :, 0, None, None]  # [T, K, 1, cells]
        dy = centres[None, None, :, None] - st.positions[:, :, 1, None, None]  # [T, K, cells, 1]
        reach = (st.extents + margin * cell)[None, :, None, None]
        out[b] = (np.sqrt(dx * dx + dy * dy) <= reach).any(axis=1)
    return torch.from_numpy(out)


def render_clip(scene: SceneSpec | str, seed: int, num_frames: int, size: int = REFERENCE_SIZE) -> Clip:
    """Render ``num_frames`` frames of ``scene`` (a ``SceneSpec`` or a prompt) at ``size`` x ``size`` from ``seed``."""
    spec = _as_spec(scene)
    frames, states = _render([spec], [seed], num_frames, size)
    return Clip(frames=torch.from_numpy(frames[0]), states=states[0], spec=spec, seed=int(seed))


def render_continuation(
    scenes: Sequence[SceneSpec | str], starts: Sequence[dict], num_frames: int, size: int = REFERENCE_SIZE
) -> tuple[torch.Tensor, list[WorldStates]]:
    """Continue each scene from a given state instead of its seed: ``starts[b]`` holds ``positions`` and
    ``velocities`` ``[K, 2]`` (view pixels, one row per prompt object, in prompt order) and ``camera_offset``
    ``[2]`` of the state's frame, optionally ``present`` ``[K]`` (False: the object is left out). Returns the
    ``num_frames`` frames *after* that state ``[B, T, 3, H, W]`` and their
    ground truth: the same physics and renderer as :func:`render_batch`, so a clip rendered from its own state at
    frame ``t`` continues it exactly. Positions are clamped into the view (an object's centre at least its extent
    from each border), as the physics keeps them.

    Used by training on the model's own rollouts (``TrainConfig.rollout_target="resimulated"``): the target of a
    chunk is the world continued from where the rollout put the objects, not from where the truth has them."""
    specs = [_as_spec(s) for s in scenes]
    if len(starts) != len(specs):
        raise ValueError(f"need one start state per scene; got {len(specs)} scenes, {len(starts)} states")
    frames, states = _render(specs, [0] * len(specs), int(num_frames) + 1, size, starts=starts)
    for st in states:
        st.positions, st.velocities = st.positions[1:], st.velocities[1:]
        st.camera_offsets = st.camera_offsets[1:]
    return torch.from_numpy(frames[:, 1:]), states


def _render(
    scenes: Sequence[SceneSpec | str], seeds: Sequence[int], num_frames: int, size: int,
    starts: Sequence[dict] | None = None,
) -> tuple[np.ndarray, list[WorldStates]]:
    specs = [_as_spec(s) for s in scenes]
    seeds = [int(s) for s in seeds]
    if len(specs) != len(seeds) or not specs:
        raise ValueError(f"need one seed per scene and at least one scene; got {len(specs)} scenes, {len(seeds)} seeds")
    if int(num_frames) < 1 or int(size) < 8:
        raise ValueError(f"need num_frames >= 1 and size >= 8, got num_frames={num_frames}, size={size}")
    num_frames, size = int(num_frames), int(size)
    batch, count = len(specs), max(len(s.objects) for s in specs)
    pos = np.full((batch, count, 2), size / 2)
    vel = np.zeros((batch, count, 2))
    radii = np.zeros((batch, count))
    extents = np.zeros((batch, count))
    codes = np.zeros((batch, count), np.int64)
    colours = np.zeros((batch, count, 3), np.float32)
    active = np.zeros((batch, count), bool)
    tones = np.zeros((batch, 2, 3), np.float32)
    pan = np.zeros((batch, 2))
    offset0 = np.zeros((batch, 2))
    for b, (spec, seed) in enumerate(zip(specs, seeds)):
        k = len(spec.objects)
        radii[b, :k] = [object_radius(o.size, size) for o in spec.objects]
        extents[b, :k] = radii[b, :k] * np.array([_EXTENT[o.shape] for o in spec.objects])
        if starts is None:
            pos[b, :k], vel[b, :k] = _initial_state(spec, seed, size)
        else:
            given = np.asarray(starts[b]["positions"], np.float64).reshape(k, 2)
            pos[b, :k] = np.clip(given, extents[b, :k, None], size - extents[b, :k, None])
            vel[b, :k] = np.asarray(starts[b]["velocities"], np.float64).reshape(k, 2)
            offset0[b] = np.asarray(starts[b].get("camera_offset", (0.0, 0.0)), np.float64)
            shown = np.asarray(starts[b].get("present", np.ones(k, bool)), bool)
        codes[b, :k] = [_SHAPE_CODE[o.shape] for o in spec.objects]
        colours[b, :k] = [o.rgb for o in spec.objects]
        active[b, :k] = True if starts is None else shown  # an object left out neither renders nor collides
        tones[b] = spec.background.tones
        if spec.pan is not None:
            pan[b] = np.array(_PAN[spec.pan]) * PAN_SPEED_PX * size / REFERENCE_SIZE
    positions, velocities = _simulate(pos, vel, radii, extents, active, size, num_frames)
    offsets = offset0[:, None, :] + pan[:, None, :] * np.arange(num_frames)[None, :, None]  # [B, T, 2]
    image = _background([s.background.kind for s in specs], tones, offsets, size)  # [B, T, 3, H, W]
    alpha = _coverage(codes, radii, positions, size) * active[:, None, :, None, None]  # [B, T, K, H, W]
    for k in range(count):
        a = alpha[:, :, k, None]
        image = image * (1 - a) + colours[:, None, k, :, None, None] * a
    frames = (image * 2.0 - 1.0).astype(np.float32)
    states = []
    for b, spec in enumerate(specs):
        k = len(spec.objects)
        states.append(
            WorldStates(
                positions=positions[b, :, :k].astype(np.float32),
                velocities=velocities[b, :, :k].astype(np.float32),
                colours=colours[b, :k].copy(),
                shapes=tuple(o.shape for o in spec.objects),
                radii=radii[b, :k].astype(np.float32),
                extents=extents[b, :k].astype(np.float32),
                background_kind=spec.background.kind,
                background_tones=tones[b].copy(),
                camera_offsets=offsets[b].astype(np.float32),
            )
        )
    return frames, states
