"""Tables, paired verdicts and plots of the long-horizon study (:mod:`deepforcing.eval.experiment`).

``summary.md`` holds, in the paper's shapes (arXiv 2512.05081): the policy table per horizon (Tab. 1 analogue), the
component ablation (Tab. 4), the sink-depth sweep (Fig. 5, also ``sink_sweep.png``), the Top-C query sets (Tab. 5),
the named options, the paired comparisons that decide each claim, persistence by object count, and the attention
diagnostics. Every cell is a mean with the half-width of its 95 % Student-t interval over the held-out pairs; a
paired comparison is the mean of the per-pair difference (same prompt and seed) with its 95 % t interval and the
two-sided sign-flip p-value (:func:`deepforcing.stats.paired_difference`; uncorrected for the number of claims).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from deepforcing.stats import mean_ci, paired_difference

from .experiment_arms import ARMS, CLAIMS, SINK_SWEEP, horizon_key

__all__ = ["STRIP_COLUMNS", "write_report", "claim_verdicts", "summary_markdown", "PAIRED_METRICS"]

# (name, label, direction): +1 higher is better, -1 lower is better; the value is read by _metric
PAIRED_METRICS: tuple[tuple[str, str, int], ...] = (
    ("object_persistence", "persistence", +1),
    ("count_accuracy", "count accuracy", +1),
    ("object_colour_error", "object colour error", -1),
    ("speed_error", "|speed ratio − 1|", -1),
    ("color_drift_last", "colour drift", -1),
    ("near_copy_fraction", "roll-back", -1),
)
STRIP_COLUMNS = 14
PRIMARY = ("object_persistence", "count_accuracy", "object_colour_error", "speed_error")
TABLE_COLUMNS = (("object_persistence", "persistence ↑"), ("count_accuracy", "count acc ↑"),
                 ("object_colour_error", "obj colour err ↓"), ("speed_ratio", "speed ratio (1)"),
                 ("color_drift_last", "colour drift ↓"), ("sharpness_change_last", "sharpness Δ"),
                 ("flicker", "flicker ↓"), ("motion_ratio", "motion last/first"),
                 ("near_copy_fraction", "roll-back ↓"))


def _metric(video: dict, key: str, horizon: str, span: str = "beyond") -> float:
    if span == "inside":
        gt = video["inside"]
    else:
        gt = video["beyond"].get(horizon)
        if gt is None:
            return math.nan
    if key == "speed_error":
        r = gt["speed_ratio"]
        return math.nan if r is None or not math.isfinite(r) else abs(r - 1.0)
    if key in gt:
        return math.nan if gt[key] is None else gt[key]
    value = video["drift"].get(horizon, {}).get(key)
    return math.nan if value is None else value


def _cell(values: list[float], digits: int = 3) -> str:
    r = mean_ci(values)
    if not math.isfinite(r["mean"]):
        return "–"
    half = r["ci_high"] - r["mean"]
    return f"{r['mean']:.{digits}f} ± {half:.{digits}f}" if math.isfinite(half) else f"{r['mean']:.{digits}f}"


def _arms(results: dict) -> dict[str, dict]:
    return {a["label"]: a for a in results["arms"]}


def _horizon_keys(results: dict) -> list[str]:
    return [horizon_key(h) for h in results["horizons"]]


def _table(results: dict, labels: list[str], horizon: str, title: str) -> list[str]:
    arms = _arms(results)
    rows = [a for a in (arms.get(x) for x in labels) if a is not None and horizon in _arm_horizons(a)]
    if not rows:
        return []
    window = results["window"]
    frames = int(round(float(horizon[:-1]) * window))
    lines = [f"### {title} — {horizon} the window (frames {window}–{frames - 1} for the world metrics, 0–{frames - 1}"
             f" for the drift metrics)", "",
             "| arm | n | " + " | ".join(c for _, c in TABLE_COLUMNS) + " |", "|---|---|" + "---|" * len(TABLE_COLUMNS)]
    for arm in rows:
        cells = [_cell([_metric(v, k, horizon) for v in arm["videos"]]) for k, _ in TABLE_COLUMNS]
        lines.append(f"| {arm['label']} | {len(arm['videos'])} | " + " | ".join(cells) + " |")
    return lines + [""]


def _arm_horizons(arm: dict) -> list[str]:
    return [horizon_key(h) for h in arm["horizons"]]


def claim_verdicts(results: dict, claims) -> list[dict]:
    """Every claim at every horizon both arms reached: per metric the paired difference (a − b) and whether a is
    better, worse or not detectably different (95 % CI excludes 0); the claim's verdict from the primary metrics."""
    arms = _arms(results)
    rows = []
    for claim, a_label, b_label, expect in claims:
        a, b = arms.get(a_label), arms.get(b_label)
        if a is None or b is None:
            continue
        for horizon in _horizon_keys(results):
            if horizon not in _arm_horizons(a) or horizon not in _arm_horizons(b):
                continue
            metrics = {}
            for key, _, direction in PAIRED_METRICS:
                d = paired_difference([_metric(v, key, horizon) for v in a["videos"]],
                                      [_metric(v, key, horizon) for v in b["videos"]])
                if d["n"] >= 2 and math.isfinite(d["ci_low"]) and (d["ci_low"] > 0 or d["ci_high"] < 0):
                    d["outcome"] = "better" if (d["ci_low"] > 0) == (direction > 0) else "worse"
                else:
                    d["outcome"] = "same"
                metrics[key] = d
            better = [k for k in PRIMARY if metrics[k]["outcome"] == "better"]
            worse = [k for k in PRIMARY if metrics[k]["outcome"] == "worse"]
            if better and worse:
                outcome = "mixed"
            elif better:
                outcome = "a better"
            elif worse:
                outcome = "a worse"
            else:
                outcome = "no detectable difference"
            if expect == 0:
                verdict = outcome
            elif outcome == "no detectable difference":
                verdict = "not supported (no detectable difference)"
            elif outcome == "mixed":
                verdict = "mixed"
            else:
                verdict = "supported" if (outcome == "a better") == (expect > 0) else "contradicted"
            rows.append({"claim": claim, "a": a_label, "b": b_label, "horizon": horizon, "metrics": metrics,
                         "better": better, "worse": worse, "verdict": verdict})
    return rows


