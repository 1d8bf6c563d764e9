"""The policy registry: every named policy, its old names, and policies from other packages.

A policy class joins with ``@register_policy`` (under its ``name`` and its ``aliases``). Policies outside this
package are found without touching any file here:

* a module named in the environment variable ``DEEPFORCING_POLICIES`` (comma-separated import paths) is imported
  when the registry is first read after the variable names it;
* an installed package may declare an entry point in the group ``deepforcing.policies`` (its module is imported).

Either way the module's ``@register_policy`` classes then appear in ``--policy``, ``plan``, ``diagnose`` and the live
page's policy list, with their options as command-line flags (see :mod:`deepforcing.cache.options`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Mapping
from typing import Iterator, TypeVar

from .options import PolicyOption, merged_options

__all__ = ["PolicyRegistry", "POLICIES", "register_policy", "make_policy", "policy_names", "policy_option_table",
           "PLUGIN_ENV", "ENTRY_POINT_GROUP"]

PLUGIN_ENV = "DEEPFORCING_POLICIES"
ENTRY_POINT_GROUP = "deepforcing.policies"

P = TypeVar("P", bound=type)


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class PolicyRegistry(Mapping):
    """Canonical name -> policy class. Lookups accept aliases (``"rolling-sink"``); iteration yields canonical
    names only, in registration order."""

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}
        self._aliases: dict[str, str] = {}
        self._imported: set[str] = set()
        self._entry_points_read = False

    # ------------------------------------------------------------- registering
    def register(self, cls: P) -> P:
        name = _key(cls.name)
        old = self._classes.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"cache policy {name!r} is registered twice ({old.__module__}.{old.__qualname__} and "
                             f"{cls.__module__}.{cls.__qualname__}); give one of them another name")
        self._classes[name] = cls
        for alias in getattr(cls, "aliases", ()):
            self._aliases[_key(alias)] = name
        return cls

    def unregister(self, name: str) -> None:
        """Remove a policy and its aliases (tests that register toy policies clean up with this)."""
        name = self.canonical(name)
        self._classes.pop(name, None)
        for alias in [a for a, n in self._aliases.items() if n == name]:
            del self._aliases[alias]

    def _load_plugins(self) -> None:
        for module in filter(None, (m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(","))):
            if module not in self._imported:
                self._imported.add(module)
                importlib.import_module(module)
        if not self._entry_points_read:
            self._entry_points_read = True
            from importlib.metadata import entry_points

            for ep in entry_points(group=ENTRY_POINT_GROUP):
                ep.load()

    # ----------------------------------------------------------------- reading
    def canonical(self, name: str) -> str:
        key = _key(name)
        return self._aliases.get(key, key)

    def aliases(self) -> dict[str, str]:
        """Old name -> canonical name."""
        self._load_plugins()
        return dict(self._aliases)

    def __getitem__(self, name: str) -> type:
        self._load_plugins()
        return self._classes[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return isinstance(name, str) and self.canonical(name) in self._classes

    def __iter__(self) -> Iterator[str]:
        self._load_plugins()
        return iter(list(self._classes))

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._classes)


POLICIES = PolicyRegistry()


def register_policy(cls: P) -> P:
    """Class decorator: add a policy dataclass to :data:`POLICIES` (apply it above ``@dataclass``)."""
    return POLICIES.register(cls)


def policy_names() -> list[str]:
    return list(POLICIES)


def policy_option_table() -> list[PolicyOption]:
    """Every registered policy's options, one entry per name (the command-line flags)."""
    return merged_options(POLICIES[name] for name in POLICIES)


def make_policy(name: str, **sizes):
    """Build a policy by its name or an old name; ``sizes`` set its fields (``None`` values are ignored = defaults).

    Unknown names or fields raise ``ValueError`` listing what exists.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown cache policy {name!r}; choose one of: {', '.join(POLICIES)}")
    cls = POLICIES[name]
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    given = {k: v for k, v in sizes.items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(
            f"policy {cls.name!r} has no option {', '.join(unknown)}; its options are: {', '.join(sorted(fields))}"
        )
    return cls(**given)
