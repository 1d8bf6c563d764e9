"""Does the README's main video keep its prompt's objects? The main job (``deepforcing generate``: the mini model's
default prompt, 60 s, the default policy) for seeds 0-5, each video written to mp4, read back and tracked against
its prompt over the whole minute (per-minute persistence and count accuracy; also per 10-s span).

    python scripts/mini_main_job_check.py [MODEL.safetensors] --seeds 0-5 --out results/mini_quality/main_job.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from deepforcing.eval.video_io import read_video
from deepforcing.mini.bundle import MINI_DEFAULT_PROMPT, MINI_DISPLAY_SCALE, mini_generator
from deepforcing.mini.measure import MeasureConfig, score_tracks, track_objects
from deepforcing.mini.quality import slice_tracks
from deepforcing.stats import mean_ci


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--seeds", default="0-5")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--policy", default=None, help="cache policy (default: the model's, deep-forcing)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lo, hi = (int(v) for v in args.seeds.split("-"))
    gen = mini_generator(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(lo, hi + 1):
            path = Path(tmp) / f"seed{seed}.mp4"
            gen.generate(None, output=path, seconds=args.seconds, seed=seed, sidecar=False, policy=args.policy)
            frames, fps = read_video(path)  # uint8 [T, H, W, 3] at the display scale
            t, h, w, _ = frames.shape
            k = MINI_DISPLAY_SCALE  # back to the model's frames: the mean of each upscaled block
            small = frames.reshape(t, h // k, k, w // k, k, 3).astype(np.float32).mean(axis=(2, 4))
            video = torch.from_numpy(small).permute(0, 3, 1, 2) / 127.5 - 1
            tracks = track_objects(video, MINI_DEFAULT_PROMPT, MeasureConfig())
            whole = score_tracks(tracks, MINI_DEFAULT_PROMPT)
            span = int(10 * fps)
            spans = [score_tracks(slice_tracks(tracks, s, min(s + span, len(video))), MINI_DEFAULT_PROMPT).object_persistence
                     for s in range(0, len(video), span)]
            rows.append({"seed": seed, "frames": len(video), "persistence": whole.object_persistence,
                         "count_accuracy": whole.count_accuracy, "persistence_per_10s": [round(v, 3) for v in spans]})
            print(json.dumps(rows[-1]), flush=True)
    summary = {k: mean_ci([r[k] for r in rows]) for k in ("persistence", "count_accuracy")}
    print(f"persistence {summary['persistence']['mean']:.3f} (95 % CI {summary['persistence']['ci_low']:.3f}-"
          f"{summary['persistence']['ci_high']:.3f}), count accuracy {summary['count_accuracy']['mean']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model or "shipped", "prompt": MINI_DEFAULT_PROMPT,
                                              "policy": args.policy or "default",
                                              "rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
