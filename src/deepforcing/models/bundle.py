"""Assemble a real model (Wan-family causal DiT + umT5 + Wan VAE) from local folders into a generation bundle.

``model_dir`` is a Wan2.1 folder in the original layout (``config.json``, ``diffusion_pytorch_model*.safetensors``,
``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl/``) or a diffusers pipeline folder
(``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``). ``checkpoint`` (a Self Forcing ``.pt`` such as
``self_forcing_dmd.pt``, or a safetensors state dict) replaces the DiT weights; the DiT config comes from the folder.
Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from deepforcing.models.contract import ModelBundle

from .loading import load_causal_wan, read_model_config
from .presets import get_preset
from .text_encoder import UMT5TextEncoder
from .vae import WanVAE

__all__ = ["wan_bundle", "transformer_config", "parse_dtype"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | None, device: str) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def _transformer_source(model_dir: Path) -> Path:
    return model_dir / "transformer" if (model_dir / "transformer" / "config.json").is_file() else model_dir


def transformer_config(model_dir: str | Path) -> dict:
    """The transformer's constructor kwargs (``num_layers``, ``num_attention_heads``, ...) from a Wan model folder's
    config (original or diffusers layout), without loading weights."""
    return read_model_config(_transformer_source(Path(model_dir)) / "config.json")


def wan_bundle(
    model_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    preset: str | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    use_ema: bool | None = None,
    lora: str | Path | None = None,
    resolution: tuple[int, int] | None = None,
    vae_config=None,
) -> ModelBundle:
    """Load transformer, text encoder and VAE for ``preset`` (default ``self-forcing``) from local paths.

    ``vae_config`` is only needed for a non-standard VAE in the original layout (``Wan2.1_VAE.pth`` carries no config).
    ``use_ema`` (``None``: the preset's, as its release loads it) picks ``generator_ema`` or ``generator``.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"model folder not found: {model_dir}; pass --model mini or a local Wan2.1 folder (original or diffusers "
            f"layout)"
        )
    spec = get_preset(preset or "self-forcing")
    torch_dtype = parse_dtype(dtype, device)
    use_ema = spec.use_ema if use_ema is None else use_ema
    source = _transformer_source(model_dir)
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
        transformer = load_causal_wan(checkpoint, config=source / "config.json", use_ema=use_ema, lora=lora,
                                      dtype=torch_dtype, device=device)
    else:
        transformer = load_causal_wan(source, use_ema=use_ema, lora=lora, dtype=torch_dtype, device=device)
    text = UMT5TextEncoder.from_pretrained(model_dir, text_len=transformer.config.text_len, dtype=torch_dtype,
                                           device=device)
    vae = WanVAE.from_pretrained(model_dir, config=vae_config, dtype=torch_dtype, device=device)
    latent_hw = (spec.latent_height, spec.latent_width)
    if resolution is not None:
        height, width = resolution
        stride = vae.spatial_scale * transformer.config.patch_size[1]
        if height % stride or width % stride:
            raise ValueError(f"resolution {height}x{width} must be a multiple of {stride} (VAE stride x patch)")
        latent_hw = (height // vae.spatial_scale, width // vae.spatial_scale)
    policy = spec.product_policy()  # the preset's default (self-forcing: deep-forcing; LongLive: its own sink)
    return ModelBundle(
        name=f"{spec.name} ({model_dir.name})",
        transformer=transformer,
        encode_text=lambda prompts: text.encode(prompts),
        codec=vae,
        latent_shape=(transformer.config.in_channels, *latent_hw),
        sampling=spec.sampling,  # the preset's sampler as it is
        fps=16,
        temporal_scale=vae.temporal_scale,
        display_scale=1,
        default_policy=policy,
    )
