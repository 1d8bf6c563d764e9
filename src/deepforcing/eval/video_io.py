"""Read a video file into memory for evaluation (PyAV).

The evaluation works on decoded RGB frames, so this is the only place that knows about containers and codecs.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


class VideoReadError(ValueError):
    """The file exists but cannot be decoded as a video."""


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode every frame of the first video stream of ``path``.

    Returns ``(frames, fps)`` with ``frames`` a ``uint8`` array ``[T, H, W, 3]`` (RGB) and ``fps`` the stream's
    average frame rate. Raises ``FileNotFoundError`` for a missing file and ``VideoReadError`` (a ``ValueError``)
    for a file that is not a decodable video, has no video stream, no frames, or no known frame rate.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video file not found: {path}")
    if not path.is_file():
        raise VideoReadError(f"{path} is not a file; pass the path of a video (e.g. an .mp4)")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as error:
        raise VideoReadError(f"cannot open {path} as a video ({error}); is it a complete, valid video file?") from error
    with container:
        if not container.streams.video:
            raise VideoReadError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        frames: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
        except av.error.FFmpegError as error:
            raise VideoReadError(
                f"decoding {path} failed after {len(frames)} frames ({error}); the file is corrupt or truncated"
            ) from error
    if not frames:
        raise VideoReadError(f"{path} contains no decodable video frames")
    if not rate or float(rate) <= 0:
        raise VideoReadError(f"{path} does not declare a frame rate; re-mux it with one (e.g. ffmpeg -r 16)")
    return np.stack(frames), float(rate)
