"""A video's given start: an image (image-to-video) or a clip (video extension), read, checked and resized.

Self Forcing's release (``inference.py --i2v``, 33593df) resizes the image to the model's resolution with
torchvision's ``Resize((480, 832))`` on a PIL image, i.e. a plain bilinear resize to exactly the model's size (the
aspect is not kept: no crop). The same is done here for every frame of an image or clip, and the change of aspect
is reported in :attr:`StartFrames.note`. The frames are then encoded by the model's codec (Wan's causal VAE: a lone
frame is its image-like first latent, ``1 + s k`` frames are ``1 + k`` latents) and written into the cache by
:meth:`~deepforcing.pipeline.rollout.VideoRollout.prefill`.

Every refusal here is a one-line ``ValueError`` saying what to do, raised from the file's header or a cheap probe
(:func:`probe_start`), so a command refuses bad input before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["StartFrames", "StartProbe", "StartGeometry", "probe_start", "load_start", "check_start_length",
           "MAX_START_PIXELS", "MAX_START_FRAMES"]

MAX_START_PIXELS = 50_000_000
"""Largest image / video frame accepted (width x height): above it a file is refused before it is decoded."""
MAX_START_FRAMES = 100_000
"""Most frames a start video may have (it must fit the attention window anyway)."""


@dataclass(frozen=True)
class StartGeometry:
    """What a start must fit: the model's pixel size, its codec's pixel frames per latent frame after the first
    (``temporal_scale``), the chunk and the attention window in latent frames."""

    height: int
    width: int
    temporal_scale: int
    chunk_frames: int
    window: int

    def latent_frames(self, pixel_frames: int) -> int:
        """Latent frames of ``pixel_frames`` given frames (a causal codec: ``1 + (T - 1) // s``)."""
        return pixel_frames if self.temporal_scale == 1 else 1 + (pixel_frames - 1) // self.temporal_scale

    def used_pixel_frames(self, pixel_frames: int) -> int:
        """Frames of a clip that are encoded: the last ``1 + s k`` (a causal codec's whole latents), all for s = 1."""
        s = self.temporal_scale
        return pixel_frames if s == 1 else 1 + s * ((pixel_frames - 1) // s)

    @property
    def max_pixel_frames(self) -> int:
        """Pixel frames of a start as long as the window."""
        return self.window if self.temporal_scale == 1 else 1 + self.temporal_scale * (self.window - 1)

    @property
    def min_video_frames(self) -> int:
        """A clip needs at least one latent frame after the first (``1 + s``) with a temporal codec; one frame
        otherwise (a lone frame is an image: ``--image``)."""
        return 1 if self.temporal_scale == 1 else 1 + self.temporal_scale


@dataclass(frozen=True)
class StartProbe:
    """What a start file holds, read from its header (image) or its packets (video) without decoding pixels."""

    path: Path
    kind: str  # "image" or "video"
    width: int
    height: int
    frames: int


@dataclass
class StartFrames:
    """A start resized to the model's size: ``frames`` ``[T, 3, H, W]`` in [-1, 1]; ``given`` the frames as they
    were given (uint8 ``[T, H0, W0, 3]``, for ``--keep-input``); ``note`` a line saying what was changed, if
    anything (the aspect, frames left out)."""

    frames: torch.Tensor
    given: np.ndarray
    note: str | None = None
    source: str = ""

    def encode(self, codec: Any, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
        """The start's latents ``[1, C, F, h, w]`` through ``codec.encode_chunk`` (pixels ``[B, T, 3, H, W]``)."""
        with torch.no_grad():
            latents = codec.encode_chunk(self.frames[None].to(device=device, dtype=dtype))
        return latents.permute(0, 2, 1, 3, 4).to(dtype)


# ----------------------------------------------------------------------------------------------- reading files
def probe_start(path: str | Path, kind: str) -> StartProbe:
    """Check that ``path`` is a readable still image (``kind="image"``: PNG / JPEG / ..., 8 bits per channel, one
    frame, at most :data:`MAX_START_PIXELS`) or a video with a video stream (``"video"``), without decoding pixels."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--{kind} file not found: {path}")
    return _probe_image(path) if kind == "image" else _probe_video(path)


def _probe_image(path: Path) -> StartProbe:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            fmt, mode, (w, h), frames = img.format, img.mode, img.size, getattr(img, "n_frames", 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ValueError(f"{path} is not a readable image; give a PNG or JPEG file") from None
    except Image.DecompressionBombError:
        raise ValueError(f"{path} is too large to open as an image; resize it to at most "
                         f"{MAX_START_PIXELS // 1_000_000} megapixels") from None
    if frames > 1:
        raise ValueError(f"{path} is an animated image ({frames} frames); give one still frame, or an MP4 with --video")
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F") or _png_bit_depth(path) == 16:
        raise ValueError(f"{path} has 16 bits per channel ({fmt} {mode}); save it with 8 bits per channel")
    if w * h > MAX_START_PIXELS:
        raise ValueError(f"{path} is {w}x{h} ({w * h / 1e6:.0f} megapixels); resize it to at most "
                         f"{MAX_START_PIXELS // 1_000_000} megapixels")
    return StartProbe(path, "image", w, h, 1)


def _png_bit_depth(path: Path) -> int | None:
    """A PNG's bit depth from its IHDR chunk (Pillow reads 48-bit RGB as 8-bit RGB without saying so)."""
    with open(path, "rb") as f:
        head = f.read(25)
    return head[24] if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" else None


def _probe_video(path: Path) -> StartProbe:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream; give an MP4 with video (or an image with --image)")
            stream = container.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            if w * h > MAX_START_PIXELS:
                raise ValueError(f"{path} is {w}x{h}; give a video of at most {MAX_START_PIXELS // 1_000_000} "
                                 f"megapixels a frame")
            frames = sum(1 for p in container.demux(stream) if p.size)
    except ValueError:
        raise
    except (av.error.FFmpegError, OSError):
        raise ValueError(f"{path} is not a readable video; give an MP4 file") from None
    return StartProbe(path, "video", w, h, frames)


def check_start_length(probe: StartProbe, geometry: StartGeometry) -> int:
    """The start's latent frames; refuse a clip too short for one latent frame after the first, or a start longer
    than the attention window (the first sampled chunk could not see all of it)."""
    if probe.kind == "video" and probe.frames < geometry.min_video_frames:
        need = geometry.min_video_frames
        raise ValueError(f"{probe.path} has {probe.frames} frame{'s' * (probe.frames != 1)}; continuing a video needs "
                         f"at least {need} (one latent frame after the first); give a single frame with --image")
    if probe.frames > MAX_START_FRAMES:
        raise ValueError(f"{probe.path} has {probe.frames} frames; give at most the attention window's")
    latents = geometry.latent_frames(probe.frames)
    if latents > geometry.window:
        most = geometry.max_pixel_frames
        raise ValueError(f"{probe.path} has {probe.frames} frames ({latents} latent frames) but the attention window "
                         f"is {geometry.window} latent frames; give at most its last {most} frames")
    return latents


def load_start(source: Any, kind: str, geometry: StartGeometry) -> StartFrames:
    """Read, check and resize a start: ``source`` a path (``kind`` "image" or "video") or an array — uint8
    ``[H, W, 3]`` / ``[T, H, W, 3]``, or float ``[3, H, W]`` / ``[T, 3, H, W]`` in [-1, 1]. A clip keeps its last
    ``1 + s k`` frames (whole latents of a causal codec)."""
    if isinstance(source, (str, Path)):
        probe = probe_start(source, kind)
        check_start_length(probe, geometry)
        given = _read_image(probe.path) if kind == "image" else _read_video(probe.path)
        name = str(probe.path)
    else:
        given = _array_frames(source, kind)
        name = f"the start {kind}"
        check_start_length(StartProbe(Path(name), kind, given.shape[2], given.shape[1], given.shape[0]), geometry)
    used = geometry.used_pixel_frames(len(given))
    notes = []
    if used < len(given):
        notes.append(f"used its last {used} of {len(given)} frames (whole latent frames)")
        given = given[len(given) - used:]
    h0, w0 = given.shape[1:3]
    if (h0, w0) != (geometry.height, geometry.width):
        change = "changes the aspect" if abs(w0 / h0 - geometry.width / geometry.height) > 0.01 else "keeps the aspect"
        notes.append(f"resized {w0}x{h0} -> {geometry.width}x{geometry.height} (bilinear, as the release does; "
                     f"this {change})")
    frames = torch.from_numpy(np.stack([_resize(f, geometry.width, geometry.height) for f in given]))
    frames = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return StartFrames(frames, given, f"{name}: " + "; ".join(notes) if notes else None, name)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))[None]


def _read_video(path: Path) -> np.ndarray:
    import av

    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, OSError):
        frames = []
    if not frames:
        raise ValueError(f"{path} is not a readable video (its frames do not decode); give an MP4 file")
    return np.stack(frames)


