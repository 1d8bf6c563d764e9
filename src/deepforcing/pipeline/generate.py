"""The user-facing generator: a model bundle + a policy → a streamed video file (the Python API of the CLI).

::

    from deepforcing import mini_generator
    gen = mini_generator()                                   # the shipped mini model, CPU
    result = gen.generate("a red circle bounces on a dark background", seconds=60, policy="deep-forcing",
                          output="out.mp4", on_chunk=lambda chunk: print(chunk.index, chunk.frames.shape))

Every chunk is decoded and appended to the mp4 as soon as it is denoised (a killed run leaves a playable
``<out>.partial.mp4``); ``on_chunk`` receives the chunk's latents and decoded frames for streaming consumers.
A JSON sidecar next to the video records every setting, the seed, the policy, versions and timings.
"""

from __future__ import annotations

import math
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from deepforcing.cache import POLICIES, CachePolicy, KVCache, make_policy
from deepforcing.models.contract import ModelBundle, SamplingConfig  # noqa: F401  (re-exported)

from .resources import available_memory_bytes, format_bytes
from .rollout import VideoRollout
from .start import StartFrames, StartGeometry, load_start
from .timeline import TimelineEntry, check_timeline_events, parse_timeline, schedule_chunks
from .validation import (RequestError, check_callback, check_length, check_output_path, check_prompt_text,
                         check_seed, check_writable_folder, error_line, shorten)
from .writer import (MIN_START_BYTES, FrameDumper, Mp4StreamWriter, check_free_space, partial_path_for, save_latents,
                     write_sidecar)

__all__ = ["ModelBundle", "ChunkOutput", "GenerationResult", "VideoGenerator", "NonFiniteOutputError"]


class NonFiniteOutputError(ValueError):
    """The model produced NaN or Inf latents (broken weights, or a dtype too narrow for them)."""


@dataclass
class ChunkOutput:
    """One streamed chunk of one video."""

    index: int
    start_frame: int
    prompt: str
    latents: torch.Tensor  # [B, C, f, h, w]
    frames: torch.Tensor  # [B, T, 3, H, W] in [-1, 1] (before display upscaling)
    seconds: float  # wall time of this chunk (denoise + decode + write)
    cache: KVCache | None = None  # the rollout's KV cache after this chunk (for observers: bench, diagnose, tests)
    given: object = None  # uint8 [T, H0, W0, 3]: a given start's frames as given (``keep_input``), else None


@dataclass
class GenerationResult:
    path: Path | None
    sidecar: Path | None
    latent_frames: int
    pixel_frames: int
    seconds: float
    chunk_seconds: list[float]
    policy: dict
    interrupted: bool = False
    error: str | None = None
    cache: dict | None = None  # what the policy did (cache_summary)
    start: dict | None = None  # the given start image / video (what was given, its latent frames, what changed)

    @property
    def fps(self) -> float:
        return self.pixel_frames / self.seconds if self.seconds else float("nan")


def cache_summary(cache: KVCache) -> dict:
    """What the policy did over the video, from layer 0: events per kind (append / roll / compress), the sink's
    total shift, the cache length at the end, and the host time spent in policy decisions. (Rolling Forcing's own
    cache reports its length in tokens only.)"""
    if not isinstance(cache, KVCache):
        return {"cache": type(cache).__name__, "tokens_at_end": cache.length}
    return {"events": dict(cache.event_counts), "sink_shift_frames": cache.sink_shift_frames,
            "frames_at_end": cache.length / cache.geometry.tokens_per_frame,
            "policy_seconds": round(cache.policy_seconds, 4)}


def _versions() -> dict:
    import diffusers

    from deepforcing._version import __version__

    return {"deepforcing": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version()}


