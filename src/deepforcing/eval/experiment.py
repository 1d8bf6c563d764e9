"""The long-horizon experiment on the mini model: every policy, the same prompts and seeds, ground truth.

``python -m deepforcing.eval.experiment --out results/long_horizon`` (or ``deepforcing experiment``) generates
``pairs`` prompt x seed videos of ``horizon x`` the training length (the model's window, 21 latent frames for the mini model) per policy — all videos of a
policy in one batched rollout, each video with its own noise stream — and scores every video with

* the world's ground truth (:mod:`deepforcing.mini.measure`): object persistence, count accuracy, colour error,
  speed preservation, per window;
* the model-free drift metrics of :mod:`deepforcing.eval.metrics`: colour drift and sharpness change against the
  first window, flicker, motion ratio (last / first window), near-copies of the first window (roll-back).

It writes ``metrics.json`` (every video), ``summary.md`` (mean ± 95 % CI per policy) and drift-curve plots.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np

from deepforcing.stats import mean_ci
import torch

__all__ = ["POLICY_SET", "run_experiment", "add_experiment_arguments", "run_experiment_command"]

# label -> (policy name, sizes)
POLICY_SET: dict[str, tuple[str, dict]] = {
    "self-forcing": ("self-forcing", {}),
    "attention-sink S=3": ("attention-sink", {"sink": 3}),
    "rolling-sink S=3": ("rolling-sink", {"sink": 3}),
    "deep-sink S=14": ("deep-sink", {"sink": 14}),
    "deep-forcing": ("deep-forcing", {}),
    "random-topc": ("random-topc", {}),
    "full": ("full", {}),
}
SINK_SWEEP = (0, 4, 7, 10, 14, 18)

GT_KEYS = ("object_persistence", "count_accuracy", "colour_error", "speed_preservation", "unexplained_fraction")
DRIFT_KEYS = ("color_drift_last", "sharpness_change_last", "flicker", "motion_ratio", "near_copy_fraction")


def _mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % Student-t interval."""
    r = mean_ci(values)
    return r["mean"], (r["ci_high"] - r["mean"]) if r["n"] >= 2 else float("nan")


def _generate_batch(gen, policy, prompts: list[str], seeds: list[int], frames: int) -> torch.Tensor:
    """Decoded free rollouts ``[B, 3, T, H, W]`` (the quality bar's batched rollout + streaming decode)."""
    from deepforcing.mini.quality import rollout_videos

    return rollout_videos(gen.bundle, policy, prompts, seeds, frames).permute(0, 2, 1, 3, 4)


def _score(video: torch.Tensor, scene, window: int, fps: int) -> dict:
    from deepforcing.mini.measure import measure_video
    from deepforcing.mini.world import to_uint8

    from .metrics import EvalConfig, evaluate_frames

    frames = video.permute(1, 0, 2, 3)  # [T, 3, H, W]
    gt = measure_video(frames, scene)
    drift = evaluate_frames(to_uint8(frames), fps, EvalConfig(window_frames=window))
    out = {k: getattr(gt, k) for k in GT_KEYS}
    out.update({k: drift.summary.get(k) for k in DRIFT_KEYS})
    out["windows"] = {k: gt.windows[k] for k in ("object_persistence", "count_accuracy", "object_colour_error",
                                                  "background_colour_error", "speed_ratio")}
    out["drift_windows"] = {k: drift.series[k] for k in ("color_drift", "sharpness_change", "motion")}
    return out


