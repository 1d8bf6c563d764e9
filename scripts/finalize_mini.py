"""Ship a trained mini model: record its sampler in the file's metadata and copy it into the package.

    python scripts/finalize_mini.py runs/mini/mini_model.safetensors --steps 16 --shift 3 --guidance 2

The sampler is the Euler flow ODE (what a flow-matching model is trained for) through ``steps`` timesteps
``1000 * shift * s / (1 + (shift - 1) * s)``, ``s`` evenly spaced in (0, 1], with classifier-free ``guidance``.
Choose the values with ``scripts/mini_sampler_sweep.py`` (validation pairs, not the held-out bar). The metadata
keeps the training record written by the trainer.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from deepforcing.mini.model import DEFAULT_MINI_WEIGHTS, MiniModel
from deepforcing.pipeline.rollout import SamplingConfig


def euler_sampling(steps: int, shift: float, guidance: float) -> SamplingConfig:
    s = torch.linspace(1, 0, steps + 1, dtype=torch.float64)[:-1]
    t = 1000 * shift * s / (1 + (shift - 1) * s)
    return SamplingConfig(denoising_steps=tuple(round(v, 3) for v in t.tolist()), warp=False, solver="euler",
                          guidance=guidance)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--shift", type=float, default=3.0)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--out", default=str(DEFAULT_MINI_WEIGHTS))
    args = p.parse_args()
    model = MiniModel.load(args.model)
    meta = MiniModel.read_metadata(args.model)
    meta.pop("config", None)
    sampling = dataclasses.asdict(euler_sampling(args.steps, args.shift, args.guidance))
    meta["sampling"] = {k: list(v) if isinstance(v, tuple) else v for k, v in sampling.items()}
    with torch.no_grad():
        model.save(args.out, metadata=meta)
    print(f"wrote {args.out} with sampling {meta['sampling']}")


if __name__ == "__main__":
    main()
