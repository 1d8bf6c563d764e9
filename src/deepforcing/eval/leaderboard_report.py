"""The leaderboard's report (:mod:`deepforcing.eval.leaderboard`), rebuilt from the stored arms alone.

``summary.md``: the methods (arXiv id, release commit, paper-only marks) with their cost (median ms per chunk and
peak KV MiB per video on the mini model, the real 1.3B's bf16 KV GiB from the policy's layout); one table per
scene class x start mode x horizon (the headline classes first, the hard class in its own section) with every
cell a mean ± the half-width of its 95 % Student-t interval over the held-out pairs and a rank with ties
(:func:`rank_with_ties` on count accuracy and on persistence beyond the window); the paired verdict of each method's headline claim
(:data:`~deepforcing.eval.leaderboard_methods.CLAIMS`; claims whose policy did not run are listed as "not run").
Plots: ``strips_<class>_<start>_<h>.png`` (one pair per class, every entry), ``drift_<class>_<start>.png``
(per-window persistence and count accuracy at the longest horizon) and ``quality_vs_cost.png``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from deepforcing.stats import mean_ci

from .experiment_arms import horizon_key
from .experiment_report import (PAIRED_METRICS, PRIMARY, _cell, _metric, _pyplot, _running_mean, claim_verdicts,
                                window_mean)
from .leaderboard_methods import CLAIMS, MAIN_CLASSES, Claim
from .leaderboard_store import load_arms

__all__ = ["RANK_METRIC", "rank_with_ties", "board_verdicts", "cost_verdict", "write_board_report",
           "board_markdown", "overview_lines"]

# beyond the window, higher is better. Count accuracy (the right number of objects) is the board's order: it fails
# both when an object is lost and when a ghost copy appears; persistence (every prompted object found) gets its own
# rank column, and is the quality measure of the cost claims
RANK_METRICS = ("count_accuracy", "object_persistence")
RANK_METRIC = "object_persistence"
TABLE_COLUMNS = (("count_accuracy", "count acc ↑"), ("object_persistence", "persistence ↑"),
                 ("object_colour_error", "obj colour err ↓"), ("speed_ratio", "speed ratio (1)"),
                 ("flicker", "flicker ↓"), ("near_copy_fraction", "roll-back ↓"),
                 ("color_drift_last", "colour drift ↓"))


def rank_with_ties(intervals: list[tuple[float, float, float]], higher_is_better: bool = True) -> list[int]:
    """Ranks from ``(mean, ci_low, ci_high)`` triples: an entry's rank is 1 + the number of entries whose whole
    interval lies on the better side of its whole interval, so entries whose intervals overlap share a rank unless
    a third entry separates them. A missing interval (one pair) counts as its mean; a missing mean ranks last."""
    def bounds(t):
        mean, low, high = t
        if not math.isfinite(mean):
            return None
        return (low if math.isfinite(low) else mean, high if math.isfinite(high) else mean)

    spans = [bounds(t) for t in intervals]
    ranks = []
    for mine in spans:
        if mine is None:
            ranks.append(len(spans))
            continue
        better = sum(1 for other in spans if other is not None and
                     (other[0] > mine[1] if higher_is_better else other[1] < mine[0]))
        ranks.append(1 + better)
    return ranks


def _results(arms: list[dict], horizons: list[float]) -> dict:
    """The long-horizon study's results shape (for :func:`claim_verdicts`) of one class x start mode."""
    return {"horizons": horizons, "arms": [{"label": a["label"], "horizons": a["horizons"], "videos": a["videos"]}
                                           for a in arms]}


