"""The long-horizon leaderboard on the mini model: every registered cache policy at its release defaults, one
protocol, ground truth (``deepforcing experiment --board``; results in ``results/leaderboard``).

An *arm* is one entry (:mod:`.leaderboard_methods`: a policy, or LoL's jitter on its base) on one scene class
(:func:`deepforcing.mini.quality.held_out_pairs` with ``scene_class``: ``1-object``, ``2-object``, ``hard``) in one
start mode: ``prompt`` (free rollouts from the prompt alone) or ``truth`` (the world's true first chunk given
through the image-to-video path, :func:`deepforcing.eval.experiment.truth_start_rollout`'s prefill). Each arm's
videos are generated once to the longest horizon (a causal rollout contains every shorter one) and scored on every
prefix with the long-horizon study's metrics (:func:`deepforcing.eval.experiment.score_video`). The same run gives
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
import math
import re
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .leaderboard_methods import SCENE_CLASSES, START_MODES, Entry, board_entries, select_entries

__all__ = ["BoardConfig", "arm_key", "run_board", "load_arms", "board_settings", "model_id", "parse_entry_options",
           "run_board_command", "WORLD"]

WORLD = "world (ground truth)"
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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def arm_key(scene_class: str, start: str | None, label: str) -> str:
    """File stem of an arm: ``<class>__<start>__<entry>`` (the world's ground truth has no start mode)."""
    return "__".join(_slug(x) for x in (scene_class, start or "world", label))


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


def _stored(path: Path, settings: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("settings") == settings else None


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


def _save_arm(arms_dir: Path, key: str, record: dict, strips: dict[str, np.ndarray]) -> None:
    """Strips first, then the JSON: an arm counts as done only once its JSON is in place."""
    _write_atomic(arms_dir / f"{key}.npz", lambda p: _savez(p, strips))
    _write_atomic(arms_dir / f"{key}.json", lambda p: p.write_text(json.dumps(record, default=_json_default)))
    failed = arms_dir / f"{key}.failed.json"
    if failed.exists():
        failed.unlink()


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: numpy adds no ".npz" to the temporary name
        np.savez_compressed(f, **arrays)


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return None


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
    from .experiment import _truth_video, score_video

    longest = int(round(horizons[-1] * window))
    videos, strip = [], {}
    for i, (prompt, seed) in enumerate(held):
        video = _truth_video(prompt, seed, longest, size)
        videos.append(score_video(video, prompt, window, fps, horizons))
        if i == STRIP_PAIR:
            strip = _strip(video, horizons, window)
    return videos, strip


def _policy_arm(gen, policy, held, horizons: list[float], window: int, fps: int, size: int, batch: int,
                start_frames: int):
    """Scores, strip frames and cost of one arm's rollouts (batches of ``batch`` pairs)."""
    from deepforcing.mini.quality import rollout_videos

    from .experiment import _truth_video, score_video
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
            start = torch.stack([_truth_video(p, s, start_frames, size) for p, s in zip(prompts[part], seeds[part])])
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
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"partial_{path.name}")
            args = add_calibrate_arguments(argparse.ArgumentParser()).parse_args(
                ["--policy", entry.policy, "--out", str(tmp), "--model", model or "mini",
                 "--threads", str(torch.get_num_threads())])
            log(f"calibrating {entry.policy} for the model (deepforcing calibrate) into {path}")
            run_calibrate(args)
            tmp.replace(path)
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
        if _stored(arms_dir / f"{key}.json", settings) is None:
            t0 = time.perf_counter()
            videos, strip = _world_arm(held, scene_class, horizons, window, fps, size)
            _save_arm(arms_dir, key, {"key": key, "label": WORLD, "policy": None, "scene_class": scene_class,
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
                if _stored(arms_dir / f"{key}.json", settings) is not None:
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
                _save_arm(arms_dir, key, {
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


def load_arms(out: Path) -> tuple[dict, list[dict], list[dict]]:
    """(the run's ``board.json``, the stored arms that match its settings, the failures) of a board folder."""
    board = json.loads((out / "board.json").read_text())
    shared = board["settings"]
    arms, failures = [], []
    for path in sorted((out / "arms").glob("*.json")):
        record = json.loads(path.read_text())
        if path.name.endswith(".failed.json"):
            failures.append(record)
            continue
        own = record.get("settings", {})
        same = all(own.get(k) == v for k, v in shared.items() if k != "horizons")
        if same and set(own.get("horizons", ())) <= set(shared["horizons"]):  # full runs to the shortest only
            npz = path.with_suffix(".npz")
            if npz.is_file():
                with np.load(npz) as data:
                    record["strips"] = {k: data[k] for k in data.files}
            arms.append(record)
    return board, arms, failures


def parse_entry_options(items: list[str]) -> dict[str, dict]:
    """``["forcing-kv:head_profile=heads.json", "lol:rope_jitter=0.5"]`` -> ``{"forcing-kv": {"head_profile":
    "heads.json"}, "lol": {"rope_jitter": 0.5}}`` (values read as JSON numbers / booleans when they parse)."""
    out: dict[str, dict] = {}
    for item in items:
        entry, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not (sep and eq and entry.strip() and key.strip()):
            raise ValueError(f"--entry-option must be ENTRY:OPTION=VALUE (e.g. forcing-kv:head_profile=heads.json), "
                             f"got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(entry.strip(), {})[key.strip().replace("-", "_")] = parsed
    return out


def run_board_command(args) -> int:
    """``deepforcing experiment --board``: check every option before the model loads, then run (or, with
    ``--report-only``, redraw) the board in ``--out`` (default ``results/leaderboard``)."""
    from deepforcing.cache import make_policy
    from deepforcing.mini.quality import CLASS_POOL

    from .experiment import BOARD_OUT, _parse_horizons
    from .leaderboard_report import write_board_report

    out = Path(args.out or BOARD_OUT)
    if args.list:
        from .leaderboard_methods import method_info

        for entry in board_entries(parse_entry_options(args.entry_option or [])):
            info = method_info(entry)
            print(f"{entry.label:<20} {'short' if entry.short else 'long':<5} arXiv {info.arxiv or '-':<10} "
                  f"{entry.policy} {json.dumps(entry.sizes) if entry.sizes else ''}  ({info.release})"
                  f"{'  paper only' if entry.paper_only else ''}")
        return 0
    if args.report_only:
        if not (out / "board.json").is_file():
            raise ValueError(f"--report-only needs a board in {out}: board.json not found; run deepforcing "
                             f"experiment --board --out {out} first")
        write_board_report(out)
        print((out / "summary.md").read_text())
        return 0
    classes = tuple(x.strip() for x in args.classes.split(",") if x.strip())
    unknown = [c for c in classes if c not in SCENE_CLASSES]
    if not classes or unknown:
        raise ValueError(f"--classes must name scene classes among {', '.join(SCENE_CLASSES)}, got {args.classes!r}")
    starts = tuple(x.strip() for x in args.starts.split(",") if x.strip())
    if not starts or any(x not in START_MODES for x in starts):
        raise ValueError(f"--starts must name start modes among {', '.join(START_MODES)}, got {args.starts!r}")
    if not 2 <= args.pairs <= CLASS_POOL:
        raise ValueError(f"--pairs must be in 2..{CLASS_POOL} (a confidence interval; the held-out pool of each class), "
                         f"got {args.pairs}")
    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    if args.start != "prompt":
        raise ValueError("--board runs its own start modes: use --starts instead of --start")
    horizons = _parse_horizons(args.horizons)
    labels = [x.strip() for x in args.policies.split(",") if x.strip()] if args.policies else None
    entry_options = parse_entry_options(args.entry_option or [])
    for entry in select_entries(labels, entry_options):  # unknown entries or options fail here, before the model loads
        if entry.label in entry_options:
            make_policy(entry.policy, **entry.sizes)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    from deepforcing.model_spec import MINI, ModelSpec, check_model

    model = check_model(ModelSpec.from_args(args))
    if not model.is_mini:
        raise ValueError("the board scores videos against the mini world's ground truth, so it runs the mini model "
                         "only (--model mini or a mini model file)")
    frames = model.chunk_frames if args.start_frames is None else args.start_frames
    if not 1 <= frames < model.policy().window:
        raise ValueError(f"--start-frames must be at least 1 and below the attention window "
                         f"({model.policy().window} frames), got {frames}")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = BoardConfig(out=out, pairs=args.pairs, horizons=horizons, classes=classes, starts=starts, labels=labels,
                         batch=args.batch, start_frames=frames, model=None if args.model == MINI else args.model,
                         entry_options=entry_options, extra={"threads": torch.get_num_threads()})
    summary = run_board(config, generator=model.open())
    print(f"board: {len(summary['run'])} arms run, {len(summary['skipped'])} skipped (stored), "
          f"{len(summary['failed'])} failed, {summary['wall_seconds'] / 60:.1f} min; report in {out / 'summary.md'}")
    return 0 if not summary["failed"] else 1
