"""Optional VBench scores: the seven dimensions of the paper's Tab.1 and the aesthetic drift of its Fig.5.

arXiv 2512.05081 §5.1: Deep Forcing reports Dynamic Degree, Motion Smoothness, Overall Consistency, Imaging Quality,
Aesthetic Quality, Subject Consistency and Background Consistency (VBench-Long), and the drift
|Aesthetic Quality(first 5 s) − Aesthetic Quality(last 5 s)|. VBench needs a CUDA GPU, its own pinned environment
and learned weights (downloaded by VBench's ``vbench/utils.py::init_submodules``), none of which this package depends
on. This adapter only runs when they are all present; otherwise ``VBenchUnavailable`` says exactly what is missing.

Honest scope: the scores come from VBench's ``custom_input`` mode on the whole video (and on its first/last clips
for the drift), NOT from VBench-Long's scene splitting and slow/fast fusion (``vbench2_beta_long``), so the numbers
are comparable between our own runs but not to the paper's table. This path is untested here (no GPU, no weights).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

# The paper's seven VBench dimensions (Tab.1), VBench's own names.
VBENCH_DIMENSIONS = (
    "dynamic_degree", "motion_smoothness", "overall_consistency", "imaging_quality",
    "aesthetic_quality", "subject_consistency", "background_consistency",
)

# Weight files VBench loads for each dimension (vbench/utils.py::init_submodules), found under its cache dir.
VBENCH_WEIGHTS: dict[str, tuple[str, ...]] = {
    "dynamic_degree": ("raft-things.pth",),
    "motion_smoothness": ("amt-s.pth",),
    "overall_consistency": ("ViClip-InternVid-10M-FLT.pth",),
    "imaging_quality": ("musiq_spaq_ckpt-358bb6af.pth",),
    "aesthetic_quality": ("ViT-L-14.pt", "sa_0_4_vit_l_14_linear.pth"),
    "subject_consistency": ("dino_vitbase16_pretrain.pth",),
    "background_consistency": ("ViT-B-32.pt",),
}

INSTALL_HINT = (
    "VBench runs in its own CUDA environment: create a separate venv with a CUDA build of torch, then "
    "`pip install vbench` (PyPI vbench 0.1.5 refuses to install without CUDA torch and pins numpy<2, "
    "transformers==4.33.2, timm<=1.0.12; it also uses openai-clip, decord and pyiqa), and install this package "
    "into the same venv with `pip install -e .`. Weights are downloaded by VBench on first use into "
    "$VBENCH_CACHE_DIR (default ~/.cache/vbench); run it once with network access, or copy the files there."
)


class VBenchUnavailable(RuntimeError):
    """VBench, a CUDA GPU or its weights are missing; the message lists what to install."""


def vbench_cache_dir() -> Path:
    return Path(os.environ.get("VBENCH_CACHE_DIR", Path.home() / ".cache" / "vbench")).expanduser()


def missing_weights(dimensions: tuple[str, ...] = VBENCH_DIMENSIONS) -> list[str]:
    """Weight files of ``dimensions`` not found anywhere under the VBench cache dir."""
    cache = vbench_cache_dir()
    present = {p.name for p in cache.rglob("*") if p.is_file()} if cache.is_dir() else set()
    needed = [name for dimension in dimensions for name in VBENCH_WEIGHTS[dimension]]
    return [name for name in dict.fromkeys(needed) if name not in present]


def check_vbench(dimensions: tuple[str, ...] = VBENCH_DIMENSIONS) -> None:
    """Raise ``VBenchUnavailable`` unless the ``vbench`` package imports, CUDA is available and the weights of
    ``dimensions`` are in the cache (this adapter never lets VBench download)."""
    problems = []
    if importlib.util.find_spec("vbench") is None:
        problems.append("the `vbench` package is not importable")
    import torch

    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is visible to torch (VBench's models run on CUDA)")
    absent = missing_weights(dimensions)
    if absent:
        problems.append(f"weights missing from {vbench_cache_dir()}: {', '.join(absent)}")
    if problems:
        raise VBenchUnavailable("VBench scores are unavailable: " + "; ".join(problems) + ". " + INSTALL_HINT)


def evaluate_vbench(
    video_path: str | Path, out_dir: str | Path, prompt: str | None = None, drift_seconds: float = 5.0
) -> dict[str, Any]:
    """Score ``video_path`` on the paper's VBench dimensions and the aesthetic drift of its first and last
    ``drift_seconds``. ``overall_consistency`` needs the text prompt and is skipped when ``prompt`` is None.

    Returns ``{"dimensions": {name: score}, "aesthetic_first": a, "aesthetic_last": b, "aesthetic_drift": |a-b|,
    "protocol": ...}``; VBench's raw result files stay in ``out_dir/vbench/<video stem>``.
    """
    dimensions = tuple(d for d in VBENCH_DIMENSIONS if prompt is not None or d != "overall_consistency")
    check_vbench(dimensions)
    import torch
    from vbench import VBench  # noqa: deferred, optional dependency

    from deepforcing.eval.video_io import read_video

    video_path = Path(video_path)
    work = Path(out_dir) / "vbench" / video_path.stem
    work.mkdir(parents=True, exist_ok=True)
    frames, fps = read_video(video_path)
    clip = max(2, round(drift_seconds * fps))
    first, last = work / "clip_first.mp4", work / "clip_last.mp4"
    _write_clip(first, frames[:clip], fps)
    _write_clip(last, frames[-clip:], fps)

    full_info = Path(importlib.util.find_spec("vbench").origin).parent / "VBench_full_info.json"
    bench = VBench(torch.device("cuda"), str(full_info), str(work))

    def run(path: Path, name: str, dims: tuple[str, ...]) -> dict[str, float]:
        bench.evaluate(videos_path=str(path), name=name, prompt_list=[prompt] if prompt else [],
                       dimension_list=list(dims), local=True, mode="custom_input")
        results = json.loads((work / f"{name}_eval_results.json").read_text())
        return {dim: float(results[dim][0]) for dim in dims}  # VBench stores [overall score, per-video results]

    scores = run(video_path, "full", dimensions)
    aesthetic_first = run(first, "first", ("aesthetic_quality",))["aesthetic_quality"]
    aesthetic_last = run(last, "last", ("aesthetic_quality",))["aesthetic_quality"]
    return {
        "dimensions": scores,
        "aesthetic_first": aesthetic_first,
        "aesthetic_last": aesthetic_last,
        "aesthetic_drift": abs(aesthetic_first - aesthetic_last),
        "drift_seconds": drift_seconds,
        "protocol": "VBench custom_input on the whole video and on its first/last clips (not VBench-Long splitting)",
    }


def _write_clip(path: Path, frames, fps: float) -> None:
    import fractions

    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            image = av.VideoFrame.from_ndarray(frame[: stream.height, : stream.width], format="rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode())
