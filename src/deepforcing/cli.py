"""The ``deepforcing`` command line: argument parsing, printing and files only (no math here)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from ._version import __version__

__all__ = ["main", "build_parser", "add_policy_arguments", "policy_from_args"]

from .cli_options import (  # noqa: F401
    add_model_arguments, add_policy_arguments, add_start_arguments, policy_from_args, policy_sizes_from_args,
)


_HELP = {  # one line per command, shown by `deepforcing --help` (which builds no command's options)
    "plan": "show what a cache policy keeps after every chunk (no model needed)",
    "generate": "generate a (long) video, streamed to an mp4 chunk by chunk",
    "train-mini": "train (or resume) the embedded mini model on the procedural world",
    "eval": "measure long-horizon drift of videos (no downloaded weights needed)",
    "bench": "per-chunk latency, frames/s, memory and policy overhead per policy at 1x..48x the training horizon",
    "diagnose": "attention mass per cached frame and Top-C selection heatmap (paper Fig. 4 / Fig. 13)",
    "experiment": "the long-horizon policy comparison on the mini model (results/long_horizon); --board: the "
                  "leaderboard of every registered policy (results/leaderboard)",
    "serve": "a live web page: watch the video as it is generated, switch its prompt while it runs",
    "presets": "list the model presets (chunk, window, steps, shift, policy) and their sources",
    "calibrate": "make the per-checkpoint file a policy needs for your model (forcing-kv: its head profile; "
                 "triattention: its query statistics)",
}


# ----------------------------------------------------------------------------- plan
PLAN_LIMITS = {"chunks": 500, "chunk_frames": 64, "tokens_per_frame": 64}
"""Largest simulation ``plan`` runs (a few seconds at most; 100000 chunks of full attention would run for hours)."""


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help=_HELP["plan"],
        description="Dry-run a KV-cache policy: per chunk, the frames in sink / Top-C / recent and the temporal "
        "positions they present. Frame counts are exact; Top-C picks use random scores here.",
    )
    add_policy_arguments(p)
    p.add_argument("--chunks", type=int, default=20, help="number of chunks to simulate (default 20)")
    p.add_argument("--chunk-frames", type=int, default=3, help="latent frames per chunk (default 3)")
    p.add_argument("--tokens-per-frame", type=int, default=4,
                   help="tokens per latent frame in the simulation (default 4; Top-C is token-level)")
    p.add_argument("--json", action="store_true", help="one JSON object per chunk")
    p.set_defaults(func=_run_plan)


def _fmt_span(span: list[int] | None) -> str:
    return "-" if span is None else (f"{span[0]}" if span[0] == span[1] else f"{span[0]}..{span[1]}")


def _run_plan(args: argparse.Namespace) -> int:
    from .cache.plan import GROUP_HEADS, simulate

    for name, most in PLAN_LIMITS.items():
        value = getattr(args, name)
        if not 1 <= value <= most:
            why = f" (plan simulates every chunk; the pattern repeats long before {most})" if name == "chunks" else ""
            raise ValueError(f"--{name.replace('_', '-')} must be positive and at most {most}, got {value}{why}")
    policy = policy_from_args(args)
    reports = simulate(policy, args.chunks, chunk_frames=args.chunk_frames, tokens_per_frame=args.tokens_per_frame)
    if args.json:
        for r in reports:
            print(json.dumps(r.to_dict()))
        return 0
    print(f"policy {policy.name}: " + ", ".join(f"{k}={v}" for k, v in policy.describe().items() if k != "policy"))
    header = f"{'chunk':>5} {'frames':>8} {'event':>8} {'cache':>6} {'sink':>5} {'top-c':>6} {'recent':>6}  " \
             f"{'sink pos':>10} {'top-c pos':>10} {'recent pos':>10} {'shift':>5}"
    memory = bool(policy.layout.get("memory"))  # synthesized memory frames (MemRoPE): two more columns
    header += f" {'memory':>6} {'mem pos':>8}" if memory else ""
    print(header)
    print("-" * len(header))
    for r in reports:
        frames = f"{r.start_frame}..{r.start_frame + args.chunk_frames - 1}"
        print(
            f"{r.chunk:>5} {frames:>8} {r.event:>8} {r.cache_frames:>6g} {r.sink_frames:>5g} {r.topc_frames:>6g} "
            f"{r.recent_frames:>6g}  {_fmt_span(r.sink_positions):>10} {_fmt_span(r.topc_positions):>10} "
            f"{_fmt_span(r.recent_positions):>10} {r.sink_delta:>+5d}"
            + (f" {r.memory_frames:>6g} {_fmt_span(r.memory_positions):>8}" if memory else "")
        )
        for g in r.groups or ():  # a per-head policy: the row above is the heads' mean, then each head group
            print(f"{'':>5} {g['group'][:17]:>17} {g['cache_frames']:>6g} {g['sink_frames']:>5g} "
                  f"{g['topc_frames']:>6g} {g['recent_frames']:>6g}  {_fmt_span(g['sink_positions']):>10} "
                  f"{_fmt_span(g['topc_positions']):>10} {_fmt_span(g['recent_positions']):>10}  "
                  f"{g['heads']} of {GROUP_HEADS} heads")
    return 0


# ------------------------------------------------------------------------- generate
def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help=_HELP["generate"],
        description="Generate a video with a causal video diffusion model and a KV-cache policy. With no model "
        "options the embedded mini model runs on the CPU with its default prompt (60 s at 16 fps).",
    )
    src = p.add_argument_group("what to generate")
    src.add_argument("prompt", nargs="?", default=None, help="text prompt (or a compact timeline '10s: a; 10s: b')")
    src.add_argument("--prompt", dest="prompt_opt", default=None, help="text prompt (same as the positional one)")
    src.add_argument("--prompt-file", default=None,
                     help="file with one prompt per line: one video per prompt (sharded across torchrun ranks)")
    src.add_argument("--timeline", default=None,
                     help="prompt timeline: compact form '10s: prompt; 20s: prompt' or a file (lines or JSON); "
                          "'cut 10s: prompt' starts that entry with a scene cut (infinity-rope's RoPE Cut)")
    src.add_argument("--drop-sink-on-switch", action="store_true",
                     help="re-cache the sink too when the prompt changes (default: keep it)")
    length = src.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, default=None, help="video length in seconds (default 60)")
    length.add_argument("--frames", type=int, default=None, help="video length in latent frames")
    src.add_argument("--seed", type=int, default=0, help="random seed (video k of a prompt file uses seed + k)")
    add_start_arguments(p)
    add_policy_arguments(p, default=None)
    model = add_model_arguments(p)
    model.add_argument("--no-restart", action="store_true",
                       help="presets whose release restarts the rollout every window (causvid): roll one cache with "
                            "--policy instead")
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", default=None, help="output .mp4 (default: outputs/<prompt>_seed<seed>.mp4)")
    out.add_argument("--save-latents", action="store_true", help="also save the latents (.safetensors)")
    out.add_argument("--save-frames", action="store_true", help="also save every frame as PNG (folder <out>/)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from .generate_command import run_generate

    return run_generate(args)


# ----------------------------------------------------------------------- train-mini
def _add_train_mini(sub: argparse._SubParsersAction) -> None:
    from .mini.model import MiniConfig
    from .mini.train import ROLLOUT_TARGETS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train-mini",
        help=_HELP["train-mini"],
        description="Teacher-forcing flow-matching training on world clips of one attention window (21 frames), "
        "resumable from <run-dir>/checkpoint.pt. Writes the model file at every checkpoint.",
    )
    p.add_argument("--steps", type=int, default=d.steps, help=f"total optimiser steps (default {d.steps})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"clips per step (default {d.batch})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--shift", type=float, default=d.shift, help=f"training timestep shift (default {d.shift})")
    p.add_argument("--run-dir", default=d.run_dir, help=f"checkpoints and logs (default {d.run_dir})")
    p.add_argument("--output", default="runs/mini/mini_model.safetensors", help="model file to write")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (resumably) after this much wall time")
    p.add_argument("--threads", type=int, default=d.threads, help=f"CPU threads (default {d.threads})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--curriculum", default="",
                   help="shorter clips first: 'FRAMES:UNTIL_STEP,...' e.g. '6:1500,12:2500' (then the full window)")
    m = MiniConfig()
    p.add_argument("--codec", choices=("pixels", "autoencoder"), default=m.codec,
                   help="latent space: raw pixels or the learned mini autoencoder (needs --codec-weights)")
    p.add_argument("--codec-weights", default=None, help="trained autoencoder state dict (deepforcing.mini.train_codec)")
    p.add_argument("--patch", type=int, default=m.patch, help=f"latent cells per token side (default {m.patch})")
    p.add_argument("--dim", type=int, default=m.dim, help=f"transformer width (default {m.dim}; FFN = 2 x dim)")
    p.add_argument("--layers", type=int, default=m.layers, help=f"transformer blocks (default {m.layers})")
    p.add_argument("--text-layers", type=int, default=m.text_layers,
                   help=f"transformer layers of the text encoder over the prompt's words (default {m.text_layers}: "
                        "independent word embeddings)")
    p.add_argument("--first-chunk-weight", type=float, default=d.first_chunk_weight,
                   help="loss weight of chunk 0, generated from the prompt alone (default 1)")
    p.add_argument("--text-dropout", type=float, default=d.text_dropout,
                   help="fraction of clips trained with the empty prompt (enables classifier-free guidance)")
    p.add_argument("--ema", type=float, default=d.ema_decay,
                   help="ship an exponential moving average of the weights with this decay, e.g. 0.999 (0: off)")
    p.add_argument("--first-chunk-batch", type=int, default=d.first_chunk_batch,
                   help="extra one-chunk clips per step trained without context, as chunk 0 is generated (0: none)")
    p.add_argument("--object-weight", type=float, default=d.object_weight,
                   help="loss weight of the latent cells that carry an object (default 1: plain MSE)")
    p.add_argument("--init-from", default=None,
                   help="start from the matching weights of this checkpoint.pt or model file (fine-tuning)")
    p.add_argument("--self-context", type=float, default=d.self_context,
                   help="fraction of clips whose context is the model's own re-generation of it, so the next chunk "
                   "learns to repair the model's errors instead of copying them (default 0: true context)")
    p.add_argument("--self-context-sigma", default=",".join(f"{v:g}" for v in d.self_context_sigma),
                   help="LO,HI noise levels the context is re-generated from (default %(default)s)")
    p.add_argument("--rollout-context", type=float, default=d.rollout_context,
                   help="fraction of clips whose chunks after the first are the model's own rollout from the true "
                   "first chunk, the true continuation staying the target (Self Forcing's exposure; default 0)")
    p.add_argument("--rollout-true-chunks", type=int, default=d.rollout_true_chunks,
                   help="with --rollout-context: true chunks before the model's own rollout starts (0: a random "
                   "number per batch; default %(default)s)")
    p.add_argument("--rollout-target", choices=ROLLOUT_TARGETS, default=d.rollout_target,
                   help="with --rollout-context: the target of a rolled-out chunk is the true continuation ('truth') "
                   "or the world re-simulated from where the rollout put the objects ('resimulated': lost objects "
                   "restored where the truth has them; 'resimulated-kept': left out; default %(default)s)")
    p.add_argument("--rollout-truth-share", type=float, default=d.rollout_truth_share,
                   help="with a re-simulated --rollout-target: fraction of rolled-out clips that keep the true "
                   "continuation as their target (a mix of both targets; default %(default)s)")
    p.add_argument("--world", choices=("original", "v5"), default=d.world,
                   help="scene mix drawn: 'original' (1-3 objects, v1-v4) or 'v5' (mostly 1-2 medium/big objects, "
                   "no near-identical colours; default %(default)s)")
    p.add_argument("--start-layout", action="store_true",
                   help="condition frame 0 on the prompt's start layout (extra input channels, v5; grown from "
                   "--init-from with the new channels at zero)")
    p.add_argument("--layout-dropout", type=float, default=d.layout_dropout,
                   help="with --start-layout: fraction of clips trained without it (prompt-only mode; default %(default)s)")
    p.add_argument("--rollout-probe-every", type=int, default=0,
                   help="score free rollouts from the prompt every N steps (0: off)")
    p.add_argument("--euler-steps", default="",
                   help="comma-separated timesteps of the Euler ODE sampler stored with the model, e.g. 1000,750,500,250")
    p.set_defaults(func=_run_train_mini)


def _check_train_mini(args: argparse.Namespace) -> None:
    """``train-mini``'s numbers and outputs, before any training: a run that cannot save its model is refused now,
    not after hours of training."""
    import math
    from pathlib import Path

    from .pipeline.validation import make_writable_folder

    for name in ("steps", "batch", "threads", "layers", "dim", "patch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("first_chunk_batch", "rollout_probe_every"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.max_minutes is not None and not (math.isfinite(args.max_minutes) and args.max_minutes > 0):
        raise ValueError(f"--max-minutes must be a positive number of minutes, got {args.max_minutes}")
    for name in ("lr", "shift"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            raise ValueError(f"--{name} must be a positive number, got {getattr(args, name)}")
    for name in ("text_dropout", "rollout_context", "layout_dropout"):
        if not 0 <= getattr(args, name) <= 1:
            raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(args, name)}")
    if not 0 <= args.ema < 1:
        raise ValueError(f"--ema must be in [0, 1) (0: off; e.g. 0.999), got {args.ema}")
    for name in ("first_chunk_weight", "object_weight"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) >= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    for name in ("init_from", "codec_weights"):
        if getattr(args, name) is not None and not Path(getattr(args, name)).is_file():
            raise FileNotFoundError(f"--{name.replace('_', '-')} file not found: {getattr(args, name)}")
    output = Path(args.output)
    if output.suffix != ".safetensors" or output.is_dir():
        raise ValueError(f"--output must be a .safetensors file name, got {output}")
    for folder, flag in ((output.parent, "--output"), (Path(args.run_dir), "--run-dir")):
        make_writable_folder(folder, flag)


def _run_train_mini(args: argparse.Namespace) -> int:
    from .mini.model import MiniConfig
    from .mini.train import TrainConfig, train

    _check_train_mini(args)
    try:
        curriculum = tuple(tuple(int(v) for v in item.split(":")) for item in args.curriculum.split(",") if item)
    except ValueError:
        raise ValueError(f"--curriculum must look like '6:1500,12:2500', got {args.curriculum!r}") from None
    try:
        euler = [float(v) for v in args.euler_steps.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--euler-steps must be comma-separated numbers, got {args.euler_steps!r}") from None
    sampling = {"denoising_steps": euler, "warp": False, "solver": "euler"} if euler else None
    try:
        lo, hi = (float(v) for v in args.self_context_sigma.split(","))
    except ValueError:
        raise ValueError(f"--self-context-sigma must be LO,HI, got {args.self_context_sigma!r}") from None
    if not 0 < lo <= hi <= 1 or not 0 <= args.self_context <= 1:
        raise ValueError(f"need 0 <= --self-context <= 1 and 0 < LO <= HI <= 1, got {args.self_context} and "
                         f"{args.self_context_sigma!r}")
    model = MiniConfig(codec=args.codec, patch=args.patch, dim=args.dim, ffn_dim=2 * args.dim, layers=args.layers,
                       text_layers=args.text_layers, start_layout=args.start_layout)
    cfg = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, shift=args.shift, run_dir=args.run_dir,
                      output=args.output, max_minutes=args.max_minutes, threads=args.threads, seed=args.seed,
                      curriculum=curriculum, codec_weights=args.codec_weights,
                      first_chunk_weight=args.first_chunk_weight, text_dropout=args.text_dropout,
                      rollout_probe_every=args.rollout_probe_every, ema_decay=args.ema,
                      first_chunk_batch=args.first_chunk_batch, object_weight=args.object_weight,
                      init_from=args.init_from, self_context=args.self_context, self_context_sigma=(lo, hi),
                      probe_sampling=sampling, world=args.world, rollout_context=args.rollout_context,
                      rollout_true_chunks=args.rollout_true_chunks, rollout_target=args.rollout_target,
                      rollout_truth_share=args.rollout_truth_share,
                      layout_dropout=args.layout_dropout, model=model)
    train(cfg)
    print(f"wrote {cfg.output}")
    return 0


# ----------------------------------------------------------------------------- eval
def _add_eval(sub: argparse._SubParsersAction) -> None:
    from .eval.command import add_eval_arguments, run_eval

    p = sub.add_parser(
        "eval",
        help=_HELP["eval"],
        description="Metrics over windows of each video (the first window = the training horizon) as drift curves: "
        "imaging proxies, colour/exposure drift, flicker, optical-flow motion and deceleration, repetition.",
    )
    add_eval_arguments(p)
    p.set_defaults(func=run_eval)


# ---------------------------------------------------------------------------- bench
def _add_bench(sub: argparse._SubParsersAction) -> None:
    from .eval.bench import add_bench_arguments, run_bench

    p = sub.add_parser(
        "bench",
        help=_HELP["bench"],
        description="Speed and memory of each cache policy as videos get longer (no files written).",
    )
    add_bench_arguments(p)
    p.set_defaults(func=run_bench)


# ------------------------------------------------------------------------ calibrate
def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    from .eval.calibrate import add_calibrate_arguments, run_calibrate

    p = sub.add_parser(
        "calibrate",
        help=_HELP["calibrate"],
        description="Roll out one video of the model with global attention and write the file the policy's release "
        "makes per checkpoint (forcing-kv: static / dynamic heads per layer, as its configs_head/head_profile.py).",
    )
    add_calibrate_arguments(p)
    p.set_defaults(func=run_calibrate)


# ------------------------------------------------------------------------- diagnose
def _add_diagnose(sub: argparse._SubParsersAction) -> None:
    from .eval.diagnostics import add_diagnose_arguments, run_diagnose

    p = sub.add_parser(
        "diagnose",
        help=_HELP["diagnose"],
        description="Roll out a video and record, for the last chunk of the first window and the last chunk, the "
        "query-averaged softmax attention per cached frame, plus how often each cache slot is picked as Top-C.",
    )
    add_diagnose_arguments(p)
    p.set_defaults(func=run_diagnose)


# ----------------------------------------------------------------------- experiment
def _add_experiment(sub: argparse._SubParsersAction) -> None:
    from .eval.experiment import add_experiment_arguments, run_experiment_command

    p = sub.add_parser(
        "experiment",
        help=_HELP["experiment"],
        description="Every policy on the same prompt x seed pairs at 12x (and 48x) the training horizon, scored "
        "with the mini world's ground truth and the drift metrics; mean +- 95%% CI per policy. With --board, the "
        "leaderboard: every registered policy at its release defaults per scene class and start mode, stored arm by "
        "arm so that a rerun resumes (results/leaderboard/README.md).",
    )
    add_experiment_arguments(p)
    p.set_defaults(func=run_experiment_command)


# -------------------------------------------------------------------------- presets
def _add_serve(sub: argparse._SubParsersAction) -> None:
    from .serve.command import add_serve_arguments

    p = sub.add_parser(
        "serve",
        help=_HELP["serve"],
        description="Serve one page (default http://127.0.0.1:7860/) that streams a rollout chunk by chunk over a "
        "WebSocket, switches the prompt at the next chunk boundary, shows the cache makeup and attention mass per "
        "cache segment, and downloads the MP4 so far.",
    )
    add_serve_arguments(p)
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from .serve.command import run_serve

    return run_serve(args)


def _add_presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help=_HELP["presets"])
    p.set_defaults(func=_run_presets)


def _run_presets(args: argparse.Namespace) -> int:
    from .models.presets import PRESETS

    for preset in PRESETS.values():
        sampling = preset.sampling
        default = preset.product_policy()
        sizes = {k: v for k, v in default.items() if k not in ("name", "window")}
        extra = f", first chunk steps {sampling.first_chunk_steps}" if sampling.first_chunk_steps else ""
        if sampling.restart_overlap:
            extra += f", restarts every window from {sampling.restart_overlap} frames"
        print(f"{preset.name}: chunk {sampling.chunk_frames}, window {preset.window_frames}, "
              f"steps {sampling.denoising_steps}{extra}, warp {sampling.warp}, shift {sampling.shift}, default policy "
              f"{default['name']} {sizes or ''}".rstrip() + f" (release: {preset.policy} {preset.policy_sizes or ''}"
              .rstrip() + ")")
        for note in preset.notes:
            print(f"    - {note}")
        for value, source in preset.sources.items():
            print(f"    source of {value}: {source}")
    return 0


# ---------------------------------------------------------------------------- main
# name -> the function that adds its parser; only the command being run is built (its options may import heavy
# modules: the mini trainer's defaults, the eval metrics), so `deepforcing --help`, `presets` and `plan` stay light
_COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "plan": _add_plan, "presets": _add_presets, "generate": _add_generate, "eval": _add_eval, "bench": _add_bench,
    "diagnose": _add_diagnose, "experiment": _add_experiment, "train-mini": _add_train_mini, "serve": _add_serve,
    "calibrate": _add_calibrate,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command's options (``command`` None), or with those of ``command`` alone and a bare
    entry (name and help line) for each other command ("": none)."""
    parser = argparse.ArgumentParser(
        prog="deepforcing",
        description="Training-free long video generation: Deep Forcing KV-cache policies for autoregressive video "
        "diffusion (Self Forcing / Wan2.1).",
    )
    parser.add_argument("--version", action="version", version=f"deepforcing {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, add in _COMMANDS.items():
        if command is None or name == command:
            add(sub)
        else:
            sub.add_parser(name, help=_HELP[name])
    return parser


def _command_of(argv: Sequence[str]) -> str:
    """The command named in ``argv`` (the first word that is not an option; the top level takes no values)."""
    return next((arg for arg in argv if not arg.startswith("-")), "")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # building a command's parser imports its modules (torch, diffusers): Ctrl-C there is no traceback
        parser = build_parser(_command_of(argv))
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("deepforcing: interrupted", file=sys.stderr)
        return 130
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .pipeline.validation import error_line

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError) as err:  # one line, errno texts turned into what to do
        print(f"deepforcing {args.command}: error: {error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deepforcing {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
