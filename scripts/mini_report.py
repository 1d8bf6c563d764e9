"""Measure the mini model's quality bar (in-horizon, ground truth) for candidate samplers and baselines.

    python scripts/mini_report.py MODEL.safetensors [--clips 32] [--out results/mini_quality.md]

Prints one table per sampler: the model vs copy-last-frame vs an untrained model of the same shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from deepforcing.mini.bundle import mini_bundle
from deepforcing.mini.model import MiniModel
from deepforcing.mini.quality import format_quality_table, quality_bar
from deepforcing.pipeline.rollout import SamplingConfig

SAMPLERS = {
    "self-forcing 4 steps (warped, shift 5)": SamplingConfig(),
    "4 steps, unwarped (sigma 1, .75, .5, .25)": SamplingConfig(warp=False),
    "8 steps, unwarped": SamplingConfig(denoising_steps=(1000, 875, 750, 625, 500, 375, 250, 125), warp=False),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--out", default=None)
    p.add_argument("--samplers", default=",".join(str(i) for i in range(len(SAMPLERS))))
    args = p.parse_args()
    torch.set_num_threads(1)
    bundle = mini_bundle(args.model)
    meta = MiniModel.read_metadata(args.model)
    torch.manual_seed(0)
    untrained = Path("/tmp/mini_untrained_same_shape.safetensors")
    MiniModel(MiniModel.load(args.model).config).save(untrained)
    base_untrained = mini_bundle(untrained)
    chosen = [list(SAMPLERS)[int(i)] for i in args.samplers.split(",")]
    lines, results = [], {}
    for name in chosen:
        sampling = SAMPLERS[name]
        res = quality_bar(dataclasses.replace(bundle, sampling=sampling),
                          dataclasses.replace(base_untrained, sampling=sampling), clips=args.clips)
        results[name] = res
        lines += [f"### sampler: {name}", "", format_quality_table(res), ""]
        print("\n".join(lines[-4:]), flush=True)
    if args.out:
        header = [f"Mini model quality bar: next-chunk prediction after 4 true context chunks (12 frames), "
                  f"{args.clips} world clips; training step {meta.get('training', {}).get('step')}.", ""]
        Path(args.out).write_text("\n".join(header + lines))
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
