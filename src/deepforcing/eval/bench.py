"""``deepforcing bench``: speed and memory of each cache policy as videos get longer.

For every policy and every length (multiples of the training horizon = the attention window), one video is
generated through the real rollout (no file writing) and per chunk the wall time is recorded (after the first
chunk, which pays one-off warm-up), with the KV-cache length in tokens and the host time spent in policy decisions.
The table shows latency mean / p50 / p95, frames per second, KV memory, peak device memory (CUDA) and the policy's
share of the time. A policy whose cost is flat shows the same numbers at 1x and 48x.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from deepforcing.cli_options import add_model_arguments, add_policy_option_arguments, policy_sizes_from_args

__all__ = ["add_bench_arguments", "run_bench", "bench_policy", "policy_options_for"]

DEFAULT_POLICIES = ("self-forcing", "attention-sink", "rolling-forcing-sink", "deep-sink", "deep-forcing",
                    "random-topc")


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def bench_policy(generator, policy, latent_frames: int, seed: int = 0, prompt: str | None = None) -> dict:
    """Generate one video of ``latent_frames`` with ``policy`` (a name or a built policy) from ``prompt`` (``None``:
    the model's default) and return timing / memory statistics."""
    cuda = generator.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(generator.device)
    times, cache_tokens = [], []
    started = time.perf_counter()
    t_prev = started
    for chunk in generator.stream(prompt, latent_frames=latent_frames, policy=policy, seed=seed):
        if cuda:
            torch.cuda.synchronize(generator.device)
        now = time.perf_counter()
        times.append(now - t_prev)
        t_prev = now
        cache_tokens.append(chunk.cache.length)
    total = time.perf_counter() - started
    cache = chunk.cache
    steady = times[1:] or times
    frames_per_chunk = generator.bundle.pixel_frames(latent_frames) / len(times)
    return {
        "policy": policy if isinstance(policy, str) else policy.name,
        "latent_frames": latent_frames,
        "chunks": len(times),
        "latency_mean_s": statistics.mean(steady),
        "latency_p50_s": _percentile(steady, 0.5),
        "latency_p95_s": _percentile(steady, 0.95),
        "fps": frames_per_chunk / statistics.mean(steady),
        "total_s": total,
        "kv_bytes": cache.memory_bytes(),
        "peak_device_bytes": torch.cuda.max_memory_allocated(generator.device) if cuda else None,
        "policy_share": cache.policy_seconds / total,
        "cache_tokens_max": max(cache_tokens),
        "cache_tokens_last": cache_tokens[-1],
        "cache_tokens": cache_tokens,
    }


def add_bench_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--policies", default=",".join(DEFAULT_POLICIES), help="comma-separated policy names")
    add_policy_option_arguments(p.add_argument_group(
        "policy options", "each named policy takes the options it has (e.g. --policies self-forcing,forcing-kv "
                          "--head-profile heads.json: forcing-kv's per-checkpoint file); an option none has is refused"))
    p.add_argument("--horizons", default="1,4,12,48", help="video lengths as multiples of the training horizon")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default=None, help="prompt of every video (default: the model's; real models need one)")
    add_model_arguments(p)
    p.add_argument("--out", default=None, help="write bench.json into this folder")
    p.add_argument("--load", type=int, default=0,
                   help="run N CPU-bound busy processes during the measurement (a machine shared with other jobs)")
    p.add_argument("--main-job", action="store_true",
                   help="also time the README main job end to end: the default 60-s video, generated, decoded and "
                        "written to an mp4 (reports frames/s and the real-time factor)")
    return p


