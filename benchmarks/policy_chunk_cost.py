"""Per-chunk time and KV bytes of every registered cache policy at the Wan2.1-1.3B width (issue 27 item 7).

Two tables:

1. **Measured on the CPU**: a random :class:`~deepforcing.models.wan_causal.CausalWanTransformer` of the 1.3B's width
   (dim 1536 = 12 heads x 128, FFN 8960) but ``--layers`` blocks (default 2 of 30) at a small latent (default 8 x 8,
   16 tokens per frame), fp32, Self Forcing's sampler shape: ``--steps`` denoising calls plus the clean pass per
   3-frame chunk. The policies run **round-robin, chunk by chunk** (policy A chunk 9, policy B chunk 9, ...; the
   first place rotates), so a loaded machine slows them alike and the ratio to ``self-forcing`` is a same-run ratio
   of each policy's fastest timed chunk; absolute ms are not comparable across runs. KV bytes are what the cache holds after the last chunk: every layer's store tensors
   (keys, values, the post-RoPE sink's exact copy) and every tensor a policy keeps in ``layer.state`` (archives,
   memories), scaled to 30 layers.
2. **The real 1.3B in bf16, from each policy's own description** (nothing written per policy): frames held =
   the sum of :attr:`CachePolicy.layout` (sink + kept + memory + recent) + :attr:`CachePolicy.archive_frames`;
   bytes = 30 layers x 2 (K, V) x 12 heads x 128 x 1560 tokens/frame x frames x 2 bytes, plus the post-RoPE sink's
   key copy (30 x 12 x 128 x 1560 x sink x 2) when :meth:`CachePolicy.key_storage` is post-RoPE. ``allocated`` is
   :meth:`KVCache.estimate_bytes` (window + one incoming chunk, per-slot metadata included) plus the archive.
   The last column is the frames table 1 measured (slots + states, without the key copy) after its last chunk.

Usage:
    python benchmarks/policy_chunk_cost.py                 # ~5 min on one loaded CPU core
    python benchmarks/policy_chunk_cost.py --layers 1 --chunks 9 --timed 2
"""

from __future__ import annotations

import argparse
import time

import torch

from deepforcing.cache import CacheGeometry, KVCache, make_policy, policy_names
from deepforcing.eval.kv_cost import WAN_1P3B, cache_bytes, formula_bytes, formula_frames
from deepforcing.models.wan_causal import CausalWanTransformer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2, help="transformer blocks (the 1.3B has 30; bytes are scaled)")
    p.add_argument("--latent", default="8x8", help="latent HxW (patch 2x2: 8x8 -> 16 tokens per frame)")
    p.add_argument("--chunks", type=int, default=12, help="chunks per policy (>= 9 so every method has acted)")
    p.add_argument("--timed", type=int, default=5, help="last chunks timed (the fastest counts: least disturbed)")
    p.add_argument("--steps", type=int, default=4, help="denoising calls per chunk (plus one clean pass)")
    p.add_argument("--policies", default=",".join(policy_names()))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = (int(x) for x in args.latent.split("x"))
    chunk = WAN_1P3B["chunk_frames"]
    model = CausalWanTransformer(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960,
                                 num_layers=args.layers, text_len=16).eval()
    context = model.encode_context(torch.randn(1, 16, 4096))
    names = args.policies.split(",")
    policies = {n: make_policy(n) for n in names}
    caches = {n: model.make_cache(policies[n], height=h, width=w, chunk_frames=chunk) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    timesteps = torch.linspace(1000, 250, args.steps)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i in range(args.chunks):
            latents = torch.randn(1, 16, chunk, h, w, generator=gen)
            for n in names[i % len(names):] + names[: i % len(names)]:  # round-robin, first place rotating
                t0 = time.perf_counter()
                for t in timesteps:
                    model(latents, torch.full((1,), float(t)), context, caches[n], i * chunk)
                model(latents, torch.zeros(1), context, caches[n], i * chunk, clean=True)
                caches[n].settle()
                times[n].append(time.perf_counter() - t0)
    tpf = model.tokens_per_frame(h, w)
    print(f"measured: random CausalWanTransformer, width 1536 (12 x 128), FFN 8960, {args.layers} of 30 layers, "
          f"latent {h}x{w} ({tpf} tokens/frame), chunk {chunk}, {args.steps}+1 calls/chunk, fp32, "
          f"{torch.get_num_threads()} thread(s); fastest of chunks {args.chunks - args.timed}..{args.chunks - 1}; "
          f"policies round-robin per chunk (same-run ratios)")
    base = min(times["self-forcing"][-args.timed:]) if "self-forcing" in times else None
    base_bytes = cache_bytes(caches["self-forcing"])[0] if "self-forcing" in caches else None
    print("| policy | ms/chunk | / self-forcing | frames held | KV MiB held (x30 layers) | / self-forcing |")
    print("|---|---|---|---|---|---|")
    measured_frames = {}
    for n in names:
        ms = min(times[n][-args.timed:]) * 1e3
        held, _ = cache_bytes(caches[n])
        cache = caches[n]
        per_frame = 2 * args.layers * 12 * 128 * tpf * 4  # fp32 K+V of one frame, all layers
        frames = held / per_frame
        measured_frames[n] = frames
        scaled = held * 30 / args.layers / 2**20
        print(f"| {n} | {ms:.0f} | {ms / (base * 1e3):.2f} | {frames:g} | {scaled:.1f} | "
              f"{held / base_bytes:.2f} |")
    g = WAN_1P3B
    print(f"\nreal 1.3B, bf16, from each policy's layout: 30 x 2 x 12 x 128 x 1560 x frames x 2 B "
          f"(= {2 * 30 * 12 * 128 * 1560 * 2 / 2**20:.1f} MiB per frame) + the post-RoPE sink's key copy")
    print("| policy | layout (sink/kept/memory/recent) + archive | frames | KV GiB held | / self-forcing "
          "| allocated GiB | frames measured in table 1 |")
    print("|---|---|---|---|---|---|---|")
    sf = formula_bytes(*formula_frames(policies["self-forcing"])) \
        if "self-forcing" in policies else None
    for n in names:
        policy = policies[n]
        frames, sink_copy = formula_frames(policy)
        lay = policy.layout
        layout = "/".join("-" if lay[k] is None else str(lay[k]) for k in ("sink", "kept", "memory", "recent"))
        layout += f" + {policy.archive_frames}" if policy.archive_frames else ""
        if frames is None:
            per_frame = 2 * 30 * 12 * 128 * 1560 * 2 / 2**30
            print(f"| {n} | {layout} | grows | {per_frame:.3f} per frame | - | - | - |")
            continue
        nbytes = formula_bytes(frames, sink_copy)
        alloc = KVCache.estimate_bytes(policy, CacheGeometry(g["tokens_per_frame"], g["chunk_frames"]),
                                       num_layers=g["layers"], batch=1, heads=g["heads"], head_dim=g["head_dim"],
                                       dtype=torch.bfloat16)
        alloc += 2 * 30 * 12 * 128 * 1560 * 2 * policy.archive_frames
        measured = measured_frames[n] - sink_copy / 2  # K+V frames in slots and states, without the key copy
        copy = f" (+{sink_copy} key copy)" if sink_copy else ""
        print(f"| {n} | {layout}{copy} | {frames} | {nbytes / 2**30:.2f} | {nbytes / sf:.2f} | "
              f"{alloc / 2**30:.2f} | {measured:g} |")


if __name__ == "__main__":
    main()
