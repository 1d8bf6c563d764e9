"""Shared by the release-trace tests (``test_*_trace.py``, ``test_*_parity.py``): loading a recorded trace and
replaying it through the engine's ``VideoRollout`` with the trace's weights, noise and re-noising draws."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_trace(folder: Path) -> tuple[dict, dict]:
    """``folder``'s ``trace.json`` and ``trace.safetensors``."""
    return json.loads((folder / "trace.json").read_text()), load_file(str(folder / "trace.safetensors"))


def replay_rollout(folder: Path, meta: dict, t: dict, policy, chunk_frames: int):
    """The trace in ``folder`` replayed through a ``VideoRollout`` of ``policy`` (Self Forcing's sampling,
    ``chunk_frames`` per chunk) for all ``meta["frames"]``: the latents ``[B, F, C, H, W]`` and the rollout."""
    from deepforcing.models.contract import SamplingConfig
    from deepforcing.models.loading import load_causal_wan
    from deepforcing.models.presets import get_preset
    from deepforcing.pipeline.rollout import VideoRollout
    from test_causvid_parity import ReplayedNoise, _chunks

    spec = get_preset("self-forcing")
    sampling = SamplingConfig(denoising_steps=spec.denoising_steps, warp=spec.warp, shift=spec.shift,
                              chunk_frames=chunk_frames)
    model = load_causal_wan(folder)
    with torch.no_grad():
        rollout = VideoRollout(model=model, policy=policy, context=model.encode_context(t["context"]),
                               latent_shape=tuple(t["noise"].shape[2:]), sampling=sampling,
                               noise=ReplayedNoise(_chunks(t["noise"]), t["renoise"]))
        ours = torch.cat([rollout.step().latents for _ in range(meta["frames"] // 3)], dim=2).permute(0, 2, 1, 3, 4)
    return ours, rollout


def per_chunk_error(ours: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """The largest absolute difference of each 3-frame chunk."""
    return (ours - latents).abs().amax(dim=(0, 2, 3, 4)).view(-1, 3).amax(dim=1)
