"""Record a parity trace of MemRoPE's released inference on a tiny random model (CPU, float32).

    python scripts/record_memrope_trace.py --memrope PATH/TO/MemRoPE --out tests/data/memrope_trace

``PATH`` is a checkout of ``YoungRaeKimm/MemRoPE`` at b89bf5b; ``pipeline/causal_inference.py`` and
``wan/modules/causal_model.py`` run unchanged except for what a CPU run needs, patched from the outside
(``release_trace_tools``):

1. attention: its ``attention`` / ``flash_attention`` helpers go to exact float32 scaled-dot-product attention, and
   the ``wan`` package ``__init__`` (text-to-video / image-to-video runners) is not run;
2. the constants of Wan2.1-1.3B: ``frame_seq_length`` (1560) is the tiny latent's tokens per frame (the pipeline
   derives the cache size and every layer's ``max_attention_size`` from it), and the caches (``k``, ``v``, its
   ``q`` and per-token index buffers) are allocated at the tiny model's layers / heads / head size;
3. its Gaussian draws: ``inference.py`` hands the pipeline a CPU ``torch.Generator`` and the pipeline draws the
   between-step noise with ``torch.randn(..., generator=generator)``; those draws come from a seeded generator and are
   recorded; the text encoder is a fixed random embedding; latents are compared, never pixels.

Settings: ``configs/selfforcing/memrope_60s.yaml`` (4 warped steps 1000..250 at shift 5, blocks of 3,
local_attn_size 12, sink 3, recent 4, compression_method ema, alpha long 0.01 / short 0.1, use_block_rope,
context_noise 0). One video of 30 frames = 10 chunks: the 12-frame cache fills (chunks 0-3), the first eviction
initialises both memory frames (chunk 4), and five later evictions update them (chunks 5-9).

Besides inputs and outputs, the recorder *observes* the release's cache after every model call: each cache frame's
pre-RoPE keys and values are matched exactly against the frames the model computed (its ``norm_k`` and ``v``
outputs); what matches no frame is a memory frame, kept per layer as its one key / value vector per head; and the
RoPE frame indices of the query and of the cache at each read are logged from the release's ``causal_rope_apply``.
"""

from __future__ import annotations

import argparse
import types
from pathlib import Path

import torch

from release_trace_tools import (TINY_CONFIG, TINY_LATENT_HW, TINY_TOKENS, PreRopeTap, TorchOnCpu,
                                 cross_attention_caches, fill_random, frame_rows, import_release_on_cpu, save_trace,
                                 self_attention_caches, tiny_wrapper)

FRAMES, CHUNK, STEPS, SHIFT = 30, 3, (1000, 750, 500, 250), 5.0
LOCAL, SINK, RECENT, ALPHA_LONG, ALPHA_SHORT = 12, 3, 4, 0.01, 0.1
MEMORY_SLOTS = {SINK: "memory_long", SINK + 1: "memory_short"}  # the release's [sink][long][short] layout


