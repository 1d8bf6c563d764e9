"""Weight-free long-horizon metrics: drift, flicker, motion, deceleration and roll-back over windows of a video.

Deep Forcing (arXiv 2512.05081 §5) claims that, far beyond the training horizon, its videos keep their fidelity (no
colour drift, over-saturation or blur), keep moving (no stagnation) and do not roll back to earlier frames.
VBench-Long measures this with learned models; the metrics here are classical proxies that need no weights:

- the video is cut into windows of ``window_frames`` pixel frames (default: Self Forcing's training horizon), the
  FIRST window is the reference, and each later window gives one point of a drift curve;
- imaging: sharpness = variance of the Laplacian; noise = robust sigma of the Laplacian-like residual
  (Immerkaer's mask, median absolute value / 0.6745 / 6);
- colour: mean RGB, HSV saturation, Rec.601 luma (brightness), clipped-pixel fractions, and their change
  against window 0;
- flicker: mean |Δ| of the frame-global mean luma between consecutive frames, and the RMS of its second temporal
  difference (high-frequency temporal energy: 0 for a smooth brightness ramp, large for alternation);
- motion: Farneback optical flow (``flow.py``), its mean per window, the slope over windows and last/first ratio
  (deceleration / stagnation);
- repetition: cosine similarity of mean-centred 16×16 RGB thumbnails; each frame after window 0 is compared with
  every window-0 frame; it is a near-copy when its best match is at least as similar as neighbouring frames
  typically are (median adjacent similarity, clipped to [min_copy_similarity, copy_similarity]).

Colour values are in [0, 1]; sharpness, noise and flicker are on the 0–255 luma scale; motion is in pixels per
frame at the flow analysis resolution (``FlowConfig.short_side``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from deepforcing.eval.flow import FlowConfig, flow_magnitudes, to_analysis_grey
from deepforcing.eval.video_io import read_video
from deepforcing.pipeline.validation import MAX_SECONDS
from deepforcing.stats import mean_ci, student_t_quantile  # noqa: F401  (re-exported)

# Self Forcing (Wan2.1-T2V-1.3B) is trained on 21 latent frames = 81 pixel frames = about 5 s at 16 fps.
SELF_FORCING_HORIZON_FRAMES = 81

_LUMA = np.array([0.299, 0.587, 0.114])  # Rec.601, the weights of cv2's RGB2GRAY
_NOISE_MASK = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)  # Immerkaer 1996; L2 norm 6


@dataclass(frozen=True)
class EvalConfig:
    """How a video is cut into windows and how each metric is computed.

    ``window_seconds`` (when set) overrides ``window_frames``: the window is ``round(window_seconds * fps)`` frames.
    """

    window_frames: int = SELF_FORCING_HORIZON_FRAMES
    window_seconds: float | None = None
    flow: FlowConfig = field(default_factory=FlowConfig)
    dynamic_threshold_at_256: float = 6.0  # VBench dynamic degree: top-5% flow magnitude threshold at 256 px short side
    thumbnail_size: int = 16
    copy_similarity: float = 0.98
    min_copy_similarity: float = 0.9
    underexposed_luma: int = 5
    overexposed_luma: int = 250

    def __post_init__(self) -> None:
        if self.window_frames < 2:
            raise ValueError(f"window_frames must be >= 2, got {self.window_frames}")
        if self.window_seconds is not None and not (math.isfinite(self.window_seconds) and
                                                    0 < self.window_seconds <= MAX_SECONDS):
            raise ValueError(f"window_seconds (--window-seconds) must be positive and at most {MAX_SECONDS:g}, got "
                             f"{self.window_seconds}")
        if not 0 < self.min_copy_similarity <= self.copy_similarity <= 1:
            raise ValueError("need 0 < min_copy_similarity <= copy_similarity <= 1")

    def window_length(self, fps: float) -> int:
        if self.window_seconds is None:
            return self.window_frames
        frames = round(self.window_seconds * fps)
        if frames < 2:
            raise ValueError(f"--window-seconds {self.window_seconds} at {fps:g} fps is {frames} frame(s); need >= 2")
        return frames

    @property
    def dynamic_threshold(self) -> float:
        return self.dynamic_threshold_at_256 * self.flow.short_side / 256


# name -> (title, unit, what is better). Used by the report for tables and plots.
SERIES_INFO: dict[str, tuple[str, str, str]] = {
    "sharpness": ("Sharpness (var. of Laplacian)", "luma²", "stable"),
    "noise": ("Noise sigma", "luma", "stable"),
    "mean_r": ("Mean red", "[0,1]", "stable"),
    "mean_g": ("Mean green", "[0,1]", "stable"),
    "mean_b": ("Mean blue", "[0,1]", "stable"),
    "saturation": ("Saturation", "[0,1]", "stable"),
    "brightness": ("Brightness (luma)", "[0,1]", "stable"),
    "overexposed": ("Over-exposed pixels", "fraction", "lower"),
    "underexposed": ("Under-exposed pixels", "fraction", "lower"),
    "color_drift": ("Colour drift |ΔRGB| vs window 0", "[0,1]", "lower"),
    "saturation_drift": ("Saturation drift vs window 0", "[0,1]", "closer to 0"),
    "brightness_drift": ("Brightness drift vs window 0", "[0,1]", "closer to 0"),
    "sharpness_change": ("Sharpness change vs window 0", "relative", "closer to 0"),
    "flicker": ("Flicker |Δ mean luma|", "luma/frame", "lower"),
    "flicker_hf": ("Flicker HF (RMS 2nd diff.)", "luma", "lower"),
    "frame_difference": ("Mean |frame difference|", "luma", "—"),
    "motion": ("Motion (Farneback mean)", "px/frame", "higher (no stagnation)"),
    "motion_top5": ("Motion top-5% (VBench statistic)", "px/frame", "higher"),
    "dynamic_fraction": ("Dynamic pairs (top-5% > thr.)", "fraction", "higher"),
    "rollback_similarity": ("Best similarity to window 0", "cosine", "lower"),
    "near_copy_fraction": ("Near-copies of window-0 frames", "fraction", "lower"),
}

SUMMARY_INFO: dict[str, str] = {
    "sharpness_change_last": "sharpness of the last window relative to the first, minus 1",
    "noise_change_last": "noise sigma of the last window minus the first (luma)",
    "color_drift_last": "|mean RGB(last window) - mean RGB(first window)|, [0,1]",
    "color_drift_max": "largest colour drift over windows, [0,1]",
    "saturation_drift_last": "saturation(last window) - saturation(first window)",
    "brightness_drift_last": "brightness(last window) - brightness(first window)",
    "flicker": "mean |Δ global mean luma| between consecutive frames (0-255 luma)",
    "flicker_hf": "RMS of the second temporal difference of global mean luma (0-255 luma)",
    "motion": "mean Farneback flow magnitude over all frame pairs (px/frame)",
    "motion_first": "mean flow magnitude in the first window",
    "motion_last": "mean flow magnitude in the last window",
    "motion_ratio": "motion_last / motion_first (< 1: deceleration)",
    "motion_slope": "least-squares slope of window motion per window",
    "motion_slope_relative": "motion_slope / motion_first",
    "dynamic_degree": "fraction of frame pairs whose top-5% flow exceeds the VBench-style threshold",
    "rollback_similarity": "mean best cosine similarity of frames after window 0 to any window-0 frame",
    "near_copy_fraction": "fraction of frames after window 0 that are near-copies of a window-0 frame",
    "adjacent_similarity": "median cosine similarity of consecutive frames (the near-copy reference)",
}


@dataclass
class VideoEvaluation:
    """Per-window series and summary scalars of one video. ``to_dict()`` is JSON-serialisable (NaN -> None)."""

    label: str
    source: str
    fps: float
    num_frames: int
    height: int
    width: int
    window_frames: int
    window_starts: list[int]  # first frame of each window (window i = [start, start + window_frames) ∩ video)
    series: dict[str, list[float]]
    summary: dict[str, float]

    @property
    def num_windows(self) -> int:
        return len(self.window_starts)

    @property
    def window_times(self) -> list[float]:
        """Start time of each window in seconds."""
        return [start / self.fps for start in self.window_starts]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["num_windows"] = self.num_windows
        data["window_times_s"] = self.window_times
        data["duration_s"] = self.num_frames / self.fps
        return _json_safe(data)


def window_starts(num_frames: int, window: int) -> list[int]:
    """Consecutive, non-overlapping windows from frame 0; a partial tail becomes a full window ending at the last
    frame (so the last window is always "the last ``window`` frames", as in the paper's last-5-s drift). A video
    shorter than one window is a single window."""
    if num_frames <= window:
        return [0]
    count = math.ceil(num_frames / window)
    return [i * window for i in range(count - 1)] + [num_frames - window]


def evaluate_frames(
    frames: np.ndarray, fps: float, config: EvalConfig = EvalConfig(), label: str = "", source: str = ""
) -> VideoEvaluation:
    """Evaluate an RGB ``uint8`` video ``[T, H, W, 3]`` (T >= 2) decoded at ``fps``."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if len(frames) < 2:
        raise ValueError(f"a video needs at least 2 frames to be evaluated, got {len(frames)}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    num_frames, height, width, _ = frames.shape
    window = min(config.window_length(fps), num_frames)
    starts = window_starts(num_frames, window)

    per_frame = _per_frame_statistics(frames, config)
    motion, motion_top5 = flow_magnitudes(to_analysis_grey(frames, config.flow.short_side), config.flow)
    dynamic = (motion_top5 > config.dynamic_threshold).astype(np.float64)
    luma_mean = per_frame["brightness"] * 255.0
    luma_step = np.abs(np.diff(luma_mean))
    frame_difference = _frame_differences(frames)
    best_match, adjacent_median, copy_threshold = _repetition(frames, window, config)

    series: dict[str, list[float]] = {name: [] for name in SERIES_INFO}
    for start in starts:
        stop = start + window
        frame_slice, pair_slice = slice(start, stop), slice(start, stop - 1)
        for name in ("sharpness", "noise", "mean_r", "mean_g", "mean_b", "saturation", "brightness",
                     "overexposed", "underexposed"):
            series[name].append(float(per_frame[name][frame_slice].mean()))
        series["flicker"].append(_mean(luma_step[pair_slice]))
        series["flicker_hf"].append(_rms(np.diff(luma_mean[frame_slice], n=2)))
        series["frame_difference"].append(_mean(frame_difference[pair_slice]))
        series["motion"].append(_mean(motion[pair_slice]))
        series["motion_top5"].append(_mean(motion_top5[pair_slice]))
        series["dynamic_fraction"].append(_mean(dynamic[pair_slice]))
        late = best_match[max(start, window):stop]  # only frames after window 0 can roll back to it
        series["rollback_similarity"].append(_mean(late))
        series["near_copy_fraction"].append(_mean((late >= copy_threshold).astype(np.float64)) if late.size else math.nan)

    rgb = np.array([series["mean_r"], series["mean_g"], series["mean_b"]]).T
    series["color_drift"] = np.linalg.norm(rgb - rgb[0], axis=1).tolist()
    series["saturation_drift"] = [s - series["saturation"][0] for s in series["saturation"]]
    series["brightness_drift"] = [b - series["brightness"][0] for b in series["brightness"]]
    series["sharpness_change"] = [_ratio(s, series["sharpness"][0]) - 1 for s in series["sharpness"]]

    window_index = np.arange(len(starts), dtype=np.float64)
    motion_slope = float(np.polyfit(window_index, series["motion"], 1)[0]) if len(starts) > 1 else math.nan
    late_matches = best_match[window:]
    summary = {
        "sharpness_change_last": series["sharpness_change"][-1],
        "noise_change_last": series["noise"][-1] - series["noise"][0],
        "color_drift_last": series["color_drift"][-1],
        "color_drift_max": max(series["color_drift"]),
        "saturation_drift_last": series["saturation_drift"][-1],
        "brightness_drift_last": series["brightness_drift"][-1],
        "flicker": _mean(luma_step),
        "flicker_hf": _rms(np.diff(luma_mean, n=2)),
        "motion": _mean(motion),
        "motion_first": series["motion"][0],
        "motion_last": series["motion"][-1],
        "motion_ratio": _ratio(series["motion"][-1], series["motion"][0]),
        "motion_slope": motion_slope,
        "motion_slope_relative": _ratio(motion_slope, series["motion"][0]),
        "dynamic_degree": _mean(dynamic),
        "rollback_similarity": _mean(late_matches),
        "near_copy_fraction": _mean((late_matches >= copy_threshold).astype(np.float64)) if late_matches.size else math.nan,
        "adjacent_similarity": adjacent_median,
    }
    return VideoEvaluation(
        label=label, source=source, fps=float(fps), num_frames=int(num_frames), height=int(height), width=int(width),
        window_frames=int(window), window_starts=starts,
        series={name: [float(v) for v in values] for name, values in series.items()},
        summary={name: float(value) for name, value in summary.items()},
    )


def evaluate_video(path: str | Path, config: EvalConfig = EvalConfig(), label: str | None = None) -> VideoEvaluation:
    """Read ``path`` with PyAV and evaluate it; the label defaults to the file stem."""
    frames, fps = read_video(path)
    return evaluate_frames(frames, fps, config, label=label if label is not None else Path(path).stem, source=str(path))


# ---------------------------------------------------------------------------------------------------------------
# per-frame statistics


def _per_frame_statistics(frames: np.ndarray, config: EvalConfig) -> dict[str, np.ndarray]:
    stats: dict[str, list[float]] = {name: [] for name in (
        "sharpness", "noise", "mean_r", "mean_g", "mean_b", "saturation", "brightness", "overexposed", "underexposed")}
    for frame in frames:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        grey_float = grey.astype(np.float64)
        stats["sharpness"].append(cv2.Laplacian(grey_float, cv2.CV_64F).var())
        residual = cv2.filter2D(grey_float, cv2.CV_64F, _NOISE_MASK)[1:-1, 1:-1]
        stats["noise"].append(float(np.median(np.abs(residual))) / (0.6745 * 6.0) if residual.size else 0.0)
        mean_rgb = frame.reshape(-1, 3).mean(0) / 255.0
        stats["mean_r"].append(mean_rgb[0])
        stats["mean_g"].append(mean_rgb[1])
        stats["mean_b"].append(mean_rgb[2])
        stats["saturation"].append(cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)[..., 1].mean() / 255.0)
        stats["brightness"].append(float(mean_rgb @ _LUMA))
        stats["overexposed"].append(float((grey >= config.overexposed_luma).mean()))
        stats["underexposed"].append(float((grey <= config.underexposed_luma).mean()))
    return {name: np.asarray(values, dtype=np.float64) for name, values in stats.items()}


def _frame_differences(frames: np.ndarray) -> np.ndarray:
    """Mean absolute pixel difference between consecutive frames (VBench temporal_flickering's raw quantity)."""
    return np.array([np.abs(frames[t + 1].astype(np.int16) - frames[t]).mean() for t in range(len(frames) - 1)])


def _repetition(frames: np.ndarray, window: int, config: EvalConfig) -> tuple[np.ndarray, float, float]:
    """Best cosine similarity of each frame to any frame of window 0, the median adjacent similarity and the
    near-copy threshold derived from it."""
    size = (config.thumbnail_size, config.thumbnail_size)
    thumbs = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]).reshape(len(frames), -1)
    thumbs = thumbs.astype(np.float64)
    thumbs -= thumbs.mean(1, keepdims=True)
    norms = np.linalg.norm(thumbs, axis=1)
    flat = norms < 1e-6  # a uniform frame has no pattern: similar only to other uniform frames
    unit = np.where(flat[:, None], 0.0, thumbs / np.maximum(norms, 1e-6)[:, None])

    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sim = unit[a] @ unit[b].T
        return np.where(flat[a][:, None] & flat[b][None, :], 1.0, sim)

    all_frames = np.arange(len(frames))
    best = similarity(all_frames, np.arange(window)).max(1)
    adjacent = np.where(flat[:-1] & flat[1:], 1.0, (unit[:-1] * unit[1:]).sum(1))
    adjacent_median = float(np.median(adjacent))
    threshold = float(np.clip(adjacent_median, config.min_copy_similarity, config.copy_similarity))
    return best, adjacent_median, threshold