class VideoGenerator:
    """Streams videos from a :class:`ModelBundle` with any cache policy."""

    def __init__(self, bundle: ModelBundle, device: torch.device | str = "cpu") -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self._contexts: dict[str, object] = {}  # prompt -> cross-attention state, least recently used first
        self.max_cached_prompts = 16

    # ----------------------------------------------------------------- helpers
    def resolve_policy(self, policy: str | CachePolicy | None, **sizes) -> CachePolicy:
        """``policy`` itself when built already, else built against the bundle's product default
        (:func:`policy_from_defaults`)."""
        if isinstance(policy, CachePolicy):
            return policy
        if policy is not None and not isinstance(policy, str):
            raise RequestError(f"policy must be a policy name, a built CachePolicy or None, got "
                               f"{type(policy).__name__}")
        return policy_from_defaults(self.bundle.default_policy, policy, **sizes)

    def context(self, prompt: str):
        """Cross-attention state of a prompt (cached per prompt)."""
        if prompt in self._contexts:
            self._contexts[prompt] = self._contexts.pop(prompt)  # most recently used last
            return self._contexts[prompt]
        with torch.no_grad():
            emb = self.bundle.encode_text([prompt]).to(self.device)
            context = self.bundle.transformer.encode_context(emb)
        self._contexts[prompt] = context
        while len(self._contexts) > self.max_cached_prompts:  # a server's users type many prompts
            self._contexts.pop(next(iter(self._contexts)))
        return context

    def num_chunks(self, seconds: float | None, latent_frames: int | None) -> int:
        """Chunks of a video of ``seconds`` or ``latent_frames`` (exactly one; the limits of ``validation``)."""
        chunk = self.bundle.sampling.chunk_frames
        seconds, latent_frames = check_length(seconds, latent_frames)
        if latent_frames is None:
            latent_frames = self.bundle.latent_frames_for_seconds(seconds)
        return math.ceil(latent_frames / chunk)

    # ------------------------------------------------------------------ stream
    def stream(
        self,
        prompt: str | Sequence[TimelineEntry] | None = None,
        *,
        seconds: float | None = None,
        latent_frames: int | None = None,
        policy: str | CachePolicy | None = None,
        seed: int = 0,
        keep_sink_on_switch: bool = True,
        record_events: bool = False,
        attention_observer=None,
        start_image=None,
        start_video=None,
        keep_input: bool = False,
        start: StartFrames | None = None,
        **policy_sizes,
    ) -> Iterator[ChunkOutput]:
        """Yield decoded chunks of one video as they are generated; each carries the rollout's cache.
        ``attention_observer`` is attached to that cache (see ``deepforcing.eval.diagnostics``).

        ``start_image`` / ``start_video`` (a path or an array, :func:`~deepforcing.pipeline.start.load_start`; or
        ``start``, already loaded) start the video from given frames: resized to the model's size, encoded by its
        codec and written into the cache at the clean timestep (:meth:`VideoRollout.prefill`); ``seconds`` /
        ``latent_frames`` then count the continuation, positions count from the first given frame, and with
        ``keep_input`` the given frames are the first chunk yielded (``ChunkOutput.given``)."""
        timeline = self._timeline(prompt)
        total = self.num_chunks(seconds, latent_frames)
        seed = check_seed(seed)
        active = schedule_chunks(timeline, total, self.bundle.sampling.chunk_frames,
                                 self.bundle.latent_frames_for_seconds)
        policy_obj = self.resolve_policy(policy, **policy_sizes)
        check_timeline_events(timeline, policy_obj, self.bundle.sampling.chunk_frames)
        start = start if start is not None else self.load_start(start_image, start_video, policy_obj)
        start_latents = None if start is None else start.encode(self.bundle.codec, self.device, self._dtype)
        given = 0 if start_latents is None else start_latents.shape[2]
        end = given + total * self.bundle.sampling.chunk_frames
        rollout = self.open_rollout(timeline[active[0]].prompt, policy_obj, seed=seed,
                                    max_frames=end, record_events=record_events, given_start=given > 0)
        rollout.cache.attention_observer = attention_observer
        decoder = self.bundle.codec.streaming_decoder()
        decoder.reset()
        current = active[0]
        i = 0
        if start_latents is not None:
            t0 = time.perf_counter()
            for block, frames, as_given in self.prefill(rollout, decoder, start, start_latents):
                if keep_input:
                    yield ChunkOutput(i, block.start_frame, timeline[current].prompt, block.latents, frames,
                                      time.perf_counter() - t0, rollout.cache, given=as_given)
                    i += 1
                t0 = time.perf_counter()
        while rollout.next_frame < end:  # a restart's prefix adds no frames
            t0 = time.perf_counter()
            at = min((rollout.next_frame - given) // self.bundle.sampling.chunk_frames, total - 1)
            if active[at] != current:
                current = active[at]
                rollout.switch_prompt(self.context(timeline[current].prompt), keep_sink=keep_sink_on_switch,
                                      cut=timeline[current].cut)
            res = rollout.step()
            if not torch.isfinite(res.latents).all():
                bad = (~torch.isfinite(res.latents)).float().mean().item()
                raise NonFiniteOutputError(
                    f"the model produced NaN/Inf latents in chunk {i} ({bad:.0%} of values): the weights are broken or "
                    f"the dtype too narrow for them (try --dtype float32); the finished chunks were kept")
            if res.frames is not None:  # a rollout that decodes its own chunks (CausVid's restarts)
                frames = res.frames
            else:
                with torch.no_grad():
                    frames = decoder.decode_chunk(res.latents.permute(0, 2, 1, 3, 4))
            if frames.shape[1] == 0:  # all of it held back (a restart's tail): the next chunk re-makes it
                continue
            yield ChunkOutput(i, res.start_frame, timeline[current].prompt, res.latents, frames,
                              time.perf_counter() - t0, rollout.cache)
            i += 1

    @property
    def _dtype(self) -> torch.dtype:
        """The transformer's floating dtype (latents given to it are cast to it)."""
        return next((p.dtype for p in self.bundle.transformer.parameters() if p.is_floating_point()), torch.float32)

    def start_geometry(self, policy: CachePolicy) -> StartGeometry:
        """What a start image / video must fit: the model's pixel size, codec frames, chunk and ``policy``'s window."""
        c, h, w = self.bundle.latent_shape
        scale = getattr(self.bundle.codec, "spatial_scale", 1)
        return StartGeometry(h * scale, w * scale, self.bundle.temporal_scale, self.bundle.sampling.chunk_frames,
                             policy.window)

    def load_start(self, start_image, start_video, policy: CachePolicy) -> StartFrames | None:
        """The start of a video from ``start_image`` or ``start_video`` (at most one: a path, an array or a loaded
        :class:`StartFrames`), resized to the model (a warning says what changed), or ``None``."""
        if start_image is not None and start_video is not None:
            raise ValueError("give a start image or a start video, not both")
        if start_image is None and start_video is None:
            return None
        kind, source = ("image", start_image) if start_image is not None else ("video", start_video)
        if isinstance(source, StartFrames):  # loaded already (the CLI reports its note itself)
            return source
        start = load_start(source, kind, self.start_geometry(policy))
        if start.note:
            warnings.warn(start.note, stacklevel=3)
        return start

    def prefill(self, rollout, decoder, start: StartFrames, latents: torch.Tensor | None = None) -> list:
        """Write a loaded start into a fresh ``rollout``'s cache (:meth:`VideoRollout.prefill`) and ``decoder``'s
        context (a causal decoder decodes the given latents first). Per prefix block: its ``ChunkResult``, its given
        frames at the model's size ``[1, T, 3, H, W]`` and as given (uint8), for a caller that keeps the input.
        ``latents``: the start already encoded (:meth:`StartFrames.encode`). A rollout opened for ``n`` new latent
        frames should allow ``n + start`` (``max_frames``)."""
        if not hasattr(rollout, "prefill"):
            raise ValueError(f"a start image / video needs the rolling cache; this model's sampler "
                             f"({type(rollout).__name__}) has its own loop (pass --no-restart for CausVid)")
        if latents is None:
            latents = start.encode(self.bundle.codec, self.device, self._dtype)
        out = []
        for block in rollout.prefill(latents.to(self._dtype)):  # one chunk-sized prefix call each
            with torch.no_grad():
                decoded = decoder.decode_chunk(block.latents.permute(0, 2, 1, 3, 4))
            a = self.bundle.pixel_frames(block.start_frame) if block.start_frame else 0  # its pixel frames
            b = self.bundle.pixel_frames(block.start_frame + block.latents.shape[2])
            out.append((block, start.frames[None, a:b].to(decoded), start.given[a:b]))
        return out

    def open_rollout(self, prompt: str, policy: CachePolicy, *, seed: int = 0, max_frames: int | None = None,
                     record_events: bool = False, given_start: bool = False) -> VideoRollout:
        """A fresh rollout of one video (its own KV cache), after the memory check; ``max_frames`` latent frames
        at most when known (the cache is then no larger than the video). ``given_start``: the video starts from
        given frames (an image or a clip), which take the place of the bundle's start condition (zeros: the drawn
        start layout of the prompt and seed would contradict them)."""
        self.check_memory(policy, max_frames)
        if self.bundle.sampling.solver == "rolling-forcing":
            return self._rolling_rollout(prompt, policy, seed, max_frames)
        window = self.bundle.default_policy.get("window")
        if self.bundle.sampling.restart_overlap and (max_frames is None or window is None or max_frames > window):
            return self._restarting_rollout(prompt, policy, seed, max_frames, record_events)
        return VideoRollout(
            model=self.bundle.transformer, policy=policy, context=self.context(prompt),
            latent_shape=self.bundle.latent_shape, sampling=self.bundle.sampling, seeds=[seed],
            device=self.device, record_events=record_events, max_frames=max_frames,
            uncond_context=self.context("") if self.bundle.sampling.needs_unconditional else None,
            condition=self.start_condition(prompt, seed, given_start=given_start),
        )

    def start_condition(self, prompt: str, seed: int, *, given_start: bool = False) -> torch.Tensor | None:
        """The bundle's condition of the video's first frames for this prompt and seed (``None`` without one);
        zeros when the video starts from given frames (the mini model's prompt-only mode, which its training keeps
        with layout dropout)."""
        make = self.bundle.start_condition
        if make is None:
            return None
        cond = make([prompt], [seed])
        if cond is None:
            return None
        return (torch.zeros_like(cond) if given_start else cond).to(self.device)

    def _rolling_rollout(self, prompt: str, policy: CachePolicy, seed: int, max_frames: int | None):
        """Rolling Forcing's own loop and cache (``pipeline.rolling``): its sink is one chunk, re-placed before the
        working chunks, i.e. the ``rolling-forcing-sink`` policy at sink = one chunk; the video length must be known."""
        from .rolling import RollingForcingRollout

        chunk = self.bundle.sampling.chunk_frames
        if policy.name != "rolling-forcing-sink" or policy.sink_frames != chunk:
            raise ValueError(f"Rolling Forcing's sampler has its own cache (a one-chunk anchor re-placed before the "
                             f"working chunks): use --policy rolling-forcing-sink --sink {chunk}, not {policy.name}")
        if max_frames is None:
            raise ValueError("Rolling Forcing needs the video length up front (its last windows ramp down)")
        return RollingForcingRollout(model=self.bundle.transformer, context=self.context(prompt),
                                     latent_shape=self.bundle.latent_shape, num_chunks=-(-max_frames // chunk),
                                     sampling=self.bundle.sampling, attention_frames=policy.window, seeds=[seed],
                                     device=self.device)

    def _restarting_rollout(self, prompt: str, policy: CachePolicy, seed: int, max_frames: int | None,
                            record_events: bool):
        """CausVid's long videos (``pipeline.restart``): one fresh window-long rollout after another, so no cache
        policy ever evicts; another policy than the preset's is refused rather than silently not applied (a video
        no longer than the window is one plain rollout, where every policy is full attention)."""
        from .restart import RestartingRollout

        default = self.bundle.default_policy
        if policy.name != default["name"] or policy.window != default.get("window", policy.window):
            raise ValueError(restart_policy_error(default.get("window"), self.bundle.sampling.restart_overlap,
                                                  policy.name))
        return RestartingRollout(
            model=self.bundle.transformer, policy=policy, context=self.context(prompt),
            latent_shape=self.bundle.latent_shape, codec=self.bundle.codec, temporal_scale=self.bundle.temporal_scale,
            sampling=self.bundle.sampling, seeds=[seed], device=self.device, record_events=record_events,
            max_frames=max_frames, uncond_context=self.context("") if self.bundle.sampling.needs_unconditional else None,
        )

    def check_memory(self, policy: CachePolicy, max_frames: int | None) -> int:
        """Refuse a cache that cannot fit in the free memory of the device (estimate before allocating)."""
        c, h, w = self.bundle.latent_shape
        estimate = getattr(self.bundle.transformer, "cache_bytes", None)
        if estimate is None:
            return 0
        need = estimate(policy, height=h, width=w, chunk_frames=self.bundle.sampling.chunk_frames,
                        max_frames=max_frames)
        free = available_memory_bytes(self.device)
        if free is not None and need > 0.9 * free:
            raise ValueError(f"the KV cache of this request needs {format_bytes(need)} "
                             f"({policy.name}, window {policy.window} latent frames) but {format_bytes(free)} is free "
                             f"on {self.device}; lower --window or the resolution")
        return need

    def _timeline(self, prompt) -> list[TimelineEntry]:
        if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
            if not self.bundle.default_prompt:
                raise ValueError("a prompt is required for this model")
            prompt = self.bundle.default_prompt
        if not isinstance(prompt, (str, list, tuple)):
            raise RequestError(f"prompt must be text, a list of TimelineEntry or None, got {type(prompt).__name__}")
        if isinstance(prompt, str):
            check_prompt_text(prompt)
            # a compact timeline starts with a duration ("10s: a; b"); any other text is one prompt (';' allowed)
            return parse_timeline(prompt) if _looks_timed(prompt) else [TimelineEntry(prompt)]
        entries = list(prompt)
        if not entries:
            raise ValueError("empty timeline")
        for entry in entries:
            if not isinstance(entry, TimelineEntry):
                raise RequestError(f"a timeline is a list of TimelineEntry, got a {type(entry).__name__} in it")
            check_prompt_text(entry.prompt, "a timeline prompt")
        return entries

    # ---------------------------------------------------------------- generate
    def generate(
        self,
        prompt: str | Sequence[TimelineEntry] | None = None,
        *,
        output: str | Path,
        seconds: float | None = None,
        latent_frames: int | None = None,
        policy: str | CachePolicy | None = None,
        seed: int = 0,
        on_chunk: Callable[[ChunkOutput], None] | None = None,
        save_latents_to: str | Path | None = None,
        save_frames_to: str | Path | None = None,
        sidecar: bool = True,
        progress: bool = False,
        keep_sink_on_switch: bool = True,
        start_image=None,
        start_video=None,
        keep_input: bool = False,
        **policy_sizes,
    ) -> GenerationResult:
        """Generate one video into ``output`` (mp4), streaming chunk by chunk; ``start_image`` / ``start_video`` /
        ``keep_input`` as in :meth:`stream` (kept frames are written as given when they have the output's size)."""
        # the request first (``validation``: the CLI's limits); whatever then stops the video (Ctrl-C, NaN, a full
        # disk, an on_chunk that raises) leaves the finished chunks in <out>.partial.mp4 and a sidecar saying why
        output = check_output_path(output)
        check_callback("on_chunk", on_chunk)
        timeline = self._timeline(prompt)
        policy_obj = self.resolve_policy(policy, **policy_sizes)
        total = self.num_chunks(seconds, latent_frames)
        seed = check_seed(seed)
        check_writable_folder(output.parent, "output")  # as the CLI does, before the rollout starts
        output.parent.mkdir(parents=True, exist_ok=True)
        check_free_space(output.parent, MIN_START_BYTES, f"the video {output.name}")
        start = self.load_start(start_image, start_video, policy_obj)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="chunk", desc=output.name, dynamic_ncols=True)
        scale = self.bundle.display_scale
        latents, chunk_seconds, pixel_frames, cache, latent_frames, saved_frames = [], [], 0, None, 0, 0
        started = time.perf_counter()
        interrupted = False
        failure: BaseException | None = None
        writer = Mp4StreamWriter(output, fps=self.bundle.fps)
        dumper = FrameDumper(save_frames_to) if save_frames_to is not None else None
        try:
            for out in self.stream(timeline, latent_frames=total * self.bundle.sampling.chunk_frames,
                                   policy=policy_obj, seed=seed, keep_sink_on_switch=keep_sink_on_switch,
                                   start=start, keep_input=keep_input):
                frames = out.frames[0]
                if out.given is not None and out.given.shape[1:3] == (frames.shape[-2] * scale,
                                                                      frames.shape[-1] * scale):
                    frames = out.given  # the given frames themselves, uint8, at the output's size
                elif scale > 1:
                    frames = frames.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
                writer.write(frames)
                if dumper is not None:
                    dumper.write(frames)
                pixel_frames += out.frames.shape[1]
                chunk_seconds.append(out.seconds)
                cache = out.cache
                latent_frames = max(latent_frames, out.start_frame + out.latents.shape[2])
                if save_latents_to is not None:
                    while latents and saved_frames > out.start_frame:  # a restart re-makes them
                        saved_frames -= latents.pop().shape[1]
                    latents.append(out.latents[0].cpu())
                    saved_frames += latents[-1].shape[1]
                if on_chunk is not None:
                    on_chunk(out)
                if bar is not None:
                    bar.set_postfix(fps=f"{out.frames.shape[1] / out.seconds:.1f}", refresh=False)
                    bar.update(1)
            path = writer.close()
        except BaseException as err:  # Ctrl-C, NaN, a full disk, a raising on_chunk: keep what is finished
            # keep <out>.partial.mp4 (every finished chunk, playable); never leave a file without frames
            interrupted = True
            failure = err
            path = writer.partial_path if writer.frames_written else None
            writer.abort()
            if not writer.frames_written and writer.partial_path.exists():
                writer.partial_path.unlink()
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - started
        result = GenerationResult(path, None,
                                  latent_frames, pixel_frames, elapsed,
                                  chunk_seconds, policy_obj.describe(), interrupted,
                                  None if isinstance(failure, KeyboardInterrupt) or failure is None
                                  else error_line(failure) if isinstance(failure, (OSError, ValueError))
                                  else shorten(f"{type(failure).__name__}: {failure}", 1000),
                                  cache_summary(cache) if cache is not None else None,
                                  None if start is None else {"kind": "video" if start_video is not None else "image",
                                                              "source": _source_name(start_image, start_video),
                                                              "pixel_frames": int(start.frames.shape[0]),
                                                              "kept": keep_input, "note": start.note})
        latents_error = None
        if save_latents_to is not None and latents and not isinstance(failure, OSError):
            try:
                save_latents(save_latents_to, torch.cat(latents, dim=1))
            except OSError as err:  # the video is kept; the sidecar says the latents are not
                latents_error = err
        if sidecar and path is not None:
            record = self._sidecar(result, timeline, seed, total)
            if save_latents_to is not None:
                record["latents"] = str(save_latents_to) if latents_error is None and latents \
                    and not isinstance(failure, OSError) else \
                    f"not saved: {latents_error or 'the video stopped early'}"
            try:  # on a full disk the writer's reserve leaves room for this
                result.sidecar = write_sidecar(path.with_suffix(".json"), record)
            except OSError:
                if failure is None and latents_error is None:
                    raise
        if failure is None and latents_error is not None:
            raise OSError(latents_error.errno, f"the video {path} is complete, but its latents were not saved: "
                          f"{error_line(latents_error)}")
        if failure is None:
            stale = partial_path_for(output).with_suffix(".json")  # from an earlier interrupted run
            if stale.exists():
                stale.unlink()
        elif isinstance(failure, OSError):
            why = error_line(failure)
            raise OSError(failure.errno, f"writing {output} failed ({why}); the finished chunks are in "
                          f"{writer.partial_path} (whole, playable) with a sidecar saying so" if writer.frames_written
                          else f"writing {output} failed ({why})") from failure
        else:
            raise failure
        return result

    def _sidecar(self, result: GenerationResult, timeline, seed: int, planned_chunks: int) -> dict:
        cs = sorted(result.chunk_seconds)
        pct = lambda q: cs[min(len(cs) - 1, int(q * len(cs)))] if cs else None  # noqa: E731
        return {
            "status": "failed" if result.error else ("interrupted" if result.interrupted else "complete"),
            "error": result.error,
            "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "model": self.bundle.name,
            "timeline": [e.__dict__ for e in timeline],
            "seed": seed,
            "policy": result.policy,
            "cache": result.cache,
            "start": result.start,
            "sampling": self.bundle.sampling.__dict__,
            "latent_shape": list(self.bundle.latent_shape),
            "fps": self.bundle.fps,
            # chunks of the video's timeline (a restart's prefix chunks re-make frames: they are not counted)
            "chunks": {"planned": planned_chunks,
                       "written": -(-result.latent_frames // self.bundle.sampling.chunk_frames)},
            "latent_frames": result.latent_frames,
            "pixel_frames": result.pixel_frames,
            "timings": {
                "total_seconds": round(result.seconds, 3),
                "frames_per_second": round(result.fps, 2),
                "chunk_seconds_mean": round(sum(cs) / len(cs), 4) if cs else None,
                "chunk_seconds_p50": pct(0.5),
                "chunk_seconds_p95": pct(0.95),
            },
            "device": str(self.device),
            "versions": _versions(),
        }


def policy_from_defaults(defaults: dict, name: str | None, **sizes) -> CachePolicy:
    """The cache policy ``name`` with ``sizes`` against a model's product default ``defaults`` (``{"name": ...,
    "window": ..., <sizes>}``, a preset's :meth:`~deepforcing.models.presets.ModelPreset.product_policy`): ``None``
    for ``name`` is the default policy with its sizes, overridden by the given ones; any policy gets the model's
    attention window unless ``sizes`` sets one or its window is part of the method (``own_window``, e.g. ∞-RoPE's 6
    frames); ``None`` sizes are left to the policy."""
    window = defaults.get("window")
    own = name is not None and name in POLICIES and POLICIES[name].own_window
    if window is not None and sizes.get("window") is None and not own:
        sizes = {**sizes, "window": window}
    if name is None:
        base = {k: v for k, v in defaults.items() if k != "name"}
        return make_policy(defaults["name"], **{**base, **{k: v for k, v in sizes.items() if v is not None}})
    return make_policy(name, **sizes)


def restart_policy_error(window: int | None, overlap: int, policy: str) -> str:
    """Why a restarting model (CausVid's long videos) refuses another cache policy than its own."""
    return (f"this model restarts its rollout every {window} frames as its release does (restart_overlap {overlap}), "
            f"so no cache policy acts; drop --policy/--window, or pass --no-restart to roll one cache with {policy}")


def _source_name(start_image, start_video) -> str:
    source = start_image if start_image is not None else start_video
    if isinstance(source, StartFrames):
        return source.source
    return str(source) if isinstance(source, (str, Path)) else f"array {tuple(getattr(source, 'shape', ()))}"


def _looks_timed(text: str) -> bool:
    head = text.split(":", 1)[0]
    return ":" in text and head.strip()[-1:].lower() in ("s", "f") and head.strip()[:-1].replace(".", "").isdigit()