class TorchRandnOnCpu(TorchOnCpu):
    """``TorchOnCpu`` that also records ``torch.randn(shape, generator=...)``, the draw this release makes between
    steps when ``inference.py`` hands it a generator (its default)."""

    def randn(self, *size, generator=None, device=None, dtype=None, **kwargs):
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        draw = torch.randn(tuple(shape), generator=self._generator, dtype=dtype)
        self._draws.append(draw.clone())
        return draw


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--memrope", required=True, help="checkout of YoungRaeKimm/MemRoPE at b89bf5b")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = Path(args.memrope).resolve()
    inference_module, causal_model, FlowMatchScheduler, WanDiffusionWrapper = import_release_on_cpu(root)
    release_rope = causal_model.causal_rope_apply
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    options = dict(local_attn_size=LOCAL, sink_size=SINK, recent_size=RECENT, use_block_rope=True,
                   compression_method="ema", ema_alpha_long=ALPHA_LONG, ema_alpha_short=ALPHA_SHORT)
    model = causal_model.CausalWanModel(**TINY_CONFIG, **options).eval()
    fill_random(model, g)
    wrapper = tiny_wrapper(WanDiffusionWrapper, model, FlowMatchScheduler, SHIFT, 21 * TINY_TOKENS)  # its 32760

    context = torch.randn(1, TINY_CONFIG["text_len"], TINY_CONFIG["text_dim"], generator=g)
    cfg = types.SimpleNamespace(denoising_step_list=list(STEPS), warp_denoising_step=True, num_frame_per_block=CHUNK,
                                context_noise=0, global_sink=True,
                                model_kwargs=types.SimpleNamespace(timestep_shift=SHIFT, **options))
    vae = types.SimpleNamespace(decode_to_pixel=lambda latents, **kwargs: torch.zeros(1, 1, 3, 8, 8))
    pipe = inference_module.CausalInferencePipeline(cfg, "cpu", generator=wrapper, vae=vae,
                                                    text_encoder=lambda text_prompts: {"prompt_embeds": context})
    pipe.num_transformer_blocks = TINY_CONFIG["num_layers"]
    pipe.frame_seq_length = TINY_TOKENS

    def init_kv(batch_size, dtype, device, kv_cache_size_override=None):
        caches = self_attention_caches(batch_size, kv_cache_size_override // TINY_TOKENS, dtype)
        for cache in caches:  # causal_inference.py's extra buffers: a q cache and per-token original indices
            tokens = cache["k"].shape[1]
            cache.update(q=torch.zeros_like(cache["k"]),
                         token_temporal_indices=torch.zeros(batch_size, tokens, dtype=torch.long),
                         token_spatial_indices=torch.zeros(batch_size, tokens, dtype=torch.long),
                         selected_token_indices=None, original_spatial_indices=None)
        pipe.kv_cache1 = caches

    pipe._initialize_kv_cache = init_kv
    pipe._initialize_crossattn_cache = lambda batch_size, dtype, device: setattr(
        pipe, "crossattn_cache", cross_attention_caches(batch_size, dtype))

    # ------------------------------------------------------------------ observation, from the outside
    tap = PreRopeTap(model)
    layers = len(model.blocks)
    rope_calls: list[tuple[int, int, list[int]]] = []  # (layer, rows, frame indices) of the current model call
    layer_now = [0]
    for i, block in enumerate(model.blocks):
        block.self_attn.register_forward_pre_hook(lambda mod, inp, i=i: layer_now.__setitem__(0, i))

    def logged_rope(x, grid_sizes, freqs, start_frame=0, relative_frame_indices=None):
        frames = int(grid_sizes[0, 0])
        indices = (relative_frame_indices.tolist() if relative_frame_indices is not None
                   else list(range(start_frame, start_frame + frames)))
        rope_calls.append((layer_now[0], int(x.shape[1]), indices))
        return release_rope(x, grid_sizes, freqs, start_frame=start_frame,
                            relative_frame_indices=relative_frame_indices)

    causal_model.causal_rope_apply = logged_rope

    calls: list[dict] = []
    call_inputs, call_outputs = [], []
    latest_k: dict[int, torch.Tensor] = {}  # absolute frame -> [layers, B, T, H, D] of the latest call that made it
    latest_v: dict[int, torch.Tensor] = {}
    clean_k: dict[int, torch.Tensor] = {}  # absolute frame -> its clean pass's pre-RoPE key / value
    clean_v: dict[int, torch.Tensor] = {}
    memories: list[torch.Tensor] = []  # per update: [layers, 2 (long, short), 2 (k, v), H, D]
    memory_chunks: list[int] = []
    inner_forward = wrapper.forward

    def observe(chunk: int, start_frame: int, clean: bool) -> dict:
        """Which frame sits in which cache slot after this call (values and pre-RoPE keys matched exactly)."""
        for j in range(CHUNK):
            latest_k[start_frame + j] = torch.stack([frame_rows(tap.k[i], j) for i in range(layers)])
            latest_v[start_frame + j] = torch.stack([frame_rows(tap.v[i], j) for i in range(layers)])
            if clean:
                clean_k[start_frame + j] = latest_k[start_frame + j]
                clean_v[start_frame + j] = latest_v[start_frame + j]
        caches = pipe.kv_cache1
        local_end = int(caches[0]["local_end_index"].item()) // TINY_TOKENS
        slots, memory = [], None
        for slot in range(local_end):
            k = torch.stack([frame_rows(c["k"], slot) for c in caches])
            v = torch.stack([frame_rows(c["v"], slot) for c in caches])
            frame = next((f for f in latest_v if torch.equal(v, latest_v[f]) and torch.equal(k, latest_k[f])), None)
            if frame is not None:
                made_now = frame >= start_frame
                slots.append({"slot": slot, "frame": frame,
                              "source": "this call" if made_now else ("clean pass" if frame in clean_k else "?")})
                assert made_now or torch.equal(k, clean_k[frame]), f"slot {slot}: frame {frame} not its clean pass"
                continue
            kind = MEMORY_SLOTS.get(slot)
            assert kind, f"chunk {chunk}: slot {slot} matches no frame and is no memory slot"
            assert torch.equal(k, k[:, :, :1].expand_as(k)) and torch.equal(v, v[:, :, :1].expand_as(v)), \
                f"chunk {chunk}: memory slot {slot} is not one vector broadcast over its tokens"
            slots.append({"slot": slot, "source": kind})
            memory = [] if memory is None else memory
            memory.append(torch.stack([k[:, 0, 0], v[:, 0, 0]], dim=1))  # [layers, 2 (k, v), H, D]
        layer0 = [indices for layer, rows, indices in rope_calls if layer == 0]
        return {"local_end_frame": local_end, "slots": slots,
                "query_positions": layer0[0], "cache_positions": layer0[1] if len(layer0) > 1 else None,
                "memory": torch.stack(memory, dim=1) if memory else None}  # [layers, 2 (long, short), 2, H, D]

    def explain_memory_update(before: list[dict], after: list[dict], memory: torch.Tensor):
        """Which frames of the cache before the call the new memories are the mean of (searched over every run of
        consecutive cached frames, checked against the EMA rule to float32 rounding), and which frames left the
        cache without being folded in."""
        cached = [s for s in before if "frame" in s]
        for n in range(1, len(cached) + 1):
            for first in range(len(cached) - n + 1):
                frames = [s["frame"] for s in cached[first:first + n]]
                mean = torch.stack([torch.cat([clean[f] for f in frames], dim=2).mean(dim=2)[:, 0]
                                    for clean in (clean_k, clean_v)], dim=1)  # [layers, 2 (k, v), H, D]
                if memories:
                    old = memories[-1]
                    expected = torch.stack([a * mean + (1 - a) * old[:, i] for i, a in enumerate(
                        (ALPHA_LONG, ALPHA_SHORT))], dim=1)
                else:
                    expected = torch.stack([mean, mean], dim=1)
                if (expected - memory).abs().max() < 1e-6:
                    kept = {s["frame"] for s in after if "frame" in s}
                    dropped = [s["frame"] for s in cached if s["frame"] not in kept and s["frame"] not in frames]
                    return frames, dropped
        raise AssertionError("the memory update is the EMA of no run of cached frames")

    def recording_forward(noisy_image_or_video, conditional_dict, timestep, kv_cache=None, crossattn_cache=None,
                          current_start=None, cache_start=None, sink_recache_after_switch=False):
        rope_calls.clear()
        global_before = int(pipe.kv_cache1[0]["global_end_index"].item()) // TINY_TOKENS
        memory_before = [torch.stack([frame_rows(c[n], s)[0, 0] for s in MEMORY_SLOTS for n in ("k", "v")])
                         for c in pipe.kv_cache1]
        flow, x0 = inner_forward(noisy_image_or_video, conditional_dict, timestep, kv_cache=kv_cache,
                                 crossattn_cache=crossattn_cache, current_start=current_start,
                                 cache_start=cache_start, sink_recache_after_switch=sink_recache_after_switch)
        start_frame = current_start // TINY_TOKENS
        t = float(timestep.flatten()[0])
        seen = observe(start_frame // CHUNK, start_frame, clean=t == 0.0)
        memory = seen.pop("memory")
        memory_after = [torch.stack([frame_rows(c[n], s)[0, 0] for s in MEMORY_SLOTS for n in ("k", "v")])
                        for c in pipe.kv_cache1]
        memory_changed = any(not torch.equal(a, b) for a, b in zip(memory_before, memory_after))
        folded = dropped = None
        if memory is not None and memory_changed:
            folded, dropped = explain_memory_update(calls[-1]["slots"], seen["slots"], memory)
            memories.append(memory)
            memory_chunks.append(start_frame // CHUNK)
        calls.append({"chunk": start_frame // CHUNK, "start_frame": start_frame, "timestep": t,
                      "clean_pass": t == 0.0, "first_call_of_chunk": start_frame + CHUNK > global_before,
                      "memory_updated": bool(memory is not None and memory_changed),
                      "frames_folded_into_memory": folded, "frames_dropped_unfolded": dropped, **seen})
        call_inputs.append(noisy_image_or_video[0].clone())
        call_outputs.append(x0[0].clone())
        return flow, x0

    wrapper.forward = recording_forward

    draws: list[torch.Tensor] = []
    inference_module.torch = TorchRandnOnCpu(draws, torch.Generator().manual_seed(args.seed + 1))
    noise = torch.randn(1, FRAMES, TINY_CONFIG["in_dim"], *TINY_LATENT_HW, generator=g)
    with torch.no_grad():
        _, latents = pipe.inference(noise=noise, text_prompts=["tiny"], return_latents=True,
                                    generator=torch.Generator().manual_seed(args.seed + 1))
    caches = pipe.kv_cache1
    out = save_trace(args.out, model, {
        "context": context, "noise": noise, "renoise": torch.stack(draws), "latents": latents,
        "call_inputs": torch.stack(call_inputs), "call_outputs": torch.stack(call_outputs),
        "clean_k": torch.stack([clean_k[f][:, 0] for f in sorted(clean_k)], dim=1),  # [layers, frames, T, H, D]
        "clean_v": torch.stack([clean_v[f][:, 0] for f in sorted(clean_v)], dim=1),
        "memory": torch.stack(memories),  # [updates, layers, 2 (long, short), 2 (k, v), H, D]
        "cache_k_final": torch.stack([c["k"][0] for c in caches]),
        "cache_v_final": torch.stack([c["v"][0] for c in caches])}, {
        "release": "YoungRaeKimm/MemRoPE@b89bf5b", "frames": FRAMES, "chunk_frames": CHUNK,
        "denoising_step_list": list(STEPS), "warp": True, "shift": SHIFT, "context_noise": 0,
        "local_attn_size": LOCAL, "sink_size": SINK, "recent_size": RECENT, "compression_method": "ema",
        "ema_alpha_long": ALPHA_LONG, "ema_alpha_short": ALPHA_SHORT, "use_block_rope": True,
        "rope_table_frames": int(model.freqs.shape[0]), "latent_hw": list(TINY_LATENT_HW),
        "tokens_per_frame": TINY_TOKENS, "renoise_draws": len(draws), "memory_update_chunks": memory_chunks,
        "calls": calls})
    print(f"recorded {len(calls)} model calls, {len(draws)} re-noise draws, {len(memories)} memory updates; "
          f"latents {tuple(latents.shape)} -> {out}")


if __name__ == "__main__":
    main()
