"""Checkpoint files, one set of rules for every loader (transformer, LoRA, VAE, text encoder, mini model).

* :func:`load_file` — a safetensors file; a truncated or corrupt one raises ``ValueError`` naming it;
* :func:`torch_load` — a ``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` with ``weights_only=True`` (never runs pickled
  code), errors naming the file;
* :func:`unwrap_state_dict` — the tensors of a loaded object: a plain state dict, a ``{"state_dict": ...}`` wrapper,
  or a Self Forcing training checkpoint (``generator_ema`` / ``generator``, as the release's ``inference.py`` reads);
* :func:`weight_files` / :func:`load_weights_folder` — a diffusers / transformers weights folder: the
  ``<name>.safetensors.index.json`` shards (all present) or ``<name>.safetensors`` for the usual names, else the
  folder's only ``*.safetensors``;
* :func:`check_state_dict` / :func:`load_state_dict_strict` — every key and shape must match, else ``ValueError``
  naming the file and keys (the one key check: transformer, VAE, text encoder, mini model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors.torch import load_file as _load_file

__all__ = ["WEIGHT_NAMES", "load_file", "torch_load", "unwrap_state_dict", "weight_files", "load_weights_folder",
           "check_state_dict", "load_state_dict_strict"]

WEIGHT_NAMES = ("diffusion_pytorch_model", "model")  # diffusers' and transformers' weight file names
_SHOW = 8  # names listed in error messages


def _first(names: Iterable[str], n: int = _SHOW) -> str:
    names = sorted(names)
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def load_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file as a state dict; a truncated or corrupt file raises ``ValueError`` naming it."""
    try:
        return _load_file(str(path))
    except Exception as err:  # noqa: BLE001 — SafetensorError / OSError, re-raised with the file name
        raise ValueError(f"{path}: cannot be read as safetensors (truncated or corrupt? {err})") from None


def torch_load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a missing, truncated or pickled-code file is named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 — re-raised with the file name
        raise ValueError(f"{path}: cannot be read as a weights-only torch checkpoint ({err})") from None


def unwrap_state_dict(obj: Any, path: str | Path, *, use_ema: bool | None = None) -> dict[str, torch.Tensor]:
    """The flat tensor dict inside ``obj``. ``use_ema`` picks ``generator_ema`` (True) or ``generator`` (False)
    of a Self Forcing checkpoint; ``None`` refuses such checkpoints (for files that are never one)."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    if use_ema is not None and ("generator_ema" in obj or "generator" in obj):
        key = "generator_ema" if use_ema else "generator"
        if key not in obj:
            other = "generator" if use_ema else "generator_ema"
            hint = f"use_ema={not use_ema}" if other in obj else "another checkpoint"
            raise ValueError(f"{path}: has no {key!r} entry (found {sorted(obj)}); try {hint}")
        obj = obj[key]
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {_first(map(str, bad))} (expected a state dict)")
    return dict(obj)


def weight_files(folder: str | Path, names: Iterable[str] = WEIGHT_NAMES) -> list[Path]:
    """The safetensors files of a weights folder (see the module docstring for the rule)."""
    folder = Path(folder)
    for name in names:
        index = folder / f"{name}.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise FileNotFoundError(f"{index}: shard(s) {_first(missing)} are missing from {folder}")
            return [folder / s for s in shards]
        single = folder / f"{name}.safetensors"
        if single.is_file():
            return [single]
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found
    listing = _first(p.name for p in folder.iterdir()) if folder.is_dir() else "folder missing"
    raise FileNotFoundError(f"{folder}: no {' / '.join(f'{n}*.safetensors' for n in names)} weights found "
                            f"(files: {listing})")


def load_weights_folder(folder: str | Path, names: Iterable[str] = WEIGHT_NAMES) -> dict[str, torch.Tensor]:
    """All tensors of a weights folder, shards merged."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(folder, names):
        state.update(load_file(file))
    return state


def check_state_dict(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor],
                     source: str | Path) -> None:
    """The one strict key check of every loader: the keys of ``state_dict`` must be those of ``expected`` (a module's
    ``state_dict()``, meta tensors allowed) with the same shapes, else ``ValueError`` naming ``source`` and the first
    keys that did not match."""
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    if missing or unexpected:
        msg = [f"{source}: checkpoint does not match the model."]
        if missing:
            msg.append(f"missing {len(missing)} keys: {_first(missing, 5)}")
        if unexpected:
            msg.append(f"unexpected {len(unexpected)} keys: {_first(unexpected, 5)}")
        msg.append("Is this the right file for this model/config?")
        raise ValueError(" ".join(msg))
    bad = [k for k, v in state_dict.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        k = sorted(bad)[0]
        raise ValueError(
            f"{source}: {len(bad)} tensors have the wrong shape, first {k}: checkpoint "
            f"{tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}. Check the model config."
        )


def load_state_dict_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state_dict`` into ``module`` (built on the meta device or not) after :func:`check_state_dict`."""
    check_state_dict(module.state_dict(), state_dict, source)
    module.load_state_dict(dict(state_dict), strict=True, assign=True)
