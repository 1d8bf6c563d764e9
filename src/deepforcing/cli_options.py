"""Command-line options that build a cache policy, shared by the CLI and the generate command (imports cache only)."""

from __future__ import annotations

import argparse

__all__ = ["add_policy_arguments", "policy_sizes_from_args", "policy_from_args"]

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
        help=f"KV-cache policy: {', '.join(policy_names())} (default: {default or 'the model preset'})",
    )
    for field, text in _POLICY_SIZE_OPTIONS.items():
        group.add_argument("--" + field.replace("_", "-"), dest=field, type=int, default=None, help=text)
    group.add_argument("--queries", choices=["both", "past", "denoising"], default=None,
                       help="queries that score Top-C (release: both)")
    group.add_argument("--topc-rope", dest="topc_rope", choices=["keep", "unify"], default=None,
                       help="Top-C temporal RoPE: keep original positions (release) or unify (paper Eq. 10-11)")
    group.add_argument("--sink-placement", dest="placement", choices=["reference", "adjacent"], default=None,
                       help="deep-sink: the release's placement (3-frame gap) or adjacent to the tail")


def policy_sizes_from_args(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name, None) for name in (*_POLICY_SIZE_OPTIONS, "queries", "topc_rope", "placement")}


def policy_from_args(args: argparse.Namespace):
    from .cache import make_policy

    return make_policy(args.policy, **policy_sizes_from_args(args))


