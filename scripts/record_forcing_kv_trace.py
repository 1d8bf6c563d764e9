"""Record a parity trace of Forcing-KV's released Self Forcing inference on a tiny random model (CPU, float32), with
the tiny model's head profile made by the release's own ``configs_head/head_profile.py``.

    python scripts/record_forcing_kv_trace.py --forcing-kv PATH/TO/Forcing-KV --out tests/data/forcing_kv_trace

``PATH`` is a checkout of ``zju-jiyicheng/Forcing-KV`` at 50ac1f4 (arXiv 2605.09681). Its files run unchanged except
for what a CPU run needs, patched from the outside (``release_trace_tools``):

1. Triton and SageAttention: ``wan/modules/rope_triton.py`` and ``wan/modules/extract_head_triton.py`` import
   ``triton`` at module level, so a stand-in ``triton`` module (a no-op ``jit``) lets them import; the model's
   ``rope_apply_triton`` / ``extract_heads_triton`` then go to the torch fallbacks those same files ship
   (``causal_rope_apply``, float64, and ``extract_heads_torch``); ``quantization_enabled`` (Sage FP8) stays off as in
   the shipped config; attention helpers go to exact float32 scaled-dot-product attention;
2. the constants of Wan2.1-1.3B: the pipelines' 30 blocks / 12 heads / 128 head size caches are allocated at the
   tiny model's sizes, and ``pipeline/__init__.py`` / ``wan/__init__.py`` (every other pipeline and runner) are not
   run;
3. the pipeline's ``torch.randn_like`` between steps draws from a seeded generator and is recorded; the text encoder
   is a fixed random embedding; latents are compared, never pixels.

Settings: ``configs/forcing-kv/forcingkv_self_forcing_inference.yaml`` (4 warped steps 1000..250 at shift 5, blocks
of 3, sink 1 frame, local_attn_size -1, ar_start 1, spatial / temporal / dynamic context 1 frame each, dynamic
temporal cache on, num_frame_patch 6, sim_retention_ratio 0.33, offline heads on, TeaCache and FP8 off,
context_noise 0). The tiny latent is 4 x 12 (12 tokens per frame, so num_frame_patch 6 divides it into 2-token
patches and the dynamic budget round(3 * 6 * 0.33) = 6 patches is one frame, as the release requires), and the model
has 3 layers: layer 0 keeps its plain cache, layer 1 scores the patches, layer 2 reuses layer 1's choice.
One video of 24 frames = 8 chunks: plain caches for chunks 0-1, the head split after chunk 1's clean pass (AR step
``ar_start``), grouped caches for chunks 2-7.

The head profile. ``configs_head/head_profile.py`` reads a folder of per-(layer, head) *frame-wise* attention files
(``attn``: rows x key frames) and marks a head static when the mass on the last ``LAST_K`` = 4 key frames over the
mass on key frames ``[SKIP_FIRST_K:]`` is >= ``THRESHOLD`` = 0.8. The shipped Self Forcing profile
(``configs_head/forcingkv_heads_selfforcing.json``, "naive_sink_3_thr08") was made with ``SKIP_FIRST_K = 3`` while
the script's default is 1; this recorder sets 3 on the imported module. The release ships no producer of those files;
its nearest is ``wan/modules/attention_map.py:save_head_attention_map_v2`` (softmax(q k^T / sqrt(d)) of batch 0, one
``[queries, keys]`` file per head, called at the cached attention of a chosen AR step, as the commented call in
``causal_model_forcingkv_realtime.py:626-635`` shows). Here: the release's plain Self Forcing pipeline
(``pipeline/causal_inference_selfforcing.py`` with ``wan/modules/causal_model_selfforcing.py``, global attention,
21 frames) runs on the same tiny model; at the last AR step's clean pass every layer's ``attention(roped_query,
keys, values)`` is passed to ``save_head_attention_map_v2``; each token-level file is summed over the key tokens of
each frame (rows: query tokens) into the frame-wise file ``head_profile.py`` reads, and ``head_profile.py``'s own
``main`` writes the JSON (``heads.json`` beside the trace). The head statistic is a ratio of sums, so the reduction
of the rows (tokens or frames) does not change it.

Besides inputs and outputs, the recorder observes after every clean pass: the shared patch scores and kept patch
indices (``CausalWanSelfAttention.shared_dynamic_patch_score`` / ``shared_dynamic_chunk_indices``) and every grouped
layer's caches (sink, static / dynamic ring frame, dynamic buffer: post-RoPE keys, values).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

import torch

from release_trace_tools import (TINY_CONFIG, TorchOnCpu, fill_random, register_package_folder, save_trace,
                                 sdpa_float32, tiny_wrapper)

RELEASE = "zju-jiyicheng/Forcing-KV@50ac1f4"
CONFIG = {**TINY_CONFIG, "num_layers": 3}
LATENT_HW = (4, 12)
TOKENS = (LATENT_HW[0] // 2) * (LATENT_HW[1] // 2)  # 12 tokens per latent frame
HEADS, HEAD_DIM = CONFIG["num_heads"], CONFIG["dim"] // CONFIG["num_heads"]
FRAMES, CHUNK, STEPS, SHIFT, CALIBRATION_FRAMES = 24, 3, (1000, 750, 500, 250), 5.0, 21
FORCINGKV = dict(ar_start=1, spatial_context_length=1, temporal_context_length=1, dynamic_context_length=1,
                 teacache_enabled=False, teacache_threshold=0.2, dynamic_temporal_enabled=True, num_frame_patch=6,
                 sim_retention_ratio=0.33, use_offline_head=True, quantization_enabled=False)
FOCUSED, FOCUS_GAIN = ((1,), (0,), (1,)), 2.0  # per layer: the heads made to attend to themselves (focus_heads)
SELF_FORCING = dict(denoise_start=0, ar_start=1, local_context_length=1, num_dummy=180, teacache_enabled=False,
                    teacache_threshold=0.2)  # configs/self-forcing/self_forcing_inference.yaml's ``forcing``
PROFILE = dict(THRESHOLD=0.8, SKIP_FIRST_K=3, LAST_K=4)  # the shipped Self Forcing profile's "naive_sink_3_thr08"
GROUPED_CACHE = ("group_sink_spatial_k", "group_sink_spatial_v", "group_spatial_k", "group_spatial_v",
                 "group_sink_temporal_k", "group_sink_temporal_v", "group_temporal_k", "group_temporal_v",
                 "group_dynamic_temporal_k", "group_dynamic_temporal_v")


@torch.no_grad()
def focus_heads(model: torch.nn.Module) -> None:
    """The tiny model's one construction beyond ``fill_random`` (not a patch of the release): in each layer the heads
    of ``FOCUSED`` get keys tied to their queries (the ``k`` rows and ``norm_k`` gains of that head copied from ``q``
    / ``norm_q``) and q / k gains of ``FOCUS_GAIN``, so each of their query tokens attends mostly to itself, i.e. to
    the current chunk: their last-4-frame share is near 1 and the release's profile calls them static, while the
    other heads (random, near-uniform attention, share near 4 / 18) are dynamic. Without it every head of a random
    model is dynamic and the static group would never be exercised."""
    for layer, block in enumerate(model.blocks):
        attn = block.self_attn
        for head in FOCUSED[layer]:
            rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
            attn.k.weight[rows] = attn.q.weight[rows]
            attn.k.bias[rows] = attn.q.bias[rows]
            attn.norm_q.weight[rows] = FOCUS_GAIN
            attn.norm_k.weight[rows] = FOCUS_GAIN


def import_forcing_kv_on_cpu(root: Path) -> types.SimpleNamespace:
    """The release's modules this trace runs, imported for a CPU run (see the module docstring, points 1-2)."""
    sys.path.insert(0, str(root))
    torch.cuda.current_device = lambda: 0
    register_package_folder("wan", root / "wan")
    register_package_folder("pipeline", root / "pipeline")
    import wan.modules.model as base_model  # (diffusers and torch._dynamo import first, without the stand-in)

    triton = types.ModuleType("triton")
    triton.jit = lambda fn=None, **kwargs: fn if fn is not None else (lambda f: f)
    triton.language = types.ModuleType("triton.language")
    triton.language.constexpr = int
    sys.modules.update({"triton": triton, "triton.language": triton.language})
    import wan.modules.extract_head_triton as extract_head
    import wan.modules.rope_triton as rope
    del sys.modules["triton"], sys.modules["triton.language"]
    import pipeline.causal_inference_forcingkv as forcingkv_pipeline
    import pipeline.causal_inference_selfforcing as selfforcing_pipeline
    import wan.modules.attention_map as attention_map
    import wan.modules.causal_model_forcingkv as forcingkv_model
    import wan.modules.causal_model_selfforcing as selfforcing_model
    from utils.scheduler import FlowMatchScheduler
    from utils.wan_wrapper import WanDiffusionWrapper

    def rope_torch(x, grid_sizes, freqs, start_frame=0):
        """``rope_apply_triton`` by the same file's torch ``causal_rope_apply``: the kernel rotates every batch row
        (the model passes queries and keys stacked on the batch) at row 0's grid, the fallback loops over
        ``grid_sizes``, so row 0's grid is given once per row."""
        return rope.causal_rope_apply(x, grid_sizes[:1].expand(x.shape[0], -1), freqs, start_frame)

    forcingkv_model.rope_apply_triton = rope_torch
    forcingkv_model.extract_heads_triton = extract_head.extract_heads_torch
    for module in (forcingkv_model, selfforcing_model):
        module.attention = sdpa_float32
    base_model.flash_attention = sdpa_float32
    sys.path.insert(0, str(root / "configs_head"))
    import head_profile

    return types.SimpleNamespace(forcingkv_pipeline=forcingkv_pipeline, selfforcing_pipeline=selfforcing_pipeline,
                                 forcingkv_model=forcingkv_model, selfforcing_model=selfforcing_model,
                                 attention_map=attention_map, head_profile=head_profile,
                                 FlowMatchScheduler=FlowMatchScheduler, WanDiffusionWrapper=WanDiffusionWrapper)