def _verdict_lines(verdicts: list[dict]) -> list[str]:
    names = {k: label for k, label, _ in PAIRED_METRICS}
    lines = ["## Paired comparisons (a − b on the same prompt and seed; 95 % t interval; sign-flip p)", "",
             "Verdict from the four world metrics: *supported* when a is better on at least one and worse on none "
             "(each decided by its 95 % interval excluding 0), *contradicted* when the reverse, *mixed* when both. "
             "p-values are not corrected for the number of comparisons.", "",
             "| claim | horizon | " + " | ".join(names[k] for k, _, _ in PAIRED_METRICS) + " | verdict |",
             "|---|---|" + "---|" * len(PAIRED_METRICS) + "---|"]
    for row in verdicts:
        cells = []
        for key, _, _ in PAIRED_METRICS:
            d = row["metrics"][key]
            if not math.isfinite(d["mean"]):
                cells.append("–")
                continue
            mark = {"better": " **↑**", "worse": " **↓**", "same": ""}[d["outcome"]]
            cells.append(f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] p={d['p_value']:.3f}{mark}")
        lines.append(f"| {row['claim']} (a = {row['a']}, b = {row['b']}) | {row['horizon']} | " + " | ".join(cells)
                     + f" | {row['verdict']} |")
    return lines + ["", "↑ / ↓: a significantly better / worse than b on that metric.", ""]


