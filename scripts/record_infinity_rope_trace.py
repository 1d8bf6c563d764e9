"""Record a parity trace of ∞-RoPE's released inference (arXiv 2511.20649) on a tiny random model (CPU, float32).

    PYTHONPATH=DEPS python scripts/record_infinity_rope_trace.py --infinity-rope PATH/TO/infinity-rope \\
        --out tests/data/infinity_rope_trace

``PATH`` is a checkout of ``yesiltepe-hidir/infinity-rope`` at 63d7b84 (``DEPS`` holds ``einops``, ``ftfy`` and
``regex``, which its ``wan`` modules import). ``pipeline/causal_inference.py`` and ``wan/modules/causal_model.py``
run unchanged except for what a CPU run of a tiny model needs, patched from the outside (``release_trace_tools``):

1. attention: its ``attention`` / ``flash_attention`` helpers go to exact float32 scaled-dot-product attention; the
   ``wan`` and ``pipeline`` package ``__init__`` files are not run and ``torch.cuda.current_device()``
   (``demo_utils/memory.py``, at import) answers 0;
2. the constants of Wan2.1-1.3B: ``frame_seq_length`` (1560) is the tiny latent's tokens per frame, each attention
   layer's ``max_attention_size`` (``local_attn_size x 1560``) is 6 tiny frames, the caches are allocated at the
   tiny model's layers / heads / head size (with the release's ``scene_cut`` flag), and the token counts written
   into ``kv_flush`` (1560, -3120, 4680 = 1, 2, 3 frames) are the tiny frame's: the integer constants of that
   nested function's code object are swapped, its bytecode is otherwise the release's;
3. its Gaussian draws (``torch.randn_like``) come from a seeded generator and are recorded; the text encoder is a
   table of fixed random embeddings, one per prompt; latents are compared, never pixels.

The tiny model itself differs from the other traces' in one choice (not a patch): its q / k RMSNorm gains are
N(0, 1) (``QK_GAIN_SCALE``), so that RoPE positions show in the latents.

Everything else is observed, not changed: every model call's input, timestep and x0 output; per self-attention call
the cache indices, which frame (and which model call's write) sits in each window slot at read, whether it is stored
post-RoPE, and the temporal RoPE position each query / key frame was rotated at, measured from the rotation itself
(the complex ratio of ``block_relativistic_rope``'s output to its input, matched against the release's ``freqs``).

Settings are ``configs/self_forcing_dmd.yaml`` over ``configs/default_config.yaml`` (4 warped steps at shift 5,
blocks of 3, local_attn_size 6, sink_size 1, context_noise 0). Two videos: ``plain`` (30 frames, one prompt: the
window rolls from chunk 2 on) and ``events`` (33 frames from the release's prompt DSL
``first[3s] | second[3s#] | third``: a KV Flush at chunk 4, a KV Flush with RoPE Cut at chunk 8).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import types
from pathlib import Path

import torch

from release_trace_tools import (TINY_CONFIG, TINY_LATENT_HW, TINY_TOKENS, TorchOnCpu, cross_attention_caches,
                                 fill_random, register_package_folder, save_trace, sdpa_float32,
                                 self_attention_caches, tiny_wrapper)

COMMIT = "63d7b84f043a2536ccb62d5171ed54dfadc0a721"
CHUNK, STEPS, SHIFT, LOCAL, SINK, CONTEXT_NOISE = 3, (1000, 750, 500, 250), 5.0, 6, 1, 0
PLAIN_FRAMES, EVENTS_FRAMES = 30, 33
EVENTS_DSL = "first[3s] | second[3s#] | third"  # 3 s = int(3 * 16 / (4 * 3)) = 4 chunks per scene
PROMPTS = ("first", "second", "third")
QK_GAIN_SCALE = 1.0
"""The self-attention q / k RMSNorm gains are drawn at N(0, 1) instead of ``fill_random``'s N(0, 0.1^2): at 0.1 the
attention logits are ~1e-2, the softmax nearly uniform and RoPE positions almost invisible in the latents (a missing
RoPE Cut moved them by 4e-4, a cut left off the clean pass by 3e-5); at 1 the same mistakes move them by 7.8e-2 and
1.0e-3 (README)."""
RELEASE_TOKENS_PER_FRAME = 1560


def scale_kv_flush(inference_fn, tokens_per_frame: int) -> None:
    """Swap the 1.3B token counts written into ``inference``'s nested ``kv_flush`` (``pipeline/causal_inference.py``
    :214-222: ``k[:, 1560:4680] = k[:, -3120:]``, ``local_end_index = 4680``) for ``tokens_per_frame``'s."""
    f = RELEASE_TOKENS_PER_FRAME
    table = {f: tokens_per_frame, -2 * f: -2 * tokens_per_frame, 3 * f: 3 * tokens_per_frame}
    outer, consts, swapped = inference_fn.__code__, [], 0
    for const in outer.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == "kv_flush":
            ints = {c for c in const.co_consts if type(c) is int}
            assert ints == set(table), f"kv_flush's constants changed: {sorted(ints)}"
            const = const.replace(co_consts=tuple(table.get(c, c) if type(c) is int else c for c in const.co_consts))
            swapped += 1
        consts.append(const)
    assert swapped == 1, "kv_flush not found in CausalInferencePipeline.inference"
    inference_fn.__code__ = outer.replace(co_consts=tuple(consts))


