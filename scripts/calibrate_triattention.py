"""Make TriAttention's calibration statistics for your own checkpoint, the way the release makes
``longlive/assets/calibration_stats_81f.pt`` (WeianMao/triattention@c3744ee, ``longlive/patches.py`` calibrate mode):
one 81-latent-frame video with global attention, every self-attention call's pre-RoPE queries averaged per
(layer, head) (:mod:`deepforcing.pipeline.triattention_calibration`).

    python scripts/calibrate_triattention.py --model PATH/TO/Wan2.1-T2V-1.3B --checkpoint longlive_base.pt \\
        --lora lora.pt --preset longlive --prompt "a boat on a lake" --out calibration.pt

Then generate with ``--policy triattention --calibration calibration.pt``. The release calls its statistics
domain-agnostic (they depend on the model, not on the prompt); the file records the prompt-free run settings.
"""

from __future__ import annotations

import argparse
import sys

from deepforcing.cli_options import add_model_arguments
from deepforcing.model_spec import ModelSpec, check_model
from deepforcing.pipeline.triattention_calibration import CALIBRATION_FRAMES, calibrate_triattention


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    add_model_arguments(p, model=None)
    p.add_argument("--prompt", required=True, help="text of the calibration video")
    p.add_argument("--out", required=True, help="the .pt file to write (the release's format)")
    p.add_argument("--frames", type=int, default=CALIBRATION_FRAMES,
                   help=f"latent frames of the calibration video (default {CALIBRATION_FRAMES}, the release's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.model is None:
        p.error("--model is required (the checkpoint to calibrate)")
    if args.frames < 1:
        p.error(f"--frames must be positive, got {args.frames}")
    checked = check_model(ModelSpec.from_args(args))
    generator = checked.open()
    bundle = generator.bundle
    out = calibrate_triattention(bundle.transformer, args.out, context=generator.context(args.prompt),
                                 latent_shape=bundle.latent_shape, sampling=bundle.sampling, frames=args.frames,
                                 seed=args.seed, model_name=bundle.name)
    print(f"wrote {out}: {bundle.transformer.num_layers} layers x {bundle.transformer.num_heads} heads; use "
          f"--policy triattention --calibration {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
