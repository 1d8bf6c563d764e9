"""Per-chunk cost of each cache policy against the attention it serves (issue 2 micro-benchmark).

For one transformer layer at a given geometry (default: Wan2.1-1.3B — 12 heads x 128, 1560 tokens per latent frame,
window 21, chunk 3), every policy is driven through the chunk sequence with random q/k/v. For each steady-state
new-chunk call it times the cache ``update`` (write + policy decision + compaction + sink re-alignment) and the
attention of the chunk's queries over the resulting cache (PyTorch SDPA), and prints both and their ratio.
Later denoising steps and the clean pass only overwrite slots, so the policy cost is paid once per chunk while
attention is paid ``steps + 1`` times; the table shows both views.

Usage:
    python benchmarks/cache_policy_cost.py                      # 1.3B geometry (slow on CPU: attention ~ seconds)
    python benchmarks/cache_policy_cost.py --tokens-per-frame 156 --chunks 14
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from deepforcing.cache import CacheGeometry, KVCache, TemporalRope, make_policy, policy_names


_ATTENTION_MS: dict[int, float] = {}


def bench_policy(name: str, args: argparse.Namespace) -> dict:
    geo = CacheGeometry(args.tokens_per_frame, args.chunk_frames)
    cache = KVCache(
        make_policy(name), geo, num_layers=1, batch=1, heads=args.heads, head_dim=args.head_dim,
        rope=TemporalRope.for_wan_head(args.head_dim), dtype=torch.float32,
    )
    layer = cache.layers[0]
    n = geo.chunk_tokens
    gen = torch.Generator().manual_seed(0)
    rand = lambda: torch.randn(1, args.heads, n, args.head_dim, generator=gen)  # noqa: E731
    policy_ms, attn_ms, lengths = [], [], []
    fill_chunks = -(-args.window // args.chunk_frames) + 1
    for i in range(fill_chunks + args.chunks):
        f0 = i * args.chunk_frames
        q, k, v = rand(), rand(), rand()
        cache.begin_call(f0, args.chunk_frames, clean=False)
        t0 = time.perf_counter()
        K, V = layer.update(q, k, v)
        t1 = time.perf_counter()
        cache.begin_call(f0, args.chunk_frames, clean=True)  # clean pass: overwrite (feeds the query window)
        layer.update(rand(), rand(), rand())
        if i < fill_chunks:
            continue
        L = K.shape[2]
        if L not in _ATTENTION_MS:  # attention cost depends only on the cache length (shared by policies)
            times = []
            for _ in range(args.attention_repeats):
                a0 = time.perf_counter()
                F.scaled_dot_product_attention(q, K, V)
                times.append(time.perf_counter() - a0)
            _ATTENTION_MS[L] = min(times)
        policy_ms.append((t1 - t0) * 1e3)
        attn_ms.append(_ATTENTION_MS[L] * 1e3)
        lengths.append(L / args.tokens_per_frame)
    calls = args.steps + 1
    return {
        "policy": name,
        "frames": "/".join(f"{x:g}" for x in sorted(set(lengths))),
        "policy_ms": statistics.mean(policy_ms),
        "policy_max_ms": max(policy_ms),
        "attn_ms": statistics.mean(attn_ms),
        "ratio_call": statistics.mean(policy_ms) / statistics.mean(attn_ms),
        "ratio_chunk": statistics.mean(policy_ms) / (calls * statistics.mean(attn_ms)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens-per-frame", type=int, default=1560)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--window", type=int, default=21)
    p.add_argument("--chunk-frames", type=int, default=3)
    p.add_argument("--chunks", type=int, default=4, help="steady-state chunks measured per policy")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per chunk (attention runs steps + 1 times)")
    p.add_argument("--attention-repeats", type=int, default=1)
    p.add_argument("--policies", default=",".join(n for n in policy_names() if n != "full"))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"geometry: {args.heads} heads x {args.head_dim}, {args.tokens_per_frame} tokens/frame, window "
          f"{args.window}, chunk {args.chunk_frames}; fp32 on {torch.get_num_threads()} CPU thread(s)")
    header = (f"| policy | cache frames | policy ms/chunk (mean / max) | attention ms/call | policy / attention call "
              f"| policy / attention per chunk ({args.steps + 1} calls) |")
    print(header)
    print("|" + "---|" * 6)
    for name in args.policies.split(","):
        r = bench_policy(name, args)
        print(f"| {r['policy']} | {r['frames']} | {r['policy_ms']:.1f} / {r['policy_max_ms']:.1f} | {r['attn_ms']:.0f} "
              f"| {r['ratio_call']:.2%} | {r['ratio_chunk']:.2%} |")


if __name__ == "__main__":
    main()
