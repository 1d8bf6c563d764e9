"""CausVid's long videos: restart the rollout every window, conditioned on a few frames of the previous one.

CausVid's release (``tianweiy/CausVid`` ``minimal_inference/longvideo_autoregressive_inference.py`` with
``causvid/models/wan/causal_inference.py``) never rolls its cache. A long video is a sequence of *segments*, each
one ordinary rollout of one window (21 latent frames) with a fresh cache whose RoPE positions start again at 0:

1. segment ``k > 0`` starts from ``overlap`` latent frames (3 in the release), written into the fresh cache at the
   clean timestep, one chunk per call, as prefix chunks: the previous segment's decoded pixel frame at index
   ``-(s (overlap - 1) + 1)`` re-encoded alone by the VAE (``s`` = the VAE's temporal scale, 4 for Wan: pixel frame
   -9; a lone frame encodes as the VAE's first, image-like latent), then the previous segment's last
   ``overlap - 1`` latents;
2. the rest of the window is sampled as usual, each chunk seeing the prefix and the chunks before it;
3. the segment is decoded on its own (a fresh decoder: its first latent is that re-encoded image latent), and its
   last ``s (overlap - 1) + 1`` pixel frames are dropped — the next segment's prefix decodes to them again.

So every segment after the first emits its prefix's frames in place of the previous segment's dropped tail. The
release also drops the tail of the last segment (each of its rollouts is a fixed 21 frames); here the video ends
where the requested length ends, so the last segment keeps its tail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from deepforcing.cache import CachePolicy
from deepforcing.models.contract import SamplingConfig

from .rollout import ChunkResult, GaussianNoise, NoiseSource, VideoRollout

__all__ = ["RestartingRollout"]


@dataclass
class RestartingRollout:
    """A long video made of window-long :class:`VideoRollout` segments (module docstring). Its chunks carry their
    decoded ``frames`` (the segment's own decoder, with the tail dropped), so the caller does not decode them.

    ``codec`` needs ``encode_chunk`` (pixels ``[B, T, 3, H, W]`` in [-1, 1] -> latents ``[B, F, C, h, w]``) and
    ``streaming_decoder``; ``temporal_scale`` is its pixel frames per latent frame.
    """

    model: object
    policy: CachePolicy
    context: object
    latent_shape: tuple[int, int, int]
    codec: object
    temporal_scale: int
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seeds: Sequence[int] = (0,)
    device: torch.device | str = "cpu"
    noise: NoiseSource | None = None
    uncond_context: object = None
    record_events: bool = False
    max_frames: int | None = None  # the video's length in latent frames when known (its last tail is kept)

    def __post_init__(self) -> None:
        chunk, overlap = self.sampling.chunk_frames, self.sampling.restart_overlap
        self.window = self.policy.window
        if overlap <= 0 or overlap % chunk:
            raise ValueError(f"restart_overlap must be a positive multiple of the chunk ({chunk} frames), got {overlap}")
        if self.window % chunk or self.window <= overlap:
            raise ValueError(f"a restarting rollout needs a window of whole chunks longer than its {overlap}-frame "
                             f"overlap, got {self.window}")
        if self.noise is None:  # one stream for the whole video: segments draw from it in turn
            self.noise = GaussianNoise(self.seeds, device=self.device)
        self.tail_pixels = self.temporal_scale * (overlap - 1) + 1  # dropped at a segment's end (9 for Wan)
        self.segment_pixels = self.codec.num_pixel_frames(self.window)  # decoded frames of one segment (81 for Wan)
        self.segment = -1
        self.next_chunk = 0  # over the whole video
        self.prompt_index = 0
        self._frames_done = 0
        self._open_segment(prefix=None)

    # ------------------------------------------------------------------ segments
    def _open_segment(self, prefix: torch.Tensor | None) -> None:
        self.segment += 1
        observer = self.rollout.cache.attention_observer if self.segment else None  # kept across segments
        self.rollout = VideoRollout(model=self.model, policy=self.policy, context=self.context,
                                    latent_shape=self.latent_shape, sampling=self.sampling, noise=self.noise,
                                    seeds=self.seeds, device=self.device, record_events=self.record_events,
                                    max_frames=self.window, uncond_context=self.uncond_context)
        if observer is not None:
            self.rollout.cache.attention_observer = observer
        self.decoder = self.codec.streaming_decoder()
        self.decoder.reset()
        self._latents: list[torch.Tensor] = []  # this segment's clean latents, chunk by chunk
        self._held: list[torch.Tensor] = []  # its decoded tail frames, not emitted
        self._emitted = 0  # its pixel frames emitted so far
        self._prefix = list(prefix.split(self.sampling.chunk_frames, dim=2)) if prefix is not None else []

    @property
    def cache(self):
        return self.rollout.cache

    @property
    def next_frame(self) -> int:
        """Latent frames of the video finished so far (a prefix chunk re-makes frames and adds none)."""
        return self._frames_done

    def _next_prefix(self) -> torch.Tensor:
        """``[B, C, overlap, h, w]``: the re-encoded pixel frame and the last ``overlap - 1`` latents."""
        first = torch.cat(self._held, dim=1)[:, :1]  # [B, 1, 3, H, W]: the first frame of the dropped tail
        image_latent = self.codec.encode_chunk(first).permute(0, 2, 1, 3, 4)  # [B, C, 1, h, w]
        keep = self.sampling.restart_overlap - 1
        last = torch.cat(self._latents, dim=2)[:, :, -keep:] if keep else image_latent[:, :, :0]
        return torch.cat([image_latent.to(last.dtype), last], dim=2)

    @torch.no_grad()
    def step(self) -> ChunkResult:
        """The next chunk of the video: a prefix chunk (written at the clean timestep) or a sampled one."""
        if self.rollout.next_frame >= self.window:
            self._open_segment(self._next_prefix())
        r = self.rollout
        f0 = r.next_frame
        if self._prefix:  # CausVid feeds the prefix blocks one per call, at t = context_noise (0): a prefill
            latents = self._prefix.pop(0)
            r.prefill(latents)
        else:
            latents = r.step().latents
        self._latents.append(latents)
        frames = self.decoder.decode_chunk(latents.permute(0, 2, 1, 3, 4))
        # pixel frames of this segment from index `keep` on are its tail: held back, and re-made by the next prefix
        keep = self.segment_pixels - self.tail_pixels
        cut = min(frames.shape[1], max(0, keep - self._emitted))
        self._held.append(frames[:, cut:])
        frames = frames[:, :cut]
        self._emitted += frames.shape[1]
        self.next_chunk += 1
        start = self.segment * (self.window - self.sampling.restart_overlap) + f0
        self._frames_done = max(self._frames_done, start + latents.shape[2])
        if self.max_frames is not None and start + latents.shape[2] >= self.max_frames:
            frames = torch.cat([frames, *self._held], dim=1)  # the video ends here: nothing re-makes the tail
        return ChunkResult(self.next_chunk - 1, start, latents, self.prompt_index, frames=frames)

    def switch_prompt(self, context: object, *, keep_sink: bool = True, cut: bool = False) -> None:
        """A new prompt from this chunk on, for this segment (LongLive's re-cache) and every later one."""
        self.context = context
        self.prompt_index += 1
        self.rollout.switch_prompt(context, keep_sink=keep_sink, cut=cut)
