"""Command-line options that build a cache policy, shared by the CLI and the generate command (imports cache only)."""

from __future__ import annotations

import argparse

__all__ = ["add_policy_arguments", "policy_sizes_from_args", "policy_from_args"]


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_policy_arguments(parser: argparse.ArgumentParser, default: str = "deep-forcing") -> None:
    from .cache import POLICIES, policy_names, policy_option_table

    group = parser.add_argument_group("cache policy")
    group.add_argument(
        "--policy", default=default, metavar="NAME",
        help=f"KV-cache policy: {', '.join(policy_names())} (default: {default or 'the model preset'}; old names: "
             f"{', '.join(f'{old} = {new}' for old, new in POLICIES.aliases().items())})",
    )
    for opt in policy_option_table():  # every registered policy's options (None = the policy's own default)
        kind = {"bool": _parse_bool}.get(opt.type.__name__, opt.type)
        extra = {"choices": list(opt.choices)} if opt.choices else {"type": kind}
        group.add_argument(opt.flag, dest=opt.name, default=None, help=opt.help, **extra)


def policy_sizes_from_args(args: argparse.Namespace) -> dict:
    from .cache import policy_option_table

    return {opt.name: getattr(args, opt.name, None) for opt in policy_option_table()}


def policy_from_args(args: argparse.Namespace):
    from .cache import make_policy

    return make_policy(args.policy, **policy_sizes_from_args(args))


