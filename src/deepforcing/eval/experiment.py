"""The long-horizon study on the mini model: every cache policy, the same held-out prompts and seeds, ground truth.

``deepforcing experiment --out results/long_horizon`` generates, for every *arm* (a policy with its sizes), free
rollouts from the prompt alone of the quality bar's held-out prompt x seed pairs (:func:`~deepforcing.mini.quality.
held_out_pairs`: training never draws their scenes or seeds), through the batched rollout and the streaming decoder
that ``deepforcing generate`` uses. Each video is scored

* against the world's ground truth (:mod:`deepforcing.mini.measure`): object persistence, count accuracy, object
  colour error, speed ratio (1 = the prompt's speed), inside the training horizon (frames ``[0, window)``) and beyond
  it (frames ``[window, h * window)`` for each horizon ``h``), plus per-window series;
* with the model-free drift metrics of :mod:`deepforcing.eval.metrics` on frames ``[0, h * window)``: colour drift
  and sharpness change of the last window against the first, flicker, motion ratio (last / first window) and
  near-copies of the first window (roll-back).

A rollout to the longest horizon contains every shorter one (generation is causal; each video has its own noise
stream), so each arm is generated once, to its longest horizon, and scored on every prefix.

The arms (:data:`ARMS`) reproduce the paper's comparisons (arXiv 2512.05081): the policy table (Tab. 1 analogue),
the component ablation (Tab. 4: SF, +DS, +PC, +DS+PC, with the ablation's sink of 10), the sink-depth sweep
(Fig. 5: S in {0, 4, 7, 10, 14, 18}; S = 0 is Self Forcing's cache), the Top-C query sets (Tab. 5: past,
denoising, both), random Top-C (App. D) and two named options (``topc_rope="unify"``, Eq. 10-11; the gap-free
``adjacent`` sink placement). :data:`CLAIMS` are the paired comparisons (same prompt and seed under two arms) that
decide the paper's claims; :mod:`deepforcing.eval.experiment_report` writes the tables, plots and verdicts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from deepforcing.cli_options import add_model_arguments

from .experiment_arms import (  # noqa: F401  (re-exported: the study's public names)
    ARMS, CLAIMS, DEFAULT_HORIZONS, DRIFT_KEYS, SINK_SWEEP, WORLD_KEYS, Arm, horizon_key, select_arms,
)
from .experiment_arms import parse_horizons as _parse_horizons
from .video_scores import score_video, truth_video as _truth_video

__all__ = ["Arm", "ARMS", "CLAIMS", "WORLD_KEYS", "DRIFT_KEYS", "horizon_key", "run_experiment", "truth_start_rollout",
           "score_video", "add_experiment_arguments", "run_experiment_command"]


def truth_start_rollout(bundle, policy, prompts: list[str], seeds: list[int], frames: int,
                        start_frames: int) -> torch.Tensor:
    """Decoded videos ``[B, T, 3, H, W]`` of a batch of rollouts each started from its world's true first
    ``start_frames`` frames (:func:`deepforcing.mini.world.render_clip` at the model's size): encoded by the codec and
    written into the cache at the clean timestep (:meth:`~deepforcing.pipeline.rollout.VideoRollout.prefill`, as
    ``generate --video`` does), then sampled to ``frames`` frames in all, positions counted from the true first
    frame. The video's first frames are the true ones (kept as given); the model's start condition, if any, is
    passed unchanged (the layout of the prompt and seed). Every policy gets the same start: drift given a correct
    start."""
    from deepforcing.mini.quality import rollout_videos

    size = bundle.latent_shape[-1] * bundle.codec.spatial_scale
    truth = torch.stack([_truth_video(p, s, start_frames, size) for p, s in zip(prompts, seeds)])  # [B, T, 3, H, W]
    return rollout_videos(bundle, policy, prompts, seeds, frames, start=truth)


def run_experiment(out: Path, *, pairs: int = 32, horizons: tuple[float, ...] = DEFAULT_HORIZONS,
                   model: str | None = None, labels: list[str] | None = None, every_arm_long: bool = False,
                   batch: int = 32, attention_pairs: int = 8, log=lambda line: print(line, flush=True),
                   generator=None, start_frames: int = 0) -> dict:
    """Run the study, write ``metrics.json`` and the report (:mod:`.experiment_report`) to ``out``; return results.
    ``attention_pairs``: the first held-out pairs on which the attention regions are measured (single rollouts).
    ``generator``: the mini model already opened (else the file ``model``, or the shipped one). ``start_frames``
    above 0: every rollout starts from its world's true first frames (:func:`truth_start_rollout`), else from the
    prompt alone."""
    from deepforcing.cache import make_policy
    from deepforcing.mini.bundle import mini_generator
    from deepforcing.mini.language import parse_prompt
    from deepforcing.mini.quality import held_out_pairs, rollout_videos

    from .diagnostics import attention_regions

    horizons = sorted(float(h) for h in horizons)
    arms = select_arms(labels, every_arm_long)
    started = time.perf_counter()
    gen = generator if generator is not None else mini_generator(model)
    bundle = gen.bundle
    window = gen.resolve_policy(None).window  # the training horizon = the model's attention window
    fps = bundle.fps
    held = held_out_pairs(pairs)
    prompts, seeds = [p for p, _ in held], [s for _, s in held]
    size = bundle.latent_shape[-1] * bundle.codec.spatial_scale
    results: dict = {
        "model": model or "shipped", "pairs": pairs, "window": window, "fps": fps, "horizons": horizons,
        "prompts": prompts, "seeds": seeds, "objects": [len(parse_prompt(p).objects) for p in prompts],
        "sampling": json.loads(json.dumps(dataclasses.asdict(bundle.sampling), default=str)),
        "threads": torch.get_num_threads(), "arms": [],
        "start": {"mode": "truth", "frames": start_frames} if start_frames else {"mode": "prompt", "frames": 0},
    }
    strips: dict[str, torch.Tensor] = {}
    longest = int(round(horizons[-1] * window))
    truth = [score_video(_truth_video(p, s, longest, size), p, window, fps, horizons) for p, s in held]
    results["arms"].append({"label": "world (ground truth)", "policy": None, "sizes": {}, "groups": ["policies"],
                            "horizons": horizons, "seconds": 0.0, "videos": truth})
    strip_pair = 0
    for arm in arms:
        arm_horizons = horizons if arm.long else horizons[:1]
        frames = int(round(arm_horizons[-1] * window))
        policy = make_policy(arm.policy, **arm.sizes)
        t0 = time.perf_counter()
        videos = []
        for start in range(0, pairs, batch):
            part = slice(start, start + batch)
            batch_videos = truth_start_rollout(bundle, policy, prompts[part], seeds[part], frames, start_frames) \
                if start_frames else rollout_videos(bundle, policy, prompts[part], seeds[part], frames)
            videos += [score_video(v, p, window, fps, arm_horizons) for v, p in zip(batch_videos, prompts[part])]
            if start == 0:
                if not strips:  # the strip follows the first pair that starts right (all objects in frames 0-20)
                    strip_pair = next((i for i, v in enumerate(videos) if v["inside"]["object_persistence"] == 1.0),
                                      0)
                    strips["world (ground truth)"] = _truth_video(prompts[strip_pair], seeds[strip_pair], longest, size)
                if strip_pair < len(batch_videos):
                    strips[arm.label] = batch_videos[strip_pair]
            del batch_videos
        seconds = time.perf_counter() - t0
        results["arms"].append({"label": arm.label, "policy": arm.policy, "sizes": arm.sizes,
                                "groups": list(arm.groups), "horizons": arm_horizons, "seconds": seconds,
                                "videos": videos})
        last = horizon_key(arm_horizons[-1])
        persistence = np.mean([v["beyond"][last]["object_persistence"] for v in videos])
        log(f"{arm.label:>32} to {last:>4} ({frames} f) x {pairs}: persistence beyond the window {persistence:.3f} "
            f"({seconds:.0f} s, {time.perf_counter() - started:.0f} s so far)")
    results["strip_pair"] = strip_pair
    results["attention"] = attention_regions(gen, held[:attention_pairs], frames=4 * window) if any(
        a.policy == "deep-forcing" for a in arms) else None
    results["wall_seconds"] = time.perf_counter() - started

    from deepforcing.mini.world import to_uint8

    from .experiment_report import STRIP_COLUMNS, write_report

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(results, default=_json_default))
    tmp.replace(out / "metrics.json")
    strip_frames = {}  # the strip columns only, uint8, so that --report-only can redraw them
    for h in horizons:
        stop = int(round(h * window))
        idx = np.linspace(0, stop - 1, STRIP_COLUMNS).round().astype(int)
        for label, video in strips.items():
            if video.shape[0] >= stop:
                strip_frames[f"{horizon_key(h)}|{label}"] = to_uint8(video[idx].clamp(-1, 1))
    np.savez_compressed(out / "strips.npz", **strip_frames)
    write_report(results, out, strip_frames)
    return results


def rewrite_report(out: Path) -> None:
    """Redraw ``summary.md``, ``verdicts.json`` and the plots from a finished run's ``metrics.json`` and
    ``strips.npz`` (no generation)."""
    from .experiment_report import write_report

    results = json.loads((out / "metrics.json").read_text())
    with np.load(out / "strips.npz") as data:
        strips = {k: data[k] for k in data.files}
    write_report(results, out, strips)


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return None


STUDY_OUT = "results/long_horizon"


def add_experiment_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from .leaderboard_methods import BOARD_OUT

    p.add_argument("--out", default=None, help=f"output folder (default {STUDY_OUT}; with --board {BOARD_OUT})")
    p.add_argument("--board", action="store_true",
                   help="the leaderboard (deepforcing.eval.leaderboard): every registered policy at its release "
                        "defaults plus LoL (paper only), per scene class (--classes) and start mode (--starts), to "
                        "every horizon; each finished arm is stored in OUT/arms at once and skipped on a rerun with "
                        "the same settings, so a long run can go in legs; --policies names board entries "
                        "(see --board --list)")
    p.add_argument("--classes", default="1-object,2-object,hard",
                   help="with --board: scene classes, comma-separated (default 1-object,2-object,hard; hard is "
                        "reported separately)")
    p.add_argument("--starts", default="prompt,truth",
                   help="with --board: start modes, comma-separated: prompt (the prompt alone), truth (the world's "
                        "true first frames through the image-to-video path); default both")
    p.add_argument("--batch", type=int, default=32, help="videos sampled together (default 32)")
    p.add_argument("--entry-option", action="append", metavar="ENTRY:OPTION=VALUE",
                   help="with --board: an extra option of one entry, repeatable (e.g. forcing-kv:patches=4, which "
                        "the mini model's 16 tokens per frame need); the per-checkpoint files of forcing-kv "
                        "(head_profile) and triattention (calibration) are made by deepforcing calibrate into "
                        "OUT/calibration unless given here")
    p.add_argument("--pairs", type=int, default=32, help="held-out prompt x seed pairs per arm (default 32)")
    p.add_argument("--horizons", default="12,48",
                   help="video lengths in training windows, comma-separated (default 12,48); the headline arms run "
                        "to the longest, the ablations to the shortest")
    p.add_argument("--policies", default=None,
                   help="comma-separated arm labels (board entries with --board) to run (default: all; see --list)")
    p.add_argument("--every-arm-long", action="store_true", help="run every arm to the longest horizon")
    p.add_argument("--list", action="store_true", help="print the arms and exit")
    p.add_argument("--start", choices=["prompt", "truth"], default="prompt",  # the study's; the board: --starts
                   help="start every rollout from the prompt alone (default) or from its world's true first frames, "
                        "the same for every policy (drift given a correct start)")
    p.add_argument("--start-frames", type=int, default=None,
                   help="with --start truth: how many true frames are given (default: one chunk)")
    p.add_argument("--report-only", action="store_true",
                   help="redraw the tables and plots in --out from its metrics.json and strips.npz (no generation)")
    add_model_arguments(p)  # the mini model only: the scores need its world's ground truth
    return p


def run_experiment_command(args: argparse.Namespace) -> int:
    if args.board:
        from .leaderboard_command import run_board_command

        return run_board_command(args)
    if args.out is None:
        args.out = STUDY_OUT
    if args.list:
        for arm in ARMS:
            print(f"{arm.label:<34} {arm.policy:<14} {json.dumps(arm.sizes):<40} {'long' if arm.long else 'short'}  "
                  f"{', '.join(arm.groups)}")
        return 0
    if args.report_only:
        out = Path(args.out)
        missing = [name for name in ("metrics.json", "strips.npz") if not (out / name).is_file()]
        if missing:
            raise ValueError(f"--report-only needs a finished run in {out}: {', '.join(missing)} not found; "
                             f"run deepforcing experiment --out {out} first")
        rewrite_report(out)
        print((out / "summary.md").read_text())
        return 0
    if args.pairs < 2:
        raise ValueError(f"--pairs must be at least 2 (for a confidence interval), got {args.pairs}")
    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    from deepforcing.mini.quality import HELD_OUT_POOL

    if args.pairs > HELD_OUT_POOL:
        raise ValueError(f"--pairs must be at most {HELD_OUT_POOL} (the held-out pool), got {args.pairs}")
    horizons = _parse_horizons(args.horizons)
    labels = [x.strip() for x in args.policies.split(",") if x.strip()] if args.policies else None
    select_arms(labels)  # unknown labels fail here, before the model loads
    from deepforcing.model_spec import MINI, check_threads

    from .world_command import world_model

    check_threads(args.threads)
    model = world_model(args, "experiment", "; measure a real model with bench and diagnose")
    start_frames = _start_frames(args, model)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_experiment(Path(args.out), pairs=args.pairs, horizons=horizons, labels=labels,
                   model=None if args.model == MINI else args.model, every_arm_long=args.every_arm_long,
                   generator=model.open(), start_frames=start_frames, batch=args.batch)
    print(Path(args.out, "summary.md").read_text())
    return 0


def _start_frames(args: argparse.Namespace, model) -> int:
    """True frames given to every rollout (0: none), checked against the model's chunk and window before it loads."""
    if args.start == "prompt":
        if args.start_frames is not None:
            raise ValueError("--start-frames gives true frames: use it with --start truth")
        return 0
    from .world_command import true_start_frames

    return true_start_frames(model, args.start_frames)


if __name__ == "__main__":
    raise SystemExit(run_experiment_command(add_experiment_arguments(argparse.ArgumentParser()).parse_args()))
