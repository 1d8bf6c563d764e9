"""``deepforcing eval VIDEO... [--window-seconds S] [--model M] [--label L] [--out DIR] [--vbench] [--json]``.

Evaluates each video over windows (metrics.py), writes metrics.json, metrics.md and PNG drift curves (report.py)
to ``--out`` (default: ``<first video's folder>/<first video's name>_eval``) and prints the markdown table (or the
JSON with ``--json``). Videos that share a ``--label`` form a group; groups are compared with confidence bands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from deepforcing.cli_options import add_model_arguments
from deepforcing.eval.metrics import SELF_FORCING_HORIZON_FRAMES, EvalConfig, evaluate_video
from deepforcing.eval.report import write_report
from deepforcing.eval.vbench_adapter import VBenchUnavailable, check_vbench, evaluate_vbench
from deepforcing.eval.video_io import VideoReadError
from deepforcing.pipeline.validation import check_writable_folder, error_line


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files to evaluate (mp4 or anything PyAV reads)")
    parser.add_argument(
        "--window-seconds", type=float, default=None, metavar="S",
        help="window length in seconds (overrides --window-frames); the first window is the reference",
    )
    parser.add_argument(
        "--window-frames", type=int, default=None, metavar="N",
        help=f"window length in frames (default: the training horizon of --model, else {SELF_FORCING_HORIZON_FRAMES}: "
             f"Self Forcing's)",
    )
    parser.add_argument(
        "--label", action="append", default=None, metavar="L",
        help="group label: give it once for all videos, or once per video in order (default: each file's name)",
    )
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder for the report")
    parser.add_argument("--vbench", action="store_true", help="also compute VBench scores (needs vbench, CUDA, weights)")
    parser.add_argument("--prompt", default=None, help="text prompt, for VBench overall consistency")
    parser.add_argument("--json", action="store_true", help="print metrics.json instead of the markdown table")
    add_model_arguments(parser, threads=False, model=None,
                        title="model whose training horizon is the window (no weights are loaded)")
    return parser


def _window_frames(args: argparse.Namespace) -> int:
    """``--window-frames``, else the training horizon of ``--model`` in pixel frames, else Self Forcing's."""
    if args.window_frames is not None:
        return args.window_frames
    if args.model is None:
        return SELF_FORCING_HORIZON_FRAMES
    from deepforcing.model_spec import ModelSpec, check_model

    return check_model(ModelSpec.from_args(args)).horizon_pixel_frames()


def _labels(args: argparse.Namespace) -> list[str]:
    videos = [Path(v) for v in args.videos]
    if not args.label:
        return [v.stem for v in videos]
    if len(args.label) == 1:
        return args.label * len(videos)
    if len(args.label) != len(videos):
        raise ValueError(
            f"got {len(args.label)} --label values for {len(videos)} videos; give one label for all, or one per video"
        )
    return list(args.label)


def _check_inputs_and_out(videos: list[str], out: Path) -> None:
    """Every input is a readable file and the report folder can be written, before any video is decoded."""
    for video in videos:
        path = Path(video)
        if not path.is_file():
            raise FileNotFoundError(f"video file not found: {path}" if not path.exists() else
                                    f"{path} is not a video file (a folder?); give video files")
        if not os.access(path, os.R_OK):
            raise ValueError(f"cannot read {path} (permission denied)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the report")
    check_writable_folder(out, "--out")


def run_eval(args: argparse.Namespace) -> int:
    """Run the ``eval`` command; returns the process exit code (0 ok, 2 bad input or unavailable VBench)."""
    try:
        labels = _labels(args)
        config = EvalConfig(window_frames=_window_frames(args), window_seconds=args.window_seconds)
        if args.vbench:
            check_vbench()  # fail before minutes of work, not after
        out = args.out if args.out is not None else Path(args.videos[0]).parent / f"{Path(args.videos[0]).stem}_eval"
        _check_inputs_and_out(args.videos, out)
        evaluations, vbench = [], {}
        for video, label in zip(args.videos, labels):
            print(f"evaluating {video} ...", file=sys.stderr)
            evaluations.append(evaluate_video(video, config, label=label))
        if args.vbench:
            for video in args.videos:
                vbench[str(video)] = evaluate_vbench(video, out, prompt=args.prompt)
        paths = write_report(evaluations, out, extra={"vbench": vbench} if vbench else None)
    except (OSError, VideoReadError, ValueError, VBenchUnavailable) as error:
        print(f"deepforcing eval: error: {error_line(error)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(json.loads(paths["json"].read_text()), indent=2))
    else:
        print(paths["markdown"].read_text(), end="")
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m deepforcing.eval.command``) until the CLI wires the subcommand."""
    parser = add_eval_arguments(argparse.ArgumentParser(prog="deepforcing eval", description=__doc__.splitlines()[0]))
    return run_eval(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