def temporal_positions(x_in: torch.Tensor, x_out: torch.Tensor, grid: torch.Tensor, freqs: torch.Tensor) -> list[int]:
    """The temporal RoPE position each frame of ``x_in`` was rotated at, read off the rotation: the first token of
    every frame (spatial position 0, 0) is ``x_in * freqs[0][p]`` on the temporal channels; ``p`` is the table row
    that reproduces ``x_out`` (float32 output, so within 1e-5)."""
    f, h, w = grid[0].tolist()
    c = x_in.shape[3] // 2
    ct = c - 2 * (c // 3)
    table = freqs[:, :ct]  # [1024, ct] complex128
    positions = []
    for i in range(f):
        token = i * h * w
        a = torch.view_as_complex(x_in[0, token].double().reshape(-1, c, 2))[:, :ct]
        b = torch.view_as_complex(x_out[0, token].double().reshape(-1, c, 2))[:, :ct]
        err = (a[None] * table[:, None] - b[None]).abs().amax(dim=(1, 2))
        p = int(err.argmin())
        assert err[p] < 1e-5, f"frame {i}: no RoPE position reproduces the rotation ({err[p]:.2e})"
        positions.append(p)
    return positions


class Observer:
    """Everything the release exposes while it runs: model calls (wrapper forward hook) and self-attention calls
    (a pass-through around ``CausalWanSelfAttention.forward``, ``block_relativistic_rope`` and ``attention``)."""

    def __init__(self, prompts: dict, freqs: torch.Tensor, layers: list) -> None:
        self.prompts, self.freqs = prompts, freqs
        self.layer_of = {id(m): i for i, m in enumerate(layers)}
        self.video = ""
        self.calls: list[dict] = []
        self.attn: list[dict] = []
        self.registry: list[dict] = [{} for _ in layers]  # per layer: bytes of a stored K / V frame -> provenance
        self.current: dict | None = None
        self.rope_examples: dict[str, torch.Tensor] = {}
        self.rotate = None  # the release's block_relativistic_rope, unwrapped
        self.sink_pre_rope: dict[int, torch.Tensor] = {}  # per layer: frame 0's key as written, before rotation

    # -------------------------------------------------------------------------------------------- model calls
    def before_call(self, module, args, kwargs) -> None:
        kv, cross = kwargs["kv_cache"], kwargs["crossattn_cache"]
        prompt = [name for name, emb in self.prompts.items() if kwargs["conditional_dict"]["prompt_embeds"] is emb]
        start_frame = kwargs["current_start"] // TINY_TOKENS
        same_chunk = [c for c in self.calls if c["video"] == self.video and c["start_frame"] == start_frame]
        self.calls.append({
            "video": self.video, "start_frame": start_frame, "kind": len(same_chunk),
            "timestep": float(kwargs["timestep"][0, 0]), "prompt": PROMPTS.index(prompt[0]),
            "crossattn_fresh": all(not c["is_init"] for c in cross), "scene_cut": bool(kv[0]["scene_cut"]),
            "local_end_before": int(kv[0]["local_end_index"]) // TINY_TOKENS,
            "input": kwargs["noisy_image_or_video"][0].clone()})
        assert len({bool(c["scene_cut"]) for c in kv}) == 1 and len({int(c["local_end_index"]) for c in kv}) == 1

    def after_call(self, module, args, kwargs, output) -> None:
        self.calls[-1]["x0"] = output[1][0].clone()

    # ----------------------------------------------------------------------------------- self-attention calls
    def self_attention(self, forward):
        observer = self

        def observed(attn, x, seq_lens, grid_sizes, freqs, block_mask, kv_cache=None, current_start=0,
                     cache_start=None, timestep=None):
            rec = {"model_call": len(observer.calls) - 1, "layer": observer.layer_of[id(attn)],
                   "local_end_before": int(kv_cache["local_end_index"]) // TINY_TOKENS,
                   "global_end_before": int(kv_cache["global_end_index"]) // TINY_TOKENS,
                   "scene_cut": bool(kv_cache["scene_cut"]), "rope": [], "kv_cache": kv_cache,
                   "start_frame": current_start // TINY_TOKENS, "new_frames": x.shape[1] // TINY_TOKENS}
            observer.current = rec
            out = forward(attn, x, seq_lens, grid_sizes, freqs, block_mask, kv_cache, current_start, cache_start,
                          timestep)
            observer._finish(rec)
            return out

        return observed

    def rope(self, rotate):
        self.rotate = rotate

        def observed(x, grid_sizes, freqs, start_frame=0, scene_cut=False):
            out = rotate(x, grid_sizes, freqs, start_frame=start_frame, scene_cut=scene_cut)
            self.current["rope"].append((x.clone(), out.clone(), grid_sizes.clone()))
            return out

        return observed

    def attention(self, q, k, v, *args, **kwargs):
        self.current["roped_key"] = k.clone()
        return sdpa_float32(q, k, v, *args, **kwargs)

    def _finish(self, rec: dict) -> None:
        (q_in, q_out, q_grid), (k_in, k_out, k_grid) = rec.pop("rope")
        cache = rec.pop("kv_cache")
        rec["query_pos"] = temporal_positions(q_in, q_out, q_grid, self.freqs)
        rec["key_pos"] = temporal_positions(k_in, k_out, k_grid, self.freqs)
        rec["local_end_after"] = int(cache["local_end_index"]) // TINY_TOKENS
        rec["global_end_after"] = int(cache["global_end_index"]) // TINY_TOKENS
        read = rec["local_end_after"]
        assert len(rec["key_pos"]) == read, "keys rotated are not the cache's filled slots"
        roped = rec.pop("roped_key")
        rec["sink_read_stored"] = not torch.equal(roped[:, :TINY_TOKENS], k_out[:, :TINY_TOKENS])
        if rec["sink_read_stored"]:
            assert torch.equal(roped[:, :TINY_TOKENS], cache["k"][:, :TINY_TOKENS])
        assert torch.equal(roped[:, TINY_TOKENS:], k_out[:, TINY_TOKENS:read * TINY_TOKENS])
        sink = slice(0, TINY_TOKENS)
        if rec["start_frame"] == 0:
            self.sink_pre_rope[rec["layer"]] = k_in[:, sink].clone()
        # is the stored sink what rotating frame 0's pre-RoPE key at slot 0 in this very call would give?
        with_sink = torch.cat([self.sink_pre_rope[rec["layer"]], k_in[:, TINY_TOKENS:]], dim=1)
        rotated = self.rotate(with_sink, k_grid, self.freqs, start_frame=0, scene_cut=rec["scene_cut"])
        rec["sink_as_rotated"] = torch.equal(rotated[:, sink], roped[:, sink])
        registry, frames, writers, post = self.registry[rec["layer"]], [], [], []
        for slot in range(read):
            rows = slice(slot * TINY_TOKENS, (slot + 1) * TINY_TOKENS)
            k_key, v_key = cache["k"][:, rows].numpy().tobytes(), cache["v"][:, rows].numpy().tobytes()
            if k_key not in registry:  # written by this call: one of its new frames
                new = slot - (read - rec["new_frames"])
                assert 0 <= new < rec["new_frames"], f"slot {slot} holds a key no call wrote"
                registry[k_key] = (rec["start_frame"] + new, rec["model_call"],
                                   torch.equal(cache["k"][:, rows], k_out[:, rows]))
                registry[v_key] = registry[k_key][:2]
            frame, writer, post_rope = registry[k_key]
            assert registry[v_key] == (frame, writer), f"slot {slot}: K and V come from different writes"
            frames.append(frame), writers.append(writer), post.append(post_rope)
        rec.update(slot_frame=frames, slot_writer=writers, slot_post_rope=post)
        self.attn.append(rec)
        self._keep_example(rec, q_in, q_out, k_in, k_out)

    def _keep_example(self, rec, q_in, q_out, k_in, k_out) -> None:
        """Layer 0's rotation inputs / outputs on the first step of a rolling chunk and of the cut chunk."""
        call = self.calls[rec["model_call"]]
        name = ("rolling" if call["video"] == "plain" and call["start_frame"] == 9 else
                "cut" if rec["scene_cut"] else None)
        if name and rec["layer"] == 0 and call["kind"] == 0 and f"rope_{name}_q_in" not in self.rope_examples:
            for key, t in (("q_in", q_in), ("q_out", q_out), ("k_in", k_in), ("k_out", k_out)):
                self.rope_examples[f"rope_{name}_{key}"] = t[0]


def pad(rows: list[list], width: int, fill: int = -1) -> torch.Tensor:
    return torch.tensor([[int(v) for v in r] + [fill] * (width - len(r)) for r in rows], dtype=torch.long)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--infinity-rope", required=True, help=f"checkout of yesiltepe-hidir/infinity-rope at {COMMIT[:7]}")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = Path(args.infinity_rope).resolve()
    sys.path.insert(0, str(root))
    torch.cuda.current_device = lambda: 0  # demo_utils/memory.py builds a cuda device object at import time
    register_package_folder("wan", root / "wan")
    register_package_folder("pipeline", root / "pipeline")
    import pipeline.causal_inference as inference_module
    import wan.modules.causal_model as causal_model
    import wan.modules.model as base_model
    from utils.scheduler import FlowMatchScheduler
    from utils.wan_wrapper import WanDiffusionWrapper

    base_model.flash_attention = sdpa_float32
    scale_kv_flush(inference_module.CausalInferencePipeline.inference, TINY_TOKENS)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = causal_model.CausalWanModel(**TINY_CONFIG, local_attn_size=LOCAL, sink_size=SINK).eval()
    fill_random(model, g)
    with torch.no_grad():
        for block in model.blocks:
            block.self_attn.max_attention_size = LOCAL * TINY_TOKENS
            for norm in (block.self_attn.norm_q, block.self_attn.norm_k):
                norm.weight.copy_(torch.randn(norm.weight.shape, generator=g) * QK_GAIN_SCALE)
    wrapper = tiny_wrapper(WanDiffusionWrapper, model, FlowMatchScheduler, SHIFT, 21 * TINY_TOKENS)  # its 32760
    prompts = {name: torch.randn(1, TINY_CONFIG["text_len"], TINY_CONFIG["text_dim"], generator=g) for name in PROMPTS}
    shape = (TINY_CONFIG["in_dim"], *TINY_LATENT_HW)
    noise = {"plain": torch.randn(1, PLAIN_FRAMES, *shape, generator=g),
             "events": torch.randn(1, EVENTS_FRAMES, *shape, generator=g)}

    observer = Observer(prompts, model.freqs, [b.self_attn for b in model.blocks])
    causal_model.attention = observer.attention
    causal_model.block_relativistic_rope = observer.rope(causal_model.block_relativistic_rope)
    causal_model.CausalWanSelfAttention.forward = observer.self_attention(causal_model.CausalWanSelfAttention.forward)
    wrapper.register_forward_pre_hook(observer.before_call, with_kwargs=True)
    wrapper.register_forward_hook(observer.after_call, with_kwargs=True)

    cfg = types.SimpleNamespace(denoising_step_list=list(STEPS), warp_denoising_step=True, num_frame_per_block=CHUNK,
                                context_noise=CONTEXT_NOISE, independent_first_frame=False,
                                model_kwargs=types.SimpleNamespace(local_attn_size=LOCAL, sink_size=SINK,
                                                                   timestep_shift=SHIFT))
    vae = types.SimpleNamespace(decode_to_pixel=lambda latents, use_cache=False: torch.zeros(1, 1, 3, 8, 8))
    text_encoder = lambda text_prompts: {"prompt_embeds": prompts[text_prompts[0]]}  # noqa: E731

    def allocate_kv(pipe, batch_size, dtype, device):
        pipe.kv_cache1 = self_attention_caches(batch_size, LOCAL, dtype)
        for cache in pipe.kv_cache1:
            cache["scene_cut"] = False  # the release's _initialize_kv_cache adds this flag

    draws: list[torch.Tensor] = []
    inference_module.torch = TorchOnCpu(draws, torch.Generator().manual_seed(args.seed + 1))
    latents, draw_counts, parsed = {}, {}, None
    for video, text in (("plain", "first"), ("events", EVENTS_DSL)):
        pipe = inference_module.CausalInferencePipeline(cfg, "cpu", generator=wrapper, text_encoder=text_encoder,
                                                        vae=vae)
        pipe.num_transformer_blocks = TINY_CONFIG["num_layers"]
        pipe.frame_seq_length = TINY_TOKENS
        pipe._initialize_kv_cache = types.MethodType(allocate_kv, pipe)
        pipe._initialize_crossattn_cache = lambda batch_size, dtype, device, pipe=pipe: setattr(
            pipe, "crossattn_cache", cross_attention_caches(batch_size, dtype))
        observer.video, before = video, len(draws)
        with torch.no_grad():
            _, latents[video] = pipe.inference(noise=noise[video], text_prompts=[text], return_latents=True)
        draw_counts[video] = len(draws) - before
        if video == "events":
            parsed = pipe._parse_scene_durations(text)

    tensors, meta = record(observer, prompts, noise, latents, draws, draw_counts, parsed)
    meta["rope_cut_defaults"] = {k: v.default for k, v in inspect.signature(causal_model.rope_cut).parameters.items()
                                 if v.default is not inspect.Parameter.empty}
    out = save_trace(args.out, model, tensors, meta)
    print(f"recorded {len(observer.calls)} model calls, {len(observer.attn)} self-attention calls, {len(draws)} "
          f"re-noise draws; events {meta['events']} -> {out}")


def record(observer: Observer, prompts, noise, latents, draws, draw_counts, parsed) -> tuple[dict, dict]:
    """The trace's tensors (per model call, per self-attention call, per chunk) and its ``trace.json``."""
    calls, attn = observer.calls, observer.attn
    videos = ("plain", "events")
    tensors = {f"context_{name}": emb for name, emb in prompts.items()}
    tensors.update({f"noise_{v}": noise[v] for v in videos})
    tensors.update({f"latents_{v}": latents[v] for v in videos})
    tensors["renoise"] = torch.stack(draws)
    tensors.update({
        "call_video": torch.tensor([videos.index(c["video"]) for c in calls]),
        "call_start_frame": torch.tensor([c["start_frame"] for c in calls]),
        "call_kind": torch.tensor([c["kind"] for c in calls]),
        "call_timestep": torch.tensor([c["timestep"] for c in calls], dtype=torch.float32),
        "call_prompt": torch.tensor([c["prompt"] for c in calls]),
        "call_crossattn_fresh": torch.tensor([c["crossattn_fresh"] for c in calls]),
        "call_scene_cut": torch.tensor([c["scene_cut"] for c in calls]),
        "call_local_end_before": torch.tensor([c["local_end_before"] for c in calls]),
        "call_input": torch.stack([c["input"] for c in calls]),
        "call_x0": torch.stack([c["x0"] for c in calls]),
    })
    for key in ("model_call", "layer", "local_end_before", "local_end_after", "global_end_before",
                "global_end_after", "scene_cut", "sink_read_stored", "sink_as_rotated"):
        tensors[f"attn_{key}"] = torch.tensor([int(a[key]) for a in attn])
    tensors["attn_query_pos"] = pad([a["query_pos"] for a in attn], CHUNK)
    for key in ("key_pos", "slot_frame", "slot_writer", "slot_post_rope"):
        tensors[f"attn_{key}"] = pad([a[key] for a in attn], LOCAL)
    tensors.update(observer.rope_examples)

    events = {}
    for v in videos:
        firsts = [c for c in calls if c["video"] == v and c["kind"] == 0]
        flush = [i for i, c in enumerate(firsts) if i > 0 and c["crossattn_fresh"]]
        cut = [i for i, c in enumerate(firsts) if c["scene_cut"]]
        tensors[f"chunk_flush_{v}"] = torch.tensor([i in flush for i in range(len(firsts))])
        tensors[f"chunk_cut_{v}"] = torch.tensor([i in cut for i in range(len(firsts))])
        tensors[f"chunk_prompt_{v}"] = torch.tensor([c["prompt"] for c in firsts])
        events[v] = {"chunks": len(firsts), "flush_chunks": flush, "cut_chunks": cut}
    scene_prompts, scene_chunks, scene_cut_flags = parsed
    meta = {"release": f"yesiltepe-hidir/infinity-rope@{COMMIT[:7]}", "commit": COMMIT,
            "config": "configs/self_forcing_dmd.yaml + configs/default_config.yaml",
            "chunk_frames": CHUNK, "denoising_step_list": list(STEPS), "warp": True, "shift": SHIFT,
            "local_attn_size": LOCAL, "sink_size": SINK, "context_noise": CONTEXT_NOISE,
            "latent_hw": list(TINY_LATENT_HW), "tokens_per_frame": TINY_TOKENS, "qk_gain_scale": QK_GAIN_SCALE,
            "frames": {"plain": PLAIN_FRAMES, "events": EVENTS_FRAMES}, "prompts": list(PROMPTS),
            "plain_prompt": "first", "events_prompt": EVENTS_DSL,
            "events_parsed": {"scene_prompts": scene_prompts, "scene_chunks": scene_chunks,
                              "scene_cut_flags": scene_cut_flags},
            "events": events, "renoise_draws": draw_counts, "model_calls": len(calls), "attention_calls": len(attn),
            "call_kind_clean": len(STEPS)}
    return tensors, meta


if __name__ == "__main__":
    main()