# ---------------------------------------------------------------------------------------------------------------
# small numeric helpers


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if np.size(values) else math.nan


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values)))) if np.size(values) else math.nan


def _ratio(numerator: float, denominator: float) -> float:
    if not math.isfinite(numerator) or not math.isfinite(denominator) or abs(denominator) < 1e-12:
        return math.nan
    return numerator / denominator


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


# ---------------------------------------------------------------------------------------------------------------
# aggregation over many videos (policies compared over >= 32 prompt x seed pairs)

CI_METHOD = "95% confidence interval of the mean, two-sided Student-t with n-1 degrees of freedom"


def aggregate(evaluations: Sequence[VideoEvaluation], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, standard deviation and Student-t confidence interval of every summary scalar and of every window of
    every series, over ``evaluations``. Non-finite values (e.g. a ratio with a zero denominator) are skipped and
    ``n`` says how many values were used. With n < 2 the interval is undefined (None)."""
    if not evaluations:
        raise ValueError("aggregate() needs at least one VideoEvaluation")
    summary = {name: mean_ci([e.summary.get(name, math.nan) for e in evaluations], confidence)
               for name in evaluations[0].summary}
    series: dict[str, dict[str, list[float]]] = {}
    max_windows = max(e.num_windows for e in evaluations)
    for name in evaluations[0].series:
        columns = [mean_ci([e.series[name][i] for e in evaluations if i < e.num_windows], confidence)
                   for i in range(max_windows)]
        series[name] = {key: [column[key] for column in columns] for key in ("mean", "ci_low", "ci_high", "n")}
    window_times = [mean_ci([e.window_times[i] for e in evaluations if i < e.num_windows], confidence)["mean"]
                    for i in range(max_windows)]
    return _json_safe({
        "n_videos": len(evaluations),
        "ci_method": CI_METHOD.replace("95%", f"{confidence:.0%}"),
        "window_times_s": window_times,
        "summary": summary,
        "series": series,
    })


