"""Parity with Causal Forcing's released inference (thu-ml/Causal-Forcing@1fc7bbc), recorded on a tiny random model
by ``scripts/record_causal_forcing_trace.py``: 21 frames one at a time with 2 or 1 steps after a 4-step first frame
(Causal Forcing++), and 21 frames in blocks of 3 with 4 steps (chunk-wise). Replayed through the presets
``causal-forcing++-2step`` / ``-1step`` / ``causal-forcing`` with our ``VideoRollout``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepforcing.cache import make_policy
from deepforcing.models.contract import SamplingConfig
from deepforcing.models.loading import load_causal_wan
from deepforcing.models.presets import get_preset
from deepforcing.pipeline.rollout import VideoRollout
from test_causvid_parity import ReplayedNoise

TRACE = Path(__file__).parent / "data" / "causal_forcing_trace"
ATOL = 1e-5


@pytest.mark.parametrize("variant, preset", [("2step", "causal-forcing++-2step"), ("1step", "causal-forcing++-1step"),
                                             ("chunkwise", "causal-forcing")])
def test_rollout_matches_the_release(variant, preset):
    spec = get_preset(preset)
    meta = json.loads((TRACE / "trace.json").read_text())
    recorded = meta["variants"][variant]
    assert recorded["denoising_step_list"] == list(spec.denoising_steps) and meta["shift"] == spec.shift
    assert recorded["first_chunk_steps"] == list(spec.first_chunk_steps or []) and recorded["chunk_frames"] == \
        spec.chunk_frames
    sampling = SamplingConfig(denoising_steps=spec.denoising_steps, first_chunk_steps=spec.first_chunk_steps,
                              warp=spec.warp, shift=spec.shift, chunk_frames=spec.chunk_frames)
    model = load_causal_wan(TRACE)
    trace = load_file(str(TRACE / "trace.safetensors"))
    frames = meta["frames"]
    chunk = spec.chunk_frames
    noise = ReplayedNoise([f.permute(0, 2, 1, 3, 4) for f in trace["noise"].split(chunk, dim=1)],
                          list(trace[f"renoise_{variant}"]))
    with torch.no_grad():
        rollout = VideoRollout(model=model, policy=make_policy(spec.policy, window=spec.window_frames),
                               context=model.encode_context(trace["context"]), sampling=sampling, noise=noise,
                               latent_shape=tuple(trace["noise"].shape[2:]))
        ours = torch.cat([rollout.step().latents for _ in range(frames // chunk)], dim=2).permute(0, 2, 1, 3, 4)
    assert not noise.initial_draws and not noise.renoise_draws
    err = (ours - trace[f"latents_{variant}"]).abs().max().item()
    assert err < ATOL, err
