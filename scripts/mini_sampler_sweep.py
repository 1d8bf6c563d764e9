"""Choose the mini model's sampler on *validation* pairs (never the held-out bar's): steps x shift x guidance.

    python scripts/mini_sampler_sweep.py MODEL.safetensors [--pairs 16] [--steps 8,16] [--guidance 1,2,3]

Prints in-horizon free-rollout persistence / count / colour / speed and the time per 21 frames for each setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from deepforcing.cache import make_policy
from deepforcing.mini.bundle import mini_bundle
from deepforcing.mini.language import sample_scene
from deepforcing.mini.measure import measure_video
from deepforcing.mini.quality import is_held_out, rollout_videos

from finalize_mini import euler_sampling

VALIDATION_SCENE_SEED = 950_000
VALIDATION_NOISE_SEED = 650_000


def validation_pairs(n: int) -> list[tuple[str, int]]:
    out, k = [], 0
    while len(out) < n:
        scene = sample_scene(np.random.default_rng(VALIDATION_SCENE_SEED + k))
        if not is_held_out(scene):
            out.append((scene.to_prompt(), VALIDATION_NOISE_SEED + k))
        k += 1
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--steps", default="8,16")
    p.add_argument("--shifts", default="3")
    p.add_argument("--guidance", default="1,2,3")
    p.add_argument("--frames", type=int, default=21)
    args = p.parse_args()
    torch.set_num_threads(1)
    base = mini_bundle(args.model)
    pairs = validation_pairs(args.pairs)
    print("| steps | shift | guidance | persistence | count | colour err | speed | s per video |")
    print("|---|---|---|---|---|---|---|---|")
    for steps in (int(v) for v in args.steps.split(",")):
        for shift in (float(v) for v in args.shifts.split(",")):
            for g in (float(v) for v in args.guidance.split(",")):
                bundle = dataclasses.replace(base, sampling=euler_sampling(steps, shift, g))
                t = time.perf_counter()
                vids = rollout_videos(bundle, make_policy("self-forcing"), [q for q, _ in pairs],
                                      [s for _, s in pairs], args.frames)
                dt = (time.perf_counter() - t) / len(pairs)
                m = [measure_video(v, q) for v, (q, _) in zip(vids, pairs)]
                row = [np.nanmean([getattr(x, k) for x in m]) for k in
                       ("object_persistence", "count_accuracy", "object_colour_error", "speed_preservation")]
                print(f"| {steps} | {shift:g} | {g:g} | " + " | ".join(f"{v:.3f}" for v in row) + f" | {dt:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