def tiny_pipeline(release, pipeline_cls, model, context, cfg, rolling_cache: bool):
    """``pipeline_cls`` around ``model`` at the tiny sizes: its caches allocated with the tiny model's layers / heads /
    head size (plain Self Forcing: ``k`` / ``v`` of its frames plus end indices; Forcing-KV: empty sink / local)."""
    wrapper = tiny_wrapper(release.WanDiffusionWrapper, model, release.FlowMatchScheduler, SHIFT, 21 * TOKENS)
    vae = types.SimpleNamespace(decode_to_pixel=lambda latents, **kwargs: torch.zeros(1, 1, 3, 8, 8))
    pipe = pipeline_cls(cfg, "cpu", generator=wrapper, vae=vae,
                        text_encoder=lambda text_prompts: {"prompt_embeds": context})
    pipe.num_transformer_blocks = CONFIG["num_layers"]
    layers = range(CONFIG["num_layers"])

    def empty(batch, tokens, dtype):
        return torch.zeros(batch, tokens, HEADS, HEAD_DIM, dtype=dtype)

    def init_kv(batch_size, dtype, device, kv_cache_size_override=None):
        if rolling_cache:  # causal_inference_selfforcing: 21 frames when local_attn_size is -1
            pipe.kv_cache1 = [{"k": empty(batch_size, 21 * TOKENS, dtype), "v": empty(batch_size, 21 * TOKENS, dtype),
                               "global_end_index": torch.tensor([0]), "local_end_index": torch.tensor([0])}
                              for _ in layers]
        else:  # causal_inference_forcingkv: empty sink / local, grown by the model
            pipe.kv_cache1 = [{name: empty(batch_size, 0, dtype) for name in ("sink_k", "sink_v", "local_k", "local_v")}
                              for _ in layers]

    def init_cross(batch_size, dtype, device):
        shape = (batch_size, CONFIG["text_len"], HEADS, HEAD_DIM)
        pipe.crossattn_cache = [{"k": torch.zeros(shape, dtype=dtype), "v": torch.zeros(shape, dtype=dtype),
                                 "is_init": False} for _ in layers]

    pipe._initialize_kv_cache, pipe._initialize_crossattn_cache = init_kv, init_cross
    return pipe, wrapper


