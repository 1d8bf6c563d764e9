"""Shared by the ``record_*_trace.py`` scripts: what running a CUDA release's inference on the CPU needs, applied
from the outside at run time (the release's files are imported from its checkout, never copied or edited)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["sdpa_float32", "TorchOnCpu", "register_package_folder", "import_release_on_cpu", "fill_random", "TINY_CONFIG", "TINY_LATENT_HW",
           "TINY_TOKENS", "tiny_wrapper", "self_attention_caches", "cross_attention_caches", "use_tiny_caches",
           "PreRopeTap", "frame_rows", "save_trace"]


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


def import_release_on_cpu(root: Path) -> tuple:
    """A Self-Forcing-layout release (``pipeline/``, ``wan/``, ``utils/``) imported from ``root`` for a CPU run:
    ``torch.cuda.current_device()`` answers 0 (``utils/memory.py`` builds a cuda device object at import time), the
    ``wan`` package ``__init__`` is not run, and the causal / base model's attention helpers are ``sdpa_float32``.
    Returns ``(pipeline.causal_inference, wan.modules.causal_model, FlowMatchScheduler, WanDiffusionWrapper)``."""
    sys.path.insert(0, str(root))
    torch.cuda.current_device = lambda: 0
    register_package_folder("wan", root / "wan")
    import pipeline.causal_inference as inference_module
    import wan.modules.causal_model as causal_model
    import wan.modules.model as base_model
    from utils.scheduler import FlowMatchScheduler
    from utils.wan_wrapper import WanDiffusionWrapper

    causal_model.attention = sdpa_float32
    base_model.flash_attention = sdpa_float32
    return inference_module, causal_model, FlowMatchScheduler, WanDiffusionWrapper


@torch.no_grad()
def fill_random(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.1) -> None:
    """Every floating tensor of ``module``'s state from N(0, scale^2): gates and heads start non-zero, so every
    path of the model matters in the trace (zero-initialised gates would hide them)."""
    for tensor in module.state_dict().values():
        if tensor.is_floating_point():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)


# ------------------------------------------------------------------ the tiny model and what every recorder writes
TINY_CONFIG = {"model_type": "t2v", "patch_size": [1, 2, 2], "text_len": 8, "in_dim": 4, "dim": 48, "ffn_dim": 64,
               "freq_dim": 32, "text_dim": 16, "out_dim": 4, "num_heads": 2, "num_layers": 2, "qk_norm": True,
               "cross_attn_norm": True, "eps": 1e-6}
"""The tiny Wan config of every trace (original Wan ``config.json`` fields)."""
TINY_LATENT_HW = (4, 6)
TINY_TOKENS = (TINY_LATENT_HW[0] // 2) * (TINY_LATENT_HW[1] // 2)  # patch 2 x 2 -> 6 tokens per latent frame
TINY_HEADS = TINY_CONFIG["num_heads"]
TINY_HEAD_DIM = TINY_CONFIG["dim"] // TINY_CONFIG["num_heads"]


def tiny_wrapper(wrapper_cls, model, scheduler_cls, shift: float, seq_len: int):
    """The release's diffusion wrapper around ``model`` without its ``__init__`` (which loads the 1.3B from disk):
    per-frame timesteps, its ``FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True)`` table of 1000."""
    wrapper = wrapper_cls.__new__(wrapper_cls)
    torch.nn.Module.__init__(wrapper)
    wrapper.model = model
    wrapper.uniform_timestep = False
    wrapper.scheduler = scheduler_cls(shift=shift, sigma_min=0.0, extra_one_step=True)
    wrapper.scheduler.set_timesteps(1000, training=True)
    wrapper.seq_len = seq_len
    wrapper.post_init()
    return wrapper


def self_attention_caches(batch: int, frames: int, dtype, indices: bool = True) -> list[dict]:
    """The releases' per-layer K/V caches at the tiny model's sizes (their ``[B, 1560 k, 12, 128]``), with the
    rolling releases' ``global_end_index`` / ``local_end_index`` when ``indices``."""
    def one() -> dict:
        cache = {name: torch.zeros(batch, frames * TINY_TOKENS, TINY_HEADS, TINY_HEAD_DIM, dtype=dtype)
                 for name in ("k", "v")}
        if indices:
            cache["global_end_index"] = torch.tensor([0], dtype=torch.long)
            cache["local_end_index"] = torch.tensor([0], dtype=torch.long)
        return cache

    return [one() for _ in range(TINY_CONFIG["num_layers"])]


def cross_attention_caches(batch: int, dtype) -> list[dict]:
    """The releases' per-layer cross-attention caches at the tiny model's sizes (their ``[B, 512, 12, 128]``)."""
    shape = (batch, TINY_CONFIG["text_len"], TINY_HEADS, TINY_HEAD_DIM)
    return [{"k": torch.zeros(shape, dtype=dtype), "v": torch.zeros(shape, dtype=dtype), "is_init": False}
            for _ in range(TINY_CONFIG["num_layers"])]


def use_tiny_caches(pipe, frames: int, layers: int = TINY_CONFIG["num_layers"]) -> None:
    """Point a release pipeline at the tiny model: ``layers`` transformer blocks, ``TINY_TOKENS`` per frame, and its
    ``_initialize_kv_cache`` / ``_initialize_crossattn_cache`` allocating caches of ``frames`` frames (its x 1560)."""
    pipe.num_transformer_blocks = layers
    pipe.frame_seq_length = TINY_TOKENS
    pipe._initialize_kv_cache = lambda batch_size, dtype, device: setattr(
        pipe, "kv_cache1", self_attention_caches(batch_size, frames, dtype))
    pipe._initialize_crossattn_cache = lambda batch_size, dtype, device: setattr(
        pipe, "crossattn_cache", cross_attention_caches(batch_size, dtype))


class PreRopeTap:
    """Forward hooks on every layer's ``norm_k`` and ``v`` projections: the pre-RoPE keys and the values of the
    latest call, per layer, as ``[B, L, heads, head_dim]``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        heads, head_dim = TINY_CONFIG["num_heads"], TINY_CONFIG["dim"] // TINY_CONFIG["num_heads"]
        for i, block in enumerate(model.blocks):
            def tap(store, i=i):
                return lambda mod, inp, out: store.__setitem__(i, out.detach().clone().unflatten(-1, (heads, head_dim)))
            block.self_attn.norm_k.register_forward_hook(tap(self.k))
            block.self_attn.v.register_forward_hook(tap(self.v))


def frame_rows(x: torch.Tensor, frame: int) -> torch.Tensor:
    """Frame ``frame``'s tokens of a ``[B, L, heads, head_dim]`` cache tensor."""
    return x[:, frame * TINY_TOKENS:(frame + 1) * TINY_TOKENS]


def save_trace(out: str | Path, model: torch.nn.Module, tensors: dict, meta: dict,
               config: dict = TINY_CONFIG) -> Path:
    """``out/``: the weights in the original Wan folder layout (``config.json`` of ``config`` +
    ``diffusion_pytorch_model.safetensors``), ``trace.safetensors`` and ``trace.json``."""
    import json

    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "freqs"},
              str(out / "diffusion_pytorch_model.safetensors"))
    (out / "config.json").write_text(json.dumps({"_class_name": "WanModel", **config}, indent=1))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "trace.safetensors"))
    (out / "trace.json").write_text(json.dumps({**meta, "torch": torch.__version__}, indent=1))
    return out
