"""Training curves of the mini model from its logs (JSON lines): loss, x0 errors, free-rollout probes.

    python scripts/mini_curves.py training/mini/log.txt results/mini_quality/curves.png
    python scripts/mini_curves.py leg1/log.txt leg2/log.txt out.png     # legs one after the other

Probes: ``free_*`` (the original pool) or, for the v5 world, ``free1_*`` / ``free2_*`` (1- and 2-object classes).
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _read(paths: list[str]) -> dict[int, dict]:
    """Entries by step; a later leg's steps continue after the previous leg's last step."""
    rows: dict[int, dict] = {}
    offset = 0
    for path in paths:
        leg = {}
        for line in open(path):
            if line.startswith("{"):
                entry = json.loads(line)
                leg[entry["step"]] = entry  # a resumed leg repeats no step; the last entry wins
        rows.update({offset + k: v for k, v in leg.items()})
        offset += max(leg, default=0)
    return rows


def main() -> None:
    *paths, out = sys.argv[1:]
    rows = _read(paths)
    steps = sorted(rows)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    axes[0].plot(steps, [rows[s]["loss"] for s in steps])
    axes[0].set_title("flow-matching loss")
    for key, label in (("x0_mse_with_context", "with true context"), ("x0_mse_without_context", "without context"),
                       ("x0_mse_copy_last_frame", "copy last frame")):
        axes[1].plot(steps, [rows[s][key] for s in steps], label=label)
    axes[1].set_title("x0 MSE at sigma = 1 (latents)")
    axes[1].legend(fontsize=8)
    prefixes = sorted({k.split("_")[0] for r in rows.values() for k in r if k.startswith("free")})
    names = {"free": "", "free1": "1 object: ", "free2": "2 objects: "}
    for prefix in prefixes:
        probed = [s for s in steps if f"{prefix}_object_persistence" in rows[s]]
        for key, label, style in (("object_persistence", "persistence", "-o"), ("count_accuracy", "count", "--s")):
            axes[2].plot(probed, [rows[s][f"{prefix}_{key}"] for s in probed], style, label=names.get(prefix, prefix) + label)
        axes[3].plot(probed, [rows[s][f"{prefix}_speed_preservation"] for s in probed], "-o",
                     label=names.get(prefix, prefix) + "speed ratio")
    axes[2].axhline(0.9, color="grey", ls="--", lw=1, label="bar (0.9)")
    axes[2].set_ylim(0, 1.02)
    axes[2].set_title("free rollouts, 8 held-out pairs per probe, 21 frames")
    axes[2].legend(fontsize=7)
    axes[3].axhspan(0.8, 1.2, color="grey", alpha=0.2, label="bar (0.8-1.2)")
    axes[3].set_ylim(0, 1.5)
    axes[3].set_title("free rollouts: speed ratio (1 = true)")
    axes[3].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
