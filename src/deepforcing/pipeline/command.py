"""``deepforcing generate``: argument handling around :class:`VideoGenerator` (files, ranks, messages)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import torch

from .generate import VideoGenerator
from .timeline import load_timeline, parse_timeline

__all__ = ["run_generate", "slug", "shard"]

DEFAULT_SECONDS = 60.0


def slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^a-zA-Z0-9]+", "_", text.lower()).strip("_")
    return (s[:limit].rstrip("_") or "video")


def shard(items: list, rank: int, world: int) -> list[tuple[int, object]]:
    """Items of this rank (round robin), with their global index."""
    return [(i, item) for i, item in enumerate(items) if i % world == rank]


def _dist_env() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _init_distributed(world: int) -> bool:
    if world <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return True


def _resolve_device(name: str | None) -> str:
    if name:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {name} requested but CUDA is not available on this machine; use --device cpu")
        return name
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        return f"cuda:{local}"
    return "cpu"


def _build_generator(args: argparse.Namespace, device: str) -> VideoGenerator:
    model = args.model
    if model == "mini":
        return VideoGenerator.from_mini(None, device=device)
    if Path(model).is_file() and _is_mini_file(model):
        return VideoGenerator.from_mini(model, device=device)
    from deepforcing.models.bundle import wan_bundle

    resolution = None
    if args.resolution:
        try:
            height, width = (int(v) for v in args.resolution.lower().split("x"))
        except ValueError:
            raise ValueError(f"--resolution must look like 480x832, got {args.resolution!r}") from None
        resolution = (height, width)
    return VideoGenerator(wan_bundle(model, checkpoint=args.checkpoint, preset=args.preset, dtype=args.dtype,
                                     device=device, resolution=resolution), device=device)


def _is_mini_file(path: str) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("format") == "deepforcing-mini-v1"
    except Exception:  # not a safetensors file: let the real loader explain
        return False


def _jobs(args: argparse.Namespace) -> list[tuple[object, int]]:
    """(prompt or timeline, seed) per video."""
    prompt = args.prompt_opt or args.prompt
    given = [x for x in (prompt, args.prompt_file, args.timeline) if x]
    if len(given) > 1:
        raise ValueError("give one of: a prompt, --prompt-file or --timeline")
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path}")
        prompts = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not prompts:
            raise ValueError(f"{path} holds no prompts (one per line)")
        return [(p, args.seed + i) for i, p in enumerate(prompts)]
    if args.timeline:
        tl = load_timeline(args.timeline) if Path(args.timeline).is_file() else parse_timeline(args.timeline)
        return [(tl, args.seed)]
    return [(prompt, args.seed)]


def run_generate(args: argparse.Namespace) -> int:
    from deepforcing.cli import policy_sizes_from_args

    rank, world = _dist_env()
    distributed = _init_distributed(world)
    device = _resolve_device(args.device)
    jobs = _jobs(args)
    generator = _build_generator(args, device)
    # validate the policy once, before any work
    generator.resolve_policy(args.policy, **policy_sizes_from_args(args))
    seconds = args.seconds if args.frames is None and args.seconds is not None else None
    if args.frames is None and seconds is None:
        seconds = DEFAULT_SECONDS
    mine = shard(jobs, rank, world)
    for index, (prompt, seed) in mine:
        output = _output_path(args, generator, prompt, seed, index, len(jobs))
        if prompt is None or isinstance(prompt, str):
            label = prompt or generator.bundle.default_prompt
        else:
            label = " | ".join(e.prompt for e in prompt)
        if not args.quiet:
            print(f"[{generator.bundle.name}] {label!r} seed {seed} -> {output}", file=sys.stderr)
        try:
            result = generator.generate(
                prompt, output=output, seconds=seconds, latent_frames=args.frames, policy=args.policy, seed=seed,
                progress=not args.quiet, save_latents_to=output.with_suffix(".latents.safetensors")
                if args.save_latents else None, keep_sink_on_switch=not args.drop_sink_on_switch,
                save_frames_to=output.with_suffix("") if args.save_frames else None,
                **policy_sizes_from_args(args),
            )
        except KeyboardInterrupt:
            partial = output.with_name(output.stem + ".partial.mp4")
            if partial.exists():
                print(f"interrupted: the finished chunks are in {partial}", file=sys.stderr)
            raise
        print(f"wrote {result.path} ({result.pixel_frames} frames, {result.pixel_frames / generator.bundle.fps:.1f} s "
              f"of video in {result.seconds:.1f} s, {result.fps:.1f} frames/s; policy {result.policy['policy']})")
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0


def _output_path(args, generator, prompt, seed, index: int, total: int) -> Path:
    if args.output and total == 1:
        out = Path(args.output)
        if out.suffix.lower() != ".mp4":
            raise ValueError(f"--output must be an .mp4 path, got {out}")
        return out
    text = prompt if isinstance(prompt, str) and prompt else (
        prompt[0].prompt if prompt and not isinstance(prompt, str) else generator.bundle.default_prompt)
    folder = Path(args.output) if args.output else Path("outputs")  # with several videos, --output is a folder
    prefix = f"{index:04d}_" if total > 1 else ""
    return folder / f"{prefix}{slug(text)}_seed{seed}.mp4"
