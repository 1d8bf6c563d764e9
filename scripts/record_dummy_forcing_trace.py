"""Record a parity trace of Dummy Forcing's released Self Forcing inference on a tiny random model (CPU, float32).

    python scripts/record_dummy_forcing_trace.py --dummy-forcing PATH/TO/DummyForcing --out tests/data/dummy_forcing_trace

``PATH`` is a checkout of ``csguoh/DummyForcing`` at 28128ed; ``pipeline/causal_inference.py``,
``wan/modules/causal_model.py`` and ``wan/modules/dummyforcing.py`` run unchanged except for what a CPU run needs,
patched from the outside (``release_trace_tools``):

1. attention: its ``attention`` / ``flash_attention`` helpers go to exact float32 scaled-dot-product attention, and
   the ``wan`` package ``__init__`` is not run;
2. its Triton kernels: ``rope_apply_triton`` is the release's own torch fallback ``rope_triton.causal_rope_apply``
   (float64 rotation) applied to each batch row at row 0's grid, as the kernel does (the release stacks ``q`` and
   ``k`` into one batch), and ``extract_heads_triton`` its ``extract_head_triton.extract_heads_torch``; ``triton`` itself
   is an empty stand-in module while those two files import (their ``@triton.jit`` kernels are never called);
3. the constants of Wan2.1-1.3B: the caches (``sink_k/v``, ``local_k/v``, cross-attention ``k/v``) are allocated at
   the tiny model's heads / head size (its ``[B, 0, 12, 128]``), and ``frame_seq_length`` is the tiny latent's;
4. its random draws: the pipeline's ``torch.randn_like`` re-noising comes from a seeded generator and is recorded
   (``TorchOnCpu``); ``online_head_classification``'s ``torch.randint`` runs on the global generator (seeded) as in
   the release, and every draw is recorded (the sampled query rows, per layer); the text encoder is a fixed random
   embedding; latents are compared, never pixels.

The tiny model has 3 layers of 4 heads (``DUMMY_CONFIG``: 12 heads, so the release's ``num_dummy`` 180 of 360 is 6),
other sizes as every tiny trace. Settings: ``configs/self_forcing_inference.yaml`` (4 warped steps 1000..250 at shift
5, blocks of 3, ``ar_start 1``, ``denoise_start 0``, ``local_context_length 1``, context_noise 0). One video of 24
frames = 8 chunks: heads classified on chunk 1's clean pass, split from chunk 2, six chunks after.

Besides inputs and outputs the recorder observes the release's cache after every clean pass: which frame sits in
each cache slot for which heads, matched exactly against the values the model computed (its ``v`` projections); and
each layer's head groups and ``frame_attn_score``.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

from release_trace_tools import (TINY_CONFIG, TINY_LATENT_HW, TINY_TOKENS, TorchOnCpu, fill_random,
                                 import_release_on_cpu, register_package_folder, save_trace, tiny_wrapper)

DUMMY_CONFIG = {**TINY_CONFIG, "dim": 96, "num_heads": 4, "num_layers": 3}
HEADS, HEAD_DIM, LAYERS = 4, 24, 3
FRAMES, CHUNK, STEPS, SHIFT = 24, 3, (1000, 750, 500, 250), 5.0
AR_START, LOCAL_CONTEXT, NUM_DUMMY = 1, 1, 6  # 180 / 360 of the 1.3B's heads = 6 of 12


class RecordedRandint(types.ModuleType):
    """``torch`` as ``wan/modules/dummyforcing.py`` sees it: ``randint`` as the release calls it (global generator),
    every draw recorded."""

    def __init__(self, draws: list) -> None:
        super().__init__("torch")
        self._draws = draws

    def __getattr__(self, name):
        return getattr(torch, name)

    def randint(self, *args, **kwargs):
        draw = torch.randint(*args, **kwargs)
        self._draws.append(draw.clone())
        return draw


def import_kernels_without_triton(root: Path) -> None:
    """Import the release's two Triton kernel modules with an empty ``triton`` stand-in (``@triton.jit`` returns the
    function, never called), which is gone again afterwards so torch never sees it."""
    import torch._dynamo  # noqa: F401  (torch probes for triton once, before the stand-in exists)

    triton = types.ModuleType("triton")
    language = types.ModuleType("triton.language")
    language.constexpr = object
    triton.jit = lambda fn=None, **kwargs: fn if fn is not None else (lambda f: f)
    triton.language = language
    sys.modules["triton"], sys.modules["triton.language"] = triton, language
    sys.path.insert(0, str(root))
    torch.cuda.current_device = lambda: 0  # as import_release_on_cpu (wan/modules/t5.py asks at import)
    try:
        register_package_folder("wan", root / "wan")
        import wan.modules.extract_head_triton  # noqa: F401
        import wan.modules.rope_triton  # noqa: F401
    finally:
        del sys.modules["triton"], sys.modules["triton.language"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dummy-forcing", required=True, help="checkout of csguoh/DummyForcing at 28128ed")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = Path(args.dummy_forcing).resolve()
    import_kernels_without_triton(root)
    inference_module, causal_model, FlowMatchScheduler, WanDiffusionWrapper = import_release_on_cpu(root)
    import wan.modules.dummyforcing as dummyforcing
    import wan.modules.extract_head_triton as extract_head
    import wan.modules.rope_triton as rope_triton

    fallback = rope_triton.causal_rope_apply

    def rope_apply_torch(x, grid_sizes, freqs, start_frame=0):
        """The kernel's contract on the torch fallback: every batch row (the release stacks ``q`` and ``k``) at the
        grid of row 0, as ``rope_apply_triton`` reads ``grid_size[0]``."""
        return torch.cat([fallback(x[i:i + 1], grid_sizes[:1], freqs, start_frame) for i in range(x.shape[0])])

    causal_model.rope_apply_triton = rope_apply_torch
    causal_model.extract_heads_triton = extract_head.extract_heads_torch
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = causal_model.CausalWanModel(**DUMMY_CONFIG).eval()
    fill_random(model, g)
    wrapper = tiny_wrapper(WanDiffusionWrapper, model, FlowMatchScheduler, SHIFT, 21 * TINY_TOKENS)

    context = torch.randn(1, DUMMY_CONFIG["text_len"], DUMMY_CONFIG["text_dim"], generator=g)
    dummy = types.SimpleNamespace(denoise_start=0, ar_start=AR_START, local_context_length=LOCAL_CONTEXT,
                                  num_dummy=NUM_DUMMY, teacache_enabled=False, teacache_threshold=0.2)
    cfg = types.SimpleNamespace(denoising_step_list=list(STEPS), warp_denoising_step=True, num_frame_per_block=CHUNK,
                                context_noise=0, global_sink=True, dummy_forcing=dummy,
                                model_kwargs=types.SimpleNamespace(timestep_shift=SHIFT, local_attn_size=12,
                                                                   sink_size=3))
    vae = types.SimpleNamespace(decode_to_pixel=lambda latents, **kwargs: torch.zeros(1, 1, 3, 8, 8))
    pipe = inference_module.CausalInferencePipeline(cfg, "cpu", generator=wrapper, vae=vae,
                                                    text_encoder=lambda text_prompts: {"prompt_embeds": context})
    pipe.num_transformer_blocks = LAYERS

    def init_kv(batch_size, dtype, device, kv_cache_size_override=None):
        empty = lambda: torch.zeros(batch_size, 0, HEADS, HEAD_DIM, dtype=dtype)  # noqa: E731
        pipe.kv_cache1 = [{"sink_k": empty(), "sink_v": empty(), "local_k": empty(), "local_v": empty()}
                          for _ in range(LAYERS)]

    def init_cross(batch_size, dtype, device):
        shape = (batch_size, DUMMY_CONFIG["text_len"], HEADS, HEAD_DIM)
        pipe.crossattn_cache = [{"k": torch.zeros(shape, dtype=dtype), "v": torch.zeros(shape, dtype=dtype),
                                 "is_init": False} for _ in range(LAYERS)]

    pipe._initialize_kv_cache = init_kv
    pipe._initialize_crossattn_cache = init_cross

    # ------------------------------------------------------------------ observation, from the outside
    values: dict[int, torch.Tensor] = {}  # layer -> this call's values [B, L, H, D]
    for i, block in enumerate(model.blocks):
        block.self_attn.v.register_forward_hook(
            lambda mod, inp, out, i=i: values.__setitem__(i, out.detach().clone().unflatten(-1, (HEADS, HEAD_DIM))))
    clean_v: dict[int, torch.Tensor] = {}  # frame -> [layers, B, T, H, D] of its clean pass

    def frames_of(cache_v: torch.Tensor, layer: int, heads: list[int]) -> list[int]:
        """The frame of each frame-sized block of a cache value tensor, for ``heads`` (matched exactly)."""
        found = []
        for slot in range(cache_v.shape[1] // TINY_TOKENS):
            block = cache_v[:, slot * TINY_TOKENS:(slot + 1) * TINY_TOKENS]
            frame = next(f for f in clean_v if torch.equal(block, clean_v[f][layer][:, :, heads]))
            found.append(frame)
        return found

    def observe_cache() -> list[dict]:
        out = []
        for i, c in enumerate(pipe.kv_cache1):
            if "headgroup_first" not in c:
                every = list(range(HEADS))
                out.append({"all": frames_of(c["sink_v"], i, every) + frames_of(c["local_v"], i, every)})
                continue
            first, mid, last = c["headgroup_first"], c["headgroup_mid"], c["headgroup_last"]
            n = len(first)
            out.append({"sink": frames_of(c["sink_v"][:, :, :n], i, first) if first else [],
                        "dummy": frames_of(c["sink_v"][:, :, n:], i, last) if last else [],
                        "neighbour": frames_of(c["local_v"], i, mid) if mid else []})
        return out

    calls: list[dict] = []
    call_inputs, call_outputs = [], []
    chunk_log: list[dict] = []
    inner_forward = wrapper.forward

    def recording_forward(noisy_image_or_video, conditional_dict, timestep, kv_cache=None, crossattn_cache=None,
                          current_start=None, cache_start=None, **kwargs):
        flow, x0 = inner_forward(noisy_image_or_video, conditional_dict, timestep, kv_cache=kv_cache,
                                 crossattn_cache=crossattn_cache, current_start=current_start,
                                 cache_start=cache_start, **kwargs)
        start_frame = current_start // TINY_TOKENS
        chunk = start_frame // CHUNK
        t = float(timestep.flatten()[0])
        calls.append({"chunk": chunk, "start_frame": start_frame, "timestep": t, "clean_pass": t == 0.0})
        call_inputs.append(noisy_image_or_video[0].clone())
        call_outputs.append(x0[0].clone())
        if t == 0.0:
            for j in range(CHUNK):
                clean_v[start_frame + j] = torch.stack(
                    [values[i][:, j * TINY_TOKENS:(j + 1) * TINY_TOKENS] for i in range(LAYERS)])
            chunk_log.append({"chunk": chunk, "start_frame": start_frame, "split": "headgroup_first" in kv_cache[0],
                              "cache_frames": observe_cache()})
        return flow, x0

    wrapper.forward = recording_forward

    draws: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    inference_module.torch = TorchOnCpu(draws, torch.Generator().manual_seed(args.seed + 1))
    dummyforcing.torch = RecordedRandint(rows)
    noise = torch.randn(1, FRAMES, DUMMY_CONFIG["in_dim"], *TINY_LATENT_HW, generator=g)
    with torch.no_grad():
        _, latents = pipe.inference(noise=noise, text_prompts=["tiny"], return_latents=True)

    caches = pipe.kv_cache1
    groups = [{"sink": c["headgroup_first"], "neighbour": c["headgroup_mid"], "dummy": c["headgroup_last"]}
              for c in caches]
    finals = {f"{name}_layer{i}": c[name][0] for i, c in enumerate(caches)
              for name in ("sink_k", "sink_v", "local_k", "local_v")}
    out = save_trace(args.out, model, {
        "context": context, "noise": noise, "renoise": torch.stack(draws), "latents": latents,
        "call_inputs": torch.stack(call_inputs), "call_outputs": torch.stack(call_outputs),
        "sampled_rows": torch.stack(rows),  # [layers, rows]: the classification's torch.randint draws, in order
        "frame_attn_score": torch.stack([c["frame_attn_score"] for c in caches]),  # [layers, 3, B, H]
        **finals}, {
        "release": "csguoh/DummyForcing@28128ed", "frames": FRAMES, "chunk_frames": CHUNK,
        "denoising_step_list": list(STEPS), "warp": True, "shift": SHIFT, "context_noise": 0,
        "ar_start": AR_START, "denoise_start": 0, "local_context_length": LOCAL_CONTEXT, "num_dummy": NUM_DUMMY,
        "heads": HEADS, "layers": LAYERS, "latent_hw": list(TINY_LATENT_HW), "tokens_per_frame": TINY_TOKENS,
        "rope_table_frames": int(model.freqs.shape[0]), "renoise_draws": len(draws), "randint_draws": len(rows),
        "head_groups": groups, "calls": calls, "chunks": chunk_log}, config=DUMMY_CONFIG)
    print(f"recorded {len(calls)} model calls, {len(draws)} re-noise draws, {len(rows)} randint draws; groups "
          f"{groups}; latents {tuple(latents.shape)} -> {out}")


if __name__ == "__main__":
    main()
