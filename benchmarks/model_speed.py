"""Per-chunk latency, frames/s and peak memory of the causal Wan transformer under different cache policies.

Random weights, no downloads. Each chunk makes the Self Forcing rollout's 5 model calls (4 denoising steps + the
clean pass); timing starts after ``--warmup`` chunks, so the window has filled and rolls/compressions are included.

    # GPU, Wan2.1-T2V-1.3B geometry (dim 1536, 30 layers, 12 heads, 60x104 latent = 1560 tokens/frame), bf16:
    python benchmarks/model_speed.py --device cuda --dtype bf16 --geometry 1.3b --chunks 14 --warmup 8
    # CPU, scaled-down geometry:
    python benchmarks/model_speed.py --geometry cpu-small --chunks 12 --warmup 8
"""

from __future__ import annotations

import argparse
import time

import torch

from deepforcing.cache import make_policy
from deepforcing.models.presets import WAN21_T2V_1_3B
from deepforcing.models.schedule import FlowMatchSchedule
from deepforcing.models.wan_causal import CausalWanTransformer

GEOMETRIES = {
    # name: (model kwargs, latent height, latent width)
    "1.3b": (WAN21_T2V_1_3B, 60, 104),
    "cpu-small": ({**WAN21_T2V_1_3B, "num_attention_heads": 4, "attention_head_dim": 64, "ffn_dim": 1024,
                   "num_layers": 4, "text_dim": 256}, 16, 24),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(model, ctx, policy_name: str, *, h: int, w: int, chunk: int, chunks: int, warmup: int, device) -> dict:
    cache = model.make_cache(make_policy(policy_name), height=h, width=w, chunk_frames=chunk)
    steps = FlowMatchSchedule().warp([1000, 750, 500, 250]).to(device)
    c = model.config.in_channels
    dtype = next(model.parameters()).dtype
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.no_grad():
        for i in range(chunks):
            sync(device)
            t0 = time.perf_counter()
            x = torch.randn(1, c, chunk, h, w, device=device, dtype=dtype)
            for t in steps:
                model(x, t.expand(1, chunk), ctx, cache, i * chunk)
            model(x, torch.zeros(1, chunk, device=device), ctx, cache, i * chunk, clean=True)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    lat = sum(times) / len(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"policy": policy_name, "latency_s": lat, "fps": chunk / lat, "cache_frames": cache.length // model.tokens_per_frame(h, w),
            "cache_mb": cache.memory_bytes() / 2**20, "peak_gib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--geometry", choices=list(GEOMETRIES), default="cpu-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    ap.add_argument("--policies", nargs="+", default=["self-forcing", "deep-forcing"])
    ap.add_argument("--chunk", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=12, help="chunks generated per policy (after warm-up)")
    ap.add_argument("--warmup", type=int, default=8, help="untimed chunks first (8 = past the first roll at 21 frames)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.chunks <= args.warmup:
        ap.error("--chunks must exceed --warmup")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg, h, w = GEOMETRIES[args.geometry]
    torch.manual_seed(0)
    with torch.device(device):
        model = CausalWanTransformer(**cfg).eval()
    if DTYPES[args.dtype] != torch.float32:
        model = model.to(DTYPES[args.dtype])
    ctx = model.encode_context(torch.randn(1, 64, cfg["text_dim"], device=device, dtype=DTYPES[args.dtype]))
    tpf = model.tokens_per_frame(h, w)
    print(f"geometry {args.geometry}: dim {cfg['num_attention_heads'] * cfg['attention_head_dim']}, "
          f"{cfg['num_layers']} layers, {cfg['num_attention_heads']} heads, {tpf} tokens/frame, "
          f"{args.dtype} on {device}; 5 calls per {args.chunk}-frame chunk, mean over chunks {args.warmup}..{args.chunks - 1}")
    print(f"{'policy':<14} {'latency/chunk (s)':>18} {'latent frames/s':>16} {'cache frames':>13} {'cache MiB':>10} {'peak GiB':>9}")
    for name in args.policies:
        r = run(model, ctx, name, h=h, w=w, chunk=args.chunk, chunks=args.chunks, warmup=args.warmup, device=device)
        print(f"{r['policy']:<14} {r['latency_s']:>18.4f} {r['fps']:>16.2f} {r['cache_frames']:>13d} "
              f"{r['cache_mb']:>10.1f} {r['peak_gib']:>9.2f}")


if __name__ == "__main__":
    main()
