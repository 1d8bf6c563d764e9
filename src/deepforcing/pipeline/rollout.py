"""The autoregressive rollout: chunks, the few-step schedule, the clean-context pass, prompt switches.

Per chunk (the rollout protocol of Self Forcing's ``pipeline/causal_inference.py``, which the Deep Forcing release
uses unchanged):

1. draw the chunk's noise ``x``;
2. for each step ``t_j``: ``x0 = x - sigma_j * model(x, t_j)``; if not last, ``x = (1 - sigma_{j+1}) x0 + sigma_{j+1} eps``
   with fresh noise ``eps`` (``solver="self-forcing"``, the release's few-step sampler for distilled generators);
   or, with ``solver="euler"``, the deterministic probability-flow ODE step ``x += (sigma_{j+1} - sigma_j) v`` with
   ``sigma_j = t_j / 1000`` and a last step to ``sigma = 0`` (for models trained by plain flow matching, whose one-step
   ``x0`` is the blurry conditional mean: re-noising it with fresh noise never commits to one sample);
3. the chunk's output is the last ``x0``;
4. clean pass: run the model once more on ``x0`` at the context-noise timestep (0 by default); its output is discarded,
   its effect is that every layer rewrites the chunk's K/V with clean-input K/V.

The cache policy acts inside the model on the first step of a new chunk. Everything about one video lives in one
:class:`VideoRollout` (cache, prompt context, noise stream, position); nothing is shared between videos.

Prompt switches (a timeline) follow LongLive's recipe: the cross-attention K/V are re-encoded for the new prompt and
the recent window is *re-cached* — its cached K/V are recomputed under the new prompt by re-running the last frames
at the clean timestep — with the sink kept (``keep_sink=True``) or re-cached too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import torch

from deepforcing.cache import CachePolicy, KVCache, StreamEvent
from deepforcing.models.contract import SamplingConfig
from deepforcing.models.schedule import FlowMatchSchedule

__all__ = [
    "SamplingConfig",
    "NoiseSource",
    "GaussianNoise",
    "ChunkResult",
    "VideoRollout",
    "CausalChunkModel",
    "with_condition",
]


def with_condition(x: torch.Tensor, condition: torch.Tensor, start: int) -> torch.Tensor:
    """``x`` ``[B, C, f, h, w]`` (video frames ``start .. start + f - 1``) with the condition channels of those frames
    appended: ``condition`` ``[B, Cc, Fc, h, w]`` holds the video's first ``Fc`` frames, later frames get zeros, as
    Wan2.1 image-to-video concatenates its first-frame latents to every call."""
    b, _, f, h, w = x.shape
    cond = condition.to(device=x.device, dtype=x.dtype)
    extra = torch.zeros(b, cond.shape[1], f, h, w, device=x.device, dtype=x.dtype)
    stop = min(start + f, cond.shape[2])
    if stop > start:
        extra[:, :, : stop - start] = cond[:, :, start:stop]
    return torch.cat([x, extra], dim=1)


class CausalChunkModel(Protocol):
    """What the rollout needs from a model (``CausalWanTransformer`` implements it)."""

    def make_cache(self, policy: CachePolicy, *, height: int, width: int, chunk_frames: int, batch: int = 1,
                   **kw) -> KVCache: ...

    def encode_context(self, text_embeddings: torch.Tensor): ...

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, context, cache: KVCache, start_frame: int,
                 clean: bool | None = None) -> torch.Tensor: ...


class NoiseSource(Protocol):
    """Gaussian draws of a video: the initial noise of a chunk and the re-noising draws between steps."""

    def initial(self, chunk: int, shape: Sequence[int]) -> torch.Tensor: ...

    def renoise(self, chunk: int, step: int, shape: Sequence[int]) -> torch.Tensor: ...


class GaussianNoise:
    """Seeded per-video noise, drawn chunk by chunk (streaming: nothing is drawn ahead of time).

    One generator per batch element (seed, seed + 1, ...), so each video of a batch equals that video alone.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        self.device, self.dtype = device, dtype

    def _draw(self, shape: Sequence[int]) -> torch.Tensor:
        one = tuple(shape[1:])
        out = torch.stack([torch.randn(one, generator=g) for g in self.generators])
        return out.to(device=self.device, dtype=self.dtype)

    def initial(self, chunk: int, shape: Sequence[int]) -> torch.Tensor:
        return self._draw(shape)

    def renoise(self, chunk: int, step: int, shape: Sequence[int]) -> torch.Tensor:
        return self._draw(shape)