def profile_heads(release, model_state: dict, context: torch.Tensor, seed: int, out_json: Path) -> dict:
    """The tiny model's head profile the release's way (module docstring): plain Self Forcing for 21 frames, the last
    AR step's clean-pass attention saved by ``save_head_attention_map_v2``, reduced per key frame, classified by
    ``head_profile.py`` with the shipped Self Forcing profile's settings. Returns the noise and draws it used."""
    model = release.selfforcing_model.CausalWanModel(**CONFIG, local_attn_size=-1, sink_size=0).eval()
    model.load_state_dict(model_state, strict=False)
    cfg = types.SimpleNamespace(denoising_step_list=list(STEPS), warp_denoising_step=True, num_frame_per_block=CHUNK,
                                context_noise=0, forcing=types.SimpleNamespace(**SELF_FORCING),
                                model_kwargs=types.SimpleNamespace(timestep_shift=SHIFT, local_attn_size=-1,
                                                                   sink_size=0))
    pipe, wrapper = tiny_pipeline(release, release.selfforcing_pipeline.CausalInferencePipeline_Self_Forcing,
                                  model, context, cfg, rolling_cache=True)
    last_step = CALIBRATION_FRAMES // CHUNK - 1
    capture = {"on": False, "layer": 0}
    token_dir, frame_dir = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    for i, block in enumerate(model.blocks):
        block.self_attn.register_forward_pre_hook(lambda mod, inp, i=i: capture.__setitem__("layer", i))

    def capturing_attention(q, k, v, *args, **kwargs):
        if capture["on"]:
            release.attention_map.save_head_attention_map_v2(q, k, last_step, capture["layer"], range(HEADS),
                                                             str(token_dir))
        return sdpa_float32(q, k, v)

    release.selfforcing_model.attention = capturing_attention
    inner = wrapper.forward

    def forward(noisy_image_or_video, conditional_dict, timestep, kv_cache=None, crossattn_cache=None,
                current_start=None, **kwargs):
        clean_last = float(timestep.flatten()[0]) == 0.0 and current_start // TOKENS // CHUNK == last_step
        capture["on"] = clean_last
        try:
            return inner(noisy_image_or_video, conditional_dict, timestep, kv_cache=kv_cache,
                         crossattn_cache=crossattn_cache, current_start=current_start, **kwargs)
        finally:
            capture["on"] = False

    wrapper.forward = forward
    draws: list[torch.Tensor] = []
    release.selfforcing_pipeline.torch = TorchOnCpu(draws, torch.Generator().manual_seed(seed + 11))
    noise = torch.randn(1, CALIBRATION_FRAMES, CONFIG["in_dim"], *LATENT_HW,
                        generator=torch.Generator().manual_seed(seed + 10))
    with torch.no_grad():
        pipe.inference(noise=noise, text_prompts=["tiny"], return_latents=True)
    release.selfforcing_model.attention = sdpa_float32
    files = sorted(token_dir.glob("*.pt"))
    assert len(files) == CONFIG["num_layers"] * HEADS, files
    for path in files:  # token-level [queries, keys] -> frame-wise [queries, key frames]: mass per key frame
        payload = torch.load(path)
        payload["attn"] = payload["attn"].unflatten(1, (-1, TOKENS)).sum(dim=2)
        torch.save(payload, frame_dir / path.name)
    for name, value in PROFILE.items():
        setattr(release.head_profile, name, value)
    argv = sys.argv
    sys.argv = ["head_profile.py", "--attn-dir", str(frame_dir), "--output-path", str(out_json)]
    try:
        release.head_profile.main()
    finally:
        sys.argv = argv
    return {"noise": noise, "renoise": torch.stack(draws), "frame_attention": torch.stack(
        [torch.load(p)["attn"] for p in sorted(frame_dir.glob("*.pt"))]).view(CONFIG["num_layers"], HEADS, -1,
                                                                               CALIBRATION_FRAMES)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--forcing-kv", required=True, help="checkout of zju-jiyicheng/Forcing-KV at 50ac1f4")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    release = import_forcing_kv_on_cpu(Path(args.forcing_kv).resolve())
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = release.forcingkv_model.CausalWanModel(**CONFIG, local_attn_size=-1, sink_size=1).eval()
    fill_random(model, g)
    focus_heads(model)
    context = torch.randn(1, CONFIG["text_len"], CONFIG["text_dim"], generator=g)

    heads_json = out / "heads.json"
    calibration = profile_heads(release, model.state_dict(), context, args.seed, heads_json)
    heads = json.loads(heads_json.read_text())

    settings = types.SimpleNamespace(**FORCINGKV, offline_head_file=str(heads_json.resolve()))
    cfg = types.SimpleNamespace(denoising_step_list=list(STEPS), warp_denoising_step=True, num_frame_per_block=CHUNK,
                                context_noise=0, forcingkv=settings, output_folder=str(out),
                                model_kwargs=types.SimpleNamespace(timestep_shift=SHIFT, local_attn_size=-1,
                                                                   sink_size=1))
    pipe, wrapper = tiny_pipeline(release, release.forcingkv_pipeline.CausalInferencePipeline_ForcingKV, model,
                                  context, cfg, rolling_cache=False)
    attn_cls = release.forcingkv_model.CausalWanSelfAttention
    calls: list[dict] = []
    call_inputs, call_outputs = [], []
    scores, kept, grouped = [], [], []
    inner = wrapper.forward

    def recording_forward(noisy_image_or_video, conditional_dict, timestep, kv_cache=None, crossattn_cache=None,
                          current_start=None, **kwargs):
        attn_cls.shared_dynamic_patch_score = attn_cls.shared_dynamic_chunk_indices = None
        flow, x0 = inner(noisy_image_or_video, conditional_dict, timestep, kv_cache=kv_cache,
                         crossattn_cache=crossattn_cache, current_start=current_start, **kwargs)
        start_frame = current_start // TOKENS
        t = float(timestep.flatten()[0])
        caches = pipe.kv_cache1
        call = {"chunk": start_frame // CHUNK, "start_frame": start_frame, "timestep": t, "clean_pass": t == 0.0,
                "switched": [bool(c.get("cache_switched", False)) for c in caches],
                "plain_frames": [int(c["local_k"].shape[1] + c["sink_k"].shape[1]) // TOKENS for c in caches]}
        if t == 0.0 and attn_cls.shared_dynamic_chunk_indices is not None:
            scores.append(attn_cls.shared_dynamic_patch_score.clone())
            kept.append(attn_cls.shared_dynamic_chunk_indices.clone())
            call["patch_scores_index"] = len(scores) - 1
        if t == 0.0 and all(call["switched"]):
            grouped.append(torch.stack([torch.cat([caches[i][n][0].flatten() for n in GROUPED_CACHE])
                                        for i in range(1, len(caches))]))
            call["grouped_cache_index"] = len(grouped) - 1
            call["dynamic_valid_tokens"] = [int(c.get("group_dynamic_temporal_valid_tokens", 0)) for c in caches[1:]]
        calls.append(call)
        call_inputs.append(noisy_image_or_video[0].clone())
        call_outputs.append(x0[0].clone())
        return flow, x0

    wrapper.forward = recording_forward
    draws: list[torch.Tensor] = []
    release.forcingkv_pipeline.torch = TorchOnCpu(draws, torch.Generator().manual_seed(args.seed + 1))
    noise = torch.randn(1, FRAMES, CONFIG["in_dim"], *LATENT_HW, generator=g)
    with torch.no_grad():
        _, latents = pipe.inference(noise=noise, text_prompts=["tiny"], return_latents=True,
                                    num_output_frames=FRAMES)
    saved = save_trace(out, model, {
        "context": context, "noise": noise, "renoise": torch.stack(draws), "latents": latents,
        "call_inputs": torch.stack(call_inputs), "call_outputs": torch.stack(call_outputs),
        "patch_scores": torch.stack(scores), "kept_patches": torch.stack(kept),
        "grouped_caches": torch.stack(grouped),  # [clean passes after the switch, layers >= 1, flat GROUPED_CACHE]
        "calibration_noise": calibration["noise"], "calibration_renoise": calibration["renoise"],
        "calibration_frame_attention": calibration["frame_attention"]}, {
        "release": RELEASE, "frames": FRAMES, "chunk_frames": CHUNK, "denoising_step_list": list(STEPS),
        "warp": True, "shift": SHIFT, "context_noise": 0, "sink_size": 1, "local_attn_size": -1,
        "forcingkv": FORCINGKV, "head_profile": {**PROFILE, "script": "configs_head/head_profile.py",
                                                 "calibration_frames": CALIBRATION_FRAMES,
                                                 "calibration_ar_step": CALIBRATION_FRAMES // CHUNK - 1,
                                                 "pass": "clean (t = 0)"},
        "heads": heads, "grouped_cache_fields": list(GROUPED_CACHE), "latent_hw": list(LATENT_HW),
        "tokens_per_frame": TOKENS, "renoise_draws": len(draws), "calls": calls})
    (saved / "config.json").write_text(json.dumps({"_class_name": "WanModel", **CONFIG}, indent=1))
    print(f"recorded {len(calls)} model calls, {len(draws)} re-noise draws, {len(scores)} patch selections; "
          f"heads {[(l['static_head'], l['dynamic_head']) for l in heads['layers']]}; latents "
          f"{tuple(latents.shape)} -> {saved}")


if __name__ == "__main__":
    main()
