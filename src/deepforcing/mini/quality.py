"""The mini model's quality bars, against the world's ground truth.

**Primary bar — free rollouts** (:func:`free_rollout_bar`, what a user runs): each held-out prompt x seed pair is
generated from the prompt alone (no true frame anywhere), through the rollout and the codec's streaming decoder
that ``deepforcing generate`` uses (videos of a batch are generated together; each equals that video alone), for
each cache policy. The world metrics of :mod:`deepforcing.mini.measure` are reported as mean and 95 % Student-t
interval over the pairs, inside the training horizon (frames ``[0, window)``) and beyond it (frames
``[window, horizon * window)``). Held-out pairs: scene ``k`` is drawn from ``default_rng(HELD_OUT_SCENE_SEED + k)``
and the noise seed is ``HELD_OUT_NOISE_SEED + k``; training never draws these scenes
(:func:`is_held_out`), and its noise comes from its own generator, not from these seeds.

**Diagnostic — where chunk 0 loses its objects** (:func:`from_truth_bar`): held-out true first chunks, encoded,
noised to a level ``sigma`` and integrated back to 0 by the model's flow from the prompt alone (no context). At
``sigma = 1`` this is a free first chunk; at low ``sigma`` the layout is given. The level where persistence falls
is where the model fails to keep the objects it is shown (the denoiser, not the sampler, the codec or the context).

**Secondary diagnostic — next chunk after true context** (:func:`quality_bar`, teacher-forced; it hides exposure to
the model's own outputs, so it never decides whether a model is good): render a true clip; write its first
``context_chunks`` chunks into the KV cache through the model's clean pass (t = 0), exactly as a rollout writes its
own past; then sample the next chunk with the model's few-step schedule and compare it with the true next frames:

* ``pixel_mse`` — mean squared error in [-1, 1] units;
* ``position_error`` — pixels between each object's centroid in the prediction and its true position;
* ``object_found`` — fraction of (frame, object) pairs where the object is detected;
* ``object_colour_error`` — RGB (0–1) error of the detected objects.

Baselines: **copy-last-frame** (the last context frame repeated) and an **untrained** model of the same shape
(random initialisation, same protocol). A useful model must beat both clearly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .language import parse_prompt, sample_class_scene, sample_scene
from .measure import MeasureConfig, track_objects
from .world import render_clip

__all__ = ["PredictionScores", "predict_next_chunk", "quality_bar", "free_rollout_bar", "held_out_pairs", "rollout_videos",
           "is_held_out", "slice_tracks", "format_free_rollout_table", "BAR_METRICS", "from_truth_bar",
           "continuation_bar", "SCENE_CLASSES", "open_batch_rollout"]

HELD_OUT_SCENE_SEED = 900_000
HELD_OUT_NOISE_SEED = 777_000
HELD_OUT_POOL = 256  # scenes reserved for evaluation (training rejects them)
SCENE_CLASSES = ("1-object", "2-object", "hard")  # the v5 world's classes (language.scene_class)
CLASS_SCENE_SEED = 910_000  # v5 pools: scene k of class i from default_rng(CLASS_SCENE_SEED + CLASS_STRIDE * i + k)
CLASS_NOISE_SEED = 787_000
CLASS_STRIDE = 1_000
CLASS_POOL = 64  # held-out scenes per class
BAR_METRICS = ("object_persistence", "count_accuracy", "object_colour_error", "speed_preservation",
               "background_colour_error")


def _class_scene(cls: str, k: int):
    return sample_class_scene(np.random.default_rng(CLASS_SCENE_SEED + CLASS_STRIDE * SCENE_CLASSES.index(cls) + k), cls)


def held_out_pairs(pairs: int, scene_class: str | None = None) -> list[tuple[str, int]]:
    """The first ``pairs`` held-out (prompt, noise seed) pairs of the evaluation pool: the original pool (every
    kind of scene, the long-horizon study's), or with ``scene_class`` the v5 world's pool of that class
    (``"1-object"``, ``"2-object"``, ``"hard"``; :func:`deepforcing.mini.language.scene_class`)."""
    if scene_class is not None:
        if scene_class not in SCENE_CLASSES:
            raise ValueError(f"unknown scene class {scene_class!r}; use one of {', '.join(SCENE_CLASSES)}")
        if not 0 < pairs <= CLASS_POOL:
            raise ValueError(f"pairs must be in 1..{CLASS_POOL}, got {pairs}")
        base = CLASS_NOISE_SEED + CLASS_STRIDE * SCENE_CLASSES.index(scene_class)
        return [(_class_scene(scene_class, k).to_prompt(), base + k) for k in range(pairs)]
    if not 0 < pairs <= HELD_OUT_POOL:
        raise ValueError(f"pairs must be in 1..{HELD_OUT_POOL}, got {pairs}")
    return [(sample_scene(np.random.default_rng(HELD_OUT_SCENE_SEED + k)).to_prompt(), HELD_OUT_NOISE_SEED + k)
            for k in range(pairs)]


_HELD_OUT_TOKENS: set[tuple[int, ...]] | None = None


def is_held_out(scene) -> bool:
    """Whether ``scene`` (a SceneSpec) is one of the evaluation scenes of either pool (compared by canonical
    tokens)."""
    global _HELD_OUT_TOKENS
    from .language import tokenize_spec

    if _HELD_OUT_TOKENS is None:
        _HELD_OUT_TOKENS = {tuple(tokenize_spec(sample_scene(np.random.default_rng(HELD_OUT_SCENE_SEED + k))))
                            for k in range(HELD_OUT_POOL)}
        _HELD_OUT_TOKENS |= {tuple(tokenize_spec(_class_scene(c, k))) for c in SCENE_CLASSES for k in range(CLASS_POOL)}
    return tuple(tokenize_spec(scene)) in _HELD_OUT_TOKENS


def open_batch_rollout(bundle, policy, prompts: list[str], seeds: list[int], max_frames: int | None = None, *,
                       condition_seeds: list[int] | None = None):
    """A :class:`~deepforcing.pipeline.rollout.VideoRollout` of a batch of videos (one prompt and noise seed each)
    with what ``generate`` gives a video: the prompt's context, the empty prompt's for guidance, and the bundle's
    start condition of each prompt for its seed (``condition_seeds``: another seed for the condition, e.g. the world
    seed of a true clip)."""
    from deepforcing.pipeline.rollout import VideoRollout

    with torch.no_grad():
        ctx = bundle.transformer.encode_context(bundle.encode_text(prompts))
        uncond = bundle.transformer.encode_context(bundle.encode_text([""])) if bundle.sampling.needs_unconditional else None
        condition = None if bundle.start_condition is None else bundle.start_condition(prompts, condition_seeds or seeds)
    return VideoRollout(model=bundle.transformer, policy=policy, context=ctx, latent_shape=bundle.latent_shape,
                        sampling=bundle.sampling, seeds=seeds, uncond_context=uncond, max_frames=max_frames,
                        condition=condition)


def rollout_videos(bundle, policy, prompts: list[str], seeds: list[int], frames: int,
                   start: torch.Tensor | None = None, observe=None) -> torch.Tensor:
    """Decoded videos ``[B, T, 3, H, W]`` of a batch of free rollouts (one prompt and seed per video). ``start``
    ``[B, S, 3, H, W]``: true first frames, encoded and written into the cache at the clean timestep
    (:meth:`~deepforcing.pipeline.rollout.VideoRollout.prefill`, as ``generate --video`` does) and kept as the
    videos' first frames; sampling continues after them, positions counted from the first given frame.
    ``observe(rollout, seconds, cpu_seconds)``: called after every sampled chunk with the rollout (its cache), the
    wall-clock and the process CPU seconds its ``step`` took (the leaderboard's cost columns); decoding is not
    timed."""
    rollout = open_batch_rollout(bundle, policy, prompts, seeds, frames)
    decoder = bundle.codec.streaming_decoder()
    decoder.reset()
    out = []
    with torch.no_grad():
        if start is not None:
            given = bundle.codec.encode_chunk(start).permute(0, 2, 1, 3, 4)
            rollout.prefill(given)
            decoder.decode_chunk(given.permute(0, 2, 1, 3, 4))  # a causal decoder's context
            out.append(start)
        while rollout.next_frame < frames:
            t0, c0 = time.perf_counter(), time.process_time()
            latents = rollout.step().latents
            if observe is not None:
                observe(rollout, time.perf_counter() - t0, time.process_time() - c0)
            out.append(decoder.decode_chunk(latents.permute(0, 2, 1, 3, 4)))
    return torch.cat(out, dim=1)[:, :frames]


def slice_tracks(tracks, start: int, stop: int):
    """The frames ``[start, stop)`` of per-frame ``ObjectTracks`` (to score one span of a video)."""
    from dataclasses import fields, replace

    return replace(tracks, **{f.name: getattr(tracks, f.name)[start:stop] for f in fields(tracks) if f.name != "size"})


def free_rollout_bar(bundle, *, pairs: int = 32, frames: int | None = None, horizons: tuple[float, ...] = (),
                     policies: tuple[str, ...] = ("self-forcing", "deep-forcing"), batch: int = 16,
                     keep_videos: int = 0, scene_class: str | None = None) -> dict:
    """Free rollouts from the prompt alone on held-out pairs (module docstring).

    ``frames`` is the window (default: the policy's); ``horizons`` are multiples of the window to roll out to
    (e.g. ``(12,)``). Returns ``{policy: {"inside": {metric: mean_ci}, "beyond_<h>x": {...}, "videos": [...]}}``.
    """
    from deepforcing.cache import make_policy
    from deepforcing.stats import mean_ci

    from .measure import MeasureConfig, score_tracks, track_objects

    held = held_out_pairs(pairs, scene_class)
    out: dict = {}
    for name in policies:
        policy = make_policy(name)
        window = frames or policy.window
        length = int(round(max((window, *[h * window for h in horizons]))))
        scores: dict[str, list[dict]] = {"inside": [], **{f"beyond_{h:g}x": [] for h in horizons}}
        by_objects: dict[int, list[float]] = {}
        videos = []
        for start in range(0, pairs, batch):
            part = held[start:start + batch]
            vids = rollout_videos(bundle, policy, [p for p, _ in part], [s for _, s in part], length)
            for (prompt, _), video in zip(part, vids):
                tracks = track_objects(video, prompt, MeasureConfig())
                inside = score_tracks(slice_tracks(tracks, 0, window), prompt).__dict__
                scores["inside"].append(inside)
                by_objects.setdefault(len(parse_prompt(prompt).objects), []).append(inside["object_persistence"])
                for h in horizons:
                    stop = int(round(h * window))
                    scores[f"beyond_{h:g}x"].append(score_tracks(slice_tracks(tracks, window, stop), prompt).__dict__)
                if len(videos) < keep_videos:
                    videos.append(video)
        out[name] = {part: {k: mean_ci([row[k] for row in rows]) for k in BAR_METRICS} for part, rows in scores.items()}
        out[name]["videos"] = videos
        out[name]["inside_persistence_by_objects"] = {k: mean_ci(v) for k, v in sorted(by_objects.items())}
    return out


@torch.no_grad()
def continuation_bar(bundle, *, pairs: int = 32, scene_class: str | None = None, frames: int = 21,
                     batch: int = 16, last: int | None = None) -> dict:
    """Continuation after a *true* first chunk: each held-out pair's true chunk 0 (rendered, encoded) is written to
    the cache by the clean pass, as a rollout writes its own chunk 0, then the model generates the rest of the
    window from the prompt (and its start layout, for a layout model). Scores the last chunk (``last`` frames,
    default one chunk) and frames ``[chunk, frames)``; separates "keeps what it is shown" from "draws it right"."""
    from deepforcing.cache import make_policy
    from deepforcing.stats import mean_ci

    from .measure import score_tracks

    chunk = bundle.sampling.chunk_frames
    last = last or chunk
    held = held_out_pairs(pairs, scene_class)
    size = bundle.latent_shape[-1] * bundle.codec.spatial_scale
    rows: dict[str, list[dict]] = {"last_chunk": [], "after_first_chunk": []}
    for start in range(0, pairs, batch):
        part = held[start:start + batch]
        prompts, seeds = [p for p, _ in part], [s for _, s in part]
        truth = torch.stack([render_clip(p, seed=s, num_frames=chunk, size=size).frames for p, s in part])
        videos = rollout_videos(bundle, make_policy("self-forcing"), prompts, seeds, frames, start=truth)
        for prompt, video in zip(prompts, videos):
            tracks = track_objects(video, prompt, MeasureConfig())
            rows["last_chunk"].append(score_tracks(slice_tracks(tracks, frames - last, frames), prompt).__dict__)
            rows["after_first_chunk"].append(score_tracks(slice_tracks(tracks, chunk, frames), prompt).__dict__)
    return {part: {k: mean_ci([r[k] for r in rs]) for k in BAR_METRICS} for part, rs in rows.items()}


@torch.no_grad()
def from_truth_bar(model, sigmas: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 1.0), *, pairs: int = 64, steps: int = 8,
                   shift: float = 3.0, chunk_frames: int = 3, seed: int = 0) -> dict:
    """Persistence and count accuracy of held-out true first chunks noised to each ``sigma`` and integrated back to
    0 in ``steps`` Euler steps of ``model``'s flow (a :class:`~deepforcing.mini.model.MiniModel`), prompt only.

    The steps follow the shifted schedule ``shift s / (1 + (shift - 1) s)`` of ``s`` uniform in ``(0, 1]``, scaled
    to start at ``sigma``; ``{"truth": ...}`` scores the encoded-decoded clips themselves."""
    from .measure import score_tracks
    from .forward import first_chunk_forward  # the no-context forward of training (chunk 0's situation)

    held = held_out_pairs(pairs)
    size = model.config.frame_size
    clips = torch.stack([render_clip(p, seed=s, num_frames=chunk_frames, size=size).frames for p, s in held])
    ids = model.text_encoder.token_ids([p for p, _ in held])
    clean = model.codec.encode(clips.permute(0, 2, 1, 3, 4))
    gen = torch.Generator().manual_seed(seed)

    def scores(latents: torch.Tensor) -> dict[str, float]:
        videos = model.codec.decode(latents).permute(0, 2, 1, 3, 4)
        rows = [score_tracks(track_objects(v, p, MeasureConfig()), p) for v, (p, _) in zip(videos, held)]
        return {"object_persistence": float(np.mean([r.object_persistence for r in rows])),
                "count_accuracy": float(np.mean([r.count_accuracy for r in rows]))}

    out: dict = {"truth": scores(clean)}
    ramp = np.linspace(1.0, 1.0 / steps, steps)
    for sigma in sigmas:
        levels = [sigma * shift * u / (1 + (shift - 1) * u) for u in ramp] + [0.0]
        x = (1 - sigma) * clean + sigma * torch.randn(clean.shape, generator=gen)
        for a, b in zip(levels, levels[1:]):
            x = x + (b - a) * first_chunk_forward(model, x, torch.full((x.shape[0],), a), ids)
        out[sigma] = scores(x)
    return out


def format_free_rollout_table(bar: dict) -> str:
    """Markdown: one row per policy and span, mean ± half-width of the 95 % interval."""
    names = [("object_persistence", "persistence ↑"), ("count_accuracy", "count accuracy ↑"),
             ("object_colour_error", "object colour error ↓"), ("speed_preservation", "speed ratio (1 = true)"),
             ("background_colour_error", "background colour error ↓")]
    lines = ["| policy | frames | " + " | ".join(n for _, n in names) + " |", "|---|---|" + "---|" * len(names)]
    for policy, parts in bar.items():
        for part, row in parts.items():
            if part in ("videos", "inside_persistence_by_objects"):
                continue
            cells = []
            for key, _ in names:
                r = row[key]
                half = r["ci_high"] - r["mean"] if r["n"] >= 2 else float("nan")
                cells.append("–" if not math.isfinite(r["mean"]) else f"{r['mean']:.3f} ± {half:.3f}")
            span = "inside (0–window)" if part == "inside" else part.replace("beyond_", "beyond, to ")
            lines.append(f"| {policy} | {span} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class PredictionScores:
    pixel_mse: float
    position_error: float
    object_found: float
    object_colour_error: float

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def predict_next_chunk(bundle, clip_frames: torch.Tensor, prompt: str, context_chunks: int, seed: int,
                       layout_seed: int | None = None) -> torch.Tensor:
    """Sample the chunk after ``context_chunks`` true chunks; ``clip_frames`` ``[T, 3, H, W]``; returns ``[f, 3, H, W]``.
    A layout model gets the start layout of ``layout_seed`` (the clip's world seed; default ``seed``)."""
    from deepforcing.cache import make_policy

    chunk = bundle.sampling.chunk_frames
    rollout = open_batch_rollout(bundle, make_policy("full"), [prompt], [seed],
                                 condition_seeds=None if layout_seed is None else [layout_seed])
    with torch.no_grad():
        latents = bundle.codec.encode(clip_frames.permute(1, 0, 2, 3)[None])  # [1, C, T, h, w]
        rollout.prefill(latents[:, :, : context_chunks * chunk])
        pred = rollout.step().latents.permute(0, 2, 1, 3, 4)  # [1, f, C, h, w]
        return bundle.codec.streaming_decoder().decode_chunk(pred)[0]


def _score(pred: torch.Tensor, clip, t0: int) -> PredictionScores:
    f = pred.shape[0]
    truth = clip.frames[t0:t0 + f]
    tracks = track_objects(pred, clip.spec, MeasureConfig())
    true_pos = clip.states.positions[t0:t0 + f]  # [f, K, 2]
    found = tracks.present
    dist = np.linalg.norm(tracks.centroid - true_pos, axis=-1)
    return PredictionScores(
        pixel_mse=float(((pred - truth) ** 2).mean()),
        position_error=float(np.nanmean(np.where(found, dist, np.nan))) if found.any() else float("nan"),
        object_found=float(found.mean()),
        object_colour_error=float(np.nanmean(np.where(found, tracks.colour_error, np.nan))) if found.any()
        else float("nan"),
    )


def quality_bar(bundle, untrained_bundle=None, clips: int = 32, context_chunks: int = 4, seed: int = 0) -> dict:
    """Mean scores of the model, the untrained model and copy-last-frame over ``clips`` world clips."""
    chunk = bundle.sampling.chunk_frames
    t0 = context_chunks * chunk
    rows: dict[str, list[PredictionScores]] = {"model": [], "copy_last_frame": []}
    if untrained_bundle is not None:
        rows["untrained"] = []
    size = bundle.latent_shape[-1] * bundle.codec.spatial_scale
    for k in range(clips):
        scene = sample_scene(np.random.default_rng(50_000 + seed + k))
        clip = render_clip(scene, seed=seed + k, num_frames=t0 + chunk, size=size)
        prompt = scene.to_prompt()
        rows["model"].append(_score(predict_next_chunk(bundle, clip.frames, prompt, context_chunks, k, seed + k), clip, t0))
        copy = clip.frames[t0 - 1:t0].expand(chunk, -1, -1, -1)
        rows["copy_last_frame"].append(_score(copy, clip, t0))
        if untrained_bundle is not None:
            pred = predict_next_chunk(untrained_bundle, clip.frames, prompt, context_chunks, k, seed + k)
            rows["untrained"].append(_score(pred, clip, t0))
    out = {}
    for name, scores in rows.items():
        out[name] = {key: float(np.nanmean([getattr(s, key) for s in scores])) for key in PredictionScores.__annotations__}
        out[name]["n"] = len(scores)
    return out


def format_quality_table(result: dict) -> str:
    keys = [("pixel_mse", "pixel MSE ↓"), ("position_error", "position error px ↓"),
            ("object_found", "objects found ↑"), ("object_colour_error", "object colour error ↓")]
    lines = ["| predictor | " + " | ".join(k[1] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for name, row in result.items():
        lines.append(f"| {name} | " + " | ".join(
            "–" if not math.isfinite(row[k]) else f"{row[k]:.4f}" for k, _ in keys) + " |")
    return "\n".join(lines)
