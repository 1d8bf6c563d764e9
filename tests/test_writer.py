"""Progressive MP4 writer (playable after every chunk, survives a kill), PNG dumps, latents, sidecars."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from deepforcing.pipeline.writer import (
    FrameDumper,
    Mp4StreamWriter,
    partial_path_for,
    save_latents,
    to_uint8_frames,
    write_sidecar,
)

H, W = 48, 64
SRC = Path(__file__).resolve().parents[1] / "src"


def smooth_frames(start: int, count: int, h: int = H, w: int = W) -> np.ndarray:
    """Smooth gradients whose mean level encodes the global frame index (robust to H.264 loss)."""
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for n in range(start, start + count):
        level = 20 + 6 * n
        img = np.stack([level + 0 * x, level + 30 * x / w, 200 - 60 * y / h], axis=-1)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def read_video(path: Path) -> tuple[np.ndarray, list[int]]:
    with av.open(str(path)) as c:
        frames = [(f.pts, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    return np.stack([f for _, f in frames]), [p for p, _ in frames]


def test_three_chunks_roundtrip(tmp_path):
    out = tmp_path / "video.mp4"
    chunks = [smooth_frames(0, 9), smooth_frames(9, 12), smooth_frames(21, 12)]
    w = Mp4StreamWriter(out, fps=16)
    for i, ch in enumerate(chunks):
        w.write(ch)
        assert w.partial_path.exists() and not out.exists()
        got, _ = read_video(w.partial_path)  # playable after every chunk
        assert len(got) == sum(len(c) for c in chunks[: i + 1])
    assert w.close() == out
    assert out.exists() and not partial_path_for(out).exists()
    got, pts = read_video(out)
    ref = np.concatenate(chunks)
    assert got.shape == ref.shape
    assert pts == list(range(len(ref))) or pts == [p * (pts[1] - pts[0]) for p in range(len(ref))]
    err = np.abs(got.astype(int) - ref.astype(int)).mean(axis=(1, 2, 3))
    assert err.max() < 4.0, err  # lossy, but a smooth image survives
    # the per-frame level identifies the frame: order is preserved across chunk boundaries
    assert np.all(np.abs(got[..., 0].mean(axis=(1, 2)) - (20 + 6 * np.arange(len(ref)))) < 2)
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and (s.width, s.height) == (W, H)
        assert float(s.average_rate or s.guessed_rate) == pytest.approx(16, rel=0.01)


@pytest.mark.parametrize("sizes", [[1, 12, 12], [1, 4, 4, 4], [12, 1, 12]])
def test_one_frame_chunks_next_to_long_ones_keep_every_frame(tmp_path, sizes):
    """Frame-wise models write a 1-frame first chunk (latent 0 decodes to one pixel frame). With B-frames, a
    fragment's decode timestamps would start before its first presentation time and overlap the fragment before
    a B-frame-free one, and the reader dropped those frames (11 of 13 read back): every fragment is I/P only."""
    out = tmp_path / "framewise.mp4"
    starts = np.cumsum([0, *sizes])
    with Mp4StreamWriter(out, fps=16) as w:
        for start, n in zip(starts, sizes):
            w.write(smooth_frames(int(start), n))
    got, pts = read_video(out)
    assert len(got) == sum(sizes) and pts == sorted(set(pts))
    assert np.all(np.abs(got[..., 0].mean(axis=(1, 2)) - (20 + 6 * np.arange(sum(sizes)))) < 2)


def test_killed_run_leaves_playable_partial_file(tmp_path):
    out = tmp_path / "killed.mp4"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(SRC)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_writer import smooth_frames
        from deepforcing.pipeline.writer import Mp4StreamWriter
        w = Mp4StreamWriter({str(out)!r}, fps=16)
        w.write(smooth_frames(0, 9))
        w.write(smooth_frames(9, 12))
        os._exit(0)  # killed before chunk 3 and before close()
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    partial = partial_path_for(out)
    assert partial.exists() and not out.exists()
    got, _ = read_video(partial)
    assert len(got) == 21
    ref = np.concatenate([smooth_frames(0, 9), smooth_frames(9, 12)])
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 4.0


def test_float_tensor_input_and_odd_sizes(tmp_path):
    x = torch.linspace(-1, 1, 5 * 3 * 33 * 47).reshape(5, 3, 33, 47)
    u8 = to_uint8_frames(x)
    assert u8.shape == (5, 33, 47, 3) and u8.dtype == np.uint8
    assert u8.min() == 0 and u8.max() == 255
    out = tmp_path / "odd.mp4"
    with Mp4StreamWriter(out) as w:
        w.write(x)
    got, _ = read_video(out)
    assert got.shape == (5, 34, 48, 3)  # padded to even by edge repetition
    assert np.abs(got[:, :33, :47].astype(int) - u8.astype(int)).mean() < 6
    with pytest.raises(ValueError, match="even frame sizes"):
        Mp4StreamWriter(tmp_path / "e.mp4", odd_size="error").write(u8)


def test_bad_input_is_rejected_without_a_file(tmp_path):
    w = Mp4StreamWriter(tmp_path / "bad.mp4")
    with pytest.raises(ValueError):
        w.write(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        w.write(np.zeros((2, 8, 8, 3), np.int32))
    assert not w.partial_path.exists()
    w.write(smooth_frames(0, 2, 16, 16))
    with pytest.raises(ValueError, match="frame size changed"):
        w.write(smooth_frames(0, 2, 32, 32))
    with pytest.raises(ValueError, match=".mp4"):
        Mp4StreamWriter(tmp_path / "x.avi")


def test_exception_inside_context_keeps_partial(tmp_path):
    out = tmp_path / "crash.mp4"
    with pytest.raises(RuntimeError):
        with Mp4StreamWriter(out) as w:
            w.write(smooth_frames(0, 5))
            raise RuntimeError("generation failed")
    assert not out.exists() and len(read_video(partial_path_for(out))[0]) == 5


def test_frame_dumper(tmp_path):
    d = FrameDumper(tmp_path / "png", every=2)
    frames = smooth_frames(0, 5)
    d.write(frames[:3])
    d.write(frames[3:])
    assert [p.name for p in d.paths] == ["frame_000000.png", "frame_000002.png", "frame_000004.png"]
    with av.open(str(d.paths[1])) as c:
        img = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert np.array_equal(img, frames[2])  # PNG is lossless


def test_save_latents_and_sidecar(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    z = torch.randn(1, 3, 4, 2, 2)
    p = save_latents(tmp_path / "lat.safetensors", z, {"seed": 7})
    assert torch.equal(load_file(str(p))["latents"], z)
    with safe_open(str(p), "pt") as f:
        assert f.metadata() == {"seed": "7"}
    s = write_sidecar(tmp_path / "run.json", {"prompt": "a cat", "path": tmp_path, "fps": np.int64(16),
                                              "steps": (1000, 750)})
    assert json.loads(s.read_text()) == {"prompt": "a cat", "path": str(tmp_path), "fps": 16, "steps": [1000, 750]}
    before = s.read_text()
    with pytest.raises(TypeError):
        write_sidecar(s, {"bad": object()})
    assert s.read_text() == before  # failed write leaves the old file intact
    assert [q.name for q in tmp_path.iterdir() if q.suffix == ".tmp"] == []
