"""Calibrating TriAttention for a checkpoint: the mean pre-RoPE query per (layer, head) over a generated video, as
the release makes ``longlive/assets/calibration_stats_81f.pt`` (``WeianMao/triattention`` @ c3744ee,
``longlive/patches.py`` ``_patch_interactive_causal_inference_for_calibration`` with ``kv_compression_mode:
calibrate``; ``longlive/kv_compression.py`` ``QStatsAccumulator``):

* one video of 81 latent frames (the shipped file's ``num_frames``) with the model's own few-step sampler;
* global attention (the release's ``local_attn_size: -1`` in calibrate mode): the ``full`` cache policy;
* every self-attention call counts, the denoising steps and the clean-context pass alike: the queries after the
  query projection and its RMSNorm, before RoPE (a pre-hook per block in the release, a hook on the query
  projection here), summed as complex pairs per (layer, head), divided by the tokens seen.

The result is the release's file format (:class:`~deepforcing.cache.triattention_stats.QueryStatsAccumulator`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from deepforcing.cache import make_policy
from deepforcing.cache.triattention_stats import QueryStatsAccumulator
from deepforcing.models.contract import SamplingConfig

__all__ = ["CALIBRATION_FRAMES", "collect_query_stats", "calibrate_triattention"]

CALIBRATION_FRAMES = 81
"""Latent frames of the release's calibration video (``calibration_stats_81f.pt`` metadata ``num_frames``)."""


class _QueryTap:
    """Forward hooks on every block's self-attention query projection: the normalised pre-RoPE queries of each call
    go to ``stats`` (``[B, n, heads, head_dim]``)."""

    def __init__(self, model: torch.nn.Module, stats: QueryStatsAccumulator) -> None:
        from deepforcing.models.wan_causal import _rms_norm

        self.handles = []
        heads, head_dim = model.num_heads, model.head_dim
        for i, block in enumerate(model.blocks):
            attn = block.attn1

            def hook(module, inputs, output, i=i, attn=attn):
                q = _rms_norm(output, attn.norm_q)
                stats.add(i, q.unflatten(-1, (heads, head_dim)))

            self.handles.append(attn.to_q.register_forward_hook(hook))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def collect_query_stats(model, *, context, latent_shape: tuple[int, int, int], sampling: SamplingConfig,
                        frames: int = CALIBRATION_FRAMES, noise=None, seed: int = 0) -> QueryStatsAccumulator:
    """Generate ``frames`` latent frames with global attention and return the summed pre-RoPE queries.

    ``noise`` replaces the Gaussian noise stream (a :class:`~deepforcing.pipeline.rollout.NoiseSource`, e.g. a
    release's recorded draws); ``frames`` is rounded up to whole chunks."""
    from deepforcing.pipeline.rollout import VideoRollout


    stats = QueryStatsAccumulator(model.num_layers, model.num_heads, model.head_dim)
    chunks = -(-frames // sampling.chunk_frames)
    tap = _QueryTap(model, stats)
    try:
        with torch.no_grad():
            rollout = VideoRollout(model=model, policy=make_policy("full"), context=context, sampling=sampling,
                                   latent_shape=tuple(latent_shape), noise=noise, seeds=(seed,),
                                   max_frames=chunks * sampling.chunk_frames)
            for _ in range(chunks):
                rollout.step()
    finally:
        tap.remove()
    return stats


def calibrate_triattention(gen, prompt: str | None, out: str | Path, *, frames: int = CALIBRATION_FRAMES,
                           seed: int = 0) -> tuple[Path, QueryStatsAccumulator]:
    """Generate one ``frames``-frame video of ``gen`` (a :class:`~deepforcing.pipeline.generate.VideoGenerator`;
    ``prompt`` ``None``: the model's default prompt) with global attention and write its query statistics to
    ``out`` in the release's format. Returns the path and the statistics."""
    model = gen.bundle.transformer
    sampling = gen.bundle.sampling
    if sampling.guidance > 1.0 or (sampling.first_chunk_guidance or 1.0) > 1.0:
        raise ValueError("triattention calibration runs the model's sampler without classifier-free guidance, as the "
                         "release's LongLive has none; this preset guides its chunks")
    stats = QueryStatsAccumulator(model.num_layers, model.num_heads, model.head_dim)
    tap = _QueryTap(model, stats)
    try:
        for _ in gen.stream(prompt, latent_frames=frames, policy=make_policy("full"), seed=seed):
            pass
    finally:
        tap.remove()
    chunk = sampling.chunk_frames
    path = stats.save(out, {"model_name": gen.bundle.name, "num_frames": -(-frames // chunk) * chunk,
                            "num_blocks": model.num_layers, "num_frame_per_block": chunk,
                            "denoising_step_list": [int(s) for s in sampling.denoising_steps],
                            "source": "deepforcing calibrate --policy triattention (global attention, every call)"})
    return path, stats
