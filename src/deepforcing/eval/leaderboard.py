"""The long-horizon leaderboard on the mini model: every registered cache policy at its release defaults, one
protocol, ground truth (``deepforcing experiment --board``; results in ``results/leaderboard``).

An *arm* is one entry (:mod:`.leaderboard_methods`: a policy, or LoL's jitter on its base) on one scene class
(:func:`deepforcing.mini.quality.held_out_pairs` with ``scene_class``: ``1-object``, ``2-object``, ``hard``) in one
start mode: ``prompt`` (free rollouts from the prompt alone) or ``truth`` (the world's true first chunk given
through the image-to-video path, ``VideoRollout.prefill`` as in ``generate --video``). Each arm's
videos are generated once to the longest horizon (a causal rollout contains every shorter one) and scored on every
prefix with the long-horizon study's metrics (:func:`deepforcing.eval.video_scores.score_video`). The same run gives
the arm's cost: the median process CPU time of a sampled chunk (the batch's ``VideoRollout.step``, decoding
excluded; other jobs on a shared machine disturb it far less than the wall clock, whose median is stored too) and
the peak KV bytes its cache holds per video (:func:`deepforcing.eval.kv_cost.cache_bytes`), next to the real
1.3B's bf16 bytes from the policy's layout (:func:`deepforcing.eval.kv_cost.wan_1p3b_bytes`).

Resumable in legs: every finished arm is written at once to ``<out>/arms/<class>__<start>__<entry>.json`` (plus its
strip frames in a ``.npz``), atomically (written to a temporary name, then renamed); a rerun skips every arm whose
stored settings (model file hash, pairs, horizons, start frames, batch, the policy's resolved options, sampler)
equal the run's, and re-runs the others. Each video's noise comes from its own seed, so a re-run arm reproduces
its stored numbers. ``--report-only`` rebuilds the report from the stored arms (:mod:`.leaderboard_report`).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .leaderboard_methods import SCENE_CLASSES, START_MODES, Entry, board_entries, select_entries
from .leaderboard_store import WORLD, arm_key, save_arm, stored_arm

__all__ = ["BoardConfig", "run_board", "board_settings", "model_id", "calibrate_entries", "CALIBRATION_FILES"]

STRIP_COLUMNS = 14  # frames per strip row, evenly spaced over the video (as the long-horizon study's strips)
STRIP_PAIR = 0  # the strips show each class's first held-out pair (fixed, so arms stay independent of each other)


@dataclass(frozen=True)
class BoardConfig:
    """One board run. ``start_frames``: true frames given in the ``truth`` start mode (the model's chunk)."""

    out: Path
    pairs: int = 32
    horizons: tuple[float, ...] = (12.0, 48.0)
    classes: tuple[str, ...] = SCENE_CLASSES
    starts: tuple[str, ...] = START_MODES
    labels: list[str] | None = None
    batch: int = 32
    start_frames: int = 3
    model: str | None = None  # a mini model file; None: the shipped one
    entry_options: dict = field(default_factory=dict)  # entry label -> extra policy options (per-checkpoint files)
    extra: dict = field(default_factory=dict)  # recorded with the run (e.g. threads), not part of the settings


def model_id(model: str | None) -> str:
    """First 16 hex digits of the model file's SHA-256 (the shipped file when ``model`` is ``None``)."""
    from deepforcing.mini.model import DEFAULT_MINI_WEIGHTS

    path = Path(model) if model else DEFAULT_MINI_WEIGHTS
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def board_settings(config: BoardConfig, bundle, model_hash: str) -> dict:
    """What every arm of the run shares (an arm is re-used only when these and its own policy options match)."""
    return {"model_sha256": model_hash, "pairs": config.pairs, "horizons": sorted(float(h) for h in config.horizons),
            "start_frames": config.start_frames, "batch": config.batch,
            "sampling": json.loads(json.dumps(asdict(bundle.sampling), default=str))}


def _arm_settings(shared: dict, entry: Entry | None, policy, scene_class: str, start: str | None,
                  horizons: list[float]) -> dict:
    own = {"scene_class": scene_class, "start": start, "horizons": horizons}
    if entry is not None:
        own.update(entry=entry.label, policy=json.loads(json.dumps(policy.describe(), default=str)))
    return {**shared, **own}


def _strip(video: torch.Tensor, horizons: list[float], window: int) -> dict[str, np.ndarray]:
    from deepforcing.mini.world import to_uint8

    from .experiment_arms import horizon_key

    out = {}
    for h in horizons:
        stop = int(round(h * window))
        idx = np.linspace(0, stop - 1, STRIP_COLUMNS).round().astype(int)
        out[horizon_key(h)] = to_uint8(video[idx].clamp(-1, 1))
    return out


def _world_arm(held, scene_class: str, horizons: list[float], window: int, fps: int, size: int):
    from .video_scores import score_video, truth_video

    longest = int(round(horizons[-1] * window))
    videos, strip = [], {}
    for i, (prompt, seed) in enumerate(held):
        video = truth_video(prompt, seed, longest, size)
        videos.append(score_video(video, prompt, window, fps, horizons))
        if i == STRIP_PAIR:
            strip = _strip(video, horizons, window)
    return videos, strip


def _policy_arm(gen, policy, held, horizons: list[float], window: int, fps: int, size: int, batch: int,
                start_frames: int):
    """Scores, strip frames and cost of one arm's rollouts (batches of ``batch`` pairs)."""
    from deepforcing.mini.quality import rollout_videos

    from .video_scores import score_video, truth_video
    from .kv_cost import cache_bytes

    frames = int(round(horizons[-1] * window))
    prompts, seeds = [p for p, _ in held], [s for _, s in held]
    step_seconds: list[float] = []
    step_cpu: list[float] = []
    peak = {"held": 0, "allocated": 0, "rows": 1}
    first_batch = [True]

    def observe(rollout, seconds: float, cpu_seconds: float) -> None:
        if first_batch[0]:  # every arm times the same batch size: its first batch
            step_seconds.append(seconds)
            step_cpu.append(cpu_seconds)
        held_bytes, allocated = cache_bytes(rollout.cache)
        if held_bytes >= peak["held"]:
            rows = next(iter(rollout.cache.layers[0].stores())).keys.shape[0]
            peak.update(held=held_bytes, allocated=max(allocated, peak["allocated"]), rows=rows)

    videos, strip = [], {}
    for begin in range(0, len(held), batch):
        part = slice(begin, begin + batch)
        start = None
        if start_frames:
            start = torch.stack([truth_video(p, s, start_frames, size) for p, s in zip(prompts[part], seeds[part])])
        batch_videos = rollout_videos(gen.bundle, policy, prompts[part], seeds[part], frames, start=start,
                                      observe=observe)
        first_batch[0] = False
        videos += [score_video(v, p, window, fps, horizons) for v, p in zip(batch_videos, prompts[part])]
        if begin <= STRIP_PAIR < begin + batch_videos.shape[0]:
            strip = _strip(batch_videos[STRIP_PAIR - begin], horizons, window)
        del batch_videos
    cost = {"ms_per_chunk": 1e3 * statistics.median(step_cpu) if step_cpu else None,
            "wall_ms_per_chunk": 1e3 * statistics.median(step_seconds) if step_seconds else None,
            "chunks_timed": len(step_seconds), "timed_batch": min(batch, len(held)),
            "kv_bytes_per_video": peak["held"] // peak["rows"], "kv_bytes_allocated_per_video":
                peak["allocated"] // peak["rows"]}
    return videos, strip, cost


# policy -> (its option naming the per-checkpoint file, the file's name): made by ``deepforcing calibrate`` for the
# board's model when the run does not name one (--entry-option), so every release runs at its defaults
CALIBRATION_FILES = {"forcing-kv": ("head_profile", "heads.json"), "triattention": ("calibration", "stats.pt")}


def calibrate_entries(entries: list[Entry], out: Path, model: str | None, model_hash: str, log) -> list[Entry]:
    """``entries`` with the per-checkpoint file of every policy that needs one (:data:`CALIBRATION_FILES`) and that
    ``deepforcing calibrate`` can make (:data:`deepforcing.eval.calibrate.CALIBRATED_POLICIES`), made once per model
    into ``<out>/calibration/<policy>_<model hash>_<name>``; a file given with ``--entry-option`` is kept."""
    import argparse
    from dataclasses import replace

    from .calibrate import CALIBRATED_POLICIES, add_calibrate_arguments, run_calibrate

    result = []
    for entry in entries:
        spec = CALIBRATION_FILES.get(entry.policy)
        if spec is None or entry.policy not in CALIBRATED_POLICIES or entry.sizes.get(spec[0]):
            result.append(entry)
            continue
        option, name = spec
        path = out / "calibration" / f"{entry.policy}_{model_hash}_{name}"
        if not path.is_file():  # calibrate writes it whole or not at all (a temporary file renamed into place)
            args = add_calibrate_arguments(argparse.ArgumentParser()).parse_args(
                ["--policy", entry.policy, "--out", str(path), "--model", model or "mini",
                 "--threads", str(torch.get_num_threads())])
            log(f"calibrating {entry.policy} for the model (deepforcing calibrate) into {path}")
            try:
                run_calibrate(args)
            except Exception as error:  # the entry then runs without the file: its arms fail and are reported if
                # the policy needs it, and the next run tries the calibration again
                log(f"calibrating {entry.policy} FAILED ({type(error).__name__}: {error}); its arms run without "
                    f"--{option.replace('_', '-')}")
                result.append(entry)
                continue
        result.append(replace(entry, sizes={**entry.sizes, option: str(path)}))
    return result


def run_board(config: BoardConfig, generator=None, log=lambda line: print(line, flush=True)) -> dict:
    """Run every missing or stale arm of the board into ``config.out`` and write the report; return the run's
    summary (arms run, skipped, failed, seconds)."""
    from deepforcing.cache import POLICIES
    from deepforcing.mini.bundle import mini_generator
    from deepforcing.mini.quality import held_out_pairs

    from .kv_cost import wan_1p3b_bytes
    from .leaderboard_methods import method_info
    from .leaderboard_report import write_board_report

    entries = select_entries(config.labels, config.entry_options)
    horizons = sorted(float(h) for h in config.horizons)
    gen = generator if generator is not None else mini_generator(config.model)
    bundle = gen.bundle
    window = gen.resolve_policy(None).window
    fps, size = bundle.fps, bundle.latent_shape[-1] * bundle.codec.spatial_scale
    shared = board_settings(config, bundle, model_id(config.model))
    arms_dir = config.out / "arms"
    arms_dir.mkdir(parents=True, exist_ok=True)
    entries = calibrate_entries(entries, config.out, config.model, shared["model_sha256"], log)
    (config.out / "board.json").write_text(json.dumps(
        {"settings": shared, "window": window, "fps": fps, "classes": list(config.classes),
         "starts": list(config.starts), "entries": [e.label for e in board_entries()],
         "selected": [e.label for e in entries],
         "registered": list(POLICIES), "model": config.model or "shipped", **config.extra}, indent=1))
    summary = {"run": [], "skipped": [], "failed": [], "seconds": {}}
    started = time.perf_counter()
    for scene_class in config.classes:
        held = held_out_pairs(config.pairs, scene_class)
        key = arm_key(scene_class, None, WORLD)
        settings = _arm_settings(shared, None, None, scene_class, None, horizons)
        if stored_arm(arms_dir / f"{key}.json", settings) is None:
            t0 = time.perf_counter()
            videos, strip = _world_arm(held, scene_class, horizons, window, fps, size)
            save_arm(arms_dir, key, {"key": key, "label": WORLD, "policy": None, "scene_class": scene_class,
                                      "start": None, "horizons": horizons, "prompts": [p for p, _ in held],
                                      "seeds": [s for _, s in held], "settings": settings, "videos": videos,
                                      "seconds": time.perf_counter() - t0}, strip)
        for start in config.starts:
            for entry in entries:
                key = arm_key(scene_class, start, entry.label)
                arm_horizons = horizons[:1] if entry.short else horizons
                try:
                    policy = gen.resolve_policy(entry.policy, **entry.sizes)
                except (TypeError, ValueError) as error:
                    _fail(arms_dir, key, entry, error, summary, log)
                    continue
                settings = _arm_settings(shared, entry, policy, scene_class, start, arm_horizons)
                if stored_arm(arms_dir / f"{key}.json", settings) is not None:
                    summary["skipped"].append(key)
                    log(f"{key}: stored with the same settings, skipped")
                    continue
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    videos, strip, cost = _policy_arm(gen, policy, held, arm_horizons, window, fps, size,
                                                      config.batch, config.start_frames if start == "truth" else 0)
                except Exception as error:  # one policy that cannot run must not stop the board; the report says why
                    _fail(arms_dir, key, entry, error, summary, log)
                    continue
                seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
                info = method_info(entry)
                cost["wan_1p3b_bf16_bytes"] = wan_1p3b_bytes(policy)
                save_arm(arms_dir, key, {
                    "key": key, "label": entry.label, "policy": entry.policy, "sizes": entry.sizes,
                    "paper_only": entry.paper_only, "method": info.method, "arxiv": info.arxiv,
                    "release": info.release, "scene_class": scene_class, "start": start, "horizons": arm_horizons,
                    "prompts": [p for p, _ in held], "seeds": [s for _, s in held], "settings": settings,
                    "videos": videos, "cost": cost, "seconds": seconds, "cpu_seconds": cpu_seconds,
                    "threads": torch.get_num_threads()}, strip)
                summary["run"].append(key)
                summary["seconds"][key] = seconds
                persistence = np.mean([v["beyond"][f"{arm_horizons[-1]:g}x"]["object_persistence"] for v in videos])
                log(f"{key}: {len(held)} pairs to {arm_horizons[-1]:g}x, persistence beyond the window "
                    f"{persistence:.3f}, {cost['ms_per_chunk']:.0f} CPU ms/chunk, {seconds:.0f} s ({cpu_seconds:.0f} "
                    f"CPU s; {time.perf_counter() - started:.0f} s so far)")
    write_board_report(config.out)
    summary["wall_seconds"] = time.perf_counter() - started
    return summary


def _fail(arms_dir: Path, key: str, entry: Entry, error: BaseException, summary: dict, log) -> None:
    message = f"{type(error).__name__}: {error}"
    (arms_dir / f"{key}.failed.json").write_text(json.dumps(
        {"key": key, "label": entry.label, "error": message, "traceback": traceback.format_exc(limit=4)}, indent=1))
    summary["failed"].append(key)
    log(f"{key}: FAILED ({message}); the report lists it, a rerun retries it")
