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


def mini_generator(path: str | Path | None = None, device: str = "cpu") -> VideoGenerator:
    """A :class:`VideoGenerator` for the shipped mini model (or the mini model file at ``path``)."""
    return VideoGenerator(mini_bundle(path, device=device), device=device)


def sampling_from_metadata(meta: dict) -> SamplingConfig:
    """The sampler stored in a mini model file (Self Forcing's 4 steps when none is stored)."""
    return SamplingConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta.get("sampling", {}).items()})


def mini_bundle(path: str | Path | None = None, device: str = "cpu") -> ModelBundle:
    """The mini model file at ``path`` (default: the shipped one) with the sampler stored in it."""
    model = MiniModel.load(path, device=device)
    return bundle_from_model(model, sampling_from_metadata(MiniModel.read_metadata(path)))


def bundle_from_model(model: MiniModel, sampling: SamplingConfig) -> ModelBundle:
    """A loaded (or training) mini model as a bundle, with the given sampler."""

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
    )
