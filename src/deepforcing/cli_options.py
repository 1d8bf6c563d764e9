"""Command-line options declared once for every command: the cache policy (imports cache only, when built) and the
model (no import; read with :meth:`deepforcing.model_spec.ModelSpec.from_args`)."""

from __future__ import annotations

import argparse

__all__ = ["add_policy_arguments", "add_policy_option_arguments", "policy_sizes_from_args", "policy_from_args",
           "add_model_arguments", "add_start_arguments", "start_from_args"]


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_policy_arguments(parser: argparse.ArgumentParser, default: str = "deep-forcing") -> None:
    from .cache import POLICIES, policy_names

    group = parser.add_argument_group("cache policy")
    group.add_argument(
        "--policy", default=default, metavar="NAME",
        help=f"KV-cache policy: {', '.join(policy_names())} (default: {default or 'the model preset'}; old names: "
             f"{', '.join(f'{old} = {new}' for old, new in POLICIES.aliases().items())})",
    )
    add_policy_option_arguments(group)


def add_policy_option_arguments(group) -> None:
    """Every registered policy's options as flags (``None`` = the policy's own default) on ``group`` (a parser or an
    argument group): ``--policy``'s commands and ``bench``, whose ``--policies`` each take the ones they have."""
    from .cache import policy_option_table

    for opt in policy_option_table():
        kind = {"bool": _parse_bool}.get(opt.type.__name__, opt.type)
        extra = {"choices": list(opt.choices)} if opt.choices else {"type": kind}
        group.add_argument(opt.flag, dest=opt.name, default=None, help=opt.help, **extra)


def policy_sizes_from_args(args: argparse.Namespace) -> dict:
    from .cache import policy_option_table

    return {opt.name: getattr(args, opt.name, None) for opt in policy_option_table()}


def policy_from_args(args: argparse.Namespace):
    from .cache import make_policy

    return make_policy(args.policy, **policy_sizes_from_args(args))


def add_model_arguments(parser: argparse.ArgumentParser, *, threads: bool = True, model: str | None = "mini",
                        title: str = "model (the embedded mini model unless --model names another)"
                        ) -> argparse._ArgumentGroup:
    """The model options of every command that runs one (``generate``, ``serve``, ``bench``, ``diagnose``, ``eval``,
    ``experiment``): the fields of :class:`deepforcing.model_spec.ModelSpec`, plus ``--threads``; ``model`` is the
    default of ``--model`` (``None``: no model unless named, as for ``eval``)."""
    group = parser.add_argument_group(title)
    group.add_argument("--model", default=model,
                       help="'mini' (the embedded mini model), a mini model .safetensors file, or a Wan2.1 model "
                            f"folder (original or diffusers layout){'; default mini' if model == 'mini' else ''}")
    group.add_argument("--checkpoint", default=None,
                       help="Self Forcing-style .pt or safetensors DiT weights over the folder's (real models)")
    group.add_argument("--preset", default=None, help="model preset for real models (default: self-forcing; see "
                                                      "deepforcing presets)")
    group.add_argument("--lora", default=None, help="LoRA file merged into the DiT weights (real models; LongLive)")
    group.add_argument("--resolution", default=None, help="pixel size HxW for real models (preset: 480x832)")
    group.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                       help="compute dtype of real models (default: bfloat16 on GPU, float32 on CPU)")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    group.add_argument("--attention-backend", default=None, metavar="NAME",
                       help="diffusers attention backend: native (default), flash, sage, xformers, _native_math, ...")
    if threads:
        group.add_argument("--threads", type=int, default=None,
                           help="CPU threads (default: 1 for small models such as the mini model, all cores otherwise)")
    return group


def add_start_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--image`` / ``--video`` / ``--keep-input``: start the video from given frames (image-to-video, video
    extension; :mod:`deepforcing.pipeline.start`), read with :func:`start_from_args`."""
    group = parser.add_argument_group("start from given frames (image-to-video, video extension)")
    given = group.add_mutually_exclusive_group()
    given.add_argument("--image", default=None, metavar="PATH",
                       help="start from this image (PNG / JPEG, 8 bits per channel), resized to the model's size")
    given.add_argument("--video", default=None, metavar="PATH",
                       help="continue this video (MP4; at most the attention window long), resized to the model's size")
    group.add_argument("--keep-input", action="store_true",
                       help="write the given frames at the start of the output (default: only the continuation)")
    return group


def start_from_args(args: argparse.Namespace) -> tuple[str, str] | None:
    """``("image" | "video", path)`` of ``--image`` / ``--video``, or ``None``."""
    if getattr(args, "image", None):
        return "image", args.image
    if getattr(args, "video", None):
        return "video", args.video
    return None
