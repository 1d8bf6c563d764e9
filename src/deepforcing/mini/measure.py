"""Ground-truth metrics of a *generated* mini-world video against its prompt.

Because the world is procedural, a video's scene is known exactly, so long-horizon failure modes (objects
vanishing or duplicating, colours drifting, motion slowing down or freezing, trajectories wandering off) are
measured rather than eyeballed. Input: any video ``[T, 3, H, W]`` float in ``[-1, 1]`` or uint8 (``[T, 3, H, W]``
or ``[T, H, W, 3]``), square frames, plus its ``SceneSpec`` (or prompt) and optionally the true ``WorldStates`` of
its first frames.

Per frame, each prompt object is found by colour. Every pixel is modelled as a mix ``alpha * colour_k + (1 - alpha)
* tone`` of an object's palette colour and one of the two known background tones (this explains anti-aliased or
blurred edges); the object whose mix fits best (smallest residual, below ``colour_radius`` and below the pixel's
distance to the background tones) owns it. Pixels with ``alpha >= 0.5`` form the object's mask; the soft weights
``alpha`` on and next to the mask give sub-pixel area and centroid (pixel centres at ``j + 0.5``); the median of
the most covered mask pixels gives its colour; connected blobs of the mask (8-connectivity, blobs under
``min_blob_fraction`` of the expected area ignored) give its count. Metrics (``measure_video``):

* ``object_persistence`` — fraction of frames in which every object is present: its area within
  ``[min_area_ratio, max_area_ratio]`` times the expected area ``pi r^2`` of its size class;
* ``count_accuracy`` — fraction of frames in which the number of blobs over all objects equals the object count
  (catches both vanished and duplicated objects);
* ``object_colour_error`` / ``background_colour_error`` — Euclidean RGB distance (0-1 units, so up to sqrt 3)
  between an object's median colour and its prompt colour (frames where it is present), and the median distance of
  the remaining pixels to the background tones; ``colour_error`` is their mean;
* ``speed`` — per object, the median centroid displacement per frame (pixels; measured over ``speed_span`` frames
  where the object is present as one blob), ``speed_ratio`` its ratio to the
  prompt speed (1.0 = preserved, 0 = frozen) and ``speed_preservation`` the mean ratio over objects;
* ``position_error`` — mean centroid distance (pixels) to the true positions, over the frames states are given;
* ``unexplained_fraction`` — fraction of pixels near no prompt colour, no background tone and no mix of the two
  (artefacts, foreign objects);
* ``windows`` — the same per-frame quantities averaged per window of ``window`` frames, for drift plots.

Everything returned is plain floats / lists (``VideoMetrics.to_dict()`` is JSON-serialisable, NaN -> None).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .language import SceneSpec, parse_prompt
from .world import WorldStates, expected_area, object_speed

__all__ = [
    "MeasureConfig",
    "ObjectTracks",
    "VideoMetrics",
    "measure_video",
    "score_tracks",
    "track_objects",
    "video_to_rgb",
]


@dataclass(frozen=True)
class MeasureConfig:
    """Thresholds of the colour tracker and the metric windows.

    ``colour_radius``: max RGB distance of an object pixel to its prompt colour (palette colours are >= 0.35
    apart, backgrounds are darker tones). ``min_area_ratio`` / ``max_area_ratio``: plausible object area relative
    to ``pi r^2``. ``min_blob_fraction``: smaller blobs are noise, not objects. ``speed_span``: speeds are
    displacements over this many frames divided by it (2 cancels the period-2 sub-pixel jitter of slow objects;
    longer spans would cross more bounces). ``window``: frames per window.
    """

    colour_radius: float = 0.3
    min_area_ratio: float = 0.3
    max_area_ratio: float = 3.0
    min_blob_fraction: float = 0.25
    speed_span: int = 2
    window: int = 8

    def __post_init__(self) -> None:
        if not 0 < self.colour_radius < math.sqrt(3):
            raise ValueError(f"colour_radius must be in (0, sqrt 3), got {self.colour_radius}")
        if not 0 <= self.min_area_ratio < self.max_area_ratio:
            raise ValueError(
                f"need 0 <= min_area_ratio < max_area_ratio, got {self.min_area_ratio}, {self.max_area_ratio}"
            )
        if self.min_blob_fraction < 0 or self.window < 1 or self.speed_span < 1:
            raise ValueError(
                f"need min_blob_fraction >= 0, speed_span >= 1 and window >= 1, "
                f"got {self.min_blob_fraction}, {self.speed_span}, {self.window}"
            )


@dataclass
class ObjectTracks:
    """Per-frame measurements, numpy arrays: ``T`` frames, ``K`` prompt objects (NaN where an object is absent).

    ``area``/``blobs``/``present`` ``[T, K]``, ``centroid`` ``[T, K, 2]`` (x, y pixels), ``colour`` ``[T, K, 3]``
    (median RGB 0-1), ``colour_error`` ``[T, K]``, ``background_error`` ``[T]``, ``unexplained`` ``[T]`` (fraction).
    ``size`` is the frame size in pixels (speeds and areas scale with it).
    """

    size: int
    area: np.ndarray
    blobs: np.ndarray
    present: np.ndarray
    centroid: np.ndarray
    colour: np.ndarray
    colour_error: np.ndarray
    background_error: np.ndarray
    unexplained: np.ndarray


@dataclass
class VideoMetrics:
    """Scalar metrics of one video plus per-window time series (see module docstring)."""

    num_frames: int
    object_persistence: float
    persistence_per_object: list[float]
    count_accuracy: float
    object_colour_error: float
    background_colour_error: float
    colour_error: float
    speed: list[float]
    speed_ratio: list[float]
    speed_preservation: float
    position_error: float | None
    unexplained_fraction: float
    window: int
    windows: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable dict (NaN becomes None)."""
        return _nan_to_none(asdict(self))