@dataclass
class ChunkResult:
    """One finished chunk: its clean latents ``[B, C, f, h, w]`` and where it sits in the video; ``frames``
    ``[B, T, 3, H, W]`` when the rollout decodes its own chunks (:mod:`deepforcing.pipeline.restart`)."""

    index: int
    start_frame: int
    latents: torch.Tensor
    prompt_index: int = 0
    frames: torch.Tensor | None = None


@dataclass
class VideoRollout:
    """State and loop of one video. Create one per video (or per batch of videos generated together).

    Args:
        model: a causal chunk model.
        policy: KV-cache policy.
        context: the prompt's cross-attention state from ``model.encode_context``.
        latent_shape: ``(C, h, w)`` of one latent frame.
        sampling: the few-step schedule.
        noise: the noise stream (``GaussianNoise`` by default from ``seeds``).
        batch: videos generated together.
        keep_recent_latents: latent frames remembered for re-caching at prompt switches (default: the window).
        max_frames: length of the video in latent frames, when known (the cache is allocated for no more).
    """

    model: CausalChunkModel
    policy: CachePolicy
    context: object
    latent_shape: tuple[int, int, int]
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    noise: NoiseSource | None = None
    seeds: Sequence[int] = (0,)
    dtype: torch.dtype = torch.float32
    device: torch.device | str = "cpu"
    record_events: bool = False
    max_frames: int | None = None  # the video's length when known: the cache is then no larger than the video
    uncond_context: object = None  # the empty prompt's context, needed when a chunk is guided
    condition: torch.Tensor | None = None  # [B, Cc, Fc, h, w]: extra input channels of the first Fc frames

    def __post_init__(self) -> None:
        c, h, w = self.latent_shape
        self.batch = len(self.seeds)
        if self.condition is not None and (self.condition.dim() != 5 or self.condition.shape[0] != self.batch
                                           or tuple(self.condition.shape[-2:]) != (h, w)):
            raise ValueError(f"condition must be [{self.batch}, channels, frames, {h}, {w}], "
                             f"got {tuple(self.condition.shape)}")
        self.guided = self.sampling.guidance > 1.0  # every chunk: prompt and empty prompt in one batch
        if self.sampling.needs_unconditional and self.uncond_context is None:
            raise ValueError("classifier-free guidance needs the empty prompt's context (uncond_context)")
        if self.guided:
            self.context = self._with_unconditional(self.context)
        first = self.sampling.first_chunk_guidance
        self.first_guidance = self.sampling.guidance if first is None else first
        self._scale = self.sampling.guidance  # of the chunk being generated
        self._side_cache = None  # chunk 0's unconditional branch when only chunk 0 is guided
        self.cache = self.model.make_cache(
            self.policy, height=h, width=w, chunk_frames=self.sampling.chunk_frames,
            batch=self.batch * (2 if self.guided else 1), record_events=self.record_events, max_frames=self.max_frames,
        )
        self.schedule = FlowMatchSchedule(shift=self.sampling.shift)
        self.steps = self.sampling.timesteps(self.schedule)
        self.first_steps = self.sampling.timesteps(self.schedule, chunk=0)  # = steps unless chunk 0 has its own
        if self.noise is None:
            self.noise = GaussianNoise(self.seeds, device=self.device, dtype=self.dtype)
        self.next_chunk = 0
        self.prompt_index = 0
        self._recent: list[torch.Tensor] = []  # clean latents of recent chunks, for re-caching
        self._recent_frames = self.policy.window

    _prefill_offset = 0  # frames of the prefill short of whole chunks (prefill: a lone image latent is one call)

    @property
    def next_frame(self) -> int:
        """The first latent frame of the next chunk (positions count from the first frame, given or sampled)."""
        return self.next_chunk * self.sampling.chunk_frames + self._prefill_offset

    def _with_unconditional(self, context):
        """Prompt and empty-prompt cross-attention states as one batch (prompt rows first)."""
        u = self.uncond_context
        keys = [torch.cat([k, uk.expand(k.shape[0], *uk.shape[1:])]) for k, uk in zip(context.keys, u.keys)]
        values = [torch.cat([v, uv.expand(v.shape[0], *uv.shape[1:])]) for v, uv in zip(context.values, u.values)]
        return type(context)(keys, values)

    def _unconditional(self, batch: int):
        """The empty prompt's cross-attention state for ``batch`` videos."""
        u = self.uncond_context
        return type(u)([k.expand(batch, *k.shape[1:]) for k in u.keys], [v.expand(batch, *v.shape[1:]) for v in u.values])

    def _conditioned(self, x: torch.Tensor, start: int) -> torch.Tensor:
        return x if self.condition is None else with_condition(x, self.condition, start)

    def _call(self, x: torch.Tensor, t: float, start: int, clean: bool) -> torch.Tensor:
        f = x.shape[2]
        x = self._conditioned(x, start)
        if self.guided:
            x = torch.cat([x, x])
        timesteps = torch.full((x.shape[0], f), float(t), device=x.device, dtype=torch.float32)
        flow = self.model(x, timesteps, self.context, self.cache, start, clean=clean)
        if self.guided:
            cond, uncond = flow.chunk(2)
            return uncond + self._scale * (cond - uncond)
        if self._side_cache is not None and not clean:  # a guided chunk 0 of an otherwise unguided rollout
            uncond = self.model(x, timesteps, self._unconditional(x.shape[0]), self._side_cache, start, clean=False)
            return uncond + self._scale * (flow - uncond)
        return flow

    @torch.no_grad()
    def step(self) -> ChunkResult:
        """Generate the next chunk (all denoising steps and the clean pass)."""
        i, f0 = self.next_chunk, self.next_frame
        c, h, w = self.latent_shape
        shape = (self.batch, c, self.sampling.chunk_frames, h, w)
        x = self.noise.initial(i, shape)
        steps = self.first_steps if i == 0 else self.steps
        self._scale = self.first_guidance if i == 0 else self.sampling.guidance
        if i == 0 and not self.guided and self.first_guidance > 1.0:
            self._side_cache = self.model.make_cache(self.policy, height=h, width=w, batch=self.batch,
                                                     chunk_frames=self.sampling.chunk_frames, max_frames=self.max_frames)
        x0 = self._euler(x, f0, steps) if self.sampling.solver == "euler" else self._renoise_steps(x, i, f0, shape, steps)
        self._side_cache = None
        self._call(x0, self.sampling.context_noise, f0, clean=True)
        self._remember(x0)
        self.next_chunk += 1
        return ChunkResult(i, f0, x0, self.prompt_index)

    def _renoise_steps(self, x: torch.Tensor, i: int, f0: int, shape: tuple, steps: torch.Tensor) -> torch.Tensor:
        """Self Forcing's few-step sampler: predict x0, re-noise it to the next timestep with fresh noise."""
        last = len(steps) - 1
        x0 = x
        for j, t in enumerate(steps.tolist()):
            flow = self._call(x, t, f0, clean=False)
            x0 = self.schedule.x0_from_flow(x, flow, t)
            if j < last:
                x = self.schedule.add_noise(x0, self.noise.renoise(i, j, shape), steps[j + 1])
        return x0

    def _euler(self, x: torch.Tensor, f0: int, steps: torch.Tensor) -> torch.Tensor:
        """Euler steps of the flow ODE ``dx/dsigma = v`` through ``sigma_j = t_j / T`` and on to ``sigma = 0``."""
        sigmas = (steps / self.schedule.num_train_timesteps).tolist() + [0.0]
        for j, t in enumerate(steps.tolist()):
            flow = self._call(x, t, f0, clean=False)
            x = (x.to(torch.float64) + (sigmas[j + 1] - sigmas[j]) * flow.to(torch.float64)).to(x.dtype)
        return x

    def _remember(self, x0: torch.Tensor) -> None:
        self._recent.append(x0)
        keep_chunks = -(-self._recent_frames // self.sampling.chunk_frames)
        del self._recent[: max(0, len(self._recent) - keep_chunks)]

    def chunks(self, num_chunks: int) -> Iterator[ChunkResult]:
        for _ in range(num_chunks):
            yield self.step()

    @torch.no_grad()
    def prefill(self, latents: torch.Tensor) -> list[ChunkResult]:
        """Write given clean latents ``[B, C, F, h, w]`` into the cache as the video's next frames, before the next
        sampled chunk (image-to-video and video extension; CausVid's restart prefix).

        Self Forcing's ``pipeline/causal_inference.py`` ``initial_latent`` path (33593df): each prefix block is one
        model call at the clean timestep (``context_noise``, 0) at its own temporal position, chunk-sized blocks in
        order; when ``F`` is not a multiple of the chunk, the leading ``F mod chunk`` frames go first in one call
        (its ``independent_first_frame`` branch: a lone image latent, then chunks). Nothing is sampled: the blocks
        are returned as the video's chunks, as given, and remembered for prompt-switch re-caching.
        Sampling then continues after them with the rollout's policy; positions count from the first given frame.
        """
        chunk = self.sampling.chunk_frames
        frames = latents.shape[2] if latents.dim() == 5 else 0
        if frames == 0 or tuple(latents.shape[3:]) != tuple(self.latent_shape[1:]):
            raise ValueError(f"prefill latents must be [B, {self.latent_shape[0]}, F >= 1, "
                             f"{self.latent_shape[1]}, {self.latent_shape[2]}], got {tuple(latents.shape)}")
        lead = frames % chunk
        whole = list(latents[:, :, lead:].split(chunk, dim=2)) if frames >= chunk else []
        blocks = ([latents[:, :, :lead]] if lead else []) + whole
        out = []
        for block in blocks:
            start = self.next_frame
            self._call(block, self.sampling.context_noise, start, clean=True)
            self._remember(block)  # re-cached at a prompt switch like a sampled chunk
            if block.shape[2] != chunk:
                self._prefill_offset += block.shape[2] - chunk
            out.append(ChunkResult(self.next_chunk, start, block, self.prompt_index))
            self.next_chunk += 1
        return out

    @torch.no_grad()
    def switch_prompt(self, context: object, *, keep_sink: bool = True, cut: bool = False) -> None:
        """Switch to a new prompt mid-stream (LongLive's KV re-cache unless the policy handles it).

        The new cross-attention state replaces the old one (the cross-attention cache reset). The policy hears of
        the switch first (:meth:`~deepforcing.cache.CachePolicy.react`; a ``"scene-cut"`` before it when ``cut``);
        if it handled it (∞-RoPE's KV flush), nothing else happens. Otherwise the cache is truncated to the sink
        (``keep_sink``) or emptied, and the remembered recent chunks are re-run at the clean timestep under the new
        prompt, at their own temporal positions, so the recent window's K/V are recomputed with the new prompt.
        """
        self.context = self._with_unconditional(context) if self.guided else context
        self.prompt_index += 1
        if cut:
            self.cache.notify(StreamEvent("scene-cut", self.next_frame))
        if self.cache.notify(StreamEvent("prompt-switch", self.next_frame)) == "handled":
            return
        if not self._recent:
            return
        chunk = self.sampling.chunk_frames
        window = self.policy.window
        sink = self.policy.sink_frames
        if keep_sink and sink and self.next_frame > window:
            count = min(len(self._recent), (window - sink) // chunk)
        else:  # nothing to keep yet (the sink is still being generated) or the sink is re-cached too
            keep_sink = False
            count = min(len(self._recent), window // chunk)
        recent = self._recent[len(self._recent) - count:]
        resume = self.next_frame - sum(latents.shape[2] for latents in recent)  # chunks (a prefill's lone frame: 1)
        self.cache.restart(resume_frame=resume, keep_sink=keep_sink)
        if self.sampling.recache == "joint":  # one pass, every frame sees all re-cached frames (LongLive)
            self._call(torch.cat(recent, dim=2), self.sampling.context_noise, resume, clean=True)
            return
        for latents in recent:
            self._call(latents, self.sampling.context_noise, resume, clean=True)
            resume += latents.shape[2]
