"""Classical optical flow (OpenCV Farneback): a weight-free proxy of VBench's RAFT-based Dynamic Degree.

Frames are converted to grey and resized so that their short side is ``short_side`` pixels (up or down), so the
magnitudes are in "pixels per frame at that analysis resolution" and comparable between videos of different sizes.
VBench's dynamic degree takes, per frame pair, the mean of the top 5% flow magnitudes; we keep that statistic
(``top5``) next to the plain mean magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class FlowConfig:
    """Settings of the Farneback flow. Defaults are OpenCV's documented typical values for video."""

    short_side: int = 128  # analysis resolution (short side, pixels)
    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2

    def __post_init__(self) -> None:
        if self.short_side < 8:
            raise ValueError(f"FlowConfig.short_side must be >= 8 pixels, got {self.short_side}")


def to_analysis_grey(frames: np.ndarray, short_side: int) -> np.ndarray:
    """RGB uint8 ``[T, H, W, 3]`` -> grey uint8 ``[T, h, w]`` with ``min(h, w) == short_side``."""
    _, height, width, _ = frames.shape
    scale = short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2 wants (w, h)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.stack([cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), size, interpolation=interpolation) for f in frames])


def flow_magnitudes(grey: np.ndarray, config: FlowConfig = FlowConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Flow between consecutive grey frames ``[T, h, w]``.

    Returns ``(mean, top5)``, each ``[T-1]``: the mean flow magnitude of each pair and the mean of its top 5%
    magnitudes (VBench's per-pair dynamic-degree statistic), in analysis pixels per frame.
    """
    pairs = len(grey) - 1
    mean = np.zeros(max(pairs, 0))
    top5 = np.zeros(max(pairs, 0))
    for t in range(pairs):
        flow = cv2.calcOpticalFlowFarneback(
            grey[t], grey[t + 1], None, config.pyr_scale, config.levels, config.winsize,
            config.iterations, config.poly_n, config.poly_sigma, 0,
        )
        magnitude = np.sqrt((flow.astype(np.float64) ** 2).sum(-1)).ravel()
        mean[t] = magnitude.mean()
        k = max(1, magnitude.size // 20)
        top5[t] = np.partition(magnitude, magnitude.size - k)[-k:].mean()
    return mean, top5
