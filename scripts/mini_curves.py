"""Training curves of the mini model from its log (JSON lines): loss, x0 errors, free-rollout probe.

    python scripts/mini_curves.py training/mini/log.txt results/mini_quality/curves.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    rows = {}
    for line in open(sys.argv[1]):
        if line.startswith("{"):
            entry = json.loads(line)
            rows[entry["step"]] = entry  # a resumed leg repeats no step; the last entry wins
    steps = sorted(rows)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [rows[s]["loss"] for s in steps])
    axes[0].set_title("flow-matching loss")
    for key, label in (("x0_mse_with_context", "with true context"), ("x0_mse_without_context", "without context"),
                       ("x0_mse_copy_last_frame", "copy last frame")):
        axes[1].plot(steps, [rows[s][key] for s in steps], label=label)
    axes[1].set_title("x0 MSE at sigma = 1 (latents)")
    axes[1].legend(fontsize=8)
    for key, label in (("free_object_persistence", "object persistence"), ("free_count_accuracy", "count accuracy")):
        axes[2].plot(steps, [rows[s].get(key) for s in steps], marker="o", label=label)
    axes[2].axhline(0.9, color="grey", ls="--", lw=1, label="bar (0.9)")
    axes[2].set_ylim(0, 1)
    axes[2].set_title("free rollouts, 8 held-out pairs, 21 frames")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
