"""Record a parity trace of Causal Forcing's released inference (frame-wise ++ and chunk-wise) on a tiny random model (CPU, float32).

    python scripts/record_causal_forcing_trace.py --causal-forcing PATH/TO/Causal-Forcing --out tests/data/causal_forcing_trace

``PATH`` is a checkout of ``thu-ml/Causal-Forcing`` (commit 1fc7bbc); ``pipeline/causal_inference.py`` runs unchanged
except for what a CPU run needs, patched from the outside (``release_trace_tools``):

1. attention: its ``attention`` / ``flash_attention`` helpers go to exact float32 scaled-dot-product attention; the
   ``wan`` package ``__init__`` is not run and ``torch.cuda.current_device()`` (``demo_utils/memory.py``, at import)
   answers 0;
2. the constants of Wan2.1-1.3B: ``frame_seq_length`` (1560) is the tiny latent's tokens per frame, each attention
   layer's ``max_attention_size`` (its global 32760 = 21 x 1560) is 21 tiny frames, and the caches are allocated at
   the tiny model's layers / heads / head size;
3. its Gaussian draws (``torch.randn_like``) come from a seeded generator and are recorded; the text encoder is a
   fixed random embedding.

Settings: ``configs/causal_forcing_dmd_framewise_2step.yaml`` and ``_1step.yaml`` (one frame per block; 2 or 1 warped
steps at shift 5, the first frame with the 4-step ``denoising_step_list_first_chunk``) and
``causal_forcing_dmd_chunkwise.yaml`` (blocks of 3, 4 steps), context_noise 0, 21 frames each.
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

FRAMES, SHIFT, FIRST = 21, 5.0, (1000, 750, 500, 250)
VARIANTS = {  # name: (denoising_step_list, denoising_step_list_first_chunk, num_frame_per_block)
    "2step": ((1000, 500), FIRST, 1),  # configs/causal_forcing_dmd_framewise_2step.yaml
    "1step": ((1000,), FIRST, 1),  # configs/causal_forcing_dmd_framewise_1step.yaml
    "chunkwise": ((1000, 750, 500, 250), None, 3),  # configs/causal_forcing_dmd_chunkwise.yaml
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--causal-forcing", required=True, help="checkout of thu-ml/Causal-Forcing (1fc7bbc)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = Path(args.causal_forcing).resolve()
    sys.path.insert(0, str(root))
    torch.cuda.current_device = lambda: 0
    register_package_folder("wan", root / "wan")
    import pipeline.causal_inference as inference_module
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
        block.self_attn.max_attention_size = FRAMES * TINY_TOKENS
    wrapper = tiny_wrapper(WanDiffusionWrapper, model, FlowMatchScheduler, SHIFT, FRAMES * TINY_TOKENS)
    context = torch.randn(1, TINY_CONFIG["text_len"], TINY_CONFIG["text_dim"], generator=g)
    vae = types.SimpleNamespace(decode_to_pixel=lambda latents, use_cache=False: torch.zeros(1, 1, 3, 8, 8))
    noise = torch.randn(1, FRAMES, TINY_CONFIG["in_dim"], *TINY_LATENT_HW, generator=g)
    record = {"context": context, "noise": noise}
    meta = {"release": "thu-ml/Causal-Forcing@1fc7bbc", "frames": FRAMES, "chunk_frames": 1, "shift": SHIFT,
            "warp": True, "latent_hw": list(TINY_LATENT_HW), "tokens_per_frame": TINY_TOKENS,
            "variants": {}}
    for name, (steps, first, chunk) in VARIANTS.items():
        cfg = types.SimpleNamespace(denoising_step_list=list(steps), warp_denoising_step=True,
                                    denoising_step_list_first_chunk=list(first) if first else None,
                                    num_frame_per_block=chunk, context_noise=0,
                                    independent_first_frame=False, model_kwargs=types.SimpleNamespace(timestep_shift=SHIFT))
        pipe = inference_module.CausalInferencePipeline(cfg, "cpu", generator=wrapper, vae=vae,
                                                        text_encoder=lambda text_prompts: {"prompt_embeds": context})
        pipe.num_transformer_blocks = TINY_CONFIG["num_layers"]
        pipe.frame_seq_length = TINY_TOKENS
        pipe._initialize_kv_cache = lambda batch_size, dtype, device, pipe=pipe: setattr(
            pipe, "kv_cache1", self_attention_caches(batch_size, FRAMES, dtype))
        pipe._initialize_crossattn_cache = lambda batch_size, dtype, device, pipe=pipe: setattr(
            pipe, "crossattn_cache", cross_attention_caches(batch_size, dtype))
        draws: list[torch.Tensor] = []
        inference_module.torch = TorchOnCpu(draws, torch.Generator().manual_seed(args.seed + 1))
        with torch.no_grad():
            _, latents = pipe.inference(noise=noise, text_prompts=["tiny"], return_latents=True)
        record[f"latents_{name}"] = latents.contiguous()
        record[f"renoise_{name}"] = torch.stack(draws)
        meta["variants"][name] = {"denoising_step_list": list(steps), "first_chunk_steps": list(first or []),
                                  "chunk_frames": chunk, "renoise_draws": len(draws)}
    out = save_trace(args.out, model, record, meta)
    print(f"recorded {', '.join(f'{k}: {v} draws' for k, v in ((n, m['renoise_draws']) for n, m in meta['variants'].items()))} -> {out}")


if __name__ == "__main__":
    main()
