"""A Forcing-KV head profile for a checkpoint (arXiv 2605.09681; release ``zju-jiyicheng/Forcing-KV`` @ 50ac1f4,
``configs_head/head_profile.py``), made through the engine's own model:

* one video of ``CALIBRATION_FRAMES`` (21, Self Forcing's length) latent frames with the model's own sampler and
  global attention (the ``self-forcing`` cache with a window of the whole video, as the release's plain Self Forcing
  with ``local_attn_size -1``);
* at the last chunk's clean pass, per layer and head, the softmax attention of the chunk's queries over every key
  the layer reads, summed over each key frame's tokens (what ``head_profile.py`` reads; the release's nearest
  producer is ``wan/modules/attention_map.py:save_head_attention_map_v2``), in float32;
* per head :func:`~deepforcing.cache.forcing_kv.static_share` (mass on the last 4 key frames over mass on key frames
  ``[3:]``, the shipped profiles' ``naive_sink_3``) and the threshold 0.8: the JSON ``head_profile.py`` writes.

``tests/test_forcing_kv_calibration.py`` checks that on the tiny model of the release trace this gives the JSON the
release's own script gave (``tests/data/forcing_kv_trace/heads.json``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from deepforcing.cache import make_policy
from deepforcing.cache.forcing_kv import (LAST_K, SKIP_FIRST_K, THRESHOLD, head_profile_json, static_share,
                                          write_head_profile)

__all__ = ["CALIBRATION_FRAMES", "HeadProfileProbe", "calibration_policy", "calibrate_forcing_kv",
           "collect_head_shares"]

CALIBRATION_FRAMES = 21
"""Latent frames of the profiling video: Self Forcing's training length (the shipped profiles are for 21-frame
Self Forcing-family models; the statistic needs more than ``SKIP_FIRST_K`` key frames)."""


class HeadProfileProbe:
    """An attention observer (``KVCache.attention_observer``): at the clean pass of the chunk starting at latent frame
    ``chunk_start``, per layer ``[heads, queries, key frames]`` attention mass of batch 0 (softmax rows in blocks of
    ``block`` queries), in ``mass[layer]``."""

    def __init__(self, chunk_start: int, block: int = 256) -> None:
        self.chunk_start, self.block = chunk_start, block
        self.mass: dict[int, torch.Tensor] = {}

    def __call__(self, layer_cache, call, q: torch.Tensor) -> None:
        if not call.clean or call.start_frame != self.chunk_start:
            return
        keys, _ = layer_cache.attended
        k = keys[0].float()  # [H, L, D]
        frames = layer_cache.store.frames()[0, : k.shape[1]]
        order, slot_frame = torch.unique(frames, sorted=True, return_inverse=True)
        qq = q[0].float()  # [H, n, D]
        mass = torch.zeros(k.shape[0], qq.shape[1], len(order))
        scale = 1.0 / math.sqrt(k.shape[-1])
        for s in range(0, qq.shape[1], self.block):
            w = torch.softmax(qq[:, s : s + self.block] @ k.transpose(1, 2) * scale, dim=-1)
            mass[:, s : s + self.block].index_add_(2, slot_frame.to(w.device), w)
        self.mass[layer_cache.index] = mass.cpu()

    def frame_mass(self) -> torch.Tensor:
        """``[layers, heads, queries, key frames]``."""
        if not self.mass:
            raise RuntimeError(f"no clean pass of the chunk at frame {self.chunk_start} was observed")
        return torch.stack([self.mass[i] for i in sorted(self.mass)])

    def shares(self, last: int = LAST_K, skip: int = SKIP_FIRST_K) -> torch.Tensor:
        """``[layers, heads]`` :func:`~deepforcing.cache.forcing_kv.static_share`."""
        return static_share(self.frame_mass(), last, skip)


def calibration_policy(frames: int):
    """Global attention over a ``frames``-frame video: Self Forcing's cache with a window of the whole video."""
    return make_policy("self-forcing", window=frames)


def _check_frames(frames: int, chunk: int) -> None:
    if frames % chunk or frames <= SKIP_FIRST_K + chunk:
        raise ValueError(f"--frames must be a multiple of the {chunk}-frame chunk and more than {SKIP_FIRST_K + chunk} "
                         f"(the statistic skips the first {SKIP_FIRST_K} key frames), got {frames}")


def collect_head_shares(model, *, context, latent_shape: tuple[int, int, int], sampling,
                        frames: int = CALIBRATION_FRAMES, seed: int = 0) -> torch.Tensor:
    """The ``[layers, heads]`` static shares of a causal chunk model without a generator around it (a bare
    transformer and its prompt context, e.g. ``benchmarks/policy_chunk_cost.py``'s random model): the same
    ``frames``-frame global-attention rollout and probe as :func:`calibrate_forcing_kv`, through
    :class:`~deepforcing.pipeline.rollout.VideoRollout` with Gaussian noise from ``seed``."""
    from deepforcing.pipeline.rollout import VideoRollout

    _check_frames(frames, sampling.chunk_frames)
    probe = HeadProfileProbe(chunk_start=frames - sampling.chunk_frames)
    with torch.no_grad():
        rollout = VideoRollout(model=model, policy=calibration_policy(frames), context=context, sampling=sampling,
                               latent_shape=tuple(latent_shape), seeds=(seed,), max_frames=frames)
        rollout.cache.attention_observer = probe
        for _ in range(frames // sampling.chunk_frames):
            rollout.step()
    return probe.shares()


def calibrate_forcing_kv(gen, prompt: str | None, out: str | Path, *, frames: int = CALIBRATION_FRAMES,
                         seed: int = 0, threshold: float = THRESHOLD) -> tuple[dict, torch.Tensor]:
    """Roll out one ``frames``-frame video of ``gen`` (a :class:`~deepforcing.pipeline.generate.VideoGenerator`),
    profile its heads at the last chunk's clean pass and write the head profile JSON to ``out``. Returns the profile
    and the ``[layers, heads]`` shares."""
    chunk = gen.bundle.sampling.chunk_frames
    _check_frames(frames, chunk)
    probe = HeadProfileProbe(chunk_start=frames - chunk)
    for _ in gen.stream(prompt, latent_frames=frames, policy=calibration_policy(frames), seed=seed,
                        attention_observer=probe):
        pass
    shares = probe.shares()
    profile = head_profile_json(shares, threshold)
    write_head_profile(out, profile)
    return profile, shares