def _array_frames(source: Any, kind: str) -> np.ndarray:
    """An array start as uint8 ``[T, H, W, 3]``."""
    arr = source.detach().cpu().numpy() if hasattr(source, "detach") else np.asarray(source)
    if kind == "image":
        arr = arr[None]
    if arr.ndim != 4:
        layout = "[H, W, 3] or [3, H, W]" if kind == "image" else "[T, H, W, 3] or [T, 3, H, W]"
        raise ValueError(f"a start {kind} array must be {layout}, got shape {tuple(np.shape(source))}")
    if np.issubdtype(arr.dtype, np.floating):
        if arr.shape[1] != 3:
            raise ValueError(f"float start frames must be [T, 3, H, W] in [-1, 1], got {tuple(arr.shape)}")
        arr = ((np.clip(arr, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
    elif arr.dtype != np.uint8:
        raise ValueError(f"start frames must be uint8 [.., H, W, 3] or float in [-1, 1], got {arr.dtype}")
    if arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"start frames must be RGB [.., H, W, 3], got {tuple(arr.shape)}")
    if arr.shape[1] * arr.shape[2] > MAX_START_PIXELS:
        raise ValueError(f"the start {kind} is {arr.shape[2]}x{arr.shape[1]}; resize it to at most "
                         f"{MAX_START_PIXELS // 1_000_000} megapixels")
    return np.ascontiguousarray(arr)


def _resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize to exactly ``width x height`` (PIL, as torchvision's ``Resize`` on a PIL image does)."""
    if frame.shape[:2] == (height, width):
        return frame
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))
