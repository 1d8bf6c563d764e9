"""The contract between models and the pipeline: what a model family hands the generator.

* :class:`SamplingConfig` — the sampler a model was trained for (steps, schedule, solver, guidance, chunk size);
* :class:`ModelBundle` — transformer + text encoder + codec + geometry + the product's default policy and prompt.

Model families (``deepforcing.models.bundle`` for Wan checkpoints, ``deepforcing.mini.bundle`` for the mini model)
build bundles; the pipeline consumes them. Living below the pipeline, this module keeps the layers one-way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported where it is used, so presets (which hold a SamplingConfig) load without it
    import torch

    from .schedule import FlowMatchSchedule

__all__ = ["SamplingConfig", "ModelBundle"]


@dataclass(frozen=True)
class SamplingConfig:
    """Few-step sampling settings (model presets hold the values; Self Forcing's are the defaults).

    Fields:
        denoising_steps: nominal steps (Self Forcing: 1000, 750, 500, 250).
        warp: map nominal steps onto the shifted training table (Self Forcing: True → ≈ 1000, 937.5, 833.3, 625).
        shift: flow-matching timestep shift (5.0).
        chunk_frames: latent frames generated per autoregressive step (3).
        context_noise: timestep of the clean-context pass (0 in every release).
        solver: ``"self-forcing"`` (x0 prediction, re-noise with fresh noise: the release's sampler) or ``"euler"``
            (flow ODE through the given timesteps, then to 0; ``denoising_steps`` are then the timesteps themselves
            and ``warp`` must be off).
        guidance: classifier-free guidance scale (1 = off, as for every Self Forcing release, whose DMD student
            has guidance distilled in). Above 1 each call runs the prompt and the empty prompt together (one batch,
            each with its own KV cache) and uses ``v_uncond + g (v_cond - v_uncond)``.
        recache: how a prompt switch recomputes the recent window's K/V under the new prompt: ``"chunkwise"``
            (chunk by chunk, each chunk seeing the sink, the chunks re-cached before it and itself, as they were
            generated) or ``"joint"`` (LongLive 1.0's ``_recache_after_switch``: the frames in one clean pass in
            which every frame attends the sink and all re-cached frames, no causal mask inside the pass).
        first_chunk_steps: nominal steps of chunk 0 only, warped like ``denoising_steps`` (``None``: the same as
            every chunk). Causal Forcing++'s 1- and 2-step frame-wise models denoise their first frame in 4 steps
            (its ``denoising_step_list_first_chunk``), since that frame has no context to lean on.
        first_chunk_guidance: guidance scale of chunk 0 only (``None``: ``guidance``). Chunk 0 is made from the
            prompt alone and once per video, so a guided first chunk costs one chunk's extra calls, not the video's
            (the unconditional branch of that chunk runs on a throwaway cache; later chunks are unguided).
        restart_overlap: 0 (the cache policy rolls one rollout as long as the video) or CausVid's long videos
            (``pipeline.restart``): the rollout restarts every policy window with a fresh cache and RoPE, from this
            many latent frames of the previous one (3 in its release; a multiple of ``chunk_frames``).
    """

    denoising_steps: tuple[float, ...] = (1000, 750, 500, 250)
    warp: bool = True
    shift: float = 5.0
    chunk_frames: int = 3
    context_noise: int = 0
    solver: str = "self-forcing"
    guidance: float = 1.0
    recache: str = "chunkwise"
    restart_overlap: int = 0
    first_chunk_steps: tuple[float, ...] | None = None
    first_chunk_guidance: float | None = None

    def __post_init__(self) -> None:
        if self.first_chunk_guidance is not None and not self.first_chunk_guidance >= 1.0:
            raise ValueError(f"first_chunk_guidance must be >= 1 (1 = off), got {self.first_chunk_guidance}")
        if self.first_chunk_steps is not None and not self.first_chunk_steps:
            raise ValueError("first_chunk_steps must be None (the same steps) or at least one step")
        if self.restart_overlap < 0 or self.restart_overlap % self.chunk_frames:
            raise ValueError(f"restart_overlap must be 0 or a positive multiple of chunk_frames "
                             f"({self.chunk_frames}), got {self.restart_overlap}")
        if self.recache not in ("chunkwise", "joint"):
            raise ValueError(f"unknown recache {self.recache!r}; use 'chunkwise' or 'joint'")
        if not self.denoising_steps:
            raise ValueError("at least one denoising step is needed")
        if self.chunk_frames <= 0:
            raise ValueError(f"chunk_frames must be positive, got {self.chunk_frames}")
        if not self.guidance >= 1.0:
            raise ValueError(f"guidance must be >= 1 (1 = off), got {self.guidance}")
        if self.solver not in ("self-forcing", "euler", "rolling-forcing"):
            raise ValueError(f"unknown solver {self.solver!r}; use 'self-forcing', 'euler' or 'rolling-forcing'")
        if self.solver == "euler":
            if self.warp:
                raise ValueError("the euler solver takes its timesteps as given; set warp=False")
            for steps in (list(self.denoising_steps), list(self.first_chunk_steps or [1])):
                if any(b >= a for a, b in zip(steps, steps[1:])) or steps[-1] <= 0:
                    raise ValueError(f"euler timesteps must decrease strictly and stay above 0, got {steps}")

    @property
    def needs_unconditional(self) -> bool:
        """Whether any chunk is guided, so the rollout needs the empty prompt's context."""
        return self.guidance > 1.0 or (self.first_chunk_guidance or 1.0) > 1.0

    def timesteps(self, schedule: FlowMatchSchedule, chunk: int | None = None) -> torch.Tensor:
        """The timesteps of every chunk, or of chunk ``chunk`` (chunk 0 may have its own)."""
        import torch

        steps = self.first_chunk_steps if chunk == 0 and self.first_chunk_steps else self.denoising_steps
        if self.warp:
            return schedule.warp(steps)
        return torch.tensor(steps, dtype=torch.float32)


@dataclass
class ModelBundle:
    """Everything model-specific the generator needs.

    Attributes:
        name: human-readable model name (recorded in the sidecar).
        transformer: causal chunk model (``CausalWanTransformer``).
        encode_text: prompts → text-encoder output ``[B, n, text_dim]``.
        codec: has ``streaming_decoder()`` returning an object with ``reset()`` and
            ``decode_chunk(latents [B, f, C, h, w]) -> pixels [B, T, 3, H, W]`` in [-1, 1].
        latent_shape: ``(C, h, w)`` of one latent frame.
        sampling: few-step schedule of the preset.
        fps: output frame rate.
        temporal_scale: pixel frames per latent frame after the first (Wan VAE: 4; pixels: 1).
        display_scale: integer nearest-neighbour upscale applied to written frames (tiny models).
        default_policy: policy name and sizes used when the user names none.
        start_condition: ``(prompts, seeds) -> [B, Cc, Fc, h, w]`` extra input channels for the video's first ``Fc``
            latent frames (later frames get zeros there), concatenated to the latents as Wan2.1's image-to-video
            model takes its first frame; ``None`` for a model without condition channels. The mini model v5 gives
            the start layout of its prompt here (``deepforcing.mini.layout``).
    """

    name: str
    transformer: torch.nn.Module
    encode_text: Callable[[list[str]], torch.Tensor]
    codec: object
    latent_shape: tuple[int, int, int]
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    fps: int = 16
    temporal_scale: int = 4
    display_scale: int = 1
    default_policy: dict = field(default_factory=lambda: {"name": "deep-forcing"})
    default_prompt: str = ""
    start_condition: Callable[[list[str], list[int]], torch.Tensor | None] | None = None

    def pixel_frames(self, latent_frames: int) -> int:
        """Causal VAE frame count: ``1 + scale * (F - 1)`` (identity codec: ``F``)."""
        return latent_frames if self.temporal_scale == 1 else 1 + self.temporal_scale * (latent_frames - 1)

    def latent_frames_for_seconds(self, seconds: float) -> int:
        pixels = max(1, round(seconds * self.fps))
        if self.temporal_scale == 1:
            return pixels
        return 1 + math.ceil((pixels - 1) / self.temporal_scale)
