"""Reports of long-horizon evaluations: ``metrics.json``, a markdown table and PNG drift curves.

Plots use matplotlib's object API with the Agg canvas (no display, no global pyplot state). Every file is written
to a temporary name first and renamed, so an interrupted run never leaves a half-written report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from deepforcing.atomic_write import write_atomically
from deepforcing.eval.metrics import SERIES_INFO, VideoEvaluation, aggregate

# Drift-curve panels, in display order.
PLOT_SERIES = (
    "sharpness_change", "noise", "color_drift", "saturation_drift",
    "brightness_drift", "flicker", "motion", "near_copy_fraction",
)

# (summary key, column title, number format) of the markdown tables.
TABLE_COLUMNS = (
    ("sharpness_change_last", "sharpness Δ", "{:+.1%}"),
    ("noise_change_last", "noise Δ", "{:+.2f}"),
    ("color_drift_last", "colour drift", "{:.3f}"),
    ("saturation_drift_last", "sat. Δ", "{:+.3f}"),
    ("brightness_drift_last", "bright. Δ", "{:+.3f}"),
    ("flicker", "flicker", "{:.2f}"),
    ("flicker_hf", "flicker HF", "{:.2f}"),
    ("motion_first", "motion first", "{:.2f}"),
    ("motion_last", "motion last", "{:.2f}"),
    ("motion_ratio", "motion last/first", "{:.2f}"),
    ("dynamic_degree", "dynamic", "{:.2f}"),
    ("near_copy_fraction", "near-copies", "{:.1%}"),
)

TABLE_LEGEND = (
    "Windows of {window} frames; deltas are last window minus first. sharpness: variance of Laplacian; "
    "colour drift: |ΔRGB| in [0,1]; flicker: mean |Δ global luma| per frame (0–255); motion: Farneback flow, "
    "px/frame at the analysis resolution; near-copies: frames after window 0 that repeat a window-0 frame."
)


def _format(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return pattern.format(value)


def display_name(evaluation: VideoEvaluation) -> str:
    """``label`` when it is the file's own name, else ``label/file`` (several videos may share a group label)."""
    stem = Path(evaluation.source).stem if evaluation.source else ""
    return evaluation.label if not stem or stem == evaluation.label else f"{evaluation.label}/{stem}"


def markdown_table(evaluations: Sequence[VideoEvaluation]) -> str:
    """One row per video with the drift / motion / repetition summary scalars."""
    header = ["video", "frames", "windows"] + [title for _, title, _ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for evaluation in evaluations:
        cells = [display_name(evaluation), str(evaluation.num_frames), str(evaluation.num_windows)]
        cells += [_format(evaluation.summary.get(key), pattern) for key, _, pattern in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    windows = sorted({e.window_frames for e in evaluations})
    lines += ["", TABLE_LEGEND.format(window="/".join(map(str, windows)))]
    return "\n".join(lines) + "\n"


def markdown_group_table(aggregates: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per group: ``mean ± half-width of the CI`` of each summary scalar (``aggregate()`` output)."""
    header = ["group", "n"] + [title for _, title, _ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, result in aggregates.items():
        cells = [label, str(result["n_videos"])]
        for key, _, pattern in TABLE_COLUMNS:
            stats = result["summary"].get(key, {})
            cell = _format(stats.get("mean"), pattern)
            if stats.get("ci_high") is not None and stats.get("mean") is not None:
                cell += " ± " + _format(stats["ci_high"] - stats["mean"], pattern.replace("+", ""))
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    methods = sorted({result["ci_method"] for result in aggregates.values()})
    lines += ["", "± is the half-width of the " + "; ".join(methods) + "."]
    return "\n".join(lines) + "\n"


def _panels(count: int):
    from matplotlib.figure import Figure

    columns = 4
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows), constrained_layout=True)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in axes[count:]:
        axis.set_visible(False)
    return figure, axes


def _decorate(axis, name: str) -> None:
    title, unit, better = SERIES_INFO[name]
    axis.set_title(f"{title}\n({unit}; better: {better})", fontsize=9)
    axis.set_xlabel("window start (s)", fontsize=8)
    axis.tick_params(labelsize=8)
    axis.grid(alpha=0.3)


def plot_drift_curves(evaluations: Sequence[VideoEvaluation], path: str | Path) -> Path:
    """Drift curves (one line per video) of the ``PLOT_SERIES`` against window start time."""
    figure, axes = _panels(len(PLOT_SERIES))
    for axis, name in zip(axes, PLOT_SERIES):
        for evaluation in evaluations:
            axis.plot(evaluation.window_times, evaluation.series[name], marker="o", markersize=3, label=display_name(evaluation))
        _decorate(axis, name)
    if len(evaluations) <= 12:
        axes[0].legend(fontsize=7)
    return _save_figure(figure, Path(path))


def plot_group_comparison(aggregates: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Mean drift curve of each group with its confidence band (``aggregate()`` output per label)."""
    figure, axes = _panels(len(PLOT_SERIES))
    for axis, name in zip(axes, PLOT_SERIES):
        for label, result in aggregates.items():
            times = result["window_times_s"]
            stats = result["series"][name]
            mean = [math.nan if v is None else v for v in stats["mean"]]
            (line,) = axis.plot(times, mean, marker="o", markersize=3, label=f"{label} (n={result['n_videos']})")
            low = [math.nan if v is None else v for v in stats["ci_low"]]
            high = [math.nan if v is None else v for v in stats["ci_high"]]
            axis.fill_between(times, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        _decorate(axis, name)
    axes[0].legend(fontsize=7)
    methods = sorted({result["ci_method"] for result in aggregates.values()})
    figure.suptitle("bands: " + "; ".join(methods), fontsize=9)
    return _save_figure(figure, Path(path))


def group_by_label(evaluations: Sequence[VideoEvaluation]) -> dict[str, list[VideoEvaluation]]:
    groups: dict[str, list[VideoEvaluation]] = {}
    for evaluation in evaluations:
        groups.setdefault(evaluation.label, []).append(evaluation)
    return groups


def write_report(
    evaluations: Sequence[VideoEvaluation], out_dir: str | Path, extra: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md``, ``drift.png`` and, when there is more than one video,
    ``comparison.png`` (groups = videos sharing a label) to ``out_dir``. Returns the paths written by kind.

    ``metrics.json`` holds ``{"videos": [VideoEvaluation.to_dict()...], "groups": {label: aggregate()}, **extra}``.
    """
    if not evaluations:
        raise ValueError("write_report() needs at least one VideoEvaluation")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_by_label(evaluations)
    aggregates = {label: aggregate(members) for label, members in groups.items()}
    document = {"videos": [e.to_dict() for e in evaluations], "groups": aggregates, **(extra or {})}
    markdown = "## Videos\n\n" + markdown_table(evaluations)
    if len(evaluations) > 1:
        markdown += "\n## Groups (by label)\n\n" + markdown_group_table(aggregates)
    paths = {
        "json": _write_text(out / "metrics.json", json.dumps(document, indent=2, allow_nan=False) + "\n"),
        "markdown": _write_text(out / "metrics.md", markdown),
        "drift_plot": plot_drift_curves(evaluations, out / "drift.png"),
    }
    if len(evaluations) > 1:
        paths["comparison_plot"] = plot_group_comparison(aggregates, out / "comparison.png")
    return paths


def _write_text(path: Path, text: str) -> Path:
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def _save_figure(figure, path: Path) -> Path:
    return write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=110))
