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
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

from release_trace_tools import TorchOnCpu, fill_random, register_package_folder, sdpa_float32

CONFIG = {"model_type": "t2v", "patch_size": [1, 2, 2], "text_len": 8, "in_dim": 4, "dim": 48, "ffn_dim": 64,
          "freq_dim": 32, "text_dim": 16, "out_dim": 4, "num_heads": 2, "num_layers": 2, "qk_norm": True,
          "cross_attn_norm": True, "eps": 1e-6}
LATENT_HW = (4, 6)  # -> 6 tokens per latent frame
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
    model = causal_model.CausalWanModel(**CONFIG).eval()
    fill_random(model, g)
    h, w = LATENT_HW
    tokens = (h // 2) * (w // 2)
    for block in model.blocks:
        block.self_attn.frame_length = tokens
        block.self_attn.max_attention_size = 21 * tokens
        block.self_attn.block_length = CHUNK * tokens
    heads, head_dim = CONFIG["num_heads"], CONFIG["dim"] // CONFIG["num_heads"]

    wrapper = WanDiffusionWrapper.__new__(WanDiffusionWrapper)
    torch.nn.Module.__init__(wrapper)
    wrapper.model = model
    wrapper.uniform_timestep = False
    wrapper.scheduler = FlowMatchScheduler(shift=SHIFT, sigma_min=0.0, extra_one_step=True)
    wrapper.scheduler.set_timesteps(1000, training=True)
    wrapper.seq_len = 21 * tokens
    wrapper.post_init()

    context = torch.randn(1, CONFIG["text_len"], CONFIG["text_dim"], generator=g)
    cfg = types.SimpleNamespace(denoising_step_list=list(STEPS), warp_denoising_step=True, num_frame_per_block=CHUNK,
                                context_noise=0, independent_first_frame=False,
                                model_kwargs=types.SimpleNamespace(timestep_shift=SHIFT))
    vae = types.SimpleNamespace(decode_to_pixel=lambda latents, use_cache=False: torch.zeros(1, 1, 3, 8, 8))
    pipe = inference_module.CausalInferencePipeline(cfg, "cpu", generator=wrapper, vae=vae,
                                                    text_encoder=lambda text_prompts: {"prompt_embeds": context})
    pipe.num_transformer_blocks = CONFIG["num_layers"]
    pipe.frame_seq_length = tokens

    def init_kv(batch_size, dtype, device):
        pipe.kv_cache_clean = [{"k": torch.zeros(batch_size, 24 * tokens, heads, head_dim, dtype=dtype),
                                "v": torch.zeros(batch_size, 24 * tokens, heads, head_dim, dtype=dtype),
                                "global_end_index": torch.tensor([0], dtype=torch.long),
                                "local_end_index": torch.tensor([0], dtype=torch.long)}
                               for _ in range(CONFIG["num_layers"])]

    def init_cross(batch_size, dtype, device):
        pipe.crossattn_cache = [{"k": torch.zeros(batch_size, CONFIG["text_len"], heads, head_dim, dtype=dtype),
                                 "v": torch.zeros(batch_size, CONFIG["text_len"], heads, head_dim, dtype=dtype),
                                 "is_init": False} for _ in range(CONFIG["num_layers"])]

    pipe._initialize_kv_cache = init_kv
    pipe._initialize_crossattn_cache = init_cross
    draws: list[torch.Tensor] = []
    inference_module.torch = TorchOnCpu(draws, torch.Generator().manual_seed(args.seed + 1))
    noise = torch.randn(1, FRAMES, CONFIG["in_dim"], h, w, generator=g)
    with torch.no_grad():
        _, latents = pipe.inference_rolling_forcing(noise=noise, text_prompts=["tiny"], return_latents=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "freqs"},
              str(out / "diffusion_pytorch_model.safetensors"))  # the original Wan folder layout
    (out / "config.json").write_text(json.dumps({"_class_name": "WanModel", **CONFIG}, indent=1))
    save_file({"context": context, "noise": noise, "latents": latents.contiguous(),  # draws differ in size: one key each
               **{f"renoise_{i:03d}": d.contiguous() for i, d in enumerate(draws)}}, str(out / "trace.safetensors"))
    (out / "trace.json").write_text(json.dumps({
        "release": "TencentARC/RollingForcing@a1477d0", "frames": FRAMES, "chunk_frames": CHUNK,
        "denoising_step_list": list(STEPS), "warp": True, "shift": SHIFT, "attention_frames": 21,
        "latent_hw": list(LATENT_HW), "tokens_per_frame": tokens, "renoise_draws": len(draws),
        "torch": torch.__version__}, indent=1))
    print(f"recorded {len(draws)} re-noise draws; latents {tuple(latents.shape)} -> {out}")


if __name__ == "__main__":
    main()