def _nan_to_none(value):
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def video_to_rgb(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """Any supported video layout -> float32 ``[T, H, W, 3]`` in ``[0, 1]``."""
    array = video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if array.ndim != 4:
        raise ValueError(f"expected a video [T, 3, H, W] or [T, H, W, 3], got shape {tuple(array.shape)}")
    if array.shape[1] == 3 and array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    elif array.shape[-1] != 3:
        raise ValueError(f"expected 3 colour channels in dim 1 or dim 3, got shape {tuple(array.shape)}")
    if array.dtype == np.uint8:
        rgb = array.astype(np.float32) / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        rgb = (array.astype(np.float32) + 1.0) / 2.0
    else:
        raise ValueError(f"expected uint8 or float frames in [-1, 1], got dtype {array.dtype}")
    if rgb.shape[1] != rgb.shape[2]:
        raise ValueError(f"mini-world frames are square, got {rgb.shape[1]}x{rgb.shape[2]}")
    return np.clip(rgb, 0.0, 1.0)


def _segment_distance(pixels: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance of each RGB pixel ``[..., 3]`` to the segment ``start``-``end``."""
    direction = end - start
    length2 = float((direction * direction).sum())
    if length2 < 1e-12:
        return np.linalg.norm(pixels - start, axis=-1)
    along = np.clip(((pixels - start) * direction).sum(-1) / length2, 0.0, 1.0)
    return np.linalg.norm(pixels - (start + along[..., None] * direction), axis=-1)


def _max3x3(values: np.ndarray) -> np.ndarray:
    """Maximum over each pixel's 3x3 neighbourhood of ``[..., H, W]`` (zero padding)."""
    padded = np.pad(values, [(0, 0)] * (values.ndim - 2) + [(1, 1), (1, 1)])
    h, w = values.shape[-2:]
    out = values.copy()
    for dy in range(3):
        for dx in range(3):
            np.maximum(out, padded[..., dy : dy + h, dx : dx + w], out=out)
    return out


def _dilate(masks: np.ndarray) -> np.ndarray:
    """3x3 binary dilation of boolean masks ``[..., H, W]``."""
    return _max3x3(masks.astype(np.uint8)).astype(bool)


def _count_blobs(masks: np.ndarray, min_area: np.ndarray) -> np.ndarray:
    """Connected components (8-connectivity) per mask ``[N, H, W]`` with area >= ``min_area[N]``; returns ``[N]``."""
    n, h, w = masks.shape
    ids = np.arange(1, n * h * w + 1, dtype=np.int64).reshape(n, h, w)
    labels = ids * masks
    while True:  # propagate the largest label through each component until nothing changes
        grown = _max3x3(labels) * masks
        if np.array_equal(grown, labels):
            break
        labels = grown
    roots = (labels == ids) & masks  # one pixel per component holds the component's label
    sizes = np.bincount(labels.reshape(-1), minlength=n * h * w + 1)[1:].reshape(n, h, w)
    big = roots & (sizes >= np.asarray(min_area).reshape(n, 1, 1))
    return big.sum(axis=(1, 2))


def track_objects(
    video: torch.Tensor | np.ndarray, scene: SceneSpec | str, config: MeasureConfig = MeasureConfig()
) -> ObjectTracks:
    """Find every prompt object in every frame by colour (module docstring); returns raw per-frame measurements."""
    spec = parse_prompt(scene) if isinstance(scene, str) else scene
    rgb = video_to_rgb(video)  # [T, H, W, 3]
    frames, size = rgb.shape[0], rgb.shape[1]
    colours = np.array([o.rgb for o in spec.objects], np.float32)  # [K, 3]
    tone0, tone1 = (np.array(t, np.float32) for t in spec.background.tones)
    dist_bg = _segment_distance(rgb, tone0, tone1)  # [T, H, W]
    # Each pixel is modelled as a mix alpha * colour_k + (1 - alpha) * tone (anti-aliased or blurred edges): alpha
    # from the projection on the line tone -> colour_k, residual = distance to that line, better tone kept.
    alphas, residuals = [], []
    for tone in (tone0, tone1):
        span = colours - tone  # [K, 3]
        alpha = np.clip(((rgb[..., None, :] - tone) * span).sum(-1) / (span * span).sum(-1), 0.0, 1.0)
        residuals.append(np.linalg.norm(rgb[..., None, :] - (tone + alpha[..., None] * span), axis=-1))
        alphas.append(alpha)
    alpha = np.where(residuals[0] <= residuals[1], alphas[0], alphas[1])  # [T, H, W, K]
    residual = np.minimum(residuals[0], residuals[1])
    owner = residual.argmin(axis=-1)[..., None] == np.arange(len(colours))  # object whose mix explains it best
    explained = owner & (residual < config.colour_radius) & (residual < dist_bg[..., None])  # not pure background
    masks = explained & (alpha >= 0.5)  # [T, H, W, K]: pixels mostly covered by object k
    near = _dilate(masks.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    weight = np.where(near & explained, alpha, 0.0).astype(np.float32)  # soft coverage: sub-pixel area, centroid

    expected = np.array([expected_area(o.size, size) for o in spec.objects], np.float32)
    area = weight.sum(axis=(1, 2))  # [T, K]
    present = (area >= config.min_area_ratio * expected) & (area <= config.max_area_ratio * expected)
    centres = np.arange(size, dtype=np.float32) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (weight * centres[None, None, :, None]).sum(axis=(1, 2)) / area
        cy = (weight * centres[None, :, None, None]).sum(axis=(1, 2)) / area
    centroid = np.stack([cx, cy], axis=-1)  # [T, K, 2]
    colour = np.full((frames, len(colours), 3), np.nan, np.float32)
    for t, k in zip(*np.nonzero(masks.any(axis=(1, 2)))):  # median over the most covered pixels: the core
        cover = alpha[t, :, :, k]
        core = masks[t, :, :, k] & (cover >= cover[masks[t, :, :, k]].max() - 0.1)
        colour[t, k] = np.median(rgb[t][core], axis=0)
    colour_error = np.linalg.norm(colour - colours[None], axis=-1)

    object_masks = masks.transpose(0, 3, 1, 2).reshape(-1, size, size)
    min_blob = np.tile(config.min_blob_fraction * expected, frames)
    blobs = _count_blobs(object_masks, min_blob).reshape(frames, len(colours))

    background = ~masks.any(axis=-1)
    background_error = np.array(
        [np.median(dist_bg[t][background[t]]) if background[t].any() else np.nan for t in range(frames)], np.float32
    )
    unexplained = (np.minimum(residual.min(axis=-1), dist_bg) > config.colour_radius).mean(axis=(1, 2))
    return ObjectTracks(
        size=int(size),
        area=area,
        blobs=blobs,
        present=present,
        centroid=centroid,
        colour=colour,
        colour_error=colour_error,
        background_error=background_error,
        unexplained=unexplained.astype(np.float32),
    )


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _nanmedian(values: np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")


def score_tracks(
    tracks: ObjectTracks,
    scene: SceneSpec | str,
    states: WorldStates | np.ndarray | None = None,
    config: MeasureConfig = MeasureConfig(),
) -> VideoMetrics:
    """Turn per-frame tracks into ``VideoMetrics``; ``states`` (``WorldStates`` or positions ``[N, K, 2]``) are the
    true states of the first ``N`` frames (for ``position_error``)."""
    spec = parse_prompt(scene) if isinstance(scene, str) else scene
    frames, count = tracks.present.shape
    if states is not None:
        truth = states.positions if isinstance(states, WorldStates) else np.asarray(states, np.float32)
        if truth.ndim != 3 or truth.shape[1] != count or truth.shape[2] != 2:
            raise ValueError(f"true positions must be [N, {count}, 2], got shape {tuple(truth.shape)}")

    # Per-frame series.
    all_present = tracks.present.all(axis=1).astype(np.float64)
    count_ok = (tracks.blobs.sum(axis=1) == count).astype(np.float64)
    object_error = np.where(tracks.present, tracks.colour_error, np.nan)
    frame_object_error = np.array([_nanmean(row) for row in object_error])
    usable = tracks.present & (tracks.blobs == 1)
    span = config.speed_span
    step = np.linalg.norm(tracks.centroid[span:] - tracks.centroid[:-span], axis=-1) / span  # [T - span, K]
    step = np.where(usable[span:] & usable[:-span], step, np.nan)
    prompt_speed = np.array([object_speed(o.speed, tracks.size) for o in spec.objects])
    position_error = np.full((frames, count), np.nan)
    if states is not None:
        n = min(frames, truth.shape[0])
        error = np.linalg.norm(tracks.centroid[:n] - truth[:n], axis=-1)
        position_error[:n] = np.where(tracks.present[:n], error, np.nan)
    frame_position_error = np.array([_nanmean(row) for row in position_error])

    speed = [_nanmedian(step[:, k]) for k in range(count)]
    ratio = [float(s / v) for s, v in zip(speed, prompt_speed)]
    object_colour_error = _nanmean(object_error)
    background_colour_error = _nanmean(tracks.background_error)

    windows: dict[str, list[float]] = {name: [] for name in (
        "start_frame", "object_persistence", "count_accuracy", "object_colour_error", "background_colour_error",
        "speed_ratio", "position_error", "unexplained_fraction")}
    for start in range(0, frames, config.window):
        stop = min(start + config.window, frames)
        window_steps = step[max(start - span, 0) : stop - span]
        window_ratio = [(_nanmedian(window_steps[:, k]) if len(window_steps) else float("nan")) / prompt_speed[k]
                        for k in range(count)]
        windows["start_frame"].append(float(start))
        windows["object_persistence"].append(float(all_present[start:stop].mean()))
        windows["count_accuracy"].append(float(count_ok[start:stop].mean()))
        windows["object_colour_error"].append(_nanmean(frame_object_error[start:stop]))
        windows["background_colour_error"].append(_nanmean(tracks.background_error[start:stop]))
        windows["speed_ratio"].append(_nanmean(np.array(window_ratio)))
        windows["position_error"].append(_nanmean(frame_position_error[start:stop]))
        windows["unexplained_fraction"].append(float(tracks.unexplained[start:stop].mean()))

    return VideoMetrics(
        num_frames=int(frames),
        object_persistence=float(all_present.mean()),
        persistence_per_object=[float(v) for v in tracks.present.mean(axis=0)],
        count_accuracy=float(count_ok.mean()),
        object_colour_error=object_colour_error,
        background_colour_error=background_colour_error,
        colour_error=_nanmean(np.array([object_colour_error, background_colour_error])),
        speed=speed,
        speed_ratio=ratio,
        speed_preservation=_nanmean(np.array(ratio)),
        position_error=_nanmean(position_error) if states is not None else None,
        unexplained_fraction=float(tracks.unexplained.mean()),
        window=config.window,
        windows=windows,
    )


def measure_video(
    video: torch.Tensor | np.ndarray,
    scene: SceneSpec | str,
    states: WorldStates | np.ndarray | None = None,
    config: MeasureConfig = MeasureConfig(),
) -> VideoMetrics:
    """Track the prompt's objects in ``video`` and score them (module docstring). ``states``: optional ground truth
    of the first frames (``Clip.states`` or positions ``[N, K, 2]``) for ``position_error``."""
    return score_tracks(track_objects(video, scene, config), scene, states, config)