def cost_verdict(claim: Claim, a: dict, b: dict, horizon: str) -> dict:
    """A ``kind="cost"`` claim at one horizon: quality from the paired differences (no primary metric worse; with
    a margin, the relative persistence change's 95 % lower bound above ``-margin``), speed from the two arms'
    median ms per chunk, memory from their peak KV bytes per video."""
    shared = sorted(set(a["horizons"]) & set(b["horizons"]))
    rows = claim_verdicts(_results([a, b], shared), [(claim.text, a["label"], b["label"], 0)])
    quality = next(r for r in rows if r["horizon"] == horizon)
    persistence = quality["metrics"][RANK_METRIC]
    base = mean_ci([_metric(v, RANK_METRIC, horizon) for v in b["videos"]])["mean"]
    relative = {k: persistence[k] / base if base else math.nan for k in ("mean", "ci_low", "ci_high")}
    worse = quality["worse"]
    quality_ok = not worse and (claim.margin is None or
                                (math.isfinite(relative["ci_low"]) and relative["ci_low"] >= -claim.margin))
    a_ms, b_ms = a["cost"].get("ms_per_chunk"), b["cost"].get("ms_per_chunk")
    speedup = b_ms / a_ms if a_ms and b_ms else math.nan
    a_kv, b_kv = a["cost"].get("kv_bytes_per_video"), b["cost"].get("kv_bytes_per_video")
    memory = a_kv / b_kv if a_kv and b_kv else math.nan
    slower = claim.faster and not speedup > 1.0
    larger = claim.less_memory and not memory < 1.0
    if worse or slower or larger:
        verdict = "contradicted"
    elif not quality_ok:
        verdict = f"not shown (persistence interval reaches below −{claim.margin:.1%})"
    elif claim.speedup is not None and speedup < claim.speedup:
        verdict = f"partly supported (faster, ×{speedup:.2f} < the claimed ×{claim.speedup:.2f})"
    else:
        verdict = "supported"
    return {"metrics": quality["metrics"], "better": quality["better"], "worse": worse,
            "relative_persistence": relative, "speedup": speedup, "memory_ratio": memory, "verdict": verdict}


def board_verdicts(arms: list[dict], claims=CLAIMS) -> list[dict]:
    """Every claim on every class x start mode x horizon where both entries ran (one "not run" row otherwise)."""
    by: dict[tuple, dict] = {}
    for arm in arms:
        if arm.get("start") is not None:
            by[(arm["scene_class"], arm["start"], arm["label"])] = arm
    slices = sorted({(c, s) for c, s, _ in by}, key=lambda x: (x[0] not in MAIN_CLASSES, x))
    rows = []
    for claim in claims:
        found = False
        for scene_class, start in slices:
            a, b = by.get((scene_class, start, claim.a)), by.get((scene_class, start, claim.b))
            if a is None or b is None:
                continue
            found = True
            shared = [h for h in a["horizons"] if h in b["horizons"]]
            paired = {} if claim.kind == "cost" else \
                {r["horizon"]: r for r in claim_verdicts(_results([a, b], shared), [(claim.text, claim.a, claim.b, +1)])}
            for h in shared:
                horizon = horizon_key(h)
                base = {"method": claim.method, "claim": claim.text, "a": claim.a, "b": claim.b, "kind": claim.kind,
                        "scene_class": scene_class, "start": start, "horizon": horizon}
                if claim.kind == "cost":
                    rows.append({**base, **cost_verdict(claim, a, b, horizon)})
                    continue
                r = paired[horizon]
                rows.append({**base, "metrics": r["metrics"], "better": r["better"], "worse": r["worse"],
                             "verdict": r["verdict"]})
        if not found:
            ran = {label for _, _, label in by}
            missing = [x for x in (claim.a, claim.b) if x not in ran]
            rows.append({"method": claim.method, "claim": claim.text, "a": claim.a, "b": claim.b, "kind": claim.kind,
                         "verdict": f"not run ({', '.join(missing) or 'no shared class and start'})"})
    return rows


def _cost_of(arms: list[dict]) -> dict[str, dict]:
    """Per entry: the median of its arms' median ms per chunk, the peak KV bytes per video, the 1.3B bf16 bytes."""
    out: dict[str, dict] = {}
    for arm in arms:
        if arm.get("cost") is None:
            continue
        entry = out.setdefault(arm["label"], {"ms": [], "kv": [], "wan": arm["cost"].get("wan_1p3b_bf16_bytes"),
                                              "arm": arm})
        if arm["cost"].get("ms_per_chunk") is not None:
            entry["ms"].append(arm["cost"]["ms_per_chunk"])
        entry["kv"].append(arm["cost"]["kv_bytes_per_video"])
    return {k: {"ms": float(np.median(v["ms"])) if v["ms"] else math.nan, "kv": max(v["kv"]), "wan": v["wan"],
                "arm": v["arm"]} for k, v in out.items()}


