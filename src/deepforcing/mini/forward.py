"""The mini model's training-time forwards: a whole clip under teacher forcing, and chunk 0 alone.

Both see what a cached rollout sees (:mod:`deepforcing.pipeline.rollout`), without the cache: the teacher-forcing
forward runs ``[clean | noisy]`` under a block mask (clean chunk ``a`` attends clean chunks ``<= a``; noisy chunk
``a`` attends clean chunks ``< a`` and itself), both halves at the frames' true temporal RoPE positions; the
first-chunk forward runs one chunk with no context. A model with layout channels (``MiniConfig.start_layout``)
gets the start layout on frame 0 and zeros on every other frame, in both halves, as the rollout's
``VideoRollout.condition`` gives it (:mod:`deepforcing.mini.layout`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepforcing.pipeline.rollout import with_condition

__all__ = ["teacher_forcing_mask", "teacher_forcing_forward", "first_chunk_forward", "with_layout"]


def with_layout(model, latents: torch.Tensor, layout: torch.Tensor | None) -> torch.Tensor:
    """``latents`` ``[B, C, T, h, w]`` (frame 0 = video frame 0) with the model's condition channels appended: the
    layout ``[B, C, 1, h, w]`` on frame 0 (zeros when ``layout`` is None: the prompt-only mode), zeros elsewhere.
    Unchanged for a model without layout channels."""
    extra = model.config.condition_channels
    if not extra:
        return latents
    b, _, _, h, w = latents.shape
    cond = layout if layout is not None else latents.new_zeros(b, extra, 1, h, w)
    return with_condition(latents, cond, 0)


def _chunk_index(frames: int, chunk: int, tokens: int, device) -> torch.Tensor:
    return torch.arange(frames, device=device).div(chunk, rounding_mode="floor").repeat_interleave(tokens)


def teacher_forcing_mask(frames: int, chunk: int, tokens: int, device, context: bool = True) -> torch.Tensor:
    """Boolean ``[2n, 2n]`` attention mask over ``[clean | noisy]`` tokens (True = may attend)."""
    c = _chunk_index(frames, chunk, tokens, device)
    clean_clean = c[None, :] <= c[:, None]
    noisy_clean = (c[None, :] < c[:, None]) & context
    noisy_noisy = c[None, :] == c[:, None]
    top = torch.cat([clean_clean, torch.zeros_like(clean_clean)], dim=1)
    bottom = torch.cat([noisy_clean, noisy_noisy], dim=1)
    return torch.cat([top, bottom], dim=0)


def teacher_forcing_forward(
    model,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    sigma_frames: torch.Tensor,
    token_ids: torch.Tensor,
    chunk_frames: int,
    context: bool = True,
    layout: torch.Tensor | None = None,
) -> torch.Tensor:
    """Flow prediction for ``noisy`` ``[B, C, T, H, W]`` given the clean frames as causal context (and the start
    ``layout`` of frame 0 for a layout model)."""
    tr = model.transformer
    b, _, t, h, w = clean.shape
    text = model.text_encoder.embed_ids(token_ids)
    ctx = type(tr).encode_context.__wrapped__(tr, text)  # with gradients (the public method is no_grad)
    seq = torch.cat([with_layout(model, clean, layout), with_layout(model, noisy, layout)], dim=2)
    timesteps = torch.cat([torch.zeros_like(sigma_frames), sigma_frames * 1000.0], dim=1)
    x, e, e0, grid, _ = tr._embed(seq, timesteps)
    _, hp, wp = grid
    half = tr.rope3d.angles(0, t, hp, wp, device=x.device)
    angles = torch.cat([half, half], dim=0)
    mask = teacher_forcing_mask(t, chunk_frames, hp * wp, x.device, context=context)

    def attend(i, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    out = tr._run(x, e, e0, grid, angles, ctx, attend)
    return out[:, :, t:]


def first_chunk_forward(model, noisy: torch.Tensor, sigma: torch.Tensor, token_ids: torch.Tensor,
                        layout: torch.Tensor | None = None) -> torch.Tensor:
    """Flow prediction for one noisy chunk ``[B, C, F, H, W]`` with no context (chunk 0, from the prompt alone):
    the chunk attends itself only, at temporal positions ``0..F-1`` — what the first denoising steps of a rollout
    see. ``sigma`` ``[B]`` is the chunk's noise level. Needs no clean half, so it is a third of the cost per clip."""
    tr = model.transformer
    frames = noisy.shape[2]
    ctx = type(tr).encode_context.__wrapped__(tr, model.text_encoder.embed_ids(token_ids))
    timesteps = (sigma * 1000.0)[:, None].expand(-1, frames)
    x, e, e0, grid, _ = tr._embed(with_layout(model, noisy, layout), timesteps)
    _, hp, wp = grid
    angles = tr.rope3d.angles(0, frames, hp, wp, device=x.device)

    def attend(i, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)

    return tr._run(x, e, e0, grid, angles, ctx, attend)
