"""Record a parity trace of LongLive 1.0's released inference on a tiny random model (CPU, float32).

    python scripts/record_longlive_trace.py --longlive PATH/TO/LongLive --out tests/data/longlive_trace

``PATH`` is a checkout of ``NVlabs/LongLive`` at 2462895 (the last LongLive 1.0 commit); its code is imported from
there and run unchanged except for what a CPU run needs, patched from the outside (``release_trace_tools``):

1. attention: its ``attention`` / ``flash_attention`` helpers go to exact float32 scaled-dot-product attention;
2. CUDA: ``torch.cuda.current_device()`` (evaluated when ``utils.memory`` is imported) answers 0, and the
   ``wan`` package ``__init__`` (text-to-video / image-to-video runners) is not run;
3. the constants of Wan2.1-1.3B: ``frame_seq_length`` (1560) is the tiny latent's tokens per frame, the caches are
   allocated at the tiny model's layers / heads / head size, and each attention layer's ``max_attention_size``
   (``local_attn_size x 1560``) is set from the same tokens per frame;
4. its Gaussian draws (``torch.randn_like`` between steps) come from a seeded generator and are recorded; the text
   encoder is a table of fixed random embeddings, one per prompt; latents are compared, never pixels.

Settings are ``configs/longlive_inference.yaml`` (4 warped steps at shift 5, blocks of 3, local_attn_size 12,
sink_size 3, context_noise 0) and, for the switch, ``configs/longlive_interactive_inference.yaml``'s global_sink.
Two videos: 30 frames with one prompt (``pipeline/causal_inference.py``: the 12-frame window rolls past its 3-frame
sink), and 30 frames whose prompt switches at frame 15 (``pipeline/interactive_causal_inference.py``: the re-cache).
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

FRAMES, CHUNK, STEPS, SHIFT, LOCAL, SINK, SWITCH = 30, 3, (1000, 750, 500, 250), 5.0, 12, 3, 15


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--longlive", required=True, help="checkout of NVlabs/LongLive at 2462895")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = Path(args.longlive).resolve()
    sys.path.insert(0, str(root))
    torch.cuda.current_device = lambda: 0  # utils/memory.py builds a cuda device object at import time
    register_package_folder("wan", root / "wan")
    import pipeline.causal_inference as inference_module
    import pipeline.interactive_causal_inference as interactive_module
    import wan.modules.causal_model as causal_model
    import wan.modules.model as base_model
    from utils.scheduler import FlowMatchScheduler
    from utils.wan_wrapper import WanDiffusionWrapper

    causal_model.attention = sdpa_float32
    base_model.flash_attention = sdpa_float32
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = causal_model.CausalWanModel(**TINY_CONFIG, local_attn_size=LOCAL, sink_size=SINK).eval()
    fill_random(model, g)
    wrapper = tiny_wrapper(WanDiffusionWrapper, model, FlowMatchScheduler, SHIFT, 21 * TINY_TOKENS)  # its 32760

    prompts = {"first": torch.randn(1, TINY_CONFIG["text_len"], TINY_CONFIG["text_dim"], generator=g),
               "second": torch.randn(1, TINY_CONFIG["text_len"], TINY_CONFIG["text_dim"], generator=g)}
    text_encoder = lambda text_prompts: {"prompt_embeds": prompts[text_prompts[0]]}  # noqa: E731
    cfg = types.SimpleNamespace(denoising_step_list=list(STEPS), warp_denoising_step=True, num_frame_per_block=CHUNK,
                                context_noise=0, global_sink=True,
                                model_kwargs=types.SimpleNamespace(local_attn_size=LOCAL, sink_size=SINK,
                                                                   timestep_shift=SHIFT, use_infinite_attention=False))
    vae = types.SimpleNamespace(decode_to_pixel=lambda latents, use_cache=False: torch.zeros(1, 1, 3, 8, 8))

    def adapt(pipe):
        pipe.num_transformer_blocks = TINY_CONFIG["num_layers"]
        pipe.frame_seq_length = TINY_TOKENS

        def init_kv(batch_size, dtype, device, kv_cache_size_override=None):
            tokens = kv_cache_size_override if kv_cache_size_override is not None else LOCAL * TINY_TOKENS
            pipe.kv_cache1 = self_attention_caches(batch_size, tokens // TINY_TOKENS, dtype)

        def init_cross(batch_size, dtype, device):
            pipe.crossattn_cache = cross_attention_caches(batch_size, dtype)

        pipe._initialize_kv_cache = init_kv
        pipe._initialize_crossattn_cache = init_cross
        return pipe

    draws: list[torch.Tensor] = []
    noise_gen = torch.Generator().manual_seed(args.seed + 1)
    inference_module.torch = TorchOnCpu(draws, noise_gen)
    interactive_module.torch = TorchOnCpu(draws, noise_gen)
    shape = (TINY_CONFIG["in_dim"], *TINY_LATENT_HW)
    noise_plain = torch.randn(1, FRAMES, *shape, generator=g)
    noise_switch = torch.randn(1, FRAMES, *shape, generator=g)
    with torch.no_grad():
        plain_pipe = adapt(inference_module.CausalInferencePipeline(cfg, "cpu", generator=wrapper,
                                                                    text_encoder=text_encoder, vae=vae))
        _, plain = plain_pipe.inference(noise=noise_plain, text_prompts=["first"], return_latents=True)
        draws_plain = len(draws)
        switch_pipe = adapt(interactive_module.InteractiveCausalInferencePipeline(
            cfg, "cpu", generator=wrapper, text_encoder=text_encoder, vae=vae))
        _, switched = switch_pipe.inference(noise=noise_switch, text_prompts_list=[["first"], ["second"]],
                                            switch_frame_indices=[SWITCH], return_latents=True)
    out = save_trace(args.out, model, {
        "context_first": prompts["first"], "context_second": prompts["second"], "noise_plain": noise_plain,
        "noise_switch": noise_switch, "renoise": torch.stack(draws), "latents_plain": plain,
        "latents_switch": switched}, {
        "release": "NVlabs/LongLive@2462895", "frames": FRAMES, "chunk_frames": CHUNK, "denoising_step_list": list(STEPS),
        "warp": True, "shift": SHIFT, "local_attn_size": LOCAL, "sink_size": SINK, "global_sink": True,
        "switch_frame": SWITCH, "latent_hw": list(TINY_LATENT_HW), "tokens_per_frame": TINY_TOKENS,
        "max_attention_size": model.blocks[0].self_attn.max_attention_size,
        "renoise_draws_plain": draws_plain, "renoise_draws": len(draws)})
    print(f"recorded {len(draws)} re-noise draws; latents {tuple(plain.shape)} + {tuple(switched.shape)} -> {out}")


if __name__ == "__main__":
    main()
