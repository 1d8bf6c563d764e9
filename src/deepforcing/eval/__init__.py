"""Long-horizon video evaluation without downloaded weights (drift, flicker, motion, roll-back), plus optional VBench.

    from deepforcing.eval import evaluate_video, aggregate, write_report
    evaluation = evaluate_video("out.mp4")            # windows of Self Forcing's training horizon
    write_report([evaluation], "out_eval")           # metrics.json, metrics.md, drift.png
"""

from deepforcing.eval.flow import FlowConfig
from deepforcing.eval.metrics import (
    SELF_FORCING_HORIZON_FRAMES,
    EvalConfig,
    VideoEvaluation,
    aggregate,
    evaluate_frames,
    evaluate_video,
)
from deepforcing.eval.report import markdown_group_table, markdown_table, plot_drift_curves, plot_group_comparison, write_report
from deepforcing.eval.vbench_adapter import VBenchUnavailable, check_vbench, evaluate_vbench
from deepforcing.eval.video_io import VideoReadError, read_video

__all__ = [
    "SELF_FORCING_HORIZON_FRAMES", "EvalConfig", "FlowConfig", "VBenchUnavailable", "VideoEvaluation", "VideoReadError",
    "aggregate", "check_vbench", "evaluate_frames", "evaluate_video", "evaluate_vbench", "markdown_group_table",
    "markdown_table", "plot_drift_curves", "plot_group_comparison", "read_video", "write_report",
]