def _by_objects(results: dict, labels: list[str]) -> list[str]:
    arms = _arms(results)
    horizon = _horizon_keys(results)[-1]
    objects = results["objects"]
    counts = sorted(set(objects))
    rows = [a for a in (arms.get(x) for x in labels) if a is not None and horizon in _arm_horizons(a)]
    if not rows:
        return []
    started = [v["inside"]["object_persistence"] == 1.0 for v in rows[0]["videos"]]
    lines = [f"## Where a policy can help: persistence beyond the window to {horizon}, by scene", "",
             "Inside the window every bounded policy gives the same frames, so a policy can only keep what the "
             "model drew there: the last column keeps the pairs whose objects are all present in frames 0 to "
             f"{results['window'] - 1} ({sum(started)} of {len(started)}).", "",
             "| arm | " + " | ".join(f"{c} object{'s' if c > 1 else ''} (n={objects.count(c)})" for c in counts)
             + f" | started right (n={sum(started)}) |", "|---|" + "---|" * (len(counts) + 1)]
    for arm in rows:
        values = [_metric(v, "object_persistence", horizon) for v in arm["videos"]]
        cells = [_cell([x for x, o in zip(values, objects) if o == c], 2) for c in counts]
        cells.append(_cell([x for x, s in zip(values, started) if s], 2))
        lines.append(f"| {arm['label']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _attention_lines(attention: dict | None) -> list[str]:
    if not attention:
        return []
    lines = ["## Why: where the model attends once the window is full (`deepforcing.eval.diagnostics.attention_regions`)",
             "", f"First denoising step of every chunk past the window, {attention['frames']} latent frames, the first "
             f"{len(attention['pairs'])} held-out pairs; softmax mass averaged over queries, heads, layers and pairs.",
             "", "| policy | sink | middle (Top-C / older) | previous chunk | own chunk | Top-C picks right after the sink "
             "(× uniform) |", "|---|---|---|---|---|---|"]
    for name, entry in attention["policies"].items():
        m = entry["mean"]
        ratio = entry.get("topc_near_sink_ratio")
        lines.append(f"| {name} (sink {entry['sink_frames']}) | {m.get('sink', 0):.3f} | {m.get('middle', 0):.3f} | "
                     f"{m.get('previous', 0):.3f} | {m.get('own', 0):.3f} | "
                     f"{'–' if ratio is None else f'{ratio:.2f}'} |")
    return lines + [""]


def summary_markdown(results: dict, verdicts: list[dict]) -> str:
    arms = _arms(results)
    horizons = _horizon_keys(results)
    group = {g: [a.label for a in ARMS if g in a.groups] for g in ("policies", "ablation", "queries", "options")}
    policies = ["world (ground truth)", *group["policies"]]
    s = results["sampling"]
    first = (f" (first chunk: {len(s['first_chunk_steps'])} steps, guidance {s['first_chunk_guidance']})"
             if s.get("first_chunk_steps") else "")
    lines = ["# Long-horizon study on the mini model", "",
             f"`deepforcing experiment` — model {results['model']}, {results['pairs']} held-out prompt × seed pairs "
             f"(free rollouts from the prompt alone), window {results['window']} latent frames, horizons "
             f"{', '.join(horizons)}; sampler {s['solver']} {len(s['denoising_steps'])} steps{first}; "
             f"{results['wall_seconds'] / 60:.1f} min on {results['threads']} CPU thread(s).", ""]
    inside = [a for a in results["arms"] if a["policy"] is not None]
    if inside:
        per_arm = [np.mean([v["inside"]["object_persistence"] for v in a["videos"]]) for a in inside]
        lines += [f"Inside the window (frames 0–{results['window'] - 1}) every arm starts from the same frames: "
                  f"persistence {_cell([v['inside']['object_persistence'] for v in inside[0]['videos']])}, count "
                  f"accuracy {_cell([v['inside']['count_accuracy'] for v in inside[0]['videos']])} (spread of the "
                  f"arms' means: {max(per_arm) - min(per_arm):.3f}).", ""]
    lines += ["## Policies (Tab. 1 analogue)", ""]
    for h in horizons:
        lines += _table(results, policies, h, "Policies")
    lines += ["## Components (Tab. 4: SF, +DS, +PC, +DS+PC; sink 10 as in the paper's ablation)", ""]
    for h in horizons:
        lines += _table(results, group["ablation"], h, "Components")
    sweep = [label for label in SINK_SWEEP.values()]
    lines += ["## Sink depth (Fig. 5; plot `sink_sweep.png`; S = 0 is Self Forcing's cache)", ""]
    lines += _table(results, sweep, horizons[0], "Sink sweep")
    lines += ["## Top-C query set (Tab. 5)", ""]
    lines += _table(results, group["queries"], horizons[0], "Queries")
    lines += ["## Named options", ""]
    lines += _table(results, ["deep-forcing", "deep-sink S=14", *group["options"]], horizons[0], "Options")
    lines += _verdict_lines(verdicts)
    lines += _by_objects(results, ["self-forcing", "deep-sink S=14", "deep-sink S=10", "PC only (S=0)",
                                   "deep-forcing", "random-topc", "attention-sink S=3", "rolling-sink S=3"])
    lines += _attention_lines(results.get("attention"))
    missing = [label for label in (*policies[1:], *sweep) if label not in arms]
    if missing:
        lines += [f"Not run: {', '.join(dict.fromkeys(missing))}.", ""]
    return "\n".join(lines)


def write_report(results: dict, out: Path, strips: dict[str, np.ndarray]) -> list[dict]:
    """``strips``: ``"<horizon>|<arm label>"`` -> uint8 frames ``[STRIP_COLUMNS, H, W, 3]`` evenly spaced over the
    video of one held-out pair (``results["strip_pair"]``)."""
    verdicts = claim_verdicts(results, CLAIMS)
    (out / "summary.md").write_text(summary_markdown(results, verdicts))
    import json

    (out / "verdicts.json").write_text(json.dumps(verdicts, indent=1, default=lambda o: None))
    for h in results["horizons"]:
        plot_window_curves(results, out / f"drift_curves_{horizon_key(h)}.png", horizon_key(h))
    plot_sink_sweep(results, out / "sink_sweep.png")
    for h in results["horizons"]:
        save_strips(results, strips, out / f"strips_{horizon_key(h)}.png", h)
    return verdicts


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def window_mean(arm: dict, key: str, windows: int) -> np.ndarray:
    """Mean over an arm's videos of metric ``key`` in each of its first ``windows`` windows (missing values skipped,
    an all-missing window is NaN): the drift curves' y values."""
    series = np.array([[np.nan if x is None else x for x in v["windows"][key][:windows]] for v in arm["videos"]],
                      dtype=float)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(series, axis=0)


def _running_mean(values: np.ndarray, width: int) -> np.ndarray:
    """Centred running mean that ignores NaNs and averages fewer points at the ends (no zero padding)."""
    finite = np.isfinite(values)
    kernel = np.ones(width)
    total = np.convolve(np.where(finite, values, 0.0), kernel, mode="same")
    count = np.convolve(finite.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def plot_window_curves(results: dict, path: Path, horizon: str) -> None:
    """Per-window world metrics (mean over pairs, running mean over 3 windows) of the policy arms."""
    plt = _pyplot()
    labels = ["world (ground truth)", *[a.label for a in ARMS if "policies" in a.groups or "ablation" in a.groups]]
    arms = [a for a in (_arms(results).get(x) for x in dict.fromkeys(labels)) if a and horizon in _arm_horizons(a)]
    if not arms:
        return
    keys = [("object_persistence", "object persistence ↑"), ("count_accuracy", "count accuracy ↑"),
            ("object_colour_error", "object colour error ↓"), ("speed_ratio", "speed ratio (1 = true)")]
    stop = int(round(float(horizon[:-1]) * results["window"]))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 3.6))
    for arm in arms:
        width = arm["videos"][0]["window_frames"]
        n = -(-stop // width)
        for ax, (key, title) in zip(axes, keys):
            mean = window_mean(arm, key, n)
            smooth = _running_mean(mean, 3)
            style = {"color": "black", "lw": 2} if arm["policy"] is None else {"lw": 1}
            ax.plot(np.arange(len(mean)) * width, smooth, label=arm["label"], **style)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("frame")
    for ax in axes:
        ax.axvline(results["window"], color="grey", ls=":", lw=0.8)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"{results['pairs']} held-out pairs, {horizon} the window (dotted: end of the training window)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sink_sweep(results: dict, path: Path) -> None:
    """Fig. 5 analogue: world and drift metrics beyond the window against the sink size, mean ± 95 % CI."""
    plt = _pyplot()
    arms = _arms(results)
    horizon = _horizon_keys(results)[0]
    points = [(s, arms[label]) for s, label in SINK_SWEEP.items() if label in arms]
    if len(points) < 2:
        return
    keys = [("object_persistence", "persistence ↑"), ("object_colour_error", "object colour error ↓"),
            ("speed_error", "|speed ratio − 1| ↓"), ("near_copy_fraction", "roll-back ↓")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2))
    for ax, (key, title) in zip(axes, keys):
        stats = [mean_ci([_metric(v, key, horizon) for v in arm["videos"]]) for _, arm in points]
        x = [s for s, _ in points]
        y = [r["mean"] for r in stats]
        err = [r["ci_high"] - r["mean"] for r in stats]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3)
        ax.set_xlabel("sink size S (frames)")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(x)
    fig.suptitle(f"Sink depth, deep-sink policy, {results['pairs']} pairs to {horizon} the window of "
                 f"{results['window']} frames", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_strips(results: dict, strips: dict[str, np.ndarray], path: Path, horizon: float) -> None:
    """One row per arm that reached ``horizon``: frames evenly spaced over the video (one held-out pair)."""
    key = horizon_key(horizon)
    rows = [(name.split("|", 1)[1], frames) for name, frames in strips.items() if name.split("|", 1)[0] == key]
    if not rows:
        return
    plt = _pyplot()
    stop = int(round(horizon * results["window"]))
    idx = np.linspace(0, stop - 1, STRIP_COLUMNS).round().astype(int)
    fig, axes = plt.subplots(len(rows), 1, figsize=(STRIP_COLUMNS * 0.75, 0.8 * len(rows) + 0.6), squeeze=False)
    for ax, (label, frames) in zip(axes[:, 0], rows):
        ax.imshow(np.concatenate(list(frames), axis=1), interpolation="nearest")
        ax.set_yticks([])
        ax.set_xticks([(i + 0.5) * frames.shape[2] for i in range(len(idx))], [str(i) for i in idx], fontsize=5)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    pair = results["strip_pair"]
    fig.suptitle(f"{results['prompts'][pair]!r} (seed {results['seeds'][pair]}; the first held-out pair whose objects are "
                 f"all present in frames 0-{results['window'] - 1}): frames 0..{stop - 1}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
