"""``deepforcing experiment --board``: the leaderboard's options, checked before the model loads, then the run
(:func:`deepforcing.eval.leaderboard.run_board`) or, with ``--report-only``, the report alone."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .leaderboard import BoardConfig, run_board
from .leaderboard_methods import BOARD_OUT, SCENE_CLASSES, START_MODES, board_entries, method_info, select_entries

__all__ = ["parse_entry_options", "run_board_command"]


def parse_entry_options(items: list[str]) -> dict[str, dict]:
    """``["forcing-kv:head_profile=heads.json", "lol:rope_jitter=0.5"]`` -> ``{"forcing-kv": {"head_profile":
    "heads.json"}, "lol": {"rope_jitter": 0.5}}`` (values read as JSON numbers / booleans when they parse)."""
    out: dict[str, dict] = {}
    for item in items:
        entry, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not (sep and eq and entry.strip() and key.strip()):
            raise ValueError(f"--entry-option must be ENTRY:OPTION=VALUE (e.g. forcing-kv:head_profile=heads.json), "
                             f"got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(entry.strip(), {})[key.strip().replace("-", "_")] = parsed
    return out


def run_board_command(args) -> int:
    """``deepforcing experiment --board``: check every option before the model loads, then run (or, with
    ``--report-only``, redraw) the board in ``--out`` (default ``results/leaderboard``)."""
    from deepforcing.cache import make_policy
    from deepforcing.mini.quality import CLASS_POOL

    from .experiment_arms import parse_horizons
    from .leaderboard_report import write_board_report

    out = Path(args.out or BOARD_OUT)
    if args.list:
        for entry in board_entries(parse_entry_options(args.entry_option or [])):
            info = method_info(entry)
            print(f"{entry.label:<20} {'short' if entry.short else 'long':<5} arXiv {info.arxiv or '-':<10} "
                  f"{entry.policy} {json.dumps(entry.sizes) if entry.sizes else ''}  ({info.release})"
                  f"{'  paper only' if entry.paper_only else ''}")
        return 0
    if args.report_only:
        if not (out / "board.json").is_file():
            raise ValueError(f"--report-only needs a board in {out}: board.json not found; run deepforcing "
                             f"experiment --board --out {out} first")
        write_board_report(out)
        print((out / "summary.md").read_text())
        return 0
    classes = tuple(x.strip() for x in args.classes.split(",") if x.strip())
    unknown = [c for c in classes if c not in SCENE_CLASSES]
    if not classes or unknown:
        raise ValueError(f"--classes must name scene classes among {', '.join(SCENE_CLASSES)}, got {args.classes!r}")
    starts = tuple(x.strip() for x in args.starts.split(",") if x.strip())
    if not starts or any(x not in START_MODES for x in starts):
        raise ValueError(f"--starts must name start modes among {', '.join(START_MODES)}, got {args.starts!r}")
    if not 2 <= args.pairs <= CLASS_POOL:
        raise ValueError(f"--pairs must be in 2..{CLASS_POOL} (a confidence interval; the held-out pool of each class), "
                         f"got {args.pairs}")
    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    if args.start != "prompt":
        raise ValueError("--board runs its own start modes: use --starts instead of --start")
    horizons = parse_horizons(args.horizons)
    labels = [x.strip() for x in args.policies.split(",") if x.strip()] if args.policies else None
    entry_options = parse_entry_options(args.entry_option or [])
    for entry in select_entries(labels, entry_options):  # unknown entries or options fail here, before the model loads
        if entry.label in entry_options:
            make_policy(entry.policy, **entry.sizes)
    from deepforcing.model_spec import MINI, check_threads

    from .world_command import true_start_frames, world_model

    check_threads(args.threads)
    model = world_model(args, "the board")
    frames = true_start_frames(model, args.start_frames)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = BoardConfig(out=out, pairs=args.pairs, horizons=horizons, classes=classes, starts=starts, labels=labels,
                         batch=args.batch, start_frames=frames, model=None if args.model == MINI else args.model,
                         entry_options=entry_options, extra={"threads": torch.get_num_threads()})
    summary = run_board(config, generator=model.open())
    print(f"board: {len(summary['run'])} arms run, {len(summary['skipped'])} skipped (stored), "
          f"{len(summary['failed'])} failed, {summary['wall_seconds'] / 60:.1f} min; report in {out / 'summary.md'}")
    return 0 if not summary["failed"] else 1
