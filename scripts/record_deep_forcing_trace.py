"""Record the Deep Forcing release's own rollouts on a tiny random model (CPU, float32): the in-repo golden traces.

    python scripts/record_deep_forcing_trace.py --deep-forcing PATH/TO/DeepForcing --self-forcing PATH/TO/Self-Forcing \
        --out tests/data/deep_forcing_trace

``--deep-forcing`` is a checkout of the Deep Forcing code release, commit ea9961a ("code release"; the official
repository, byte-identical in the public fork Nizben/Spectral_C); ``--self-forcing`` is guandeh17/Self-Forcing at
33593df, the code base Deep Forcing modifies. Four settings, each driven by its release's
``pipeline/causal_inference.py`` with ``configs/default_config.yaml`` + ``configs/self_forcing_dmd/
self_forcing_dmd_sink{0,14,10}.yaml`` and the release CLI defaults (``--Budget 16 --Recent 4``, ``--is_ds_only``
as in ``DS_inference.sh``):

* ``self_forcing``: ``wan/modules/causal_model_DS.py`` at sink 0 (a plain 21-frame FIFO);
* ``deep_sink``: ``wan/modules/causal_model_DS.py`` at sink 14 (Deep Sink);
* ``deep_forcing``: ``wan/modules/causal_model.py`` at sink 10, budget 16, recent 4 (Deep Sink + Participative
  Compression, reuse cap 7, fusion "sum");
* ``attention_sink_3``: Self-Forcing's ``wan/modules/causal_model.py`` at sink 3 (keys never re-aligned).

What a CPU run needs, patched from the outside (``release_trace_tools``; nothing here touches the cache algorithm):

1. attention: ``attention`` / ``flash_attention`` go to exact float32 scaled-dot-product attention; the ``wan`` and
   ``pipeline`` package ``__init__`` files (runners, training pipelines) are not run, and
   ``torch.cuda.current_device()`` (called when ``demo_utils.memory`` is imported) answers 0;
2. the 1.3B's constants: ``frame_seq_length`` (1560) is the tiny latent's tokens per frame, each attention layer's
   ``max_attention_size`` (21 x 1560) is 21 x that, the caches are allocated at the tiny model's layers / heads /
   head size; the release computes the first Deep Sink shift as ``21 - capacity // 1560``, so the PC capacity is an
   int whose ``// 1560`` divides by the tiny tokens per frame (:class:`ReleaseTokenCount`; the "21" is kept);
3. its Gaussian draws (``torch.randn_like`` between steps) come from a seeded generator and are recorded; the text
   encoder is a fixed random embedding; latents are compared, never pixels.

A read-only observer (:class:`CacheObserver`) wraps each attention layer's ``forward``, the model's ``forward`` and
the release's ``_rope_time_delta_mul_`` / ``_mkv_select_indices`` (each calls the original and returns its result
unchanged) to log every call's flow, each layer's cache length, which token sits in every slot (found by its value
row, which carries no RoPE), the sink shifts and every Participative Compression's scores, picks and counters.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from release_trace_tools import (TINY_CONFIG, TINY_LATENT_HW, TINY_TOKENS, TorchOnCpu, fill_random,
                                 register_package_folder, save_trace, sdpa_float32, tiny_wrapper, use_tiny_caches)

CHUNKS, CHUNK, WINDOW, STEPS, SHIFT = 40, 3, 21, (1000, 750, 500, 250), 5.0
BUDGET, RECENT = 16, 4  # inference.py --Budget / --Recent defaults (frames)
CALLS = len(STEPS) + 1  # the denoising steps + the clean pass
KV_SNAPSHOT_CHUNKS = (6, 7, 8, CHUNKS - 1)  # before the first roll, the first two rolls, the end
DEEP_FORCING_RELEASE = "Deep Forcing release ea9961a"
SELF_FORCING_RELEASE = "guandeh17/Self-Forcing@33593df"
RELEASE_PACKAGES = ("wan", "pipeline", "utils", "demo_utils")


@dataclass(frozen=True)
class Setting:
    name: str
    release: str
    model_file: str  # inside the checkout, for the record
    model_class: str
    sink: int
    pc: bool = False


SETTINGS = (
    Setting("self_forcing", DEEP_FORCING_RELEASE, "wan/modules/causal_model_DS.py", "CausalWanModelDS", 0),
    Setting("deep_sink", DEEP_FORCING_RELEASE, "wan/modules/causal_model_DS.py", "CausalWanModelDS", 14),
    Setting("deep_forcing", DEEP_FORCING_RELEASE, "wan/modules/causal_model.py", "CausalWanModel", 10, pc=True),
    Setting("attention_sink_3", SELF_FORCING_RELEASE, "wan/modules/causal_model.py", "CausalWanModel", 3),
)


class ReleaseTokenCount(int):
    """A token count for the release's ``PCConfig.capacity``: ``// 1560`` (its hard-coded tokens per frame, in
    ``delta = 21 - (self.PC.capacity // 1560)``) divides by the tiny model's tokens per frame instead."""

    def __floordiv__(self, other):
        return int(self) // (TINY_TOKENS if other == 1560 else other)


@dataclass
class CacheObserver:
    """What the release's caches hold after every call, read without changing anything (see the module docstring)."""

    chunks: int
    layers: int
    capacity: int
    chunk_tokens: int = CHUNK * TINY_TOKENS
    chunk: int = -1
    call: int = -1
    flow: torch.Tensor = None
    cache_len: torch.Tensor = None
    slot_token_id: torch.Tensor = None
    slot_rope_frame: torch.Tensor = None
    kv: dict = field(default_factory=dict)
    fifo_rolls: list = field(default_factory=list)
    sink_rope_deltas: list = field(default_factory=list)
    compressions: list = field(default_factory=list)
    pc_scores: list = field(default_factory=list)
    _banks: list = None  # per layer: value-row bytes -> absolute token id
    _sink_shift: list = None  # per layer: frames the sink keys were rotated by, in total
    _rotations: list = field(default_factory=list)
    _selections: list = field(default_factory=list)

    def __post_init__(self) -> None:
        shape = (self.chunks, CALLS, CHUNK, TINY_CONFIG["out_dim"], *TINY_LATENT_HW)
        self.flow = torch.zeros(shape)
        self.cache_len = torch.zeros(self.chunks, CALLS, self.layers, dtype=torch.int32)
        self.slot_token_id = torch.full((self.chunks, self.layers, self.capacity), -1, dtype=torch.int32)
        self.slot_rope_frame = torch.full((self.chunks, self.layers, self.capacity), -1, dtype=torch.int32)
        self._banks = [{} for _ in range(self.layers)]
        self._sink_shift = [0] * self.layers

    # -------------------------------------------------------------------------------------------- the wrappers
    def watch_model(self, model) -> None:
        original = model.forward

        def forward(*args, current_start=0, **kwargs):
            chunk = current_start // self.chunk_tokens
            self.call = self.call + 1 if chunk == self.chunk else 0
            self.chunk = chunk
            out = original(*args, current_start=current_start, **kwargs)
            self.flow[chunk, self.call] = out[0].permute(1, 0, 2, 3)
            return out

        model.forward = forward

    def watch_layer(self, attn, layer: int, rotates_sink: bool) -> None:
        original = attn.forward

        def forward(x, seq_lens, grid_sizes, freqs, block_mask, kv_cache=None, current_start=0, cache_start=None):
            before_len, before_end = int(kv_cache["local_end_index"]), int(kv_cache["global_end_index"])
            self._rotations, self._selections = [], []
            out = original(x, seq_lens, grid_sizes, freqs, block_mask, kv_cache, current_start, cache_start)
            new_values = attn.v(x)[0]  # [tokens, dim]: the rows this call wrote (values carry no RoPE)
            rolled = current_start + x.shape[1] > before_end and before_len + x.shape[1] > kv_cache["k"].shape[1]
            self._after_call(layer, kv_cache, new_values, current_start, before_len, rolled,
                             attn.sink_size * TINY_TOKENS, rotates_sink)
            return out

        attn.forward = forward

    def watch_rotation(self, module) -> None:
        original = module._rope_time_delta_mul_

        def rotate(k_chunk, freqs, delta_frames):
            self._rotations.append((k_chunk.storage_offset(), k_chunk.shape[1], int(delta_frames)))
            return original(k_chunk, freqs, delta_frames)

        module._rope_time_delta_mul_ = rotate

    def watch_selection(self, module) -> None:
        original = module._mkv_select_indices

        def select(scores_fused, T, R_eff, sink_tokens, top_c, device, topc_counts=None, topc_max_reuse=0):
            keep, protect, selected = original(scores_fused, T, R_eff, sink_tokens, top_c, device,
                                               topc_counts=topc_counts, topc_max_reuse=topc_max_reuse)
            counts = topc_counts[0, sink_tokens:T - R_eff]
            allowed = counts < topc_max_reuse if topc_max_reuse > 0 else torch.ones_like(counts, dtype=torch.bool)
            ranked = scores_fused[0, sink_tokens:T - R_eff][allowed].sort(descending=True).values
            self._selections.append({
                "aug_len_tokens": int(T), "recent_tokens": int(R_eff), "sink_tokens": int(sink_tokens),
                "top_c_tokens": int(top_c), "keep": keep[0].tolist(), "topc_selected": selected[0].tolist(),
                "n_candidates": int(counts.numel()), "n_candidates_excluded_by_reuse_cap": int((~allowed).sum()),
                "score_margin": float(ranked[top_c - 1] - ranked[top_c]) if len(ranked) > top_c else None,
                "scores": scores_fused[0].clone()})
            return keep, protect, selected

        module._mkv_select_indices = select

    # ------------------------------------------------------------------------------------------- the bookkeeping
    def _after_call(self, layer, kv_cache, new_values, current_start, before_len, rolled, sink_tokens,
                    rotates_sink) -> None:
        chunk, call = self.chunk, self.call
        bank = self._banks[layer]
        for n, row in enumerate(new_values):
            bank[row.numpy().tobytes()] = current_start + n
        length = int(kv_cache["local_end_index"])
        self.cache_len[chunk, call, layer] = length
        where = {"chunk": chunk, "call": call, "layer": layer}
        if rolled and not self._selections:
            self.fifo_rolls.append({**where, "evicted_tokens": before_len + len(new_values) - kv_cache["k"].shape[1],
                                    "sink_tokens": sink_tokens})
        topc = [r for r in self._rotations if r[0] != 0]
        assert not topc, f"the release's Top-C re-alignment ran ({topc}); the traces assume it never does"
        if rolled and sink_tokens and rotates_sink:
            delta = sum(d for offset, _, d in self._rotations if offset == 0)
            self._sink_shift[layer] += delta
            self.sink_rope_deltas.append({**where, "delta_frames": delta, "sink_tokens": sink_tokens,
                                          "sink_start_frame_after": int(kv_cache["sink_base_abs_start_frame"])})
        ids = [bank[kv_cache["v"][0, s].reshape(-1).numpy().tobytes()] for s in range(length)]
        frames = [t // TINY_TOKENS + (self._sink_shift[layer] if s < sink_tokens else 0) for s, t in enumerate(ids)]
        if "abs_frame_idx" in kv_cache:  # Deep Forcing keeps its own per-slot frame bookkeeping: it must agree
            assert kv_cache["abs_frame_idx"][0, :length].tolist() == frames, (chunk, call, layer)
        for selection in self._selections:
            scores = selection.pop("scores")
            self.pc_scores.append(torch.cat([scores, torch.full((self.capacity + self.chunk_tokens - len(scores),),
                                                                float("nan"))]))
            self.compressions.append({**where, **selection, "kept_token_ids": ids,
                                      "counts_after": kv_cache["topc_select_counts"][0, :length].tolist()})
        if call == 0:
            self.slot_token_id[chunk, layer, :length] = torch.tensor(ids, dtype=torch.int32)
            self.slot_rope_frame[chunk, layer, :length] = torch.tensor(frames, dtype=torch.int32)
        if call == CALLS - 1 and chunk in KV_SNAPSHOT_CHUNKS:
            self.kv.setdefault(chunk, [None] * self.layers)[layer] = (kv_cache["k"][0, :length].clone(),
                                                                    kv_cache["v"][0, :length].clone())

    def tensors(self) -> dict:
        out = {"flow": self.flow, "cache_len": self.cache_len, "slot_token_id": self.slot_token_id,
               "slot_rope_frame": self.slot_rope_frame}
        for chunk, per_layer in self.kv.items():
            out[f"kv_k.chunk{chunk:03d}"] = torch.stack([k for k, _ in per_layer])
            out[f"kv_v.chunk{chunk:03d}"] = torch.stack([v for _, v in per_layer])
        if self.compressions:
            by_layer = lambda key: torch.tensor(  # noqa: E731  [compression, layer, ...]
                [[c[key] for c in self.compressions[n:n + self.layers]]
                 for n in range(0, len(self.compressions), self.layers)], dtype=torch.int32)
            out.update(pc_keep=by_layer("keep"), pc_topc=by_layer("topc_selected"),
                       pc_kept_token_id=by_layer("kept_token_ids"), pc_counts_after=by_layer("counts_after"),
                       pc_scores=torch.stack(self.pc_scores).view(-1, self.layers, len(self.pc_scores[0])))
        return out


_imported_roots: list[str] = []  # checkouts put on sys.path by import_release


def import_release(root: Path) -> types.SimpleNamespace:
    """The release's modules from ``root``, with what a CPU run needs (item 1 above); a second call with another
    checkout first forgets the previous one's packages (both name them ``wan``, ``pipeline``, ``utils``)."""
    for name in [m for m in sys.modules if m.split(".")[0] in RELEASE_PACKAGES]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if p not in _imported_roots]
    _imported_roots.append(str(root))
    sys.path.insert(0, str(root))
    torch.cuda.current_device = lambda: 0  # demo_utils/memory.py builds a cuda device object at import time
    register_package_folder("wan", root / "wan")
    register_package_folder("pipeline", root / "pipeline")
    import pipeline.causal_inference as inference_module
    import wan.modules.causal_model as causal_model
    import wan.modules.model as base_model
    from utils.scheduler import FlowMatchScheduler
    from utils.wan_wrapper import WanDiffusionWrapper

    causal_model_ds = None
    if (root / "wan" / "modules" / "causal_model_DS.py").exists():
        import wan.modules.causal_model_DS as causal_model_ds
        causal_model_ds.attention = sdpa_float32
    causal_model.attention = sdpa_float32
    base_model.flash_attention = sdpa_float32
    return types.SimpleNamespace(inference=inference_module, causal_model=causal_model,
                                 causal_model_ds=causal_model_ds, scheduler=FlowMatchScheduler,
                                 wrapper=WanDiffusionWrapper)


def build_model(release, setting: Setting, weights: dict | None):
    """The setting's model class at the tiny size, with the kwargs its release wrapper passes (local_attn_size,
    sink_size; PC capacity / window = budget / recent x tokens per frame), the 1560-derived sizes at tiny scale."""
    kwargs = {"local_attn_size": WINDOW, "sink_size": setting.sink}
    if setting.model_class == "CausalWanModelDS":
        model = release.causal_model_ds.CausalWanModelDS(**TINY_CONFIG, **kwargs)
    elif setting.pc:
        model = release.causal_model.CausalWanModel(**TINY_CONFIG, **kwargs, PC_capacity=BUDGET * TINY_TOKENS,
                                                    PC_window=RECENT * TINY_TOKENS)
        model.PC_cfg.capacity = ReleaseTokenCount(model.PC_cfg.capacity)
    else:
        model = release.causal_model.CausalWanModel(**TINY_CONFIG, **kwargs)
    model.eval()
    if weights is not None:
        model.load_state_dict(weights, strict=True)
    for block in model.blocks:
        block.self_attn.max_attention_size = WINDOW * TINY_TOKENS
    return model


def record(release, setting: Setting, model, context, noise, seed: int) -> tuple[CacheObserver, torch.Tensor, list]:
    """One rollout of ``CHUNKS`` chunks through the release's ``CausalInferencePipeline.inference``."""
    layers = TINY_CONFIG["num_layers"]
    observer = CacheObserver(CHUNKS, layers, WINDOW * TINY_TOKENS)
    observer.watch_model(model)
    for layer, block in enumerate(model.blocks):
        observer.watch_layer(block.self_attn, layer, rotates_sink=setting.release == DEEP_FORCING_RELEASE)
    for module in (release.causal_model, release.causal_model_ds):
        if module is not None and hasattr(module, "_rope_time_delta_mul_"):
            observer.watch_rotation(module)
    if setting.pc:
        observer.watch_selection(release.causal_model)
    wrapper = tiny_wrapper(release.wrapper, model, release.scheduler, SHIFT, WINDOW * TINY_TOKENS)  # its 32760
    cfg = types.SimpleNamespace(denoising_step_list=list(STEPS), warp_denoising_step=True, num_frame_per_block=CHUNK,
                                context_noise=0, independent_first_frame=False,
                                model_kwargs={"timestep_shift": SHIFT, "local_attn_size": WINDOW,
                                              "sink_size": setting.sink})
    vae = types.SimpleNamespace(decode_to_pixel=lambda latents, use_cache=False: torch.zeros(1, 1, 3, 8, 8))
    pipe = release.inference.CausalInferencePipeline(cfg, "cpu", generator=wrapper, vae=vae,
                                                     text_encoder=lambda text_prompts: {"prompt_embeds": context})
    use_tiny_caches(pipe, WINDOW, layers)  # its 21 x 1560
    draws: list[torch.Tensor] = []
    release.inference.torch = TorchOnCpu(draws, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        _, latents = pipe.inference(noise=noise, text_prompts=["tiny"], return_latents=True)
    return observer, latents[0], draws


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--deep-forcing", required=True, help="checkout of the Deep Forcing release at ea9961a")
    p.add_argument("--self-forcing", required=True, help="checkout of guandeh17/Self-Forcing at 33593df")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    roots = {DEEP_FORCING_RELEASE: Path(args.deep_forcing).resolve(),
             SELF_FORCING_RELEASE: Path(args.self_forcing).resolve()}
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    context = torch.randn(1, TINY_CONFIG["text_len"], TINY_CONFIG["text_dim"], generator=g)
    noise = torch.randn(1, CHUNKS * CHUNK, TINY_CONFIG["in_dim"], *TINY_LATENT_HW, generator=g)
    weights, first_model, renoise, release, loaded = None, None, None, None, None
    for setting in SETTINGS:
        if loaded != setting.release:
            release, loaded = import_release(roots[setting.release]), setting.release
        model = build_model(release, setting, weights)
        if weights is None:
            fill_random(model, g)
            weights, first_model = {k: v.clone() for k, v in model.state_dict().items()}, model
        observer, latents, draws = record(release, setting, model, context, noise, args.seed + 1)
        draws = torch.stack(draws).view(CHUNKS, len(STEPS) - 1, *draws[0].shape)
        assert renoise is None or torch.equal(draws, renoise), "every setting draws the same re-noise"
        renoise = draws
        out.mkdir(parents=True, exist_ok=True)
        save_file({"latents": latents.contiguous(), **{k: v.contiguous() for k, v in observer.tensors().items()}},
                  str(out / f"{setting.name}.safetensors"))
        (out / f"{setting.name}.json").write_text(json.dumps({
            "setting": setting.name, "release": setting.release, "reference_model_file": setting.model_file,
            "reference_model_class": setting.model_class, "reference_pipeline": "pipeline/causal_inference.py",
            "n_chunks": CHUNKS, "n_layers": TINY_CONFIG["num_layers"], "frames_per_chunk": CHUNK,
            "tokens_per_frame": TINY_TOKENS, "cache_capacity_tokens": WINDOW * TINY_TOKENS, "window_frames": WINDOW,
            "sink_frames": setting.sink,
            "pc_config": ({"capacity": BUDGET * TINY_TOKENS, "window": RECENT * TINY_TOKENS, "fusion": "sum",
                           "keep_sinks": True, "topc_max_reuse": model.PC_cfg.topc_max_reuse} if setting.pc else None),
            "kv_snapshot_chunks": list(KV_SNAPSHOT_CHUNKS), "fifo_rolls": observer.fifo_rolls,
            "sink_rope_deltas": observer.sink_rope_deltas, "compressions": observer.compressions,
            "torch": torch.__version__}, indent=None))
        excluded = sum(c["n_candidates_excluded_by_reuse_cap"] > 0 for c in observer.compressions)
        print(f"{setting.name}: {len(observer.fifo_rolls)} FIFO rolls, {len(observer.sink_rope_deltas)} sink shifts, "
              f"{len(observer.compressions)} layer-compressions ({excluded} with reuse-capped candidates)")
    save_trace(out, first_model, {"context": context, "init": noise[0].view(CHUNKS, CHUNK, *noise.shape[2:]),
                                  "renoise": renoise}, {
        "releases": sorted(roots), "chunks": CHUNKS, "chunk_frames": CHUNK, "denoising_step_list": list(STEPS),
        "warp": True, "shift": SHIFT, "context_noise": 0, "window_frames": WINDOW, "budget_frames": BUDGET,
        "recent_frames": RECENT, "latent_hw": list(TINY_LATENT_HW), "tokens_per_frame": TINY_TOKENS,
        "settings": [s.name for s in SETTINGS]})
    print(f"-> {out}")


if __name__ == "__main__":
    main()
