"""The mini model as a :class:`~deepforcing.pipeline.generate.ModelBundle` (what ``deepforcing generate`` runs by
default)."""

from __future__ import annotations

from pathlib import Path

import torch

from deepforcing.models.contract import ModelBundle, SamplingConfig
from deepforcing.pipeline.generate import VideoGenerator

from .model import MiniModel

__all__ = ["mini_generator", "mini_bundle", "MINI_DEFAULT_PROMPT", "MINI_FPS"]

MINI_DEFAULT_PROMPT = "a red circle and a blue square bounce on a striped green background"
MINI_FPS = 16
MINI_DISPLAY_SCALE = 8  # 32x32 frames are written as 256x256 (nearest neighbour) so they can be watched


def mini_generator(path: str | Path | None = None, device: str = "cpu", *, start_layout: bool = True) -> VideoGenerator:
    """A :class:`VideoGenerator` for the shipped mini model (or the mini model file at ``path``); ``start_layout``
    off runs a layout model from the prompt alone (its layout channels left at zero, the prompt-only mode)."""
    return VideoGenerator(mini_bundle(path, device=device, start_layout=start_layout), device=device)


def sampling_from_metadata(meta: dict) -> SamplingConfig:
    """The sampler stored in a mini model file (Self Forcing's 4 steps when none is stored)."""
    return SamplingConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta.get("sampling", {}).items()})


def mini_bundle(path: str | Path | None = None, device: str = "cpu", *, start_layout: bool = True) -> ModelBundle:
    """The mini model file at ``path`` (default: the shipped one) with the sampler stored in it."""
    model = MiniModel.load(path, device=device)
    return bundle_from_model(model, sampling_from_metadata(MiniModel.read_metadata(path)), start_layout=start_layout)


def bundle_from_model(model: MiniModel, sampling: SamplingConfig, *, start_layout: bool = True) -> ModelBundle:
    """A loaded (or training) mini model as a bundle, with the given sampler. A model with layout channels
    (``MiniConfig.start_layout``) gets each prompt's start layout for its seed on frame 0 unless ``start_layout`` is
    off (then zeros: the prompt-only mode)."""

    def start_condition(prompts: list[str], seeds: list[int]) -> torch.Tensor | None:
        with torch.no_grad():
            cond = model.start_condition(prompts, seeds)
        return torch.zeros_like(cond) if cond is not None and not start_layout else cond

    def encode_text(prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return model.text_encoder(prompts)

    return ModelBundle(
        name="deepforcing-mini",
        transformer=model.transformer,
        encode_text=encode_text,
        codec=model.codec,
        latent_shape=model.latent_shape,
        sampling=sampling,
        fps=MINI_FPS,
        temporal_scale=1,
        display_scale=MINI_DISPLAY_SCALE,
        default_policy={"name": "deep-forcing"},
        default_prompt=MINI_DEFAULT_PROMPT,
        start_condition=start_condition if model.config.start_layout else None,
    )
