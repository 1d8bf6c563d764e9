"""Ship a trained mini model: record its sampler in the file's metadata and copy it into the package.

    python scripts/finalize_mini.py runs/mini/mini_model.safetensors --sampler 1

Sampler indices are those of ``scripts/mini_report.py`` (0: Self Forcing's warped 4 steps, 1: 4 unwarped steps,
2: 8 unwarped steps). The metadata keeps the training record written by the trainer.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from deepforcing.mini.model import DEFAULT_MINI_WEIGHTS, MiniModel

from mini_report import SAMPLERS


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--sampler", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_MINI_WEIGHTS))
    args = p.parse_args()
    model = MiniModel.load(args.model)
    meta = MiniModel.read_metadata(args.model)
    meta.pop("config", None)
    sampling = dataclasses.asdict(list(SAMPLERS.values())[args.sampler])
    meta["sampling"] = {k: list(v) if isinstance(v, tuple) else v for k, v in sampling.items()}
    with torch.no_grad():
        model.save(args.out, metadata=meta)
    print(f"wrote {args.out} with sampling {meta['sampling']}")


if __name__ == "__main__":
    main()
