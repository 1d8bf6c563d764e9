"""Record a parity trace of CausVid's released inference on a tiny random model (CPU, float32).

    python scripts/record_causvid_trace.py --causvid PATH/TO/CausVid --out tests/data/causvid_trace

``PATH`` is a checkout of ``tianweiy/CausVid`` (commit ca21150); its code is imported from there and run unchanged
except for what a CPU run needs, each patched from the outside at run time (nothing of the release is copied here):

1. attention: its ``attention`` / ``flash_attention`` calls go to exact float32 scaled-dot-product attention (the
   release runs FlashAttention in bf16);
2. CUDA at import time (``torch.cuda.current_device()`` as a default argument of its T5 module) and the
   ``device="cuda"`` of its re-noising timestep vector are answered on the CPU;
3. the cache constants: ``frame_seq_length`` (1560) is set to the tiny latent's tokens per frame and the caches are
   allocated at the tiny model's layers / heads / head size and 21 frames (its 32760 = 21 x 1560 tokens);
4. the package ``__init__`` files of ``causvid.models`` and ``causvid.models.wan.wan_base`` are not run (they import
   the SDXL, image-to-video and evaluation code, and torchvision, none of which this path calls): the packages are
   registered by their folders and the needed modules imported directly;
5. its Gaussian draws (``torch.randn_like`` between steps) come from a seeded generator and are recorded, and the
   text encoder and VAE are stand-ins (a fixed random text embedding; latents are compared, never pixels).

Two rollouts of 21 latent frames are recorded the way ``minimal_inference/longvideo_autoregressive_inference.py``
chains them: the second is given 3 ``start_latents`` (here a fixed random tensor in place of the VAE re-encode).
Output: ``diffusion_pytorch_model.safetensors`` + ``config.json`` (the original Wan folder layout), ``trace.safetensors`` (context, noise, every
re-noise draw in order, start latents, both rollouts' latents) and ``trace.json`` (steps, shift, geometry).
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

FRAMES, CHUNK, STEPS, SHIFT = 21, 3, (1000, 757, 522, 0), 8.0  # configs/wan_causal_dmd.yaml


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--causvid", required=True, help="checkout of tianweiy/CausVid (commit ca21150)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    sys.path.insert(0, str(Path(args.causvid).resolve()))
    torch.cuda.current_device = lambda: 0  # its T5 module evaluates this at import time
    root = Path(args.causvid).resolve() / "causvid"
    register_package_folder("causvid.models", root / "models")
    register_package_folder("causvid.models.wan.wan_base", root / "models/wan/wan_base")
    sys.modules["causvid.models"].get_diffusion_wrapper = sys.modules["causvid.models"].get_text_encoder_wrapper = \
        sys.modules["causvid.models"].get_vae_wrapper = lambda **kw: None  # the pipeline's factories (unused here)
    import causvid.models.wan.causal_inference as inference_module
    import causvid.models.wan.causal_model as causal_model
    import causvid.models.wan.wan_base.modules.model as base_model
    from causvid.models.wan.flow_match import FlowMatchScheduler
    from causvid.models.wan.wan_wrapper import CausalWanDiffusionWrapper

    causal_model.attention = sdpa_float32
    base_model.flash_attention = sdpa_float32
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = causal_model.CausalWanModel(**TINY_CONFIG).eval()
    fill_random(model, g)
    wrapper = tiny_wrapper(CausalWanDiffusionWrapper, model, FlowMatchScheduler, SHIFT, FRAMES * TINY_TOKENS)
    context = torch.randn(1, TINY_CONFIG["text_len"], TINY_CONFIG["text_dim"], generator=g)
    pipe = inference_module.InferencePipeline.__new__(inference_module.InferencePipeline)
    torch.nn.Module.__init__(pipe)
    pipe.generator = wrapper
    pipe.text_encoder = lambda text_prompts: {"prompt_embeds": context}
    pipe.vae = types.SimpleNamespace(decode_to_pixel=lambda latents: torch.zeros(1, 1, 3, 8, 8))
    pipe.denoising_step_list = torch.tensor(STEPS[:-1], dtype=torch.long)  # its __init__ drops the final 0
    pipe.scheduler = wrapper.get_scheduler()
    pipe.num_transformer_blocks = TINY_CONFIG["num_layers"]
    pipe.frame_seq_length = TINY_TOKENS
    pipe.kv_cache1 = None
    pipe.num_frame_per_block = CHUNK
    model.num_frame_per_block = CHUNK
    pipe._initialize_kv_cache = lambda batch_size, dtype, device: setattr(
        pipe, "kv_cache1", self_attention_caches(batch_size, FRAMES, dtype, indices=False))  # a fixed cache
    pipe._initialize_crossattn_cache = lambda batch_size, dtype, device: setattr(
        pipe, "crossattn_cache", cross_attention_caches(batch_size, dtype))
    draws: list[torch.Tensor] = []
    inference_module.torch = TorchOnCpu(draws, torch.Generator().manual_seed(args.seed + 1))

    shape = (TINY_CONFIG["in_dim"], *TINY_LATENT_HW)
    noise1 = torch.randn(1, FRAMES, *shape, generator=g)
    noise2 = torch.randn(1, FRAMES, *shape, generator=g)
    start = torch.randn(1, CHUNK, *shape, generator=g)
    with torch.no_grad():
        _, first = pipe.inference(noise=noise1, text_prompts=["tiny"], return_latents=True)
        draws_first = len(draws)
        _, second = pipe.inference(noise=noise2, text_prompts=["tiny"], return_latents=True, start_latents=start)
    out = save_trace(args.out, model, {
        "context": context, "noise_first": noise1, "noise_second": noise2, "start_latents": start,
        "renoise": torch.stack(draws), "latents_first": first, "latents_second": second}, {
        "release": "tianweiy/CausVid@ca21150", "frames": FRAMES, "chunk_frames": CHUNK,
        "denoising_step_list": list(STEPS), "shift": SHIFT, "latent_hw": list(TINY_LATENT_HW),
        "tokens_per_frame": TINY_TOKENS, "renoise_draws_first_rollout": draws_first, "renoise_draws": len(draws)})
    print(f"recorded {len(draws)} re-noise draws; latents {tuple(first.shape)} + {tuple(second.shape)} -> {out}")


if __name__ == "__main__":
    main()
