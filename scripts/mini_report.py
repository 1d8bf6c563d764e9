"""The mini model's quality bar: free rollouts from the prompt alone on held-out pairs (what a user runs).

    python scripts/mini_report.py [MODEL.safetensors] [--pairs 32] [--horizons 12,48] [--out results/mini_quality]

Writes ``quality.md`` / ``quality.json`` (mean ± 95 % CI per policy, inside the 21-frame horizon and beyond it) and
``strip.png`` (true world clip above each generated video, same prompt and seed). ``--teacher-forced`` adds the
secondary diagnostic: the next chunk after true context frames (it never decides whether a model is good);
``--from-truth`` the chunk-0 diagnostic: true first chunks noised to several levels and denoised from the prompt.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from deepforcing.mini.bundle import mini_bundle
from deepforcing.mini.language import parse_prompt
from deepforcing.mini.model import MiniModel
from deepforcing.mini.quality import (format_free_rollout_table, format_quality_table, free_rollout_bar,
                                      from_truth_bar, held_out_pairs, quality_bar)
from deepforcing.mini.world import render_clip, to_uint8


def strip_image(videos: list[torch.Tensor], pairs: list[tuple[str, int]], frames: int, path: Path) -> None:
    from PIL import Image

    rows = []
    step = max(1, min(frames, videos[0].shape[0]) // 8)
    for video, (prompt, seed) in zip(videos, pairs):
        frames = min(frames, video.shape[0])
        truth = render_clip(parse_prompt(prompt), seed=seed, num_frames=frames, size=video.shape[-1]).frames
        rows.append(np.concatenate([np.concatenate(list(to_uint8(truth[:frames:step])), 1),
                                    np.concatenate(list(to_uint8(video[:frames:step])), 1)], 0))
    img = np.concatenate(rows, 0)
    Image.fromarray(img).resize((img.shape[1] * 3, img.shape[0] * 3), Image.NEAREST).save(path)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?", default=None, help="mini model file (default: the shipped one)")
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--horizons", default="12", help="comma-separated multiples of the window (e.g. 12,48)")
    p.add_argument("--policies", default="self-forcing,deep-forcing")
    p.add_argument("--out", default="results/mini_quality")
    p.add_argument("--strip", type=int, default=6, help="videos in the frame strip")
    p.add_argument("--teacher-forced", action="store_true", help="also the next-chunk diagnostic after true context")
    p.add_argument("--from-truth", action="store_true",
                   help="also the chunk-0 diagnostic: true first chunks noised to 0.5-1.0 and denoised from the prompt")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = mini_bundle(args.model)
    meta = MiniModel.read_metadata(args.model)
    horizons = tuple(float(h) for h in args.horizons.split(",") if h.strip())
    policies = tuple(x.strip() for x in args.policies.split(",") if x.strip())
    started = time.perf_counter()
    bar = free_rollout_bar(bundle, pairs=args.pairs, horizons=horizons, policies=policies, keep_videos=args.strip)
    seconds = time.perf_counter() - started
    videos = bar[policies[0]].pop("videos")
    for name in policies[1:]:
        bar[name].pop("videos")
    strip_image(videos, held_out_pairs(args.pairs)[: args.strip], 24, out / "strip.png")
    step = meta.get("training", {}).get("step")
    sampling = bundle.sampling
    first_chunk = (f" (first chunk: {len(sampling.first_chunk_steps or sampling.denoising_steps)} steps, guidance "
                   f"{sampling.first_chunk_guidance or sampling.guidance})"
                   if sampling.first_chunk_steps or sampling.first_chunk_guidance else "")
    lines = [f"# Mini model quality bar (step {step})", "",
             f"Free rollouts from the prompt alone, {args.pairs} held-out prompt x seed pairs, sampler "
             f"{bundle.sampling.solver} {len(bundle.sampling.denoising_steps)} steps, guidance "
             f"{bundle.sampling.guidance}{first_chunk}; mean ± half-width of the 95 % CI; {seconds:.0f} s on "
             f"{torch.get_num_threads()} CPU thread(s).", "", format_free_rollout_table(bar), "",
             "Persistence inside the window by object count (pairs): " + "; ".join(
                 f"{name}: " + ", ".join(f"{k} obj {r['mean']:.2f} (n={r['n']})"
                                         for k, r in bar[name]["inside_persistence_by_objects"].items())
                 for name in policies), ""]
    results = {"free_rollouts": bar, "seconds": seconds, "step": step}
    if args.teacher_forced:
        torch.manual_seed(0)
        untrained = out / "untrained_same_shape.safetensors"
        MiniModel(MiniModel.load(args.model).config).save(untrained)
        tf = quality_bar(bundle, mini_bundle(untrained), clips=args.pairs)
        untrained.unlink()
        results["teacher_forced"] = tf
        lines += ["## Diagnostic: next chunk after 12 true context frames", "", format_quality_table(tf), ""]
    if args.from_truth:
        ft = from_truth_bar(MiniModel.load(args.model), pairs=max(args.pairs, 64))
        results["from_truth"] = {str(k): v for k, v in ft.items()}
        lines += ["## Diagnostic: true first chunks noised to sigma, denoised from the prompt (8 Euler steps)", "",
                  "| sigma | persistence | count accuracy |", "|---|---|---|"]
        lines += [f"| {k} | {v['object_persistence']:.3f} | {v['count_accuracy']:.3f} |" for k, v in ft.items()]
        lines.append("")
    (out / "quality.md").write_text("\n".join(lines))
    (out / "quality.json").write_text(json.dumps(results, indent=1, default=float))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
