"""Record a parity trace of Rolling Forcing's released inference on a tiny random model (CPU, float32).

    python scripts/record_rolling_forcing_trace.py --rolling-forcing PATH/TO/RollingForcing --out tests/data/rolling_forcing_trace

``PATH`` is a checkout of ``TencentARC/RollingForcing`` (commit a1477d0); ``pipeline/rolling_forcing_inference.py``
runs unchanged except for what a CPU run needs, patched from the outside (``release_trace_tools``):

1. attention: its ``attention`` / ``flash_attention`` helpers go to exact float32 scaled-dot-product attention, and
   the ``wan`` package ``__init__`` (text-to-video / image-to-video runners) is not run;
2. the constants of Wan2.1-1.3B: ``frame_seq_length`` and each attention layer's ``frame_length`` (1560) are the tiny
   latent's tokens per frame, with its ``max_attention_size`` (21 frames) and ``block_length`` (3 frames) from the
   same; the caches are allocated at the tiny model's layers / heads / head size and 24 frames (its 1560 x 24);
3. its Gaussian draws (``torch.randn_like``, one window-sized tensor per re-noised chunk, of which the chunk's slice
   is used) come from a seeded generator and are recorded; the text encoder is a fixed random embedding.

Settings: ``configs/rolling_forcing_dmd.yaml`` (5 warped steps 1000..200 at shift 5, blocks of 3) with
``configs/default_config.yaml`` (context_noise 0, independent_first_frame false). One video of 27 frames (9 chunks,
13 windows: the window fills, rolls, and empties, and the working cache is cut to the 21-frame attention).
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

from release_trace_tools import (TINY_CONFIG, TINY_LATENT_HW, TINY_TOKENS, TorchOnCpu, cross_attention_caches,
                                 fill_random, register_package_folder, save_trace, sdpa_float32,
                                 self_attention_caches, tiny_wrapper)

FRAMES, CHUNK, STEPS, SHIFT = 27, 3, (1000, 800, 600, 400, 200), 5.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rolling-forcing", required=True, help="checkout of TencentARC/RollingForcing (a1477d0)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = Path(args.rolling_forcing).resolve()
    sys.path.insert(0, str(root))
    torch.cuda.current_device = lambda: 0
    register_package_folder("wan", root / "wan")
    import pipeline.rolling_forcing_inference as inference_module
    import wan.modules.causal_model as causal_model
    import wan.modules.model as base_model
    from utils.scheduler import FlowMatchScheduler
    from utils.wan_wrapper import WanDiffusionWrapper

    causal_model.attention = sdpa_float32
    base_model.flash_attention = sdpa_float32
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = causal_model.CausalWanModel(**TINY_CONFIG).eval()
    fill_random(model, g)
    for block in model.blocks:
        block.self_attn.frame_length = TINY_TOKENS
        block.self_attn.max_attention_size = 21 * TINY_TOKENS
        block.self_attn.block_length = CHUNK * TINY_TOKENS
    wrapper = tiny_wrapper(WanDiffusionWrapper, model, FlowMatchScheduler, SHIFT, 21 * TINY_TOKENS)

    context = torch.randn(1, TINY_CONFIG["text_len"], TINY_CONFIG["text_dim"], generator=g)
    cfg = types.SimpleNamespace(denoising_step_list=list(STEPS), warp_denoising_step=True, num_frame_per_block=CHUNK,
                                context_noise=0, independent_first_frame=False,
                                model_kwargs=types.SimpleNamespace(timestep_shift=SHIFT))
    vae = types.SimpleNamespace(decode_to_pixel=lambda latents, use_cache=False: torch.zeros(1, 1, 3, 8, 8))
    pipe = inference_module.CausalInferencePipeline(cfg, "cpu", generator=wrapper, vae=vae,
                                                    text_encoder=lambda text_prompts: {"prompt_embeds": context})
    pipe.num_transformer_blocks = TINY_CONFIG["num_layers"]
    pipe.frame_seq_length = TINY_TOKENS
    pipe._initialize_kv_cache = lambda batch_size, dtype, device: setattr(
        pipe, "kv_cache_clean", self_attention_caches(batch_size, 24, dtype))  # its 1560 x 24
    pipe._initialize_crossattn_cache = lambda batch_size, dtype, device: setattr(
        pipe, "crossattn_cache", cross_attention_caches(batch_size, dtype))
    draws: list[torch.Tensor] = []
    inference_module.torch = TorchOnCpu(draws, torch.Generator().manual_seed(args.seed + 1))
    noise = torch.randn(1, FRAMES, TINY_CONFIG["in_dim"], *TINY_LATENT_HW, generator=g)
    with torch.no_grad():
        _, latents = pipe.inference_rolling_forcing(noise=noise, text_prompts=["tiny"], return_latents=True)
    out = save_trace(args.out, model, {  # draws differ in size: one key each
        "context": context, "noise": noise, "latents": latents,
        **{f"renoise_{i:03d}": d for i, d in enumerate(draws)}}, {
        "release": "TencentARC/RollingForcing@a1477d0", "frames": FRAMES, "chunk_frames": CHUNK,
        "denoising_step_list": list(STEPS), "warp": True, "shift": SHIFT, "attention_frames": 21,
        "latent_hw": list(TINY_LATENT_HW), "tokens_per_frame": TINY_TOKENS, "renoise_draws": len(draws)})
    print(f"recorded {len(draws)} re-noise draws; latents {tuple(latents.shape)} -> {out}")


if __name__ == "__main__":
    main()
