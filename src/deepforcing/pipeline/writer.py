"""Progressive outputs: an H.264 MP4 that is playable after every chunk, PNG frame dumps, latents, JSON sidecars.

How :class:`Mp4StreamWriter` survives a killed run
--------------------------------------------------
While a video is being generated the writer appends to ``<out>.partial.mp4`` (``out.mp4`` -> ``out.partial.mp4``),
a *fragmented* MP4: one init segment (``ftyp`` + ``moov``) followed by one ``moof`` + ``mdat`` fragment per chunk.
Each chunk is encoded by a fresh x264 encoder into a self-contained fragment that starts with an IDR frame, so
nothing of a chunk stays buffered inside the encoder or the muxer once :meth:`Mp4StreamWriter.write` returns:
the fragment is appended, flushed and fsync'ed. (ffmpeg's mp4 muxer alone holds the newest fragment back until
the next packet arrives; encoding each chunk as its own finished segment avoids that.) Fragments carry I and P frames only (no
B-frames): decode timestamps then equal presentation times, so fragments of any length follow one another without
overlap (a 1-frame fragment before B-frame ones lost frames on reading). A run killed at any point
therefore leaves ``<out>.partial.mp4`` holding every finished chunk, playable by ffmpeg/VLC/browsers.
:meth:`close` renames the partial file atomically to ``<out>`` (``os.replace``), so ``<out>`` only ever exists as a
complete video. The final file is the same fragmented MP4 (no second pass over the data).

How it survives a full disk
---------------------------
Before a fragment is appended the writer checks that the folder has room for it plus :data:`RESERVE_BYTES` (kept
for the JSON sidecar that says what happened); without room it raises :class:`NoSpaceError` and appends nothing.
When a write fails anyway (another process filled the disk between check and write, a quota), the file is cut back
to the end of the last whole fragment before the error propagates. Either way ``<out>.partial.mp4`` ends on a whole
fragment and decodes to its end. :func:`check_free_space` is the same check for callers that want to refuse a
request before any work (``deepforcing generate`` asks for :data:`MIN_START_BYTES`).

Frames are uint8 ``[T, H, W, 3]`` (numpy or torch) or float tensors ``[T, 3, H, W]`` in [-1, 1] (VAE output,
converted as ``clamp((x + 1) / 2) * 255``, as Self Forcing's ``inference.py`` does). H.264 4:2:0 needs even sizes:
odd sizes are padded by repeating the last row/column (``odd_size="pad"``, default) or rejected
(``odd_size="error"``).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import struct
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_write import write_atomically

_FRAGMENT_FLAGS = "frag_keyframe+empty_moov+default_base_moof+skip_trailer+frag_discont"

RESERVE_BYTES = 64 * 1024
"""Free space every write leaves on the disk, so the sidecar saying what happened can still be written."""
MIN_START_BYTES = 256 * 1024
"""Free space a video needs before it starts (the reserve plus room for its first chunks)."""


class NoSpaceError(OSError):
    """Not enough free space for the next write (errno ENOSPC); nothing of it was written."""


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes for this user in ``folder`` (its nearest existing parent); ``None`` where it cannot be read."""
    folder = Path(folder)
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_free_space(folder: str | Path, need: int, what: str) -> None:
    """Raise :class:`NoSpaceError` unless ``folder`` has ``need`` bytes free plus :data:`RESERVE_BYTES`."""
    free = free_bytes(folder)
    if free is not None and free < need + RESERVE_BYTES:
        raise NoSpaceError(errno.ENOSPC, f"no room on the disk of {folder} for {what}: {format_size(need)} needed "
                           f"plus {format_size(RESERVE_BYTES)} kept for the sidecar, {format_size(free)} free; free "
                           f"space or write elsewhere")


