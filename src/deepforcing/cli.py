"""The ``deepforcing`` command line: argument parsing, printing and files only (no math here)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from . import __version__

__all__ = ["main", "build_parser", "add_policy_arguments", "policy_from_args"]

# Size options shared by every command that builds a policy; None = the policy's own default.
_POLICY_SIZE_OPTIONS = {
    "window": "attention window in latent frames (Self Forcing: 21, its training length)",
    "sink": "sink size S in latent frames",
    "budget": "Participative Compression budget N (frames kept after a compression)",
    "recent": "recent frames R always kept (and the span of the scoring queries)",
    "reuse_cap": "max times a token may be picked as Top-C (release: 7)",
}


def add_policy_arguments(parser: argparse.ArgumentParser, default: str = "deep-forcing") -> None:
    from .cache import policy_names

    group = parser.add_argument_group("cache policy")
    group.add_argument(
        "--policy", default=default, metavar="NAME",
        help=f"KV-cache policy: {', '.join(policy_names())} (default: {default})",
    )
    for field, text in _POLICY_SIZE_OPTIONS.items():
        group.add_argument("--" + field.replace("_", "-"), dest=field, type=int, default=None, help=text)
    group.add_argument("--queries", choices=["both", "past", "denoising"], default=None,
                       help="queries that score Top-C (release: both)")
    group.add_argument("--topc-rope", dest="topc_rope", choices=["keep", "unify"], default=None,
                       help="Top-C temporal RoPE: keep original positions (release) or unify (paper Eq. 10-11)")
    group.add_argument("--sink-placement", dest="placement", choices=["reference", "adjacent"], default=None,
                       help="deep-sink: the release's placement (3-frame gap) or adjacent to the tail")


def policy_from_args(args: argparse.Namespace):
    from .cache import make_policy

    sizes = {name: getattr(args, name, None) for name in (*_POLICY_SIZE_OPTIONS, "queries", "topc_rope", "placement")}
    return make_policy(args.policy, **sizes)


# ----------------------------------------------------------------------------- plan
def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="show what a cache policy keeps after every chunk (no model needed)",
        description="Dry-run a KV-cache policy: per chunk, the frames in sink / Top-C / recent and the temporal "
        "positions they present. Frame counts are exact; Top-C picks use random scores here.",
    )
    add_policy_arguments(p)
    p.add_argument("--chunks", type=int, default=20, help="number of chunks to simulate (default 20)")
    p.add_argument("--chunk-frames", type=int, default=3, help="latent frames per chunk (default 3)")
    p.add_argument("--tokens-per-frame", type=int, default=4,
                   help="tokens per latent frame in the simulation (default 4; Top-C is token-level)")
    p.add_argument("--json", action="store_true", help="one JSON object per chunk")
    p.set_defaults(func=_run_plan)


def _fmt_span(span: list[int] | None) -> str:
    return "-" if span is None else (f"{span[0]}" if span[0] == span[1] else f"{span[0]}..{span[1]}")


def _run_plan(args: argparse.Namespace) -> int:
    from .cache.plan import simulate

    policy = policy_from_args(args)
    reports = simulate(policy, args.chunks, chunk_frames=args.chunk_frames, tokens_per_frame=args.tokens_per_frame)
    if args.json:
        for r in reports:
            print(json.dumps(r.to_dict()))
        return 0
    print(f"policy {policy.name}: " + ", ".join(f"{k}={v}" for k, v in policy.describe().items() if k != "policy"))
    header = f"{'chunk':>5} {'frames':>8} {'event':>8} {'cache':>6} {'sink':>5} {'top-c':>6} {'recent':>6}  " \
             f"{'sink pos':>10} {'top-c pos':>10} {'recent pos':>10} {'shift':>5}"
    print(header)
    print("-" * len(header))
    for r in reports:
        frames = f"{r.start_frame}..{r.start_frame + args.chunk_frames - 1}"
        print(
            f"{r.chunk:>5} {frames:>8} {r.event:>8} {r.cache_frames:>6g} {r.sink_frames:>5g} {r.topc_frames:>6g} "
            f"{r.recent_frames:>6g}  {_fmt_span(r.sink_positions):>10} {_fmt_span(r.topc_positions):>10} "
            f"{_fmt_span(r.recent_positions):>10} {r.sink_delta:>+5d}"
        )
    return 0


# ----------------------------------------------------------------------------- eval
def _add_eval(sub: argparse._SubParsersAction) -> None:
    from .eval.command import add_eval_arguments, run_eval

    p = sub.add_parser(
        "eval",
        help="measure long-horizon drift of videos (no downloaded weights needed)",
        description="Metrics over windows of each video (the first window = the training horizon) as drift curves: "
        "imaging proxies, colour/exposure drift, flicker, optical-flow motion and deceleration, repetition.",
    )
    add_eval_arguments(p)
    p.set_defaults(func=run_eval)


# ---------------------------------------------------------------------------- main
_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_plan, _add_eval]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepforcing",
        description="Training-free long video generation: Deep Forcing KV-cache policies for autoregressive video "
        "diffusion (Self Forcing / Wan2.1).",
    )
    parser.add_argument("--version", action="version", version=f"deepforcing {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"deepforcing {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deepforcing {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