def _methods_lines(arms: list[dict], board: dict, failures: list[dict]) -> list[str]:
    cost = _cost_of(arms)
    lines = ["## Methods and cost", "",
             "ms per chunk: process CPU time of one sampled chunk of the batch (all denoising steps and the clean "
             "pass, decoding excluded), the median over the chunks of an arm's first batch, then over the entry's "
             "arms (CPU time, because other jobs on a shared machine disturb the wall clock far more; the arms' "
             "wall-clock medians are in their JSON). KV: the peak bytes the mini cache holds per video (keys, values, "
             "sink copies, policy states); 1.3B: the real Wan2.1-1.3B in bf16 from the policy's layout "
             "(`deepforcing.eval.kv_cost`).", "",
             f"| entry | method | arXiv | release | CPU ms / chunk (batch of "
             f"{min(board['settings']['batch'], board['settings']['pairs'])}) | KV KiB / video "
             "(mini) | KV GiB (1.3B bf16) |", "|---|---|---|---|---|---|---|"]
    for label in board["entries"]:
        if label not in cost:
            continue
        c, arm = cost[label], cost[label]["arm"]
        mark = " *(paper only)*" if arm.get("paper_only") else ""
        wan = "grows" if c["wan"] is None else f"{c['wan'] / 2**30:.2f}"
        arxiv = f"[{arm['arxiv']}](https://arxiv.org/abs/{arm['arxiv']})" if arm.get("arxiv") else "–"
        lines.append(f"| {label}{mark} | {arm['method']} | {arxiv} | `{arm['release']}` | {c['ms']:.0f} | "
                     f"{c['kv'] / 1024:.0f} | {wan} |")
    not_run = [label for label in board["entries"] if label not in cost]
    if not_run:
        lines += ["", f"Not run yet: {', '.join(not_run)}."]
    if failures:
        lines += ["", "Failed arms (a rerun retries them):", ""]
        lines += [f"- `{f['key']}`: {f['error']}" for f in failures]
    return lines + [""]


def overview_lines(arms: list[dict], board: dict) -> list[str]:
    """One row per entry: count accuracy / persistence at the longest horizon on every headline slice (1- and
    2-object classes x start modes) that ran, the mean count accuracy over those slices (the row order), and the
    cost — the board at a glance, the table the README quotes. Entries that did not reach the longest horizon
    (``full``) are left out; the per-slice tables have them."""
    longest = board["settings"]["horizons"][-1]
    key = horizon_key(longest)
    slices = [sl for sl in _slices(arms) if sl[0] in MAIN_CLASSES]
    cells: dict[str, dict] = {}
    for arm in arms:
        if arm.get("start") is None or (arm["scene_class"], arm["start"]) not in slices or longest not in arm["horizons"]:
            continue
        count = float(np.nanmean([_metric(v, "count_accuracy", key) for v in arm["videos"]]))
        persistence = float(np.nanmean([_metric(v, "object_persistence", key) for v in arm["videos"]]))
        cells.setdefault(arm["label"], {})[(arm["scene_class"], arm["start"])] = (count, persistence)
    if not slices or not cells:
        return []
    cost = _cost_of(arms)
    mean_count = {label: float(np.mean([c[0] for c in row.values()])) for label, row in cells.items()}
    order = sorted(cells, key=lambda label: (-len(cells[label]), -mean_count[label]))
    lines = ["## At a glance", "",
             f"Count accuracy / persistence beyond the window at {key} (means over the pairs; the tables below have "
             "the intervals and ranks), per scene class and start mode; rows in the order of their mean count "
             "accuracy over the slices shown. A slice an entry has not run yet is `–`.", "",
             "| entry | " + " | ".join(f"{c}, {st}" for c, st in slices) + " | mean count | CPU ms / chunk | "
             "KV GiB (1.3B bf16) |", "|---|" + "---|" * (len(slices) + 3)]
    for label in order:
        row = cells[label]
        shown = [f"{row[sl][0]:.3f} / {row[sl][1]:.3f}" if sl in row else "–" for sl in slices]
        c = cost.get(label, {})
        wan = c.get("wan")
        lines.append(f"| {label} | " + " | ".join(shown) + f" | {mean_count[label]:.3f} | "
                     f"{c.get('ms', math.nan):.0f} | {'grows' if wan is None else f'{wan / 2**30:.2f}'} |")
    return lines + [""]


