"""Record Self Forcing's released ``initial_latent`` path (image-to-video, video extension) on a tiny random model.

    python scripts/record_self_forcing_i2v_trace.py --self-forcing PATH/TO/Self-Forcing \
        --out tests/data/self_forcing_i2v_trace

``--self-forcing`` is a checkout of ``guandeh17/Self-Forcing`` at 33593df. Its ``pipeline/causal_inference.py``
``CausalInferencePipeline.inference(noise, text_prompts, initial_latent=...)`` is run unchanged, with what a CPU run
needs patched from the outside exactly as ``record_deep_forcing_trace.py`` does (float32 SDPA, tiny caches, the
1560 tokens per frame at the tiny size, seeded and recorded ``randn_like`` draws; its ``import_release`` and
``build_model`` are reused). The model is the release's ``wan/modules/causal_model.py`` ``CausalWanModel`` with its
wrapper's ``local_attn_size`` 21 and ``sink_size`` 0 (a 21-frame FIFO), Self Forcing's DMD sampler (warped
1000/750/500/250, shift 5, chunks of 3, context noise 0). Two rollouts:

* ``extend``: ``independent_first_frame=False``; ``initial_latent`` is 6 latent frames (a fixed random tensor in
  place of a VAE-encoded clip), written into the cache at t = 0 in two 3-frame prefix calls, then 8 chunks (24
  frames) sampled after it: 30 frames, so the FIFO rolls with the prefix in it;
* ``image``: ``independent_first_frame=True`` (the release's ``--i2v`` layout); ``initial_latent`` is 1 latent frame
  (an image latent's stand-in), written alone at t = 0, then 9 chunks sampled from frame 1 on: 28 frames.

Output: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (the original Wan layout), ``trace.safetensors``
(context; per rollout its initial latent, noise, re-noise draws in order and output latents, the prefix included)
and ``trace.json``.
"""

from __future__ import annotations

import argparse
import types
from pathlib import Path

import torch

from record_deep_forcing_trace import SELF_FORCING_RELEASE, Setting, build_model, import_release
from release_trace_tools import (TINY_CONFIG, TINY_LATENT_HW, TINY_TOKENS, TorchOnCpu, fill_random, save_trace,
                                 tiny_wrapper, use_tiny_caches)

CHUNK, WINDOW, STEPS, SHIFT = 3, 21, (1000, 750, 500, 250), 5.0  # configs/self_forcing_dmd.yaml
ROLLOUTS = {"extend": (6, 24, False), "image": (1, 27, True)}  # given frames, sampled frames, independent_first_frame
SETTING = Setting("self_forcing_sink0", SELF_FORCING_RELEASE, "wan/modules/causal_model.py", "CausalWanModel", 0)


def run(release, model, context, initial, noise, independent_first: bool, seed: int) -> tuple[torch.Tensor, list]:
    """One ``inference(..., initial_latent=initial)`` call of the release's pipeline; its latents and draws."""
    wrapper = tiny_wrapper(release.wrapper, model, release.scheduler, SHIFT, WINDOW * TINY_TOKENS)
    cfg = types.SimpleNamespace(denoising_step_list=list(STEPS), warp_denoising_step=True, num_frame_per_block=CHUNK,
                                context_noise=0, independent_first_frame=independent_first,
                                model_kwargs={"timestep_shift": SHIFT, "local_attn_size": WINDOW, "sink_size": 0})
    vae = types.SimpleNamespace(decode_to_pixel=lambda latents, use_cache=False: torch.zeros(1, 1, 3, 8, 8))
    pipe = release.inference.CausalInferencePipeline(cfg, "cpu", generator=wrapper, vae=vae,
                                                     text_encoder=lambda text_prompts: {"prompt_embeds": context})
    use_tiny_caches(pipe, WINDOW)  # its 21 x 1560
    draws: list[torch.Tensor] = []
    release.inference.torch = TorchOnCpu(draws, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        _, latents = pipe.inference(noise=noise, text_prompts=["tiny"], initial_latent=initial, return_latents=True)
    return latents, draws


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--self-forcing", required=True, help="checkout of guandeh17/Self-Forcing at 33593df")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    release = import_release(Path(args.self_forcing).resolve())
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = build_model(release, SETTING, None)
    fill_random(model, g)
    context = torch.randn(1, TINY_CONFIG["text_len"], TINY_CONFIG["text_dim"], generator=g)
    shape = (TINY_CONFIG["in_dim"], *TINY_LATENT_HW)
    tensors, meta = {"context": context}, {}
    for k, (name, (given, sampled, independent_first)) in enumerate(ROLLOUTS.items()):
        initial = torch.randn(1, given, *shape, generator=g)
        noise = torch.randn(1, sampled, *shape, generator=g)
        latents, draws = run(release, model, context, initial, noise, independent_first, args.seed + 1 + k)
        tensors.update({f"{name}_initial_latent": initial, f"{name}_noise": noise,
                        f"{name}_renoise": torch.stack(draws), f"{name}_latents": latents})
        meta[name] = {"given_frames": given, "sampled_frames": sampled, "independent_first_frame": independent_first,
                      "renoise_draws": len(draws)}
        print(f"{name}: {given} given + {sampled} sampled latent frames, {len(draws)} re-noise draws")
    out = save_trace(args.out, model, tensors, {
        "release": SELF_FORCING_RELEASE, "pipeline": "pipeline/causal_inference.py (initial_latent)",
        "model": SETTING.model_file, "chunk_frames": CHUNK, "window_frames": WINDOW, "sink_frames": 0,
        "denoising_step_list": list(STEPS), "warp": True, "shift": SHIFT, "context_noise": 0,
        "latent_hw": list(TINY_LATENT_HW), "tokens_per_frame": TINY_TOKENS, "rollouts": meta})
    print(f"-> {out}")


if __name__ == "__main__":
    main()
