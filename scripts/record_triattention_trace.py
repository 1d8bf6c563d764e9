"""Record a parity trace of TriAttention's LongLive KV compression (WeianMao/triattention@c3744ee, ``longlive/``) on
a tiny random model (CPU, float32), with the tiny model's calibration statistics made by the release's own code.

    python scripts/record_triattention_trace.py --triattention PATH/TO/triattention --longlive PATH/TO/LongLive \\
        --out tests/data/triattention_trace

``--triattention`` is a checkout of ``WeianMao/triattention`` at c3744ee (its ``longlive/`` package:
``kv_compression.py``, ``patches.py``); ``--longlive`` is its ``longlive/longlive`` submodule, ``NVlabs/LongLive`` at
2462895. Both are imported from there and run unchanged, patched from the outside only: what a CPU run of LongLive
needs (as ``record_longlive_trace.py``: float32 SDPA, no CUDA, tiny caches, recorded Gaussian draws) and the
constants the release hard-codes for Wan2.1-1.3B:

1. ``CausalInferencePipeline.__init__``'s ``num_transformer_blocks`` (30) and ``frame_seq_length`` (1560) are the
   tiny model's, set before ``patches.apply_patches`` wraps it, so the compressor's config and the calibrator read them;
2. the compressor's RoPE grid (``grid_h=30, grid_w=52`` in ``patches.py``) is the tiny latent's token grid;
3. ``kv_budget_tokens`` (9360 = 6 frames x 1560) is 6 frames of the tiny model's tokens.

Calibration (``assets/calibration_stats_81f.pt`` is per checkpoint): ``apply_patches(interactive_mode="calibrate")``
and ``kv_compression_mode: calibrate``, i.e. ``QStatsAccumulator``'s pre-hooks on every self-attention during the
interactive pipeline's calibration inference (``_patched_inference_calibrate``: global attention, 81 frames as the
shipped file's metadata says), saved by ``QStatsAccumulator.save`` to ``calibration.pt``. Its noise and Gaussian draws
are recorded, so an engine calibration can be checked against it.

Two compressed videos of 30 frames with ``CausalInferencePipeline.inference`` as ``patches.py`` replaces it
(``maybe_compress`` after every chunk's clean pass):

* ``120f``: ``configs/triattention_120f.yaml``'s model_kwargs (sink 3, budget 6 of the 12-frame window, keep last 3,
  every 3 frames, layer_perhead, mean, 128-frame offsets, normalised, tie-break noise 1e-6, seed 0). Its budget is
  exactly sink + last 3 frames, so nothing is scored: each compression keeps the sink and the last chunk.
* ``interactive``: ``configs/triattention_interactive.yaml``'s model_kwargs (the same but ``sink_size: 1``) on the
  single-prompt pipeline: 2 frames of the budget are chosen per (layer, head) by the trigonometric score.

Each compression's kept slot indices per (layer, head) are recorded (``_gather_perhead``'s index, once per layer).
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

RELEASE = "WeianMao/triattention@c3744ee"
LONGLIVE = "NVlabs/LongLive@2462895"
FRAMES, CHUNK, STEPS, SHIFT, LOCAL = 30, 3, (1000, 750, 500, 250), 5.0, 12
CALIBRATION_FRAMES = 81  # calibration_stats_81f.pt's metadata num_frames
BUDGET_FRAMES = 6  # kv_budget_tokens 9360 = 6 x 1560
# configs/triattention_120f.yaml model_kwargs (kv_stats_path and the budget filled in per run)
KV_KWARGS = dict(kv_compression_mode="compress", kv_compress_every_n_frames=3, kv_keep_last_frames=3,
                 kv_pruning_mode="layer_perhead", kv_score_aggregation="mean",
                 kv_perhead_layer_aggregation="mean_of_layer_max", kv_offset_max_frames=128, kv_normalize_scores=True,
                 kv_tie_break_noise=True, kv_tie_break_noise_scale=1.0e-6, kv_random_seed=0)
VIDEOS = {"120f": 3, "interactive": 1}  # name -> sink_size (triattention_120f.yaml / triattention_interactive.yaml)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--triattention", required=True, help="checkout of WeianMao/triattention at c3744ee")
    p.add_argument("--longlive", required=True, help="its longlive/longlive submodule: NVlabs/LongLive at 2462895")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.longlive).resolve()
    sys.path.insert(0, str(Path(args.triattention).resolve()))  # its ``longlive`` package
    sys.path.insert(0, str(root))
    torch.cuda.current_device = lambda: 0  # utils/memory.py builds a cuda device object at import time
    register_package_folder("wan", root / "wan")
    import pipeline.causal_inference as inference_module
    import wan.modules.causal_model as causal_model
    import wan.modules.model as base_model
    from utils.scheduler import FlowMatchScheduler
    from utils.wan_wrapper import WanDiffusionWrapper

    causal_model.attention = sdpa_float32
    base_model.flash_attention = sdpa_float32

    # (1) the 1.3B constants of CausalInferencePipeline.__init__, replaced before apply_patches wraps it
    release_init = inference_module.CausalInferencePipeline.__init__

    def tiny_init(self, *a, **kw):
        release_init(self, *a, **kw)
        self.num_transformer_blocks = TINY_CONFIG["num_layers"]
        self.frame_seq_length = TINY_TOKENS

    inference_module.CausalInferencePipeline.__init__ = tiny_init
    from longlive import kv_compression, patches

    patches.apply_patches(longlive_root=root, interactive_mode="calibrate")
    from pipeline.interactive_causal_inference import InteractiveCausalInferencePipeline

    kept: list[torch.Tensor] = []
    release_gather = kv_compression.LongLiveKVCompressor._gather_perhead

    def recording_gather(data, keep_idx_per_head):
        kept.append(keep_idx_per_head.clone())
        return release_gather(data, keep_idx_per_head)

    kv_compression.LongLiveKVCompressor._gather_perhead = staticmethod(recording_gather)
    compressions: list[list[int]] = []
    release_maybe = kv_compression.LongLiveKVCompressor.maybe_compress

    def recording_maybe(self, kv_cache, current_end_frame, force=False):
        before = int(kv_cache[0]["local_end_index"].item())
        done = release_maybe(self, kv_cache, current_end_frame, force=force)
        if done:
            compressions.append([current_end_frame, before, int(kv_cache[0]["local_end_index"].item())])
        return done

    kv_compression.LongLiveKVCompressor.maybe_compress = recording_maybe

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = causal_model.CausalWanModel(**TINY_CONFIG, local_attn_size=LOCAL, sink_size=3).eval()
    fill_random(model, g)
    context = torch.randn(1, TINY_CONFIG["text_len"], TINY_CONFIG["text_dim"], generator=g)
    text_encoder = lambda text_prompts: {"prompt_embeds": context}  # noqa: E731
    vae = types.SimpleNamespace(decode_to_pixel=lambda latents, use_cache=False: torch.zeros(1, 1, 3, 8, 8))
    shape = (TINY_CONFIG["in_dim"], *TINY_LATENT_HW)

    def config(sink: int, local: int, **kv) -> types.SimpleNamespace:
        kwargs = types.SimpleNamespace(local_attn_size=local, sink_size=sink, timestep_shift=SHIFT,
                                       use_infinite_attention=False, model_name="tiny random CausalWanModel", **kv)
        return types.SimpleNamespace(denoising_step_list=list(STEPS), warp_denoising_step=True,
                                     num_frame_per_block=CHUNK, context_noise=0, global_sink=True,
                                     num_output_frames=CALIBRATION_FRAMES, model_kwargs=kwargs)

    def tiny_caches(pipe):
        def init_kv(batch_size, dtype, device, kv_cache_size_override=None):
            pipe.kv_cache1 = self_attention_caches(batch_size, kv_cache_size_override // TINY_TOKENS, dtype)

        pipe._initialize_kv_cache = init_kv
        pipe._initialize_crossattn_cache = lambda batch_size, dtype, device: setattr(
            pipe, "crossattn_cache", cross_attention_caches(batch_size, dtype))
        return pipe

    # --- calibration: the release's calibrate mode on the interactive pipeline (global attention, 81 frames)
    calib_draws: list[torch.Tensor] = []
    patches.torch = TorchOnCpu(calib_draws, torch.Generator().manual_seed(args.seed + 2))
    noise_calib = torch.randn(1, CALIBRATION_FRAMES, *shape, generator=g)
    calib_path = out / "calibration.pt"
    cal_cfg = config(3, -1, kv_compression_mode="calibrate", kv_stats_path=str(calib_path))
    wrapper = tiny_wrapper(WanDiffusionWrapper, model, FlowMatchScheduler, SHIFT, 21 * TINY_TOKENS)
    with torch.no_grad():
        cal_pipe = tiny_caches(InteractiveCausalInferencePipeline(cal_cfg, "cpu", generator=wrapper,
                                                                  text_encoder=text_encoder, vae=vae))
        cal_pipe.inference(noise=noise_calib, text_prompts_list=[["first"]], switch_frame_indices=[])
    cal_pipe.kv_calibrator.remove()
    model.local_attn_size = LOCAL

    # --- the compressed videos: CausalInferencePipeline.inference as patches.py replaces it
    tensors = {"context": context, "noise_calibration": noise_calib, "renoise_calibration": torch.stack(calib_draws)}
    meta_videos = {}
    for name, sink in VIDEOS.items():
        video_model = causal_model.CausalWanModel(**TINY_CONFIG, local_attn_size=LOCAL, sink_size=sink).eval()
        video_model.load_state_dict(model.state_dict())
        video_wrapper = tiny_wrapper(WanDiffusionWrapper, video_model, FlowMatchScheduler, SHIFT, 21 * TINY_TOKENS)
        draws: list[torch.Tensor] = []
        patches.torch = TorchOnCpu(draws, torch.Generator().manual_seed(args.seed + 1))
        noise = torch.randn(1, FRAMES, *shape, generator=g)
        kept.clear()
        compressions.clear()
        cfg = config(sink, LOCAL, kv_stats_path=str(calib_path), kv_budget_tokens=BUDGET_FRAMES * TINY_TOKENS,
                     **KV_KWARGS)
        with torch.no_grad():
            pipe = tiny_caches(inference_module.CausalInferencePipeline(cfg, "cpu", generator=video_wrapper,
                                                                        text_encoder=text_encoder, vae=vae))
            pipe.kv_compressor.config.grid_h, pipe.kv_compressor.config.grid_w = (TINY_LATENT_HW[0] // 2,
                                                                                  TINY_LATENT_HW[1] // 2)
            _, latents = pipe.inference(noise=noise, text_prompts=["first"], return_latents=True)
        per_layer = TINY_CONFIG["num_layers"] * 2  # k and v of every layer share one index
        assert len(kept) == per_layer * len(compressions), (len(kept), compressions)
        tensors[f"noise_{name}"] = noise
        tensors[f"renoise_{name}"] = torch.stack(draws)
        tensors[f"latents_{name}"] = latents
        tensors[f"kept_{name}"] = torch.stack([torch.stack(kept[i:i + per_layer:2])
                                               for i in range(0, len(kept), per_layer)])  # [C, L, H, K]
        meta_videos[name] = {"sink_size": sink, "compressions": [list(c) for c in compressions],
                             "renoise_draws": len(draws)}
        print(f"{name}: {len(compressions)} compressions {compressions}")

    cal = torch.load(calib_path, map_location="cpu", weights_only=True)
    saved = save_trace(out, model, tensors, {
        "release": RELEASE, "longlive_release": LONGLIVE, "frames": FRAMES, "chunk_frames": CHUNK,
        "denoising_step_list": list(STEPS), "warp": True, "shift": SHIFT, "local_attn_size": LOCAL,
        "kv_budget_tokens": BUDGET_FRAMES * TINY_TOKENS, "budget_frames": BUDGET_FRAMES,
        **{k: v for k, v in KV_KWARGS.items()}, "latent_hw": list(TINY_LATENT_HW), "tokens_per_frame": TINY_TOKENS,
        "grid_hw": [TINY_LATENT_HW[0] // 2, TINY_LATENT_HW[1] // 2], "videos": meta_videos,
        "calibration": {"file": "calibration.pt", "frames": CALIBRATION_FRAMES, "metadata": cal["metadata"],
                        "renoise_draws": len(calib_draws)}})
    print(f"calibration {tuple(cal['q_mean_real'].shape)} tokens {cal['token_count'].tolist()}; trace -> {saved}")


if __name__ == "__main__":
    main()
