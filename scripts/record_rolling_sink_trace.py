"""Record a parity trace of Rolling Sink's released inference on a tiny random model (CPU, float32).

    python scripts/record_rolling_sink_trace.py --rolling-sink PATH/TO/Rolling-Sink --out tests/data/rolling_sink_trace

``PATH`` is a checkout of ``Rolling-Sink/Rolling-Sink`` at d7fc0d9; ``pipeline/causal_inference.py`` and
``wan/modules/causal_model.py`` (where the whole method lives, between its "Rolling Sink starts/ends" markers) run
unchanged except for what a CPU run needs, patched from the outside (``release_trace_tools``):

1. attention: its ``attention`` / ``flash_attention`` helpers go to exact float32 scaled-dot-product attention, and
   the ``wan`` package ``__init__`` (text-to-video / image-to-video runners) is not run;
2. the constants of Wan2.1-1.3B: ``frame_seq_length`` (1560) is the tiny latent's tokens per frame, each attention
   layer's ``max_attention_size`` (its ``32760`` = 21 x 1560 when ``local_attn_size == -1``) is 21 tiny frames, and
   the caches (``k``, ``v`` and the archive ``k_original``, ``v_original``) are allocated at the tiny model's
   layers / heads / head size and 21 frames;
3. its Gaussian draws (``torch.randn_like`` between steps) come from a seeded generator and are recorded; the text
   encoder is a fixed random embedding; latents are compared, never pixels.

Settings: ``configs/self_forcing_dmd.yaml`` (4 warped steps 1000..250 at shift 5, blocks of 3) with
``configs/default_config.yaml`` (context_noise 0, independent_first_frame false), ``local_attn_size -1``,
``sink_size 0`` (the model defaults ``inference.py`` uses). One video of 63 frames = 21 chunks: the window fills
(chunks 0-6), the archive replay starts (chunk 7), runs its reversed phase (chunks 7-12), its forward phase
(13-18) and starts the next reversed phase (19-20).

Besides inputs and outputs, the recorder *observes* (never recomputes) the release's cache after every clean pass:
each cache frame's value rows are matched exactly against the live chunks' and the archive's value rows, and its key
rows against the release's own ``causal_rope_apply`` of the matching pre-RoPE keys at every candidate position, so
``trace.json`` says for every chunk which frame sits in which slot, where it came from and at which RoPE position.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import types
from pathlib import Path

import torch

from release_trace_tools import (TINY_CONFIG, TINY_LATENT_HW, TINY_TOKENS, PreRopeTap, TorchOnCpu,
                                 cross_attention_caches, fill_random, frame_rows, import_release_on_cpu, save_trace,
                                 self_attention_caches, tiny_wrapper)

FRAMES, CHUNK, STEPS, SHIFT, WINDOW = 63, 3, (1000, 750, 500, 250), 5.0, 21
SNAPSHOT_CHUNKS = (20,)  # the full cache after the last clean pass (both replay directions in it)
QUIRK_CONTEXT_NOISE, QUIRK_FRAMES = 50, 27  # a second, short run: the replay never fires unless context_noise is 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rolling-sink", required=True, help="checkout of Rolling-Sink/Rolling-Sink at d7fc0d9")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = Path(args.rolling_sink).resolve()
    inference_module, causal_model, FlowMatchScheduler, WanDiffusionWrapper = import_release_on_cpu(root)
    release_rope = causal_model.causal_rope_apply
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = causal_model.CausalWanModel(**TINY_CONFIG).eval()  # local_attn_size -1, sink_size 0
    fill_random(model, g)
    for block in model.blocks:
        block.self_attn.max_attention_size = WINDOW * TINY_TOKENS  # its 32760
    wrapper = tiny_wrapper(WanDiffusionWrapper, model, FlowMatchScheduler, SHIFT, WINDOW * TINY_TOKENS)

    context = torch.randn(1, TINY_CONFIG["text_len"], TINY_CONFIG["text_dim"], generator=g)
    cfg = types.SimpleNamespace(denoising_step_list=list(STEPS), warp_denoising_step=True, num_frame_per_block=CHUNK,
                                context_noise=0, independent_first_frame=False,
                                model_kwargs=types.SimpleNamespace(timestep_shift=SHIFT))
    vae = types.SimpleNamespace(decode_to_pixel=lambda latents, **kwargs: torch.zeros(1, 1, 3, 8, 8))
    pipe = inference_module.CausalInferencePipeline(cfg, "cpu", generator=wrapper, vae=vae,
                                                    text_encoder=lambda text_prompts: {"prompt_embeds": context})
    pipe.num_transformer_blocks = TINY_CONFIG["num_layers"]
    pipe.frame_seq_length = TINY_TOKENS

    def pipe_caches(batch_size, dtype):
        caches = self_attention_caches(batch_size, WINDOW, dtype)
        for cache in caches:  # the archive of pre-RoPE keys / values (causal_inference.py: k_original, v_original)
            cache["k_original"], cache["v_original"] = torch.zeros_like(cache["k"]), torch.zeros_like(cache["v"])
        return caches

    pipe._initialize_kv_cache = lambda batch_size, dtype, device: setattr(pipe, "kv_cache1", pipe_caches(
        batch_size, dtype))
    pipe._initialize_crossattn_cache = lambda batch_size, dtype, device: setattr(
        pipe, "crossattn_cache", cross_attention_caches(batch_size, dtype))

    # ------------------------------------------------------------------ the "silently off" quirk, observed first
    quirk_pipe = inference_module.CausalInferencePipeline(
        types.SimpleNamespace(**{**vars(cfg), "context_noise": QUIRK_CONTEXT_NOISE}), "cpu", generator=wrapper,
        vae=vae, text_encoder=lambda text_prompts: {"prompt_embeds": context})
    quirk_pipe.num_transformer_blocks, quirk_pipe.frame_seq_length = TINY_CONFIG["num_layers"], TINY_TOKENS
    quirk_pipe._initialize_kv_cache = lambda batch_size, dtype, device: setattr(quirk_pipe, "kv_cache1", pipe_caches(
        batch_size, dtype))
    quirk_pipe._initialize_crossattn_cache = lambda batch_size, dtype, device: setattr(
        quirk_pipe, "crossattn_cache", cross_attention_caches(batch_size, dtype))
    inference_module.torch = TorchOnCpu([], torch.Generator().manual_seed(args.seed + 2))
    quirk_log = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(quirk_log):
        quirk_pipe.inference(noise=torch.randn(1, QUIRK_FRAMES, TINY_CONFIG["in_dim"], *TINY_LATENT_HW,
                                               generator=torch.Generator().manual_seed(args.seed + 3)),
                             text_prompts=["tiny"])
    quirk_replays = sum("sink:" in line for line in quirk_log.getvalue().splitlines())

    # ------------------------------------------------------------------ observation, from the outside
    tap = PreRopeTap(model)
    rope_calls: list[tuple[int, int, int]] = []  # (layer, rows, start_frame) of the current model call
    layer_now = [0]
    for i, block in enumerate(model.blocks):
        block.self_attn.register_forward_pre_hook(lambda mod, inp, i=i: layer_now.__setitem__(0, i))

    def logged_rope(x, grid_sizes, freqs, start_frame=0):
        rope_calls.append((layer_now[0], int(x.shape[1]), int(start_frame)))
        return release_rope(x, grid_sizes, freqs, start_frame=start_frame)

    causal_model.causal_rope_apply = logged_rope

    calls: list[dict] = []
    call_inputs, call_outputs = [], []
    live_k: dict[int, torch.Tensor] = {}  # absolute frame -> [layers, B, T, H, D] pre-RoPE key of its clean pass
    live_v: dict[int, torch.Tensor] = {}
    chunk_log: list[dict] = []
    snapshots: dict[str, torch.Tensor] = {}
    grid = torch.tensor([[1, TINY_LATENT_HW[0] // 2, TINY_LATENT_HW[1] // 2]])
    inner_forward = wrapper.forward

    def observe_clean_pass(chunk: int, start_frame: int) -> dict:
        """Which frame sits in which cache slot after ``chunk``'s clean pass, from where, at which RoPE position."""
        for j in range(CHUNK):
            live_k[start_frame + j] = torch.stack([frame_rows(tap.k[i], j) for i in range(len(model.blocks))])
            live_v[start_frame + j] = torch.stack([frame_rows(tap.v[i], j) for i in range(len(model.blocks))])
        caches = pipe.kv_cache1
        local_end = int(caches[0]["local_end_index"].item()) // TINY_TOKENS
        slots = []
        for slot in range(local_end):
            cache_k = torch.stack([frame_rows(c["k"], slot) for c in caches])
            cache_v = torch.stack([frame_rows(c["v"], slot) for c in caches])
            frame = next(f for f in live_v if torch.equal(cache_v, live_v[f]))  # values are never rotated
            position = next(p for p in range(start_frame + CHUNK) if torch.equal(cache_k, torch.stack(
                [release_rope(live_k[frame][i], grid, model.freqs, start_frame=p) for i in range(len(caches))])))
            if position == frame:
                slots.append({"slot": slot, "source": "live", "frame": frame, "position": position})
                continue
            archived = [torch.equal(frame_rows(c[name], frame), x[i]) for i, c in enumerate(caches)
                        for name, x in (("k_original", live_k[frame]), ("v_original", live_v[frame]))]
            assert all(archived), f"chunk {chunk}: slot {slot} holds frame {frame} away from its position but " \
                                  "not from the archive"
            slots.append({"slot": slot, "source": "archive", "frame": frame, "position": position})
        layer0 = [(rows // TINY_TOKENS, start) for layer, rows, start in rope_calls if layer == 0]
        archive_call = layer0[2] if len(layer0) == 3 else None  # query, key, then the re-RoPE'd archive slice
        return {"chunk": chunk, "start_frame": start_frame, "local_end_frame": local_end,
                "global_end_frame": int(caches[0]["global_end_index"].item()) // TINY_TOKENS,
                "archive_reroped_at": archive_call[1] if archive_call else None, "slots": slots}

    def recording_forward(noisy_image_or_video, conditional_dict, timestep, kv_cache=None, crossattn_cache=None,
                          current_start=None, cache_start=None):
        rope_calls.clear()
        flow, x0 = inner_forward(noisy_image_or_video, conditional_dict, timestep, kv_cache=kv_cache,
                                 crossattn_cache=crossattn_cache, current_start=current_start,
                                 cache_start=cache_start)
        start_frame = current_start // TINY_TOKENS
        chunk = start_frame // CHUNK
        t = float(timestep.flatten()[0])
        calls.append({"chunk": chunk, "start_frame": start_frame, "timestep": t, "clean_pass": t == 0.0})
        call_inputs.append(noisy_image_or_video[0].clone())
        call_outputs.append(x0[0].clone())
        if t == 0.0:
            chunk_log.append(observe_clean_pass(chunk, start_frame))
            if chunk in SNAPSHOT_CHUNKS:
                for name in ("k", "v"):
                    snapshots[f"cache_{name}_after_chunk_{chunk:02d}"] = torch.stack(
                        [c[name][0] for c in pipe.kv_cache1])
        return flow, x0

    wrapper.forward = recording_forward

    draws: list[torch.Tensor] = []
    inference_module.torch = TorchOnCpu(draws, torch.Generator().manual_seed(args.seed + 1))
    noise = torch.randn(1, FRAMES, TINY_CONFIG["in_dim"], *TINY_LATENT_HW, generator=g)
    log = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(log):
        _, latents = pipe.inference(noise=noise, text_prompts=["tiny"], return_latents=True)
    release_prints = [line for line in log.getvalue().splitlines() if "sink:" in line]

    caches = pipe.kv_cache1
    out = save_trace(args.out, model, {
        "context": context, "noise": noise, "renoise": torch.stack(draws), "latents": latents,
        "call_inputs": torch.stack(call_inputs), "call_outputs": torch.stack(call_outputs),
        "archive_k": torch.stack([c["k_original"][0] for c in caches]),
        "archive_v": torch.stack([c["v_original"][0] for c in caches]),
        **snapshots}, {
        "release": "Rolling-Sink/Rolling-Sink@d7fc0d9", "frames": FRAMES, "chunk_frames": CHUNK,
        "denoising_step_list": list(STEPS), "warp": True, "shift": SHIFT, "context_noise": 0,
        "window_frames": WINDOW, "sink_size": 0, "rope_table_frames": int(model.freqs.shape[0]),
        "latent_hw": list(TINY_LATENT_HW), "tokens_per_frame": TINY_TOKENS, "renoise_draws": len(draws),
        "snapshot_chunks": list(SNAPSHOT_CHUNKS), "calls": calls, "chunks": chunk_log,
        "release_prints": release_prints,
        "quirk_run": {"context_noise": QUIRK_CONTEXT_NOISE, "frames": QUIRK_FRAMES, "replays": quirk_replays}})
    print(f"recorded {len(calls)} model calls, {len(draws)} re-noise draws; latents {tuple(latents.shape)} -> {out}")


if __name__ == "__main__":
    main()
