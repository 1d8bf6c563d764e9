"""Parity with Self Forcing's released ``initial_latent`` path (guandeh17/Self-Forcing@33593df,
``pipeline/causal_inference.py``), recorded on a tiny random model by ``scripts/record_self_forcing_i2v_trace.py``.

Replayed through :meth:`VideoRollout.prefill` (the given latents written at t = 0 in prefix calls) and ordinary
``step()`` chunks with the ``self-forcing`` policy (21-frame FIFO), the release's noise and re-noise draws fed back in
its order. Two rollouts: video extension (6 given frames, two chunk-sized prefix calls, 24 sampled: the FIFO rolls
over the prefix) and image-to-video (1 given frame alone, then 27 sampled from frame 1 on).
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
from deepforcing.pipeline.rollout import VideoRollout

TRACE = Path(__file__).parent / "data" / "self_forcing_i2v_trace"
RELEASE = "guandeh17/Self-Forcing@33593df"
ATOL = 1e-5


class ReplayedNoise:
    """The release's draws in its order: each chunk's slice of the given noise, the re-noise draws between steps."""

    def __init__(self, noise: torch.Tensor, renoise: torch.Tensor, chunk: int) -> None:
        self.initial_draws = [c.permute(0, 2, 1, 3, 4) for c in noise.split(chunk, dim=1)]
        self.renoise_draws = list(renoise)

    def initial(self, chunk, shape):
        x = self.initial_draws.pop(0)
        assert tuple(x.shape) == tuple(shape)
        return x

    def renoise(self, chunk, step, shape):
        return self.renoise_draws.pop(0).permute(1, 0, 2, 3)[None]  # release layout [f, C, h, w]


@pytest.fixture(scope="module")
def trace():
    meta = json.loads((TRACE / "trace.json").read_text())
    tensors = load_file(str(TRACE / "trace.safetensors"))
    model = load_causal_wan(TRACE)
    with torch.no_grad():
        context = model.encode_context(tensors["context"])
    return meta, tensors, model, context


@pytest.mark.parametrize("name", ["extend", "image"], ids=lambda n: f"{n}@{RELEASE.split('@')[1]}")
def test_prefill_replays_the_release_initial_latent_path(trace, name):
    meta, tensors, model, context = trace
    assert meta["release"] == RELEASE
    info = meta["rollouts"][name]
    sampling = SamplingConfig(denoising_steps=tuple(meta["denoising_step_list"]), warp=meta["warp"],
                              shift=meta["shift"], chunk_frames=meta["chunk_frames"])
    noise = ReplayedNoise(tensors[f"{name}_noise"], tensors[f"{name}_renoise"], sampling.chunk_frames)
    given = tensors[f"{name}_initial_latent"].permute(0, 2, 1, 3, 4)
    rollout = VideoRollout(model=model, policy=make_policy("self-forcing", window=meta["window_frames"]),
                           context=context, latent_shape=tuple(given.shape[1:2]) + tuple(given.shape[3:]),
                           sampling=sampling, noise=noise)
    prefix = rollout.prefill(given)
    assert [p.latents.shape[2] for p in prefix] == ([1] if info["given_frames"] == 1 else [3, 3])
    assert rollout.next_frame == info["given_frames"]  # positions count from the first given frame
    chunks = [rollout.step() for _ in range(info["sampled_frames"] // sampling.chunk_frames)]
    assert [c.start_frame for c in chunks][:2] == [info["given_frames"], info["given_frames"] + 3]
    assert not noise.initial_draws and not noise.renoise_draws  # every draw used, in the release's order
    ours = torch.cat([p.latents for p in prefix] + [c.latents for c in chunks], dim=2).permute(0, 2, 1, 3, 4)
    expected = tensors[f"{name}_latents"]
    assert torch.equal(ours[:, : info["given_frames"]], expected[:, : info["given_frames"]])  # output as given
    err = (ours - expected).abs().max().item()
    print(f"{name}: max abs latent error {err:.2e}")
    assert err <= ATOL, err
    assert (expected[:, info["given_frames"]:] - 0).abs().max() > 0.1  # the sampled part is not trivially zero
