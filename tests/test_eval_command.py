"""`deepforcing eval` end to end on small mp4 files written with PyAV, and the VBench-unavailable path."""

from __future__ import annotations

import argparse
import fractions
import json

import av
import numpy as np
import pytest

from deepforcing.eval.command import add_eval_arguments, run_eval
from deepforcing.eval.metrics import evaluate_frames
from deepforcing.eval.vbench_adapter import VBenchUnavailable, check_vbench
from deepforcing.eval.video_io import read_video

FPS = 8


def write_mp4(path, frames: np.ndarray, fps: int = FPS) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fractions.Fraction(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def moving_video(frames: int = 32, size: int = 32, speed: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wide = rng.integers(0, 256, (size // 4, (size + speed * frames) // 4, 3), dtype=np.uint8)
    wide = np.kron(wide, np.ones((4, 4, 1), dtype=np.uint8))  # 4x4 blocks survive h264 at this size
    return np.stack([wide[:, speed * t: speed * t + size] for t in range(frames)])


def parse(argv: list[str]) -> argparse.Namespace:
    return add_eval_arguments(argparse.ArgumentParser(prog="deepforcing eval")).parse_args(argv)


def test_read_video_round_trip(tmp_path):
    video = moving_video()
    write_mp4(tmp_path / "clip.mp4", video)
    frames, fps = read_video(tmp_path / "clip.mp4")
    assert frames.shape == video.shape and frames.dtype == np.uint8
    assert fps == FPS
    luma = np.array([0.299, 0.587, 0.114])  # yuv420p keeps luma sharp; chroma is subsampled
    assert np.abs(frames @ luma - video @ luma).mean() < 6  # lossy, but the same picture


def test_run_eval_one_video_writes_json_markdown_and_plot(tmp_path, capsys):
    path = tmp_path / "clip.mp4"
    write_mp4(path, moving_video(frames=32, speed=2))
    out = tmp_path / "report"
    assert run_eval(parse([str(path), "--window-seconds", "1", "--out", str(out)])) == 0
    printed = capsys.readouterr().out
    assert "| video | frames | windows |" in printed and "| clip | 32 | 4 |" in printed
    data = json.loads((out / "metrics.json").read_text())
    (video,) = data["videos"]
    assert video["window_frames"] == FPS and video["num_windows"] == 4
    assert video["summary"]["motion"] > 1.0  # 2 px/frame at 32 px is 8 px/frame at the 128-px analysis size
    assert printed == (out / "metrics.md").read_text()
    assert (out / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "comparison.png").exists()
    assert not list(out.glob("*.tmp*"))


def test_run_eval_compares_labelled_groups_with_confidence_bands(tmp_path, capsys):
    paths = []
    for index, speed in enumerate((0, 0, 2, 2)):
        paths.append(tmp_path / f"video{index}.mp4")
        write_mp4(paths[-1], moving_video(frames=24, speed=speed, seed=index))
    argv = [str(p) for p in paths] + ["--window-frames", "8", "--json"]
    argv += ["--label", "frozen", "--label", "frozen", "--label", "moving", "--label", "moving"]
    assert run_eval(parse(argv)) == 0
    data = json.loads(capsys.readouterr().out)
    groups = data["groups"]
    assert set(groups) == {"frozen", "moving"} and groups["moving"]["n_videos"] == 2
    assert groups["moving"]["summary"]["motion"]["mean"] > groups["frozen"]["summary"]["motion"]["mean"] + 1.0
    assert groups["frozen"]["summary"]["near_copy_fraction"]["mean"] == pytest.approx(1.0)
    default_out = tmp_path / "video0_eval"  # next to the first video
    assert (default_out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Groups (by label)" in (default_out / "metrics.md").read_text()


def test_run_eval_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    assert run_eval(parse([str(tmp_path / "nope.mp4")])) == 2
    assert "not found" in capsys.readouterr().err
    path = tmp_path / "clip.mp4"
    write_mp4(path, moving_video(frames=8))
    assert run_eval(parse([str(path), str(path), "--label", "a", "--label", "b", "--label", "c"])) == 2
    assert "3 --label values for 2 videos" in capsys.readouterr().err
    assert not (tmp_path / "clip_eval").exists()


def test_vbench_unavailable_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "empty_cache"))
    with pytest.raises(VBenchUnavailable) as raised:
        check_vbench()
    message = str(raised.value)
    assert "pip install vbench" in message and "CUDA" in message
    assert "raft-things.pth" in message and "sa_0_4_vit_l_14_linear.pth" in message
    assert str(tmp_path / "empty_cache") in message
    path = tmp_path / "clip.mp4"
    write_mp4(path, moving_video(frames=8))
    assert run_eval(parse([str(path), "--vbench"])) == 2
    assert "pip install vbench" in capsys.readouterr().err
    assert not (tmp_path / "clip_eval").exists()  # failed before doing any work


def test_evaluation_of_decoded_video_matches_in_memory_frames(tmp_path):
    video = moving_video(frames=24, speed=1)
    write_mp4(tmp_path / "clip.mp4", video)
    frames, fps = read_video(tmp_path / "clip.mp4")
    decoded = evaluate_frames(frames, fps)
    original = evaluate_frames(video, float(FPS))
    assert decoded.summary["motion"] == pytest.approx(original.summary["motion"], rel=0.15)
