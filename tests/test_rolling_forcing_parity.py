"""Parity with Rolling Forcing's released inference (TencentARC/RollingForcing@a1477d0,
``pipeline/rolling_forcing_inference.py``), recorded on a tiny random model by
``scripts/record_rolling_forcing_trace.py``: 27 frames, 9 chunks, 13 windows of up to 5 chunks at staggered noise.

Replayed through the ``rolling-forcing`` preset's sampler with our ``RollingForcingRollout``, the release's noise fed
back: each new chunk's slice of its noise tensor, and for each re-noised chunk its slice of the window-sized draw the
release made for it. Recorded latents must match to float32 rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from deepforcing.models.contract import SamplingConfig
from deepforcing.models.loading import load_causal_wan
from deepforcing.models.presets import get_preset
from deepforcing.pipeline.rolling import RollingForcingRollout, rolling_windows

TRACE = Path(__file__).parent / "data" / "rolling_forcing_trace"
ATOL = 1e-5


class ReleaseWindowNoise:
    """The release's draws: chunk ``b`` enters with its frames of the video noise; re-noised in window ``w`` (at
    level ``w - b``) it takes its slice of that window's next full-window draw."""

    def __init__(self, noise: torch.Tensor, draws: list[torch.Tensor], chunks: int, steps: int, chunk: int) -> None:
        self.noise, self.draws, self.chunk = noise, list(draws), chunk
        self.windows = rolling_windows(chunks, steps)

    def initial(self, b, shape):
        return self.noise[:, b * self.chunk:(b + 1) * self.chunk].permute(0, 2, 1, 3, 4)

    def renoise(self, b, level, shape):
        first, last = self.windows[b + level]
        draw = self.draws.pop(0)  # [frames of window, C, h, w]
        assert draw.shape[0] == (last - first + 1) * self.chunk
        offset = (b - first) * self.chunk
        return draw[offset:offset + self.chunk].permute(1, 0, 2, 3)[None]


def test_rolling_windows_match_the_release():
    spec = get_preset("rolling-forcing")
    meta = json.loads((TRACE / "trace.json").read_text())
    assert meta["denoising_step_list"] == list(spec.denoising_steps) and (meta["warp"], meta["shift"]) == (
        spec.warp, spec.shift) and meta["attention_frames"] == spec.window_frames
    sampling = SamplingConfig(denoising_steps=spec.denoising_steps, warp=spec.warp, shift=spec.shift,
                              chunk_frames=spec.chunk_frames, solver="rolling-forcing")
    model = load_causal_wan(TRACE)
    trace = load_file(str(TRACE / "trace.safetensors"))
    draws = [trace[f"renoise_{i:03d}"] for i in range(meta["renoise_draws"])]
    chunks = meta["frames"] // meta["chunk_frames"]
    noise = ReleaseWindowNoise(trace["noise"], draws, chunks, len(spec.denoising_steps), spec.chunk_frames)
    with torch.no_grad():
        rollout = RollingForcingRollout(model=model, context=model.encode_context(trace["context"]),
                                        latent_shape=tuple(trace["noise"].shape[2:]), num_chunks=chunks,
                                        sampling=sampling, attention_frames=spec.window_frames, noise=noise)
        ours = torch.cat([rollout.step().latents for _ in range(chunks)], dim=2).permute(0, 2, 1, 3, 4)
    assert not noise.draws  # every draw used, in the release's order
    err = (ours - trace["latents"]).abs().max().item()
    assert err < ATOL, err