def run_experiment(out: Path, *, pairs: int = 32, horizon: float = 12.0, model: str | None = None,
                   labels: list[str] | None = None, sweep: bool = True, long_horizon: float | None = 48.0,
                   long_labels: tuple[str, ...] = ("self-forcing", "deep-sink S=14", "deep-forcing"),
                   log=print) -> dict:
    from deepforcing.cache import make_policy
    from deepforcing.mini.language import sample_scene
    from deepforcing.mini.bundle import mini_generator

    gen = mini_generator(model)
    window = gen.resolve_policy(None).window  # the training horizon = the model's attention window
    fps = gen.bundle.fps
    scenes = [sample_scene(np.random.default_rng(10_000 + k)) for k in range(pairs)]
    prompts = [s.to_prompt() for s in scenes]
    seeds = list(range(pairs))
    configs = {k: v for k, v in POLICY_SET.items() if labels is None or k in labels}
    if sweep:
        for s in SINK_SWEEP:
            configs.setdefault(f"deep-sink S={s}", ("deep-sink", {"sink": s}))
    runs = [(label, name, sizes, horizon) for label, (name, sizes) in configs.items()]
    if long_horizon:
        runs += [(label, *POLICY_SET[label], long_horizon) for label in long_labels if label in POLICY_SET]
    results = {"pairs": pairs, "window": window, "prompts": prompts, "seeds": seeds, "runs": []}
    strips: dict[str, torch.Tensor] = {}  # first video of each main-horizon run, for a visual comparison
    # reference row: the true world clips of the same prompts and seeds, scored the same way
    from deepforcing.mini.world import render_clip

    frames = int(round(horizon * window))
    frame_size = gen.bundle.latent_shape[-1] * gen.bundle.codec.spatial_scale
    strips["world (ground truth)"] = render_clip(scenes[0], seeds[0], frames, frame_size).frames
    truth = [_score(render_clip(scenes[i], seeds[i], frames, frame_size).frames.permute(1, 0, 2, 3),
                    scenes[i], window, fps) for i in range(pairs)]
    results["runs"].append({"label": "world (ground truth)", "policy": None, "sizes": {}, "horizon": horizon,
                            "frames": frames, "videos": pairs, "generation_seconds": 0.0,
                            "summary": {k: _mean_ci([s[k] for s in truth]) for k in (*GT_KEYS, *DRIFT_KEYS)},
                            "videos_scores": truth})
    for label, name, sizes, mult in runs:
        frames = int(round(mult * window))
        n = pairs if mult == horizon else max(4, pairs // 4)
        t0 = time.perf_counter()
        video = _generate_batch(gen, make_policy(name, **sizes), prompts[:n], seeds[:n], frames)
        gen_s = time.perf_counter() - t0
        scores = [_score(video[i], scenes[i], window, fps) for i in range(n)]
        if mult == horizon and (not label.startswith("deep-sink S=") or label == "deep-sink S=14"):
            strips[label] = video[0].permute(1, 0, 2, 3)
        summary = {k: _mean_ci([s[k] for s in scores]) for k in (*GT_KEYS, *DRIFT_KEYS)}
        results["runs"].append({"label": label, "policy": name, "sizes": sizes, "horizon": mult, "frames": frames,
                                "videos": n, "generation_seconds": gen_s, "summary": summary, "videos_scores": scores})
        log(f"{label:>20} {mult:>4g}x n={n:<3} persistence {summary['object_persistence'][0]:.3f}  colour err "
            f"{summary['colour_error'][0]:.3f}  speed {summary['speed_preservation'][0]:.3f}  colour drift "
            f"{summary['color_drift_last'][0]:.3f}  ({gen_s:.0f} s)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, default=lambda o: None))
    (out / "summary.md").write_text(summary_markdown(results))
    plot_windows(results, out / "drift_curves.png", horizon)
    save_strips(strips, out / "strips.png", prompts[0])
    return results


def save_strips(strips: dict[str, torch.Tensor], path: Path, prompt: str, columns: int = 12) -> None:
    """One row per policy: frames evenly spaced over the video (the first prompt x seed pair)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepforcing.mini.world import to_uint8

    rows = []
    for label, frames in strips.items():
        idx = np.linspace(0, frames.shape[0] - 1, columns).round().astype(int)
        rows.append((label, np.concatenate(list(to_uint8(frames[idx].clamp(-1, 1))), axis=1)))
    fig, axes = plt.subplots(len(rows), 1, figsize=(columns * 0.8, 0.85 * len(rows) + 0.5), squeeze=False)
    for ax, (label, img) in zip(axes[:, 0], rows):
        ax.imshow(img, interpolation="nearest")
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    n = next(iter(strips.values())).shape[0]
    fig.suptitle(f"{prompt!r}: frames 0..{n - 1}, evenly spaced", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_markdown(results: dict) -> str:
    cols = [("object_persistence", "persistence ↑"), ("count_accuracy", "count acc ↑"),
            ("colour_error", "colour err ↓"), ("speed_preservation", "speed kept ↑"),
            ("color_drift_last", "colour drift ↓"), ("sharpness_change_last", "sharpness Δ"),
            ("flicker", "flicker ↓"), ("motion_ratio", "motion last/first"),
            ("near_copy_fraction", "roll-back ↓")]
    lines = ["| policy | length | n | " + " | ".join(c[1] for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for r in results["runs"]:
        cells = []
        for key, _ in cols:
            m, h = r["summary"][key]
            cells.append("–" if not math.isfinite(m) else (f"{m:.3f} ± {h:.3f}" if math.isfinite(h) else f"{m:.3f}"))
        lines.append(f"| {r['label']} | {r['horizon']:g}× ({r['frames']} f) | {r['videos']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_windows(results: dict, path: Path, horizon: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("object_persistence", "object persistence"), ("object_colour_error", "object colour error"),
            ("speed_ratio", "speed ratio")]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6))
    for r in results["runs"]:
        if r["horizon"] != horizon or r["policy"] is None or (
                r["label"].startswith("deep-sink S=") and r["label"] != "deep-sink S=14"):
            continue
        for ax, (key, title) in zip(axes, keys):
            series = []
            for s in r["videos_scores"]:
                w = s["windows"][key]
                w = [np.nanmean(x) if isinstance(x, list) else x for x in w]
                series.append([np.nan if v is None else v for v in w])
            arr = np.array(series, dtype=float)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(arr, axis=0)
            ax.plot(np.arange(len(mean)), mean, label=r["label"])
            ax.set_title(title)
            ax.set_xlabel("window of 8 frames")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_experiment_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--out", default="results/long_horizon")
    p.add_argument("--pairs", type=int, default=32, help="prompt x seed pairs per policy (default 32)")
    p.add_argument("--horizon", type=float, default=12.0, help="video length in training horizons (default 12)")
    p.add_argument("--long-horizon", type=float, default=48.0, help="extra long runs (0 = none)")
    p.add_argument("--no-sweep", action="store_true", help="skip the deep-sink sink-size sweep")
    p.add_argument("--model", default=None, help="mini model file (default: the shipped one)")
    p.add_argument("--threads", type=int, default=None)
    return p


def run_experiment_command(args: argparse.Namespace) -> int:
    if args.pairs < 2:
        raise ValueError(f"--pairs must be at least 2 (for a confidence interval), got {args.pairs}")
    for name in ("horizon", "long_horizon"):
        value = getattr(args, name)
        if not (math.isfinite(value) and (value > 0 or (name == "long_horizon" and value == 0))) or value > 10_000:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive multiple of the window (at most 10000; "
                             f"--long-horizon 0 = none), got {value}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    run_experiment(Path(args.out), pairs=args.pairs, horizon=args.horizon, model=args.model, sweep=not args.no_sweep,
                   long_horizon=args.long_horizon or None)
    print(Path(args.out, "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_experiment_command(add_experiment_arguments(argparse.ArgumentParser()).parse_args()))