def _board_table(arms: list[dict], world: dict | None, horizon: float, title: str, window: int) -> list[str]:
    key = horizon_key(horizon)
    rows = [a for a in arms if horizon in a["horizons"]]
    if not rows:
        return []
    ranks = {}
    for metric in RANK_METRICS:
        stats = [mean_ci([_metric(v, metric, key) for v in a["videos"]]) for a in rows]
        ranks[metric] = rank_with_ties([(s["mean"], s["ci_low"], s["ci_high"]) for s in stats])
        if metric == RANK_METRICS[0]:
            means = [s["mean"] if math.isfinite(s["mean"]) else -math.inf for s in stats]
    order = sorted(range(len(rows)), key=lambda i: (ranks[RANK_METRICS[0]][i], -means[i]))
    frames = int(round(horizon * window))
    names = {"count_accuracy": "count", "object_persistence": "persistence"}
    lines = [f"### {title}, {key} the window (world metrics on frames {window}–{frames - 1}, drift metrics on "
             f"0–{frames - 1})", "",
             "| " + " | ".join(f"rank ({names[m]})" for m in RANK_METRICS) + " | entry | n | "
             + " | ".join(c for _, c in TABLE_COLUMNS) + " |",
             "|" + "---|" * (len(RANK_METRICS) + 2 + len(TABLE_COLUMNS))]
    if world is not None:
        cells = [_cell([_metric(v, k, key) for v in world["videos"]]) for k, _ in TABLE_COLUMNS]
        lines.append("| " + " | ".join("–" for _ in RANK_METRICS) + f" | *{world['label']}* | {len(world['videos'])} | "
                     + " | ".join(cells) + " |")
    for i in order:
        arm = rows[i]
        rank_cells = []
        for metric in RANK_METRICS:
            r = ranks[metric]
            rank_cells.append(f"{r[i]}{'=' if r.count(r[i]) > 1 else ''}")
        cells = [_cell([_metric(v, k, key) for v in arm["videos"]]) for k, _ in TABLE_COLUMNS]
        mark = " *(paper only)*" if arm.get("paper_only") else ""
        lines.append("| " + " | ".join(rank_cells) + f" | {arm['label']}{mark} | {len(arm['videos'])} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def _verdict_rows(verdicts: list[dict]) -> list[str]:
    names = [k for k, _, _ in PAIRED_METRICS if k in PRIMARY]
    lines = ["| method | claim (a vs b) | class | start | horizon | " +
             " | ".join(label for k, label, _ in PAIRED_METRICS if k in PRIMARY) + " | speed ×, KV × | verdict |",
             "|---|---|---|---|---|" + "---|" * len(names) + "---|---|"]
    for row in verdicts:
        if "metrics" not in row:
            lines.append(f"| {row['method']} | {row['claim']} ({row['a']} vs {row['b']}) | – | – | – | " +
                         " | ".join("–" for _ in names) + f" | – | {row['verdict']} |")
            continue
        cells = []
        for key in names:
            d = row["metrics"][key]
            if not math.isfinite(d["mean"]):
                cells.append("–")
                continue
            mark = {"better": " **↑**", "worse": " **↓**", "same": ""}[d["outcome"]]
            cells.append(f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]{mark}")
        cost = f"×{row['speedup']:.2f}, ×{row['memory_ratio']:.2f}" if row["kind"] == "cost" else "–"
        lines.append(f"| {row['method']} | {row['claim']} ({row['a']} vs {row['b']}) | {row['scene_class']} | "
                     f"{row['start']} | {row['horizon']} | " + " | ".join(cells) + f" | {cost} | {row['verdict']} |")
    return lines


def _verdict_lines(verdicts: list[dict], longest: str) -> list[str]:
    """The headline rows (the 1- and 2-object classes at the longest horizon, and claims that did not run), then
    every row (each horizon, the hard class) folded away."""
    headline = [r for r in verdicts if "metrics" not in r or (r["scene_class"] in MAIN_CLASSES and
                                                              r["horizon"] == longest)]
    return ["## Headline claims, decided by paired comparisons", "",
            "Each row: a − b on the same prompts and seeds (mean [95 % t interval]); ↑ / ↓ a significantly better / "
            "worse. *better* claims: supported when a is better on at least one of the four world metrics and worse "
            "on none; *cost* claims: quality kept (no metric worse; Dummy Forcing's 0.5 % margin on the relative "
            "change of persistence) while faster (b's ms / a's) and / or smaller (a's KV / b's). Intervals are not "
            f"corrected for the number of comparisons. Headline rows: the 1- and 2-object classes at {longest}; "
            "every class and horizon below and in `verdicts.json`.", "",
            *_verdict_rows(headline), "", "<details><summary>Every class, start mode and horizon</summary>", "",
            *_verdict_rows(verdicts), "", "</details>", ""]


def board_markdown(board: dict, arms: list[dict], failures: list[dict], verdicts: list[dict]) -> str:
    s = board["settings"]
    window = board["window"]
    slices = _slices(arms)
    policy_arms = [a for a in arms if a.get("start") is not None]
    seconds = [a["seconds"] for a in policy_arms]
    cpu = [a.get("cpu_seconds", math.nan) for a in policy_arms]
    lines = ["# Long-horizon leaderboard on the mini model", "",
             f"`deepforcing experiment --board` — model {board['model']} (sha256 {s['model_sha256']}), "
             f"{s['pairs']} held-out pairs per scene class, window {window} latent frames, horizons "
             f"{', '.join(horizon_key(h) for h in s['horizons'])}, start modes: prompt alone / the world's true first "
             f"{s['start_frames']} frames (image-to-video path); sampler {s['sampling']['solver']} "
             f"{len(s['sampling']['denoising_steps'])} steps; {len(policy_arms)} policy arms stored, "
             f"{sum(seconds) / 60:.1f} min of generation and scoring ({sum(cpu) / 60:.1f} CPU min on "
             f"{board.get('threads', '?')} thread(s)).", ""]
    lines += overview_lines(policy_arms, board)
    lines += _methods_lines(arms, board, failures)
    worlds = {a["scene_class"]: a for a in arms if a.get("start") is None}
    main = [sl for sl in slices if sl[0] in MAIN_CLASSES]
    hard = [sl for sl in slices if sl[0] not in MAIN_CLASSES]
    for heading, group in (("## Headline classes (1 and 2 objects)", main),
                           ("## The hard class (3 objects, small objects, close colours), reported separately", hard)):
        if not group:
            continue
        lines += [heading, "", "Ranks: by count accuracy (the table's order: the right number of objects, which "
                               "fails both when an object is lost and when a ghost copy appears) and by persistence "
                               "(every prompted object found), beyond the window; an entry's rank is 1 + the number of "
                               "entries whose 95 % interval lies wholly above its own, so entries whose intervals "
                               "overlap share a rank (`=`) unless a third separates them.", ""]
        for scene_class, start in group:
            rows = [a for a in policy_arms if (a["scene_class"], a["start"]) == (scene_class, start)]
            for h in s["horizons"]:
                lines += _board_table(rows, worlds.get(scene_class), h, f"{scene_class}, start: {start}", window)
    lines += _verdict_lines(verdicts, horizon_key(s["horizons"][-1]))
    lines += ["## Plots", "", "`strips_<class>_<start>_<horizon>.png` (the class's first held-out pair, every entry), "
              "`drift_<class>_<start>.png` (per-window means over the pairs, running mean over 3 windows), "
              "`quality_vs_cost.png`.", ""]
    return "\n".join(lines)


def _slices(arms: list[dict]) -> list[tuple[str, str]]:
    pairs = {(a["scene_class"], a["start"]) for a in arms if a.get("start") is not None}
    return sorted(pairs, key=lambda x: (x[0] not in MAIN_CLASSES, x[0], x[1] != "prompt", x[1]))


def write_board_report(out: Path) -> list[dict]:
    """Rebuild ``summary.md``, ``verdicts.json`` and the plots of a board folder from its stored arms."""
    board, arms, failures = load_arms(out)
    verdicts = board_verdicts(arms)
    (out / "summary.md").write_text(board_markdown(board, arms, failures, verdicts))
    (out / "verdicts.json").write_text(json.dumps(verdicts, indent=1, default=lambda o: None))
    worlds = {a["scene_class"]: a for a in arms if a.get("start") is None}
    for scene_class, start in _slices(arms):
        rows = [a for a in arms if (a["scene_class"], a.get("start")) == (scene_class, start)]
        plot_drift(rows, worlds.get(scene_class), board, out / f"drift_{scene_class}_{start}.png")
        for h in board["settings"]["horizons"]:
            save_strips(rows, worlds.get(scene_class), board, h,
                        out / f"strips_{scene_class}_{start}_{horizon_key(h)}.png")
    plot_quality_vs_cost(arms, board, out / "quality_vs_cost.png")
    return verdicts


def plot_drift(rows: list[dict], world: dict | None, board: dict, path: Path) -> None:
    """Per-window persistence and count accuracy (mean over pairs) of every entry to its longest horizon."""
    plt = _pyplot()
    keys = [("object_persistence", "object persistence ↑"), ("count_accuracy", "count accuracy ↑")]
    fig, axes = plt.subplots(1, len(keys), figsize=(6.0 * len(keys), 4.0))
    for arm in ([world] if world else []) + rows:
        width = arm["videos"][0]["window_frames"]
        stop = int(round(arm["horizons"][-1] * board["window"]))
        n = -(-stop // width)
        for ax, (key, title) in zip(axes, keys):
            mean = window_mean(arm, key, n)
            style = {"color": "black", "lw": 2} if arm.get("start") is None else \
                {"lw": 1, "ls": "--" if arm.get("paper_only") else "-"}
            ax.plot(np.arange(len(mean)) * width, _running_mean(mean, 3), label=arm["label"], **style)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("frame")
    for ax in axes:
        ax.axvline(board["window"], color="grey", ls=":", lw=0.8)
    axes[-1].legend(fontsize=6, ncol=2)
    first = rows[0] if rows else world
    fig.suptitle(f"{first['scene_class']}, start: {first.get('start')}; {board['settings']['pairs']} pairs "
                 f"(dotted: end of the training window)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_strips(rows: list[dict], world: dict | None, board: dict, horizon: float, path: Path) -> None:
    """One row per entry that reached ``horizon`` (the world's truth first): frames evenly spaced over the video."""
    key = horizon_key(horizon)
    items = [(a["label"], a["strips"][key]) for a in ([world] if world else []) + rows
             if key in a.get("strips", {})]
    if not items:
        return
    plt = _pyplot()
    stop = int(round(horizon * board["window"]))
    columns = items[0][1].shape[0]
    idx = np.linspace(0, stop - 1, columns).round().astype(int)
    fig, axes = plt.subplots(len(items), 1, figsize=(columns * 0.75, 0.8 * len(items) + 0.6), squeeze=False)
    for ax, (label, frames) in zip(axes[:, 0], items):
        ax.imshow(np.concatenate(list(frames), axis=1), interpolation="nearest")
        ax.set_yticks([])
        ax.set_xticks([(i + 0.5) * frames.shape[2] for i in range(len(idx))], [str(i) for i in idx], fontsize=5)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    first = rows[0] if rows else world
    fig.suptitle(f"{first['prompts'][0]!r} (seed {first['seeds'][0]}), start: {first.get('start')}: frames "
                 f"0..{stop - 1}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_quality_vs_cost(arms: list[dict], board: dict, path: Path) -> None:
    """Persistence beyond the window at the longest horizon against ms per chunk (top) and the 1.3B's bf16 KV GiB
    (bottom), one panel per headline class x start mode, mean ± 95 % CI per entry."""
    slices = [sl for sl in _slices(arms) if sl[0] in MAIN_CLASSES] or _slices(arms)
    if not slices:
        return
    plt = _pyplot()
    cost = _cost_of(arms)
    labels = list(dict.fromkeys(a["label"] for a in arms if a.get("start") is not None))
    colours = {label: plt.get_cmap("tab20")(i % 20) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(2, len(slices), figsize=(4.2 * len(slices), 7.0), squeeze=False)
    for col, (scene_class, start) in enumerate(slices):
        rows = [a for a in arms if (a["scene_class"], a.get("start")) == (scene_class, start)]
        for arm in rows:
            key = horizon_key(arm["horizons"][-1])
            r = mean_ci([_metric(v, RANK_METRIC, key) for v in arm["videos"]])
            c = cost.get(arm["label"], {})
            half = r["ci_high"] - r["mean"] if math.isfinite(r["ci_high"]) else 0.0
            wan = c.get("wan")
            for row, x in ((0, c.get("ms")), (1, None if wan is None else wan / 2**30)):
                if x is None or not math.isfinite(x):
                    continue
                ax = axes[row, col]
                ax.errorbar([x], [r["mean"]], yerr=[half], fmt="o" if not arm.get("paper_only") else "s", capsize=2,
                            color=colours[arm["label"]])
                ax.annotate(f"{arm['label']} ({key})", (x, r["mean"]), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
        axes[0, col].set_title(f"{scene_class}, start: {start}", fontsize=9)
        axes[0, col].set_xlabel("CPU ms per chunk (mini, median)")
        axes[1, col].set_xlabel("KV GiB, real 1.3B bf16 (layout)")
        for row in (0, 1):
            axes[row, col].set_ylabel("persistence beyond the window ↑")
    fig.suptitle(f"Quality versus cost, {board['settings']['pairs']} pairs per class", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
