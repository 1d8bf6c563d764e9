"""Per-chunk time and KV bytes of every registered cache policy at the Wan2.1-1.3B width (issue 27 item 7; the per-head
policies of issue 24 item 3).

Tables (``--tables``, default ``model,attention,real``):

1. ``model`` — **measured on the CPU**: a random :class:`~deepforcing.models.wan_causal.CausalWanTransformer` of the
   1.3B's width (dim 1536 = 12 heads x 128, FFN 8960) but ``--layers`` blocks (default 2 of 30) at a small latent
   (default 8 x 12, 24 tokens per frame), fp32, Self Forcing's sampler shape: ``--steps`` denoising calls plus the
   clean pass per 3-frame chunk. The policies run **round-robin, chunk by chunk** (policy A chunk 9, policy B chunk
   9, ...; the first place rotates), so a loaded machine slows them alike and the ratio to ``self-forcing`` is a
   same-run ratio of each policy's fastest timed chunk; absolute ms are not comparable across runs. The column
   *attn share* is the self-attention kernels' share of the chunk's time (the cached reads and the policy's host work
   are outside it). KV bytes are what the cache holds after the last chunk: every store of every layer (head groups
   included; keys, values, the post-RoPE sink's exact copy) and every tensor a policy keeps in ``layer.state``,
   scaled to 30 layers.
2. ``attention`` — **one layer's cached attention call at the 1.3B head shape** (12 heads x 128) at
   ``--attention-latent`` (default 30 x 52: 15 x 26 = 390 tokens per frame, a quarter of the 1.3B's 1560), where
   attention is what the per-head policies save: a 2-layer cache (Forcing-KV keeps layer 0 whole and scores its
   patches on layer 1) fed random pre-RoPE queries / keys / values with the model's 3-D RoPE, ``--steps`` + 1 calls
   per chunk, round-robin as above; the time is **layer 1's** ``LayerCache.attention`` (write, the policy's decision,
   the head groups' reads, packing and kernel calls, scatter back), the attention kernel of diffusers' dispatch
   (native SDPA) in the timed chunks, a no-op kernel in the warm-up chunks.
3. ``real`` — **the real 1.3B in bf16**: (a) from each policy's own description (nothing written per policy): frames
   held = the sum of :attr:`CachePolicy.layout` + :attr:`CachePolicy.archive_frames`; bytes = 30 layers x 2 (K, V) x
   12 heads x 128 x 1560 tokens/frame x frames x 2 bytes, plus the post-RoPE sink's key copy; ``allocated`` is
   :meth:`KVCache.estimate_bytes` plus the archive (a per-head policy's layout is its largest head's, an upper bound).
   (b) the per-head policies' caches simulated at 30 layers x 12 heads x 128 in bf16 at 6 tokens per frame with random
   queries and keys (:func:`deepforcing.eval.kv_cost.simulate_cache`), scaled to 1560 tokens per frame: what the
   groups hold and allocate, against ``estimate_bytes``. Forcing-KV's groups there come from ``--release-profile``
   (the release's shipped Self Forcing head profile, 30 x 12).

**Artefacts** (made once, before any timing, on the benchmark's own random model, the way each release makes them):
``forcing-kv``'s head profile by :func:`deepforcing.pipeline.forcing_kv_calibration.collect_head_shares` (a 21-frame
video with global attention, the last chunk's clean pass, static share >= 0.8 at skip 3: ``deepforcing calibrate
--policy forcing-kv``'s library code) and ``triattention``'s query statistics by
:func:`deepforcing.pipeline.triattention_calibration.collect_query_stats` (an 81-frame video with global attention,
every call's pre-RoPE queries: ``deepforcing calibrate --policy triattention``'s). ``dummy-forcing`` classifies its
heads online and needs none.

A policy may carry options: ``--policies self-forcing,triattention:sink=1`` (``name:option=value:...``).

Usage:
    python benchmarks/policy_chunk_cost.py                 # ~10 min on one loaded CPU core
    python benchmarks/policy_chunk_cost.py --tables model --layers 2 --latent 16x30 --policies self-forcing,forcing-kv
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from deepforcing.cache import CacheGeometry, KVCache, make_policy, policy_names
from deepforcing.eval.kv_cost import (WAN_1P3B, cache_bytes, formula_bytes, formula_frames, head_frames, scaled_bytes,
                                      simulate_cache)
from deepforcing.models.contract import SamplingConfig
from deepforcing.models.wan_causal import CausalWanTransformer

WIDTH = {"heads": 12, "head_dim": 128, "ffn": 8960}
DEFAULT_POLICIES = ",".join(policy_names() + ["triattention:sink=1"])
REAL_TEXT_TOKENS = 512  # the 1.3B's text context (umT5 tokens), for the FLOP shares


# ----------------------------------------------------------------------------------------------- the policies
def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_specs(text: str) -> list[tuple[str, str, dict]]:
    """``name[:option=value...]`` comma-separated -> (label, name, options)."""
    specs = []
    for label in (s.strip() for s in text.split(",") if s.strip()):
        name, *pairs = label.split(":")
        options = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            options[key.replace("-", "_")] = _value(value)
        specs.append((label, name, options))
    return specs


def make_artefacts(model, context, latent: tuple[int, int], names: set[str], folder: Path, profile_frames: int,
                   calibration_frames: int) -> dict[str, dict]:
    """Per-checkpoint files of the per-head policies, made on ``model`` by the calibration library code."""
    sampling = SamplingConfig()
    shape = (model.config.in_channels, *latent)
    made: dict[str, dict] = {}
    if "forcing-kv" in names:
        from deepforcing.cache.forcing_kv import head_profile_json, write_head_profile
        from deepforcing.pipeline.forcing_kv_calibration import collect_head_shares

        t0 = time.perf_counter()
        shares = collect_head_shares(model, context=context, latent_shape=shape, sampling=sampling,
                                     frames=profile_frames)
        profile = head_profile_json(shares)
        path = write_head_profile(folder / "heads.json", profile)
        static = [len(layer["static_head"]) for layer in profile["layers"]]
        made["forcing-kv"] = {"head_profile": str(path)}
        print(f"artefact forcing-kv: head profile of the bench model ({profile_frames}-frame global-attention video, "
              f"{time.perf_counter() - t0:.0f} s): static heads per layer {static} of {model.num_heads}")
    if "triattention" in names:
        from deepforcing.pipeline.triattention_calibration import collect_query_stats

        t0 = time.perf_counter()
        stats = collect_query_stats(model, context=context, latent_shape=shape, sampling=sampling,
                                    frames=calibration_frames)
        path = stats.save(folder / "stats.pt", {"model_name": "bench random model", "num_frames": calibration_frames})
        made["triattention"] = {"calibration": str(path)}
        print(f"artefact triattention: query statistics of the bench model ({calibration_frames}-frame "
              f"global-attention video, {time.perf_counter() - t0:.0f} s)")
    return made


def build_policies(specs, artefacts: dict[str, dict]) -> dict:
    return {label: make_policy(name, **{**artefacts.get(name, {}), **options}) for label, name, options in specs}


# ---------------------------------------------------------------------------------------------- FLOP shares
def attention_ratio(tokens_per_frame: int, window_frames: int, text_tokens: int, dim: int = 1536,
                    ffn: int = 8960) -> float:
    """Self-attention FLOPs over all other FLOPs of one query token of one block (QK^T and AV over the window's keys
    against the q/k/v/o projections, cross-attention (q, o projections and its attention over the text) and FFN)."""
    self_attention = 4 * window_frames * tokens_per_frame * dim
    rest = 2 * (4 * dim * dim + 2 * dim * dim + 2 * dim * ffn) + 4 * text_tokens * dim
    return self_attention / rest


# ------------------------------------------------------------------------------------------ table 1: the model
class KernelClock:
    """Wraps the model's attention: seconds spent in self-attention kernels (``attn1``) since the last read."""

    def __init__(self, model) -> None:
        self.model, self.inner, self.seconds = model, model.attention, 0.0
        self.self_modules = {id(block.attn1) for block in model.blocks}

    def __call__(self, q, k, v, mask=None, *, module=None):
        if module is None or id(module) not in self.self_modules:
            return self.inner(q, k, v, mask, module=module)
        t0 = time.perf_counter()
        out = self.inner(q, k, v, mask, module=module)
        self.seconds += time.perf_counter() - t0
        return out

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def model_table(args, model, context, policies: dict, latent: tuple[int, int]) -> None:
    h, w = latent
    chunk = WAN_1P3B["chunk_frames"]
    names = list(policies)
    caches = {n: model.make_cache(policies[n], height=h, width=w, chunk_frames=chunk) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    kernel: dict[str, list[float]] = {n: [] for n in names}
    clock = KernelClock(model)
    model.attention = clock  # the kernel closure looks the method up on the instance
    timesteps = torch.linspace(1000, 250, args.steps)
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            for i in range(args.chunks):
                latents = torch.randn(1, model.config.in_channels, chunk, h, w, generator=gen)
                for n in names[i % len(names):] + names[: i % len(names)]:  # round-robin, first place rotating
                    clock.take()
                    t0 = time.perf_counter()
                    for t in timesteps:
                        model(latents, torch.full((1,), float(t)), context, caches[n], i * chunk)
                    model(latents, torch.zeros(1), context, caches[n], i * chunk, clean=True)
                    caches[n].settle()
                    times[n].append(time.perf_counter() - t0)
                    kernel[n].append(clock.take())
    finally:
        del model.attention
    tpf = model.tokens_per_frame(h, w)
    print(f"\n## Table 1: the model\n\nmeasured: random CausalWanTransformer, width 1536 (12 x 128), FFN 8960, "
          f"{args.layers} of 30 layers, latent {h}x{w} ({tpf} tokens/frame), chunk {chunk}, {args.steps}+1 calls/chunk, "
          f"fp32, {torch.get_num_threads()} thread(s); fastest of chunks {args.chunks - args.timed}..{args.chunks - 1}; "
          f"policies round-robin per chunk (same-run ratios)")
    print(f"self-attention FLOPs / all other FLOPs per token and block at a full 21-frame window: "
          f"{attention_ratio(tpf, 21, model.config.text_len):.2f} here ({tpf} tokens/frame, "
          f"{model.config.text_len} text tokens), {attention_ratio(WAN_1P3B['tokens_per_frame'], 21, REAL_TEXT_TOKENS):.2f} "
          f"in the real 1.3B (1560 tokens/frame, {REAL_TEXT_TOKENS} text tokens)")
    base = min(times["self-forcing"][-args.timed:]) if "self-forcing" in times else None
    base_bytes = cache_bytes(caches["self-forcing"])[0] if "self-forcing" in caches else None
    print("\n| policy | ms/chunk | / self-forcing | attn share | frames held per head | KV MiB held (x30 layers) "
          "| / self-forcing | MiB allocated incl. states (x30) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        fastest = min(range(len(times[n]) - args.timed, len(times[n])), key=lambda j: times[n][j])
        ms = times[n][fastest] * 1e3
        share = kernel[n][fastest] / times[n][fastest]
        held, allocated = cache_bytes(caches[n])
        scale = 30 / args.layers / 2**20
        ratio = f"{ms / (base * 1e3):.2f}" if base else "-"
        bratio = f"{held / base_bytes:.2f}" if base_bytes else "-"
        print(f"| {n} | {ms:.0f} | {ratio} | {share:.0%} | {head_frames(caches[n]):g} | {held * scale:.1f} | {bratio} | "
              f"{allocated * scale:.1f} |")


# ------------------------------------------------------------------------------- table 2: the attention call
def attention_table(args, policies: dict, latent: tuple[int, int]) -> None:
    h, w = latent
    chunk = WAN_1P3B["chunk_frames"]
    rope_model = CausalWanTransformer(num_attention_heads=WIDTH["heads"], attention_head_dim=WIDTH["head_dim"],
                                      ffn_dim=64, num_layers=1, text_len=16).eval()
    hp, wp = h // 2, w // 2
    tpf = hp * wp
    heads, dim = WIDTH["heads"], WIDTH["head_dim"]
    names = list(policies)
    caches = {n: KVCache(policies[n], CacheGeometry(tpf, chunk), num_layers=2, batch=1, heads=heads, head_dim=dim,
                         rope=rope_model.rope3d.temporal) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}

    def noop(q, k, v):
        return torch.zeros_like(q)

    def sdpa(q, k, v):
        return rope_model.attention(q, k, v, module=rope_model.blocks[0].attn1)

    gen = torch.Generator().manual_seed(0)
    n_tok = chunk * tpf
    with torch.no_grad():
        for i in range(args.attention_chunks):
            timed = i >= args.attention_chunks - args.attention_timed
            f0 = i * chunk
            angles = rope_model.rope3d.angles(f0, chunk, hp, wp)
            qkv = [torch.randn(1, heads, n_tok, dim, generator=gen) for _ in range(3)]
            for n in names[i % len(names):] + names[: i % len(names)]:
                cache, spent = caches[n], 0.0
                for call in range(args.steps + 1):
                    cache.begin_call(f0, chunk, clean=call == args.steps, rope=rope_model.rope3d.bind(angles, wp))
                    cache.layers[0].attention(*qkv, noop)
                    t0 = time.perf_counter()
                    cache.layers[1].attention(*qkv, sdpa if timed else noop)
                    spent += time.perf_counter() - t0
                cache.settle()
                times[n].append(spent)
    print(f"\n## Table 2: one layer's cached attention\n\nmeasured: layer 1 of a 2-layer cache, 12 heads x 128, "
          f"{tpf} tokens/frame (a {h}x{w} latent, patch 2x2; the 1.3B has 1560), fp32, {args.steps}+1 calls per "
          f"3-frame chunk, random pre-RoPE q/k/v with the model's 3-D RoPE, native SDPA through diffusers' dispatch; "
          f"{args.attention_chunks} chunks, the last {args.attention_timed} timed (fastest counts), round-robin per chunk")
    print(f"self-attention FLOPs / all other FLOPs per token and block: {attention_ratio(tpf, 21, REAL_TEXT_TOKENS):.2f} "
          f"at {tpf} tokens/frame, {attention_ratio(WAN_1P3B['tokens_per_frame'], 21, REAL_TEXT_TOKENS):.2f} at 1560 "
          f"(self-forcing's 21-frame window; this table is the attention part alone)")
    base = min(times["self-forcing"][-args.attention_timed:]) if "self-forcing" in times else None
    print("\n| policy | ms/chunk (layer 1 attention) | / self-forcing | keys per head read (frames, layer 1) |")
    print("|---|---|---|---|")
    for n in names:
        ms = min(times[n][-args.attention_timed:]) * 1e3
        layer = caches[n].layers[1]
        stores = [view.store for view in layer.groups] if layer.groups else [layer.store]
        frames = sum(s.length * s.keys.shape[1] for s in stores) / (heads * tpf)
        ratio = f"{ms / (base * 1e3):.2f}" if base else "-"
        print(f"| {n} | {ms:.0f} | {ratio} | {frames:g} |")


# ----------------------------------------------------------------------------------- table 3: the real 1.3B
def real_tables(args, specs, policies: dict, artefacts: dict) -> None:
    g = WAN_1P3B
    per_frame = 2 * g["layers"] * g["heads"] * g["head_dim"] * g["tokens_per_frame"] * 2
    print(f"\n## Table 3a: the real 1.3B in bf16, from each policy's layout\n\n30 x 2 x 12 x 128 x 1560 x frames x 2 B "
          f"(= {per_frame / 2**20:.1f} MiB per frame) + the post-RoPE sink's key copy; a per-head policy's layout is "
          f"its largest head's (an upper bound; table 3b has its groups)")
    print("\n| policy | layout (sink/kept/memory/recent) + archive | frames | KV GiB held | / self-forcing "
          "| allocated GiB (estimate_bytes) |")
    print("|---|---|---|---|---|---|")
    sf = formula_bytes(*formula_frames(make_policy("self-forcing")))
    for n, policy in policies.items():
        frames, sink_copy = formula_frames(policy)
        lay = policy.layout
        layout = "/".join("-" if lay[k] is None else str(lay[k]) for k in ("sink", "kept", "memory", "recent"))
        layout += f" + {policy.archive_frames}" if policy.archive_frames else ""
        if frames is None:
            print(f"| {n} | {layout} | grows | {per_frame / 2**30:.3f} per frame | - | - |")
            continue
        nbytes = formula_bytes(frames, sink_copy)
        alloc = KVCache.estimate_bytes(policy, CacheGeometry(g["tokens_per_frame"], g["chunk_frames"]),
                                       num_layers=g["layers"], batch=1, heads=g["heads"], head_dim=g["head_dim"],
                                       dtype=torch.bfloat16)
        alloc += per_frame * policy.archive_frames
        copy = f" (+{sink_copy} key copy)" if sink_copy else ""
        print(f"| {n} | {layout}{copy} | {frames} | {nbytes / 2**30:.2f} | {nbytes / sf:.2f} | {alloc / 2**30:.2f} |")

    grouped = [(label, name, options) for label, name, options in specs
               if name in ("dummy-forcing", "forcing-kv", "triattention")]
    if not grouped:
        return
    with tempfile.TemporaryDirectory() as tmp:
        sim_artefacts = {"triattention": {"calibration": _random_calibration(Path(tmp) / "stats.pt")}}
        if args.release_profile:
            sim_artefacts["forcing-kv"] = {"head_profile": args.release_profile}
        elif "forcing-kv" in artefacts:
            sim_artefacts["forcing-kv"] = {"head_profile": _tiled_profile(artefacts["forcing-kv"]["head_profile"],
                                                                          Path(tmp) / "tiled.json")}
        rows = [("self-forcing", "self-forcing", {})] + grouped
        print(f"\n## Table 3b: the per-head policies' groups at 30 layers x 12 heads, bf16\n\n"
              f"simulated: each cache driven {args.real_chunks} chunks at 30 x 12 x 128, 6 tokens/frame, bf16, random "
              f"q/k/v (eval.kv_cost.simulate_cache), bytes scaled to 1560 tokens/frame; forcing-kv's groups from "
              f"{args.release_profile or 'the bench profile layer 1 tiled over layers 1-29 (no --release-profile)'}; "
              f"triattention with random query statistics of that shape (its counts do not depend on the scores)")
        print("\n| policy | head groups (layer 15: name heads x frames held) | frames per head held | KV GiB held "
              "| / self-forcing | GiB allocated (peak measured) | estimate_bytes GiB | estimate / measured |")
        print("|---|---|---|---|---|---|---|---|")
        base = None
        for label, name, options in rows:
            policy = make_policy(name, **{**sim_artefacts.get(name, {}), **options})
            cache, peak = simulate_cache(policy, layers=g["layers"], heads=g["heads"], head_dim=g["head_dim"],
                                         tokens_per_frame=6, chunks=args.real_chunks)
            held = scaled_bytes(cache_bytes(cache)[0], cache)
            base = held if base is None else base
            est = KVCache.estimate_bytes(policy, CacheGeometry(g["tokens_per_frame"], g["chunk_frames"]),
                                         num_layers=g["layers"], batch=1, heads=g["heads"], head_dim=g["head_dim"],
                                         dtype=torch.bfloat16)
            peak_real = scaled_bytes(peak, cache)
            layer = cache.layers[15]
            groups = ", ".join(f"{v.group.name} {len(v.group.heads)}x{v.store.length / 6:g}" for v in layer.groups)
            if name == "triattention":
                groups = f"12 groups (one per head) x {layer.groups[0].store.length / 6:g}"
            print(f"| {label} | {groups or 'one store'} | {head_frames(cache):.3f} | {held / 2**30:.2f} | "
                  f"{held / base:.2f} | {peak_real / 2**30:.2f} | {est / 2**30:.2f} | {est / peak_real:.3f} |")


def _random_calibration(path: Path) -> str:
    from deepforcing.cache.triattention_stats import QueryStatsAccumulator

    g = WAN_1P3B
    acc = QueryStatsAccumulator(g["layers"], g["heads"], g["head_dim"])
    gen = torch.Generator().manual_seed(0)
    for layer in range(g["layers"]):
        acc.add(layer, torch.randn(1, 8, g["heads"], g["head_dim"], generator=gen))
    return str(acc.save(path))


def _tiled_profile(bench_profile: str, path: Path) -> str:
    profile = json.loads(Path(bench_profile).read_text())
    one = profile["layers"][min(1, len(profile["layers"]) - 1)]
    layers = [{"layer_idx": i, "static_head": one["static_head"], "dynamic_head": one["dynamic_head"]}
              for i in range(WAN_1P3B["layers"])]
    path.write_text(json.dumps({"num_layers": WAN_1P3B["layers"], "num_heads": profile["num_heads"], "layers": layers}))
    return str(path)


# ------------------------------------------------------------------------------------------------------ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", default="model,attention,real", help="model, attention, real (comma-separated)")
    p.add_argument("--layers", type=int, default=2, help="transformer blocks (the 1.3B has 30; bytes are scaled)")
    p.add_argument("--latent", default="8x12",
                   help="latent HxW of table 1 (patch 2x2: 8x12 -> 24 tokens per frame; Forcing-KV's 6 patches "
                        "must divide the tokens per frame)")
    p.add_argument("--chunks", type=int, default=12, help="chunks per policy (>= 9 so every method has acted)")
    p.add_argument("--timed", type=int, default=5, help="last chunks timed (the fastest counts: least disturbed)")
    p.add_argument("--steps", type=int, default=4, help="denoising calls per chunk (plus one clean pass)")
    p.add_argument("--attention-latent", default="30x52",
                   help="latent HxW of table 2 (30x52 -> 15 x 26 = 390 tokens per frame, a quarter of the 1.3B's "
                        "60x104 -> 1560)")
    p.add_argument("--attention-chunks", type=int, default=10, help="table 2: chunks per policy")
    p.add_argument("--attention-timed", type=int, default=2, help="table 2: last chunks timed (real kernel)")
    p.add_argument("--real-chunks", type=int, default=10, help="table 3b: chunks simulated")
    p.add_argument("--policies", default=DEFAULT_POLICIES,
                   help="comma-separated policies, each name[:option=value...] (default: every registered one and "
                        "triattention:sink=1)")
    p.add_argument("--profile-frames", type=int, default=21, help="forcing-kv profiling video (latent frames)")
    p.add_argument("--calibration-frames", type=int, default=81, help="triattention calibration video (latent frames)")
    p.add_argument("--release-profile", default=None,
                   help="Forcing-KV's shipped 30 x 12 Self Forcing head profile (configs_head/"
                        "forcingkv_heads_selfforcing.json of zju-jiyicheng/Forcing-KV@50ac1f4) for table 3b")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    tables = set(args.tables.split(","))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    specs = parse_specs(args.policies)
    names = {name for _, name, _ in specs}
    latent = tuple(int(x) for x in args.latent.split("x"))
    model = CausalWanTransformer(num_attention_heads=WIDTH["heads"], attention_head_dim=WIDTH["head_dim"],
                                 ffn_dim=WIDTH["ffn"], num_layers=args.layers, text_len=16).eval()
    context = model.encode_context(torch.randn(1, 16, 4096))
    with tempfile.TemporaryDirectory() as tmp:
        artefacts = make_artefacts(model, context, latent, names, Path(tmp), args.profile_frames,
                                   args.calibration_frames)
        if "model" in tables:
            model_table(args, model, context, build_policies(specs, artefacts), latent)
        if "attention" in tables:
            if args.layers != 2 and names & {"forcing-kv", "triattention"}:
                raise SystemExit("table 2 runs a 2-layer cache: the artefacts must be made with --layers 2")
            attention_table(args, build_policies(specs, artefacts),
                            tuple(int(x) for x in args.attention_latent.split("x")))
        if "real" in tables:
            real_tables(args, specs, build_policies(specs, artefacts), artefacts)


if __name__ == "__main__":
    main()
