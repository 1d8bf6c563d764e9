"""``deepforcing calibrate``: the per-checkpoint file a cache policy needs, made for the user's own model the way the
policy's release makes it (argument parsing and printing; the work is in ``pipeline``).

* ``--policy forcing-kv``: the head profile (static / dynamic heads per layer) of Forcing-KV (arXiv 2605.09681),
  as ``configs_head/head_profile.py`` of ``zju-jiyicheng/Forcing-KV`` @ 50ac1f4 computes it, at the shipped profiles'
  settings (:mod:`deepforcing.pipeline.forcing_kv_calibration`). Generate with ``--policy forcing-kv
  --head-profile heads.json``.
* ``--policy triattention``: TriAttention's query statistics (arXiv 2604.04921), as the calibrate mode of
  ``WeianMao/triattention`` @ c3744ee ``longlive/`` makes ``calibration_stats_81f.pt`` (an 81-frame video with global
  attention, every call's pre-RoPE queries; :mod:`deepforcing.pipeline.triattention_calibration`). Generate with
  ``--policy triattention --calibration stats.pt``.
"""

from __future__ import annotations

import argparse

from deepforcing.cli_options import add_model_arguments

__all__ = ["CALIBRATED_POLICIES", "add_calibrate_arguments", "run_calibrate"]

CALIBRATED_POLICIES = ("forcing-kv", "triattention")
"""Policies whose release needs a file made per checkpoint, which ``calibrate`` can make."""


def add_calibrate_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from deepforcing.pipeline.forcing_kv_calibration import CALIBRATION_FRAMES

    p.add_argument("prompt", nargs="?", default=None,
                   help="prompt of the profiling video (default: the mini model's default prompt; real models need one)")
    p.add_argument("--policy", required=True, choices=CALIBRATED_POLICIES, help="the policy to calibrate for")
    p.add_argument("--out", required=True, help="the file to write (forcing-kv: the head profile .json; "
                                                "triattention: the query statistics .pt)")
    from deepforcing.pipeline.triattention_calibration import CALIBRATION_FRAMES as TRI_FRAMES

    p.add_argument("--frames", type=int, default=None,
                   help=f"latent frames of the profiling video, global attention (default: forcing-kv "
                        f"{CALIBRATION_FRAMES}, Self Forcing's length; triattention {TRI_FRAMES}, the release's)")
    p.add_argument("--seed", type=int, default=0)
    add_model_arguments(p)
    return p


def run_calibrate(args: argparse.Namespace) -> int:
    from deepforcing.model_spec import ModelSpec, check_model, set_threads
    from deepforcing.pipeline.forcing_kv_calibration import calibrate_forcing_kv, calibration_policy

    model = check_model(ModelSpec.from_args(args))
    if not model.is_mini and not args.prompt:
        raise ValueError("a real model needs a prompt for the profiling video (the mini model has a default one)")
    if args.policy == "triattention":
        return _calibrate_triattention(args, model)
    if args.frames is None:
        from deepforcing.pipeline.forcing_kv_calibration import CALIBRATION_FRAMES

        args.frames = CALIBRATION_FRAMES
    model.policy("self-forcing", window=args.frames)  # the profiling cache fits the model (before weights load)
    calibration_policy(args.frames).validate(model.chunk_frames)
    gen = model.open()
    set_threads(gen, args.threads)
    profile, shares = calibrate_forcing_kv(gen, args.prompt, args.out, frames=args.frames, seed=args.seed)
    static = sum(len(layer["static_head"]) for layer in profile["layers"])
    total = profile["num_layers"] * profile["num_heads"]
    print(f"forcing-kv head profile of {profile['num_layers']} layers x {profile['num_heads']} heads: {static} of "
          f"{total} static heads (share of the last 4 key frames >= 0.8, skip 3); per layer:")
    for layer, row in zip(profile["layers"], shares.tolist()):
        print(f"  layer {layer['layer_idx']}: static {layer['static_head']}  shares "
              + " ".join(f"{s:.2f}" for s in row))
    print(f"wrote {args.out}; generate with --policy forcing-kv --head-profile {args.out}")
    return 0


def _calibrate_triattention(args: argparse.Namespace, model) -> int:
    from deepforcing.model_spec import set_threads
    from deepforcing.pipeline.triattention_calibration import CALIBRATION_FRAMES, calibrate_triattention

    frames = CALIBRATION_FRAMES if args.frames is None else args.frames
    if frames < 1:
        raise ValueError(f"--frames must be positive, got {frames}")
    if model.preset is not None and model.preset.sampling.guidance > 1.0:
        raise ValueError(f"triattention calibration runs without classifier-free guidance (the release's LongLive has "
                         f"none); the {model.preset.name} preset guides its chunks")
    gen = model.open()
    set_threads(gen, args.threads)
    path, stats = calibrate_triattention(gen, args.prompt, args.out, frames=frames, seed=args.seed)
    layers, heads, pairs = stats.q_sum.shape
    print(f"triattention query statistics of {layers} layers x {heads} heads x {2 * pairs} channels over "
          f"{int(stats.token_count[0])} query tokens per layer; wrote {path}; generate with --policy triattention "
          f"--calibration {path}")
    return 0