def to_uint8_frames(frames: Any) -> np.ndarray:
    """Frames -> contiguous uint8 numpy ``[T, H, W, 3]``.

    Accepts uint8 ``[T, H, W, 3]`` (numpy/torch) or a floating torch tensor / numpy array ``[T, 3, H, W]`` in
    [-1, 1]; a single frame without the T axis is also accepted.
    """
    if hasattr(frames, "detach"):  # torch tensor
        import torch

        t = frames.detach()
        if t.is_floating_point():
            t = ((t.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            if t.ndim == 3:
                t = t[None]
            if t.ndim != 4 or t.shape[1] != 3:
                raise ValueError(f"float frames must be [T, 3, H, W] in [-1, 1], got {tuple(frames.shape)}")
            t = t.permute(0, 2, 3, 1)
        arr = t.cpu().numpy()
    else:
        arr = np.asarray(frames)
        if np.issubdtype(arr.dtype, np.floating):
            if arr.ndim == 3:
                arr = arr[None]
            if arr.ndim != 4 or arr.shape[1] != 3:
                raise ValueError(f"float frames must be [T, 3, H, W] in [-1, 1], got {arr.shape}")
            arr = np.round((np.clip(arr, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    if arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3] or float [T, 3, H, W], got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"uint8 frames must be [T, H, W, 3], got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _top_level_boxes(data: bytes) -> list[tuple[str, bytes]]:
    boxes, i = [], 0
    while i < len(data):
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        if size == 1:
            size = struct.unpack(">Q", data[i + 8 : i + 16])[0]
        elif size == 0:
            size = len(data) - i
        boxes.append((kind.decode("latin-1"), data[i : i + size]))
        i += size
    return boxes


def _find_box(data: bytes, kind: bytes) -> bytes | None:
    j = data.find(kind)
    if j < 4:
        return None
    (size,) = struct.unpack(">I", data[j - 4 : j])
    return data[j - 4 : j - 4 + size]


def partial_path_for(path: str | Path) -> Path:
    """``video.mp4`` -> ``video.partial.mp4`` (the file that grows while generating)."""
    p = Path(path)
    return p.with_name(p.stem + ".partial" + (p.suffix or ".mp4"))


class Mp4StreamWriter:
    """Append-as-you-go H.264 MP4 writer; one :meth:`write` call = one chunk = one playable fragment.

    Args:
        path: final file (``.mp4``). The partial file is ``partial_path_for(path)`` until :meth:`close`.
        fps: frame rate (Self Forcing saves at 16 fps).
        crf, preset: x264 quality / speed.
        odd_size: ``"pad"`` (repeat the last row/column up to even size) or ``"error"``.
    """

    def __init__(self, path: str | Path, fps: int = 16, crf: int = 18, preset: str = "veryfast",
                 odd_size: str = "pad"):
        if odd_size not in ("pad", "error"):
            raise ValueError(f"odd_size must be 'pad' or 'error', got {odd_size!r}")
        if int(fps) != fps or fps <= 0:
            raise ValueError(f"fps must be a positive integer, got {fps}")
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"{self.path}: output must end in .mp4")
        self.partial_path = partial_path_for(self.path)
        self.fps, self.crf, self.preset, self.odd_size = int(fps), int(crf), preset, odd_size
        self.frames_written = 0
        self.chunks_written = 0
        self.size: tuple[int, int] | None = None  # (height, width) as written
        self._avcc: bytes | None = None
        self._file = None
        self.closed = False

    # ------------------------------------------------------------------------------------------------
    def _prepare(self, frames: Any) -> np.ndarray:
        arr = to_uint8_frames(frames)
        t, h, w, _ = arr.shape
        if t == 0:
            raise ValueError("write() needs at least one frame")
        if h % 2 or w % 2:
            if self.odd_size == "error":
                raise ValueError(f"H.264 needs even frame sizes, got {h}x{w}; pad/crop the frames or use odd_size='pad'")
            arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self.size is None:
            self.size = arr.shape[1:3]
        elif arr.shape[1:3] != self.size:
            raise ValueError(f"frame size changed from {self.size} to {arr.shape[1:3]} within one video")
        return arr

    def _encode_fragment(self, arr: np.ndarray) -> bytes:
        import av

        buf = io.BytesIO()
        options = {"movflags": _FRAGMENT_FLAGS, "fragment_index": str(self.chunks_written + 1),
                   "use_editlist": "0", "avoid_negative_ts": "disabled"}
        with av.open(buf, "w", format="mp4", options=options) as container:
            stream = container.add_stream("libx264", rate=self.fps)
            stream.width, stream.height, stream.pix_fmt = arr.shape[2], arr.shape[1], "yuv420p"
            stream.time_base = Fraction(1, self.fps)
            stream.options = {"crf": str(self.crf), "preset": self.preset, "bf": "0"}
            for i, img in enumerate(arr):
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = self.frames_written + i
                frame.time_base = stream.time_base
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))  # drain the encoder: the whole chunk is in this fragment
        return buf.getvalue()

    def write(self, frames: Any) -> None:
        """Encode ``frames`` as one chunk and append it to the partial file (flushed and fsync'ed on return)."""
        if self.closed:
            raise ValueError(f"{self.path}: writer is closed")
        arr = self._prepare(frames)
        boxes = _top_level_boxes(self._encode_fragment(arr))
        moov = next((b for k, b in boxes if k == "moov"), None)
        avcc = _find_box(moov, b"avcC") if moov else None
        if avcc is None:
            raise RuntimeError("the mp4 muxer produced no avcC box; cannot build a fragmented stream")
        if self._file is None:
            payload = b"".join(b for _, b in boxes)
            self.partial_path.parent.mkdir(parents=True, exist_ok=True)
            self._check_room(len(payload))
            self._avcc = avcc
            self._file = open(self.partial_path, "wb", buffering=0)
        else:
            if avcc != self._avcc:  # fragments share the first chunk's decoder configuration
                raise RuntimeError("x264 produced different SPS/PPS for a later chunk; cannot append it")
            payload = b"".join(b for k, b in boxes if k not in ("ftyp", "moov"))
            self._check_room(len(payload))
        self._append_whole(payload)
        self.frames_written += arr.shape[0]
        self.chunks_written += 1

    def _check_room(self, size: int) -> None:
        """Room for ``size`` more bytes plus the sidecar's reserve, or :class:`NoSpaceError` (nothing written)."""
        check_free_space(self.partial_path.parent, size, f"chunk {self.chunks_written} of {self.path.name}")

    def _append_whole(self, payload: bytes) -> None:
        """Append ``payload`` and fsync; on any error cut the file back to where it was (a whole fragment)."""
        fd = self._file.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                if written == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.partial_path))
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
            except OSError:
                pass
            if start == 0:  # not even the first chunk: leave no file without frames
                self._file.close()
                self._file = None
                self.partial_path.unlink(missing_ok=True)
            raise

    def close(self) -> Path | None:
        """Finish the video: atomically rename the partial file to :attr:`path`. Returns the path (None if empty)."""
        if self.closed:
            return self.path if self.path.exists() else None
        self.closed = True
        if self._file is None:
            return None
        self._file.close()
        os.replace(self.partial_path, self.path)
        return self.path

    def abort(self) -> None:
        """Stop without finalising: the partial file (every finished chunk) is kept for inspection."""
        self.closed = True
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> "Mp4StreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class FrameDumper:
    """Optional PNG dump of every ``every``-th frame: ``<folder>/<prefix><index:06d>.png`` (encoded with PyAV)."""

    def __init__(self, folder: str | Path, every: int = 1, prefix: str = "frame_"):
        if every < 1:
            raise ValueError("every must be >= 1")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.every, self.prefix = every, prefix
        self.frames_seen = 0
        self.paths: list[Path] = []

    def write(self, frames: Any) -> list[Path]:
        import av

        written = []
        for img in to_uint8_frames(frames):
            if self.frames_seen % self.every == 0:
                codec = av.CodecContext.create("png", "w")
                codec.width, codec.height, codec.pix_fmt = img.shape[1], img.shape[0], "rgb24"
                packets = codec.encode(av.VideoFrame.from_ndarray(img, format="rgb24")) + codec.encode(None)
                path = self.folder / f"{self.prefix}{self.frames_seen:06d}.png"
                _atomic_write_bytes(path, b"".join(bytes(p) for p in packets))
                written.append(path)
            self.frames_seen += 1
        self.paths += written
        return written


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    write_atomically(path, write)


def save_latents(path: str | Path, latents: Any, metadata: dict[str, str] | None = None) -> Path:
    """Save a tensor (key ``"latents"``) or a dict of tensors as safetensors, atomically."""
    import torch
    from safetensors.torch import save

    tensors = latents if isinstance(latents, dict) else {"latents": latents}
    if not tensors or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise ValueError("save_latents needs a tensor or a non-empty dict of tensors")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    path = Path(path)
    data = save(tensors, metadata=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(path.parent, len(data), f"the latents {path.name}")
    _atomic_write_bytes(path, data)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if type(obj).__module__ == "torch" and hasattr(obj, "tolist"):
        return obj.tolist()
    if type(obj).__name__ == "dtype":
        return str(obj)
    raise TypeError(f"write_sidecar: {type(obj).__name__} is not JSON serialisable")


def write_sidecar(path: str | Path, data: dict) -> Path:
    """Write ``data`` as pretty JSON atomically (temp file in the same folder + ``os.replace``)."""
    if not isinstance(data, dict):
        raise ValueError("sidecar data must be a dict")
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    path = Path(path)
    _atomic_write_bytes(path, (text + "\n").encode("utf-8"))
    return path
