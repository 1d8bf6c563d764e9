"""Parity with LongLive 1.0's released inference (NVlabs/LongLive@2462895), recorded on a tiny random model by
``scripts/record_longlive_trace.py``: a 30-frame video (its 12-frame window rolling past the 3-frame sink) and a
30-frame video whose prompt switches at frame 15 (its KV re-cache, global sink kept).

Replayed through the ``longlive`` preset's sampler, policy and re-cache with our ``VideoRollout``, the release's
initial noise and every re-noise draw fed back in its order. Recorded latents must match to float32 rounding.
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
from test_causvid_parity import ReplayedNoise, _chunks

TRACE = Path(__file__).parent / "data" / "longlive_trace"
ATOL = 1e-5


@pytest.fixture(scope="module")
def replay():
    spec = get_preset("longlive")
    meta = json.loads((TRACE / "trace.json").read_text())
    assert (meta["local_attn_size"], meta["sink_size"], meta["shift"]) == (spec.window_frames,
                                                                          spec.policy_sizes["sink"], spec.shift)
    assert meta["denoising_step_list"] == list(spec.denoising_steps) and meta["warp"] == spec.warp
    sampling = SamplingConfig(denoising_steps=spec.denoising_steps, warp=spec.warp, shift=spec.shift,
                              chunk_frames=spec.chunk_frames, recache=spec.recache)
    model = load_causal_wan(TRACE)
    trace = load_file(str(TRACE / "trace.safetensors"))
    with torch.no_grad():
        contexts = {k: model.encode_context(trace[f"context_{k}"]) for k in ("first", "second")}
    policy = lambda: make_policy(spec.policy, window=spec.window_frames, **spec.policy_sizes)  # noqa: E731
    return model, sampling, contexts, trace, meta, policy


def _rollout(replay, noise_key, draws):
    model, sampling, contexts, trace, meta, policy = replay
    noise = ReplayedNoise(_chunks(trace[noise_key]), draws)
    return VideoRollout(model=model, policy=policy(), context=contexts["first"], sampling=sampling, noise=noise,
                        latent_shape=tuple(trace[noise_key].shape[2:])), noise


def test_rolling_window_with_its_sink_matches_the_release(replay):
    model, sampling, contexts, trace, meta, policy = replay
    rollout, noise = _rollout(replay, "noise_plain", trace["renoise"][: meta["renoise_draws_plain"]])
    with torch.no_grad():
        ours = torch.cat([rollout.step().latents for _ in range(meta["frames"] // 3)], dim=2).permute(0, 2, 1, 3, 4)
    assert not noise.initial_draws and not noise.renoise_draws
    err = (ours - trace["latents_plain"]).abs().max().item()
    assert err < ATOL, err


def test_prompt_switch_recache_matches_the_release(replay):
    model, sampling, contexts, trace, meta, policy = replay
    rollout, noise = _rollout(replay, "noise_switch", trace["renoise"][meta["renoise_draws_plain"]:])
    chunks = []
    with torch.no_grad():
        for i in range(meta["frames"] // 3):
            if i * 3 == meta["switch_frame"]:
                rollout.switch_prompt(contexts["second"], keep_sink=True)  # global_sink: the sink keeps prompt 1
            chunks.append(rollout.step().latents)
    ours = torch.cat(chunks, dim=2).permute(0, 2, 1, 3, 4)
    assert not noise.initial_draws and not noise.renoise_draws
    before = meta["switch_frame"]
    assert (ours[:, :before] - trace["latents_switch"][:, :before]).abs().max().item() < ATOL
    err = (ours - trace["latents_switch"]).abs().max().item()
    assert err < ATOL, err
