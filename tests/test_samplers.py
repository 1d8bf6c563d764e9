"""The rollout's samplers: Self Forcing's re-noising steps, the Euler flow ODE, classifier-free guidance."""

import dataclasses

import pytest
import torch

from deepforcing.cache import make_policy
from deepforcing.mini.bundle import mini_bundle
from deepforcing.pipeline.generate import VideoGenerator
from deepforcing.pipeline.rollout import SamplingConfig, VideoRollout

PROMPT = "a red circle on a dark background"


def _latents(bundle, sampling, frames=9, uncond=None, prompt=PROMPT, seed=3):
    with torch.no_grad():
        ctx = bundle.transformer.encode_context(bundle.encode_text([prompt]))
        r = VideoRollout(model=bundle.transformer, policy=make_policy("self-forcing"), context=ctx,
                         latent_shape=bundle.latent_shape, sampling=sampling, seeds=[seed], uncond_context=uncond)
        return torch.cat([r.step().latents for _ in range(frames // sampling.chunk_frames)], dim=2), r


def test_one_euler_step_from_pure_noise_equals_one_x0_prediction(tiny_mini):
    """At sigma = 1 both samplers compute x0 = x - v; they differ only in how later steps use it."""
    b = mini_bundle(tiny_mini)
    euler, _ = _latents(b, SamplingConfig(denoising_steps=(1000,), warp=False, solver="euler"))
    renoise, _ = _latents(b, SamplingConfig(denoising_steps=(1000,), warp=False))
    torch.testing.assert_close(euler, renoise, atol=1e-6, rtol=0)
    two_euler, _ = _latents(b, SamplingConfig(denoising_steps=(1000, 500), warp=False, solver="euler"))
    two_renoise, _ = _latents(b, SamplingConfig(denoising_steps=(1000, 500), warp=False))
    assert (two_euler - two_renoise).abs().max() > 1e-3  # the ODE keeps the noise, re-noising draws fresh noise


def test_euler_is_deterministic_given_the_initial_noise(tiny_mini):
    b = mini_bundle(tiny_mini)
    s = SamplingConfig(denoising_steps=(1000, 700, 300), warp=False, solver="euler")
    a, _ = _latents(b, s, seed=5)
    c, _ = _latents(b, s, seed=5)
    assert torch.equal(a, c)


@pytest.mark.parametrize("kw, message", [
    ({"solver": "euler"}, "set warp=False"),
    ({"solver": "euler", "warp": False, "denoising_steps": (500, 900)}, "decrease strictly"),
    ({"solver": "heun"}, "unknown solver"),
    ({"guidance": 0.5}, "guidance must be >= 1"),
])
def test_sampling_config_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kw)


def test_guidance_with_the_prompt_as_its_own_negative_changes_nothing(tiny_mini):
    """v_u + g (v_c - v_u) = v_c when both contexts are the same: the doubled batch and cache are wired right."""
    b = mini_bundle(tiny_mini)
    base = SamplingConfig(denoising_steps=(1000, 600), warp=False, solver="euler")
    plain, r0 = _latents(b, base)
    same = b.transformer.encode_context(b.encode_text([PROMPT]))
    guided, r1 = _latents(b, dataclasses.replace(base, guidance=3.0), uncond=same)
    torch.testing.assert_close(guided, plain, atol=1e-5, rtol=0)
    assert r1.cache.layers[0].store.keys.shape[0] == 2 * r0.cache.layers[0].store.keys.shape[0]
    empty = b.transformer.encode_context(b.encode_text([""]))
    other, _ = _latents(b, dataclasses.replace(base, guidance=3.0), uncond=empty)
    assert (other - plain).abs().max() > 1e-4


def test_guided_generation_through_the_generator_and_missing_negative(tiny_mini, tmp_path):
    b = mini_bundle(tiny_mini)
    guided = dataclasses.replace(b, sampling=SamplingConfig(denoising_steps=(1000, 500), warp=False, solver="euler",
                                                            guidance=2.0))
    gen = VideoGenerator(guided)
    res = gen.generate(PROMPT, output=tmp_path / "g.mp4", latent_frames=6)
    assert res.pixel_frames == 6
    with pytest.raises(ValueError, match="uncond_context"):
        with torch.no_grad():
            VideoRollout(model=b.transformer, policy=make_policy("self-forcing"),
                         context=b.transformer.encode_context(b.encode_text([PROMPT])),
                         latent_shape=b.latent_shape, sampling=guided.sampling, seeds=[0])


class _CallSpy:
    """The model, recording each call's ``clean`` flag."""

    def __init__(self, model, calls: list) -> None:
        self.model, self.calls = model, calls

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs.get("clean"))
        return self.model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_first_chunk_steps_and_guidance_act_on_chunk_0_only(tiny_mini):
    """``first_chunk_steps`` / ``first_chunk_guidance``: chunk 0 is sampled exactly as a fully guided rollout with
    those steps samples it (its unconditional branch on a throwaway cache), later chunks as the plain sampler does
    (one batch in the cache, no guidance); only chunk 0's calls grow."""
    b = mini_bundle(tiny_mini)
    empty = b.transformer.encode_context(b.encode_text([""]))
    first = (1000, 800, 600, 400)
    plain_cfg = SamplingConfig(denoising_steps=(1000, 500), warp=False, solver="euler")
    guided_cfg = dataclasses.replace(plain_cfg, denoising_steps=first, guidance=2.5)
    mixed_cfg = dataclasses.replace(plain_cfg, first_chunk_steps=first, first_chunk_guidance=2.5)
    plain, _ = _latents(b, plain_cfg, frames=6, uncond=empty)
    guided, _ = _latents(b, guided_cfg, frames=3, uncond=empty)
    mixed, r = _latents(b, mixed_cfg, frames=6, uncond=empty)
    torch.testing.assert_close(mixed[:, :, :3], guided, atol=1e-5, rtol=0)  # chunk 0 = the guided 4-step chunk
    assert (mixed[:, :, :3] - plain[:, :, :3]).abs().max() > 1e-3
    assert r.cache.layers[0].store.keys.shape[0] == 1 and r._side_cache is None  # chunk 1 on: one unguided batch
    calls = []
    with torch.no_grad():
        ctx = b.transformer.encode_context(b.encode_text([PROMPT]))
        r = VideoRollout(model=b.transformer, policy=make_policy("self-forcing"), context=ctx, uncond_context=empty,
                         latent_shape=b.latent_shape, sampling=mixed_cfg, seeds=[3])
        r.model = _CallSpy(r.model, calls)
        r.step()
        r.step()
    assert calls == [False] * 8 + [True] + [False] * 2 + [True]  # chunk 0: 4 steps x (prompt, empty) + clean pass
    with pytest.raises(ValueError, match="first_chunk_guidance must be >= 1"):
        SamplingConfig(first_chunk_guidance=0.5)
