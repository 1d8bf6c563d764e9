"""Rolling Forcing's inference: a rolling window of chunks denoised jointly at staggered noise levels.

Rolling Forcing (its release, ``TencentARC/RollingForcing`` ``pipeline/rolling_forcing_inference.py`` and
``wan/modules/causal_model.py``) is not a cache policy on top of Self Forcing's loop but a different loop:

* with ``K`` denoising steps ``t_0 > ... > t_{K-1}`` (5 in the release, warped: 1000, 952.4, 882.4, 769.2, 555.6),
  window ``w`` holds chunks ``s = max(0, w - K + 1) .. e = min(n - 1, w)``; chunk ``b`` sits at ``t_{w - b}`` — the
  newest enters as fresh noise at ``t_0``, the oldest leaves at ``t_{K-1}`` with its final x0 (there is no step at 0);
  ``n + K - 1`` windows make a video of ``n`` chunks;
* one model call denoises the whole window (attention is bidirectional inside it); every chunk that is not final is
  re-noised to its next level with fresh noise; then one clean pass (t = 0) on the window's oldest chunk writes its
  keys/values to the cache;
* the cache (:class:`~deepforcing.cache.rolling.RollingCache`): the first chunk is an *anchor* (sink), re-placed in
  time right before the working chunks at every noisy call; the working chunks are the clean chunks just before the
  window, as many as fit ``attention_frames`` (21) with the anchor and the window; the clean pass attends to the last
  ``attention_frames`` cached frames (the anchor only while it is among them, at its own position).

The model is the same :class:`~deepforcing.models.wan_causal.CausalWanTransformer` (it talks to any object with
``begin_call`` and ``layers[i].attention``). Noise comes from the pipeline's seeded stream, so videos are reproducible
but not seed-for-seed equal to the release's (which draws a window-sized tensor per re-noised chunk).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from deepforcing.cache.rolling import RollingCache
from deepforcing.models.contract import SamplingConfig
from deepforcing.models.schedule import FlowMatchSchedule

from .rollout import ChunkResult, GaussianNoise, NoiseSource

__all__ = ["RollingCache", "RollingForcingRollout", "rolling_windows"]


def rolling_windows(chunks: int, steps: int) -> list[tuple[int, int]]:
    """``(first, last)`` chunk of every window for a video of ``chunks`` chunks and ``steps`` denoising steps."""
    if chunks < steps:
        raise ValueError(f"Rolling Forcing needs at least {steps} chunks (its window), got {chunks}; generate at "
                         f"least {steps} chunks")
    return [(max(0, w - steps + 1), min(chunks - 1, w)) for w in range(chunks + steps - 1)]


@dataclass
class RollingForcingRollout:
    """One video by Rolling Forcing's loop; :meth:`step` returns the next finished chunk (as ``VideoRollout``).

    ``num_chunks`` must be known up front (the last windows ramp down); ``sampling.denoising_steps`` are the window's
    noise levels (warped through ``sampling.shift`` when ``sampling.warp``).
    """

    model: object
    context: object
    latent_shape: tuple[int, int, int]
    num_chunks: int
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    attention_frames: int = 21
    noise: NoiseSource | None = None
    seeds: Sequence[int] = (0,)
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        self.schedule = FlowMatchSchedule(shift=self.sampling.shift)
        self.steps = self.sampling.timesteps(self.schedule).tolist()
        self.windows = rolling_windows(self.num_chunks, len(self.steps))
        self.cache = RollingCache(self.model.num_layers, self.sampling.chunk_frames, self.model.rope3d.temporal,
                                  self.attention_frames)
        if self.noise is None:
            self.noise = GaussianNoise(self.seeds, device=self.device, dtype=self.dtype)
        self.batch = len(self.seeds)
        self._window = 0
        self._noisy: dict[int, torch.Tensor] = {}
        self._done: list[ChunkResult] = []
        self.next_chunk = 0

    @property
    def next_frame(self) -> int:
        return self.next_chunk * self.sampling.chunk_frames

    def _shape(self) -> tuple[int, ...]:
        c, h, w = self.latent_shape
        return (self.batch, c, self.sampling.chunk_frames, h, w)

    @torch.no_grad()
    def _run_window(self) -> None:
        w = self._window
        first, last = self.windows[w]
        K, P = len(self.steps), self.sampling.chunk_frames
        if last == w:  # a new chunk enters as pure noise
            self._noisy[last] = self.noise.initial(last, self._shape())
        x = torch.cat([self._noisy[b] for b in range(first, last + 1)], dim=2)
        t = torch.tensor([self.steps[w - b] for b in range(first, last + 1) for _ in range(P)],
                         dtype=torch.float32, device=x.device).expand(self.batch, -1)
        flow = self.model(x, t, self.context, self.cache, first * P, clean=False)
        oldest = None
        for i, b in enumerate(range(first, last + 1)):
            level = w - b
            x0 = self.schedule.x0_from_flow(x[:, :, i * P:(i + 1) * P], flow[:, :, i * P:(i + 1) * P],
                                            self.steps[level])
            if b == first:
                oldest = x0
            if level == K - 1:  # leaves the window: final
                self._done.append(ChunkResult(b, b * P, x0))
                del self._noisy[b]
            else:
                self._noisy[b] = self.schedule.add_noise(x0, self.noise.renoise(b, level, x0.shape),
                                                         self.steps[level + 1])
        zero = torch.zeros(self.batch, P, dtype=torch.float32, device=x.device)
        self.model(oldest, zero + self.sampling.context_noise, self.context, self.cache, first * P, clean=True)
        self._window += 1

    def step(self) -> ChunkResult:
        """Advance windows until the next chunk is final, and return it."""
        if self.next_chunk >= self.num_chunks:
            raise RuntimeError(f"all {self.num_chunks} chunks of this video are generated")
        while not self._done:
            self._run_window()
        self.next_chunk += 1
        return self._done.pop(0)

    def chunks(self, num_chunks: int) -> Iterator[ChunkResult]:
        for _ in range(num_chunks):
            yield self.step()

    def switch_prompt(self, context: object, *, keep_sink: bool = True, cut: bool = False) -> None:
        raise ValueError("Rolling Forcing's loop denoises several chunks at once; prompt timelines are not supported "
                         "with it")
