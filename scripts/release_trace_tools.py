"""Shared by the ``record_*_trace.py`` scripts: what running a CUDA release's inference on the CPU needs, applied
from the outside at run time (the release's files are imported from its checkout, never copied or edited)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["sdpa_float32", "TorchOnCpu", "register_package_folder", "fill_random"]


def sdpa_float32(q, k, v, *args, **kwargs):
    """``[B, L, H, D]`` attention in float32, for the releases' flash / SDPA helpers (same layout in and out)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2).float(), k.transpose(1, 2).float(),
                                         v.transpose(1, 2).float())
    return out.transpose(1, 2).contiguous().type_as(q)


class TorchOnCpu(types.ModuleType):
    """``torch`` as a release's pipeline module sees it: ``device="cuda"`` answered on the CPU, ``randn_like``
    drawn from ``generator`` and recorded in ``draws`` (the parity test feeds them back in order)."""

    def __init__(self, draws: list, generator: torch.Generator) -> None:
        super().__init__("torch")
        self._draws, self._generator = draws, generator

    def __getattr__(self, name):
        return getattr(torch, name)

    def ones(self, *args, device=None, **kwargs):
        return torch.ones(*args, **kwargs)

    def randn_like(self, x, *args, **kwargs):
        draw = torch.randn(x.shape, generator=self._generator, dtype=x.dtype)
        self._draws.append(draw.clone())
        return draw


def register_package_folder(name: str, folder: Path) -> types.ModuleType:
    """Make ``name`` importable as a package of ``folder`` without running its ``__init__`` (which imports code
    this path never calls: SDXL, image-to-video, evaluation, CUDA helpers)."""
    package = types.ModuleType(name)
    package.__path__ = [str(folder)]
    sys.modules[name] = package
    return package


@torch.no_grad()
def fill_random(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.1) -> None:
    """Every floating tensor of ``module``'s state from N(0, scale^2): gates and heads start non-zero, so every
    path of the model matters in the trace (zero-initialised gates would hide them)."""
    for tensor in module.state_dict().values():
        if tensor.is_floating_point():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
