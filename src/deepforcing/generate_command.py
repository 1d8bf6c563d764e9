"""``deepforcing generate``: argument handling around :class:`VideoGenerator` (files, ranks, messages).

The whole request is checked **before** any model loads: options that do not apply to the chosen model, lengths
(finite, positive, at most ``MAX_SECONDS`` of video), every prompt of a prompt file or timeline (for the mini model,
every word), the device, and every output path (an ``.mp4``, not a folder, in a folder we can create and write to,
not already there unless ``--overwrite``, not being written by another run: an exclusive ``<out>.lock``). Outputs
are written under a temporary name and renamed atomically at the end (see ``writer.py``). SIGTERM is handled like
Ctrl-C: the finished chunks stay in ``<out>.partial.mp4`` with a sidecar.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import math
import os
import re
import signal
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from .model_spec import CheckedModel, ModelSpec, check_model, check_threads, set_threads
from .pipeline.generate import VideoGenerator, restart_policy_error
from .pipeline.start import StartFrames, load_start
from .pipeline.timeline import check_timeline_events, load_timeline, parse_timeline
from .pipeline.validation import (MAX_LATENT_FRAMES, MAX_SECONDS, check_prompt_text, error_line, make_writable_folder,
                                  shorten)
from .pipeline.writer import MIN_START_BYTES, check_free_space

__all__ = ["run_generate", "slug", "shard", "output_lock", "MAX_SECONDS"]

DEFAULT_SECONDS = 60.0


def slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^a-zA-Z0-9]+", "_", text.lower()).strip("_")
    return (s[:limit].rstrip("_") or "video")


def shard(items: list, rank: int, world: int) -> list[tuple[int, object]]:
    """Items of this rank (round robin), with their global index."""
    return [(i, item) for i, item in enumerate(items) if i % world == rank]


def _dist_env() -> tuple[int, int]:
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise ValueError(f"RANK / WORLD_SIZE must be whole numbers (got RANK={os.environ.get('RANK')!r}, "
                         f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}); launch with torchrun or unset them") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world}")
    return rank, world


def _init_distributed(world: int) -> bool:
    if world <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return True


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except OSError:  # e.g. a long compact timeline: "File name too long"
        return False


def _jobs(args: argparse.Namespace) -> list[tuple[object, int]]:
    """(prompt or timeline, seed) per video; every prompt file / timeline is read and parsed completely here."""
    if args.prompt and args.prompt_opt:
        raise ValueError("give the prompt once: either positionally or with --prompt")
    prompt = args.prompt_opt or args.prompt
    given = [x for x in (prompt, args.prompt_file, args.timeline) if x]
    if len(given) > 1:
        raise ValueError("give one of: a prompt, --prompt-file or --timeline")
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text (one prompt per line)") from None
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not prompts:
            raise ValueError(f"{path} holds no prompts (one per line; lines starting with # are comments)")
        return [(p, args.seed + i) for i, p in enumerate(prompts)]
    if args.timeline:
        tl = load_timeline(args.timeline) if _is_file(args.timeline) else parse_timeline(args.timeline)
        return [(tl, args.seed)]
    return [(prompt, args.seed)]


def _prompts_of(job) -> list[str]:
    if job is None:
        return []
    return [job] if isinstance(job, str) else [e.prompt for e in job]


def _check_restart_policy(args: argparse.Namespace, model: CheckedModel, policy) -> None:
    """A preset that restarts its rollout (CausVid) with another policy and a length known to exceed its window:
    refused now, before the weights load (lengths in seconds are checked by the generator, which knows the VAE)."""
    preset = model.preset
    if not preset.sampling.restart_overlap or not model.spec.restart or args.frames is None \
            or args.frames <= preset.window_frames:
        return
    default = model.default_policy()
    if policy.name != default["name"] or policy.window != default["window"]:
        raise ValueError(restart_policy_error(default["window"], preset.sampling.restart_overlap, policy.name))


def _check_length(args: argparse.Namespace, jobs) -> None:
    if args.seconds is not None and not (math.isfinite(args.seconds) and 0 < args.seconds <= MAX_SECONDS):
        raise ValueError(f"--seconds must be positive and at most {MAX_SECONDS:g} (a day), got {args.seconds}")
    if args.frames is not None and not 0 < args.frames <= MAX_LATENT_FRAMES:
        raise ValueError(f"--frames must be positive and at most {MAX_LATENT_FRAMES}, got {args.frames}")
    for job, _ in jobs:
        if isinstance(job, list):
            seconds = sum(e.seconds or 0.0 for e in job)
            frames = sum(e.frames or 0 for e in job)
            if not math.isfinite(seconds) or seconds > MAX_SECONDS or frames > MAX_LATENT_FRAMES:
                raise ValueError(f"the timeline is longer than {MAX_SECONDS:g} s (a day); shorten its durations")


def _check_prompts(args: argparse.Namespace, mini: bool, jobs) -> None:
    """Every word of every prompt for the mini model (its language is closed); a prompt at all for real models."""
    if mini:
        from deepforcing.mini.language import parse_prompt

        for job, _ in jobs:
            for text in _prompts_of(job):
                parse_prompt(check_prompt_text(text))  # raises ValueError naming the unknown word and the valid ones
    else:
        for job, _ in jobs:
            for text in _prompts_of(job):
                check_prompt_text(text)
    if not mini and not any(_prompts_of(job) for job, _ in jobs):
        raise ValueError("a prompt is required for real models (positional, --prompt, --prompt-file or --timeline)")
    check_threads(args.threads)


def _timeline_frames(job, generator: VideoGenerator) -> int | None:
    """Latent frames of a timeline whose every entry has a duration (None: open-ended)."""
    if not isinstance(job, list) or any(e.seconds is None and e.frames is None for e in job):
        return None
    return sum(e.frames if e.frames is not None else generator.bundle.latent_frames_for_seconds(e.seconds)
               for e in job)


@contextmanager
def _sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt (finished chunks and the sidecar are kept)."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_generate(args: argparse.Namespace) -> int:
    from deepforcing.cli_options import policy_sizes_from_args

    # ---- the whole request, before any model loads
    rank, world = _dist_env()
    model = check_model(ModelSpec.from_args(args))  # options, device, paths; a mini model file is read here
    jobs = _jobs(args)
    _check_prompts(args, model.is_mini, jobs)
    _check_length(args, jobs)
    policy = model.policy(args.policy, **policy_sizes_from_args(args))  # built once, here, and passed down
    if model.preset is not None:
        _check_restart_policy(args, model, policy)
    for job, _ in jobs:  # a timeline's prompt switches and scene cuts, against the policy (∞-RoPE's cut)
        if isinstance(job, list):
            check_timeline_events(job, policy, model.chunk_frames)
    start = _start_frames(args, model, policy)  # --image / --video read, checked and resized before weights load
    mini = model.is_mini
    outputs = [_output_path(args, prompt, seed, index, len(jobs), mini) for index, (prompt, seed) in enumerate(jobs)]
    mine = shard(list(zip(jobs, outputs)), rank, world)
    with ExitStack() as stack:
        for _, (_, output) in mine:
            _check_output(output, overwrite=args.overwrite)
            stack.enter_context(output_lock(output))
        # ---- load and run
        distributed = _init_distributed(world)
        generator = model.open()
        set_threads(generator, args.threads)
        failed: list[Path] = []
        for index, ((prompt, seed), output) in mine:
            seconds = args.seconds if args.frames is None else None
            frames = args.frames
            if frames is None and seconds is None:
                frames = _timeline_frames(prompt, generator)
                seconds = DEFAULT_SECONDS if frames is None else None
            if prompt is None or isinstance(prompt, str):
                label = prompt or generator.bundle.default_prompt
            else:
                label = " | ".join(e.prompt for e in prompt)
            if not args.quiet:
                print(f"[{generator.bundle.name}] {shorten(label)!r} seed {seed} -> {output}", file=sys.stderr)
            try:
                check_free_space(output.parent, MIN_START_BYTES, f"the video {output.name}")
                with _sigterm_as_interrupt():
                    result = generator.generate(
                        prompt, output=output, seconds=seconds, latent_frames=frames, policy=policy, seed=seed,
                        progress=not args.quiet, save_latents_to=output.with_suffix(".latents.safetensors")
                        if args.save_latents else None, keep_sink_on_switch=not args.drop_sink_on_switch,
                        save_frames_to=output.with_suffix("") if args.save_frames else None,
                        start_image=start if args.image else None, start_video=start if args.video else None,
                        keep_input=args.keep_input,
                    )
            except KeyboardInterrupt:
                partial = output.with_name(output.stem + ".partial.mp4")
                if partial.exists():
                    print(f"interrupted: the finished chunks are in {partial}", file=sys.stderr)
                raise
            except OSError as err:  # a full disk: this video stops cleanly; the next ones are still tried
                if len(mine) == 1:
                    raise
                failed.append(output)
                print(f"deepforcing generate: error: {error_line(err)}", file=sys.stderr)
                continue
            print(f"wrote {result.path} ({result.pixel_frames} frames, {result.pixel_frames / generator.bundle.fps:.1f}"
                  f" s of video in {result.seconds:.1f} s, {result.fps:.1f} frames/s; policy "
                  f"{result.policy['policy']})")
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    if failed:
        raise OSError(errno.EIO, f"{len(failed)} of {len(mine)} videos could not be written "
                      f"({', '.join(shorten(str(p), 80) for p in failed[:3])}{' ...' if len(failed) > 3 else ''}); "
                      f"the errors are above; a video that had started keeps its finished chunks in its .partial.mp4")
    return 0


def _start_frames(args: argparse.Namespace, model: CheckedModel, policy) -> StartFrames | None:
    """``--image`` / ``--video`` read, checked against the model (its size, codec, chunk and ``policy``'s window)
    and resized, before any weights load; ``--keep-input`` alone is refused. What the resize changed is printed."""
    from .cli_options import start_from_args

    given = start_from_args(args)
    if given is None:
        if getattr(args, "keep_input", False):
            raise ValueError("--keep-input writes the given frames: use it with --image or --video")
        return None
    preset = model.preset
    if preset is not None and preset.sampling.restart_overlap and model.spec.restart:
        raise ValueError(f"--{given[0]} needs one rolling cache, but preset {preset.name} restarts its rollout every "
                         f"window; pass --no-restart")
    if preset is not None and preset.sampling.solver == "rolling-forcing":
        raise ValueError(f"--{given[0]} is not supported by preset {preset.name}: Rolling Forcing's sampler has its "
                         f"own cache and loop")
    start = load_start(given[1], given[0], model.start_geometry(policy))
    if start.note and not args.quiet:
        print(f"note: {start.note}", file=sys.stderr)
    return start


def _check_output(output: Path, *, overwrite: bool) -> None:
    """Refuse an output that cannot be written, before any work: say what to do instead."""
    if output.is_dir():
        raise ValueError(f"output {output} is a folder; give a file name ending in .mp4")
    if output.exists() and not overwrite:
        raise ValueError(f"{output} already exists; pass --overwrite to replace it or choose another -o")
    folder = make_writable_folder(output.parent)
    check_free_space(folder, MIN_START_BYTES, f"the video {output.name}")  # a full disk: refused before any work


@contextmanager
def output_lock(output: Path):
    """Hold ``<out>.lock`` (created exclusively, holding our pid) while a run writes ``output``.

    A second run on the same output is refused; a lock left by a process that no longer exists is taken over.
    """
    lock = output.with_name(output.name + ".lock")
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise ValueError(f"another run (pid {pid}) is writing {output}; wait for it or choose another -o") \
                    from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
    else:
        raise ValueError(f"cannot take the lock {lock}; remove it if no run is writing {output}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _request_hash(args: argparse.Namespace, prompt, seed: int) -> str:
    from deepforcing.cli_options import policy_sizes_from_args

    text = prompt if isinstance(prompt, str) or prompt is None else [e.__dict__ for e in prompt]
    key = {"prompt": text, "seed": seed, "model": args.model, "checkpoint": args.checkpoint, "policy": args.policy,
           "sizes": policy_sizes_from_args(args), "seconds": args.seconds, "frames": args.frames,
           "preset": args.preset, "resolution": args.resolution, "dtype": args.dtype,
           **{k: getattr(args, k) for k in ("image", "video", "keep_input") if getattr(args, k, None)}}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _output_path(args, prompt, seed, index: int, total: int, mini: bool) -> Path:
    """``-o`` for one video; otherwise ``outputs/<prompt slug>_<hash of the full request>_seed<seed>.mp4`` (names
    of different prompts or settings never collide, even when the prompts share their first words)."""
    if args.output and total == 1:
        out = Path(args.output)
        if out.suffix.lower() != ".mp4":
            raise ValueError(f"--output must be an .mp4 path, got {out}")
        return out
    if prompt is None and mini:
        from deepforcing.mini.bundle import MINI_DEFAULT_PROMPT

        text = MINI_DEFAULT_PROMPT
    else:
        text = prompt if isinstance(prompt, str) and prompt else (prompt[0].prompt if prompt else "video")
    folder = Path(args.output) if args.output else Path("outputs")  # with several videos, --output is a folder
    if args.output and total > 1 and folder.suffix.lower() == ".mp4":
        raise ValueError(f"with several videos --output is a folder, got {folder}")
    prefix = f"{index:04d}_" if total > 1 else ""
    return folder / f"{prefix}{slug(text)}_{_request_hash(args, prompt, seed)}_seed{seed}.mp4"
