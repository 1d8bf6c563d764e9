"""The v5 quality bar of a mini model file, per scene class (issue "mini model v5"), as JSON + a markdown table.

Free rollouts from the prompt (and its start layout, the default mode; ``prompt-only`` = layout channels at zero)
through the rollout and streaming decoder that ``deepforcing generate`` uses, inside the 21-frame window, on the v5
held-out pools (``quality.held_out_pairs(n, scene_class)``); and the continuation bar (a true first chunk in the
cache, the window's last chunk scored). Mean and 95 % t interval per metric.

    python scripts/mini_v5_bar.py MODEL.safetensors --pairs 32 --out results/mini_quality/v5_bar.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from deepforcing.mini.bundle import mini_bundle
from deepforcing.mini.quality import SCENE_CLASSES, continuation_bar, free_rollout_bar

METRICS = ("object_persistence", "count_accuracy", "object_colour_error", "speed_preservation")


def _cells(row: dict) -> str:
    return " | ".join(f"{row[k]['mean']:.3f} ± {row[k]['ci_high'] - row[k]['mean']:.3f}" for k in METRICS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=None, help="mini model file (default: the shipped one)")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--classes", default=",".join(SCENE_CLASSES))
    ap.add_argument("--modes", default="layout,prompt-only")
    ap.add_argument("--no-continuation", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result: dict = {}
    lines = ["| class | mode | pairs | persistence ↑ | count acc ↑ | colour err ↓ | speed ratio |", "|---|---|---|---|---|---|---|"]
    for cls in args.classes.split(","):
        for mode in args.modes.split(","):
            bundle = mini_bundle(args.model, start_layout=mode == "layout")
            if bundle.start_condition is None and mode == "prompt-only":
                continue  # a model without layout channels has one mode only
            bar = free_rollout_bar(bundle, pairs=args.pairs, policies=("self-forcing",), scene_class=cls)
            row = bar["self-forcing"]["inside"]
            result[f"{cls}/{mode}/free"] = {k: row[k] for k in METRICS}
            lines.append(f"| {cls} | {mode if bundle.start_condition else 'prompt'} free | {args.pairs} | {_cells(row)} |")
            if not args.no_continuation and mode == args.modes.split(",")[0]:
                cont = continuation_bar(bundle, pairs=args.pairs, scene_class=cls)
                result[f"{cls}/{mode}/continuation_last_chunk"] = {k: cont["last_chunk"][k] for k in METRICS}
                lines.append(f"| {cls} | true chunk 0 → last chunk | {args.pairs} | {_cells(cont['last_chunk'])} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model or "shipped", "pairs": args.pairs, "rows": result, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
