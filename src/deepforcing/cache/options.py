"""A policy's options, read from its dataclass fields: name, type, default, help, choices, command-line flag.

A policy declares an option as an ordinary dataclass field; :func:`option` attaches its help text (and, rarely, a
flag name other than ``--<name>`` or ``expose=False`` for internal knobs). A subclass that only changes a default
(``sink: int = 3``) keeps the help of the field it overrides: :func:`policy_options` looks the text up along the MRO.
The command line, ``plan``, the live page and the sidecar read these descriptions instead of naming fields by hand.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["PolicyOption", "option", "policy_options", "merged_options"]


def option(default: Any, help: str, *, flag: str | None = None, expose: bool = True, kw_only: bool = False) -> Any:
    """A policy field with its help text (``flag``: the command-line name without ``--``, default ``<name>``;
    ``kw_only``: a base-class option every policy shares that must not shift subclasses' positional fields)."""
    return dataclasses.field(default=default, kw_only=kw_only, metadata={"help": help, "flag": flag, "expose": expose})


@dataclass(frozen=True)
class PolicyOption:
    """One option of a policy, as the command line and the pages show it."""

    name: str
    type: type  # int, float, str or bool (the scalar type; ``None`` is always allowed as "the policy's default")
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    flag: str = ""  # "--window", "--sink-placement"

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type.__name__, "default": self.default, "help": self.help,
                "choices": list(self.choices) if self.choices else None, "flag": self.flag}


def _scalar(hint: Any) -> tuple[type, tuple[str, ...] | None]:
    """``int | None`` -> (int, None); ``Literal["a", "b"]`` -> (str, ("a", "b"))."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return str, tuple(str(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return _scalar(inner[0])
    if hint in (int, float, str, bool):
        return hint, None
    raise TypeError(f"policy option type {hint!r} is not supported (int, float, str, bool, Literal, or X | None)")


def _metadata(cls: type, name: str) -> dict:
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata.get("help"):
            return dict(f.metadata)
    return {}


def policy_options(cls: type) -> tuple[PolicyOption, ...]:
    """The exposed options of a policy class, in field order (keyword-only shared options last)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.kw_only):
        if not f.init:
            continue
        meta = _metadata(cls, f.name)
        if meta.get("expose") is False:
            continue
        kind, choices = _scalar(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = "--" + (meta.get("flag") or f.name.replace("_", "-"))
        out.append(PolicyOption(f.name, kind, default, meta.get("help", ""), choices, flag))
    return tuple(out)


def merged_options(classes: typing.Iterable[type]) -> list[PolicyOption]:
    """One entry per option name over several policies (the command line has one ``--sink`` for all of them):
    the first policy's help and type, the union of the choices, no default (each policy keeps its own)."""
    merged: dict[str, PolicyOption] = {}
    for cls in classes:
        for opt in policy_options(cls):
            seen = merged.get(opt.name)
            if seen is None:
                merged[opt.name] = dataclasses.replace(opt, default=None)
            elif seen.choices and opt.choices:
                union = seen.choices + tuple(c for c in opt.choices if c not in seen.choices)
                merged[opt.name] = dataclasses.replace(seen, choices=union)
    return list(merged.values())