@contextmanager
def background_load(processes: int):
    """``processes`` busy-looping Python processes for the duration of the block (then killed)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def time_main_job(generator, seconds: float = 60.0, prompt: str | None = None) -> dict:
    """The README main job (default policy, the model's default prompt unless ``prompt``, ``seconds`` of video)
    through ``generate``, file included."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = generator.generate(prompt, output=Path(tmp) / "main.mp4", seconds=seconds)
        wall = time.perf_counter() - started
    video_seconds = result.pixel_frames / generator.bundle.fps
    return {"video_seconds": video_seconds, "wall_seconds": wall, "frames": result.pixel_frames,
            "fps": result.pixel_frames / wall, "real_time_factor": video_seconds / wall}


def policy_options_for(names: list[str], sizes: dict) -> dict[str, dict]:
    """The given policy options (``sizes``, ``None`` = not given) each of ``names`` has; an option none of them has
    raises ``ValueError`` (a misspelt artefact flag would otherwise be dropped in silence)."""
    import dataclasses

    from deepforcing.cache import POLICIES

    given = {k: v for k, v in sizes.items() if v is not None}
    for name in names:
        if name not in POLICIES:
            raise ValueError(f"unknown cache policy {name!r}; choose one of: {', '.join(POLICIES)}")
    fields = {name: {f.name for f in dataclasses.fields(POLICIES[name]) if f.init} for name in names}
    unused = sorted(k for k in given if not any(k in f for f in fields.values()))
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise ValueError(f"{flags}: no option of {', '.join(names)}")
    return {name: {k: v for k, v in given.items() if k in fields[name]} for name in names}


def run_bench(args: argparse.Namespace) -> int:
    from deepforcing.model_spec import ModelSpec, check_model, check_threads, set_threads

    check_threads(args.threads)
    if not 0 <= args.load <= 64:
        raise ValueError(f"--load must be between 0 and 64 busy processes, got {args.load}")
    try:
        multiples = [float(h) for h in args.horizons.split(",")]
    except ValueError:
        raise ValueError(f"--horizons must be numbers like 1,4,12,48, got {args.horizons!r}") from None
    if not multiples or not all(math.isfinite(m) and 0 < m <= 10_000 for m in multiples):
        raise ValueError(f"--horizons must be positive multiples of the horizon (at most 10000), got {args.horizons!r}")
    if args.out:  # bench.json is written after minutes of measuring: its folder is checked now (not created)
        from deepforcing.pipeline.validation import check_writable_folder

        check_writable_folder(args.out, "--out")
    if not [p for p in args.policies.split(",") if p.strip()]:
        raise ValueError("--policies names no policy; give comma-separated names, e.g. deep-forcing,self-forcing")
    model = check_model(ModelSpec.from_args(args))
    if not model.is_mini and not args.prompt:
        raise ValueError("a real model needs --prompt (the mini model has a default one)")
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    options = policy_options_for(names, policy_sizes_from_args(args))
    policies = {name: model.policy(name, **options[name]) for name in names}  # built once each, before weights load
    horizon = model.policy().window  # the training horizon = the model's attention window
    generator = model.open()
    set_threads(generator, args.threads)
    with background_load(args.load):
        return _run(args, generator, policies, multiples, horizon, str(generator.device))


def _run(args, generator, policies, multiples, horizon, device) -> int:
    rows = []
    print(f"model {generator.bundle.name} on {device} ({torch.get_num_threads()} threads, {args.load} busy "
          f"background processes); training horizon {horizon} latent frames")
    header = ("| policy | length | chunks | latency mean / p50 / p95 (ms) | frames/s | KV MiB | cache tokens max "
              "| policy share |")
    print(header)
    print("|" + "---|" * 8)
    for m in multiples:
        frames = max(generator.bundle.sampling.chunk_frames, int(round(m * horizon)))
        for p, policy in policies.items():
            r = bench_policy(generator, policy, frames, seed=args.seed, prompt=args.prompt)
            r["horizon_multiple"] = m
            rows.append(r)
            print(f"| {p} | {m:g}x ({frames} f) | {r['chunks']} | {r['latency_mean_s'] * 1e3:.1f} / "
                  f"{r['latency_p50_s'] * 1e3:.1f} / {r['latency_p95_s'] * 1e3:.1f} | {r['fps']:.1f} | "
                  f"{r['kv_bytes'] / 2**20:.2f} | {r['cache_tokens_max']} | {r['policy_share']:.1%} |", flush=True)
    main_job = None
    if args.main_job:
        main_job = time_main_job(generator, prompt=args.prompt)
        print(f"main job: {main_job['video_seconds']:.0f} s of video ({main_job['frames']} frames) generated, decoded "
              f"and written in {main_job['wall_seconds']:.1f} s = {main_job['fps']:.1f} frames/s, "
              f"{main_job['real_time_factor']:.2f}x real time")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps({"device": device, "threads": torch.get_num_threads(),
                                                    "load": args.load, "main_job": main_job, "rows": rows},
                                                   indent=1))
        print(f"wrote {out / 'bench.json'}")
    return 0
