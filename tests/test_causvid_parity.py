"""Parity with CausVid's released inference (tianweiy/CausVid@ca21150), recorded on a tiny random model by
``scripts/record_causvid_trace.py``: two chained 21-frame rollouts, the second started from 3 given latents.

Replayed through the ``causvid`` preset's sampler and our own loops (``VideoRollout`` for the first rollout,
``RestartingRollout`` for the chain), with the release's initial noise and every re-noise draw fed back in the order
it drew them. Recorded latents must match to float32 rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepforcing.cache import make_policy
from deepforcing.mini.codec import PixelCodec
from deepforcing.models.contract import SamplingConfig
from deepforcing.models.loading import load_causal_wan
from deepforcing.models.presets import get_preset
from deepforcing.pipeline.restart import RestartingRollout
from deepforcing.pipeline.rollout import VideoRollout

TRACE = Path(__file__).parent / "data" / "causvid_trace"
ATOL = 1e-5


class ReplayedNoise:
    """The release's draws in the order it made them: initial chunk noise, then re-noise between steps."""

    def __init__(self, initial: list[torch.Tensor], renoise: list[torch.Tensor]) -> None:
        self.initial_draws, self.renoise_draws = list(initial), list(renoise)

    def initial(self, chunk, shape):
        x = self.initial_draws.pop(0)
        assert tuple(x.shape) == tuple(shape)
        return x

    def renoise(self, chunk, step, shape):
        x = self.renoise_draws.pop(0)  # release layout [f, C, h, w] (its latents flattened over B * f)
        return x.permute(1, 0, 2, 3)[None]


def _chunks(noise: torch.Tensor, first: int = 0) -> list[torch.Tensor]:
    """[1, T, C, h, w] -> per-chunk [1, C, 3, h, w] from chunk ``first`` on."""
    return [c.permute(0, 2, 1, 3, 4) for c in noise.split(3, dim=1)[first:]]


@pytest.fixture(scope="module")
def replay():
    spec = get_preset("causvid")
    sampling = SamplingConfig(denoising_steps=spec.denoising_steps, warp=spec.warp, shift=spec.shift,
                              chunk_frames=spec.chunk_frames, restart_overlap=spec.restart_overlap)
    model = load_causal_wan(TRACE)
    trace = load_file(str(TRACE / "trace.safetensors"))
    meta = json.loads((TRACE / "trace.json").read_text())
    with torch.no_grad():
        context = model.encode_context(trace["context"])
    return model, sampling, context, trace, meta


def test_first_rollout_matches_the_release(replay):
    model, sampling, context, trace, meta = replay
    assert meta["denoising_step_list"][:-1] == list(sampling.denoising_steps) and meta["shift"] == sampling.shift
    noise = ReplayedNoise(_chunks(trace["noise_first"]), trace["renoise"][: meta["renoise_draws_first_rollout"]])
    rollout = VideoRollout(model=model, policy=make_policy("self-forcing", window=21), context=context,
                           latent_shape=tuple(trace["noise_first"].shape[2:]), sampling=sampling, noise=noise)
    ours = torch.cat([rollout.step().latents for _ in range(7)], dim=2).permute(0, 2, 1, 3, 4)
    assert not noise.initial_draws and not noise.renoise_draws  # every draw used, in the release's order
    err = (ours - trace["latents_first"]).abs().max().item()
    assert err < ATOL, err


def test_restarted_rollout_matches_the_release_given_its_start_latents(replay):
    """The chain: a fresh cache and RoPE from 0, the 3 start latents written at t = 0 as one prefix chunk, then the
    window's 6 other chunks sampled after it (the release's ``start_latents`` path)."""
    model, sampling, context, trace, meta = replay
    noise = ReplayedNoise(_chunks(trace["noise_first"]) + _chunks(trace["noise_second"], first=1), trace["renoise"])
    start = trace["start_latents"].permute(0, 2, 1, 3, 4)
    chain = RestartingRollout(model=model, policy=make_policy("self-forcing", window=21), context=context,
                              latent_shape=tuple(trace["noise_first"].shape[2:]), codec=PixelCodec(),
                              temporal_scale=1, sampling=sampling, noise=noise)
    chain._next_prefix = lambda: start  # the recording gave the release these in place of its VAE re-encode
    first = torch.cat([chain.step().latents for _ in range(7)], dim=2)
    second = torch.cat([chain.step().latents for _ in range(7)], dim=2).permute(0, 2, 1, 3, 4)
    assert chain.segment == 1 and not noise.initial_draws and not noise.renoise_draws
    assert (first.permute(0, 2, 1, 3, 4) - trace["latents_first"]).abs().max().item() < ATOL
    assert torch.equal(second[:, :3], trace["latents_second"][:, :3])  # the prefix is output as given
    err = (second - trace["latents_second"]).abs().max().item()
    assert err < ATOL, err
