"""TriAttention's key score for a Wan (3-axis RoPE) video cache: how much attention a cached key can expect from
future queries, without seeing them (arXiv 2604.04921; the LongLive port: release ``WeianMao/triattention`` @ c3744ee,
``longlive/kv_compression.py`` ``LongLiveKVCompressor._compute_layer_head_scores``, ``_invert_rope_wan``,
``_normalize_and_noise``).

For a key ``k`` (pre-RoPE, as complex pairs ``k_f``) of frame ``t_k`` and a calibrated query centre ``q_f`` (mean
pre-RoPE query) with mean modulus ``m_f``, a query ``d`` frames ahead of the newest frame scores

    s(d) = sum_f |q_f| |k_f| cos(omega_f * delta_t * temporal_f + arg(q_f conj(k_f))) + sum_f (m_f - |q_f|) |k_f|

with ``delta_t = end_frame - t_k + d`` (only the temporal frequency pairs rotate: the query is assumed at the
key's row and column), averaged (or maximised) over the geometric offsets ``d = 1, 2, 4, ... <= offset_max``.
Scores are then standardised per (layer, head) and get uniform tie-break noise.

Everything follows the release's float32 arithmetic, including two of its choices that matter for parity:

* cached keys are post-RoPE; the key is brought back to pre-RoPE by the conjugate rotation computed in float32
  (``torch.polar`` of ``-angle``), at the position the release *assumes* for the slot (:func:`tail_positions`);
* those positions are tail-anchored (``_sync_position_state``): sink slots at ``0..sink-1`` and every other slot
  as if the cache held the contiguous last tokens before the cache end — after a first compression the kept tokens
  are not contiguous, so later scores invert their RoPE at assumed, not true, positions.
"""

from __future__ import annotations

import torch

from .triattention_stats import complex_pairs

__all__ = ["axis_frequencies", "geometric_offsets", "tail_positions", "trig_scores", "standardise"]


def axis_frequencies(pairs: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, int]:
    """Wan's per-pair angular frequencies in float32 as the release builds them: the temporal axis takes
    ``pairs - 2 * (pairs // 3)`` pairs, height and width ``pairs // 3`` each, each axis ``1 / 10000^(j / count)``.
    Returns ``(omega [pairs], temporal count)``."""
    temporal, spatial = pairs - 2 * (pairs // 3), pairs // 3

    def axis(count: int) -> torch.Tensor:
        idx = torch.arange(count, device=device, dtype=torch.float32)
        return 1.0 / torch.pow(10000.0, idx / float(count))

    return torch.cat([axis(temporal), axis(spatial), axis(spatial)]), temporal


def geometric_offsets(offset_max_frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``1, 2, 4, ... <= offset_max_frames`` as float32 (``[1.0]`` when the maximum is below 1)."""
    values, value = [], 1
    while value <= offset_max_frames:
        values.append(float(value))
        value *= 2
    return torch.tensor(values or [1.0], device=device, dtype=torch.float32)


def tail_positions(length: int, end_token: int, sink_tokens: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Absolute token positions the release assumes for ``length`` cache slots when the cache ends at token
    ``end_token``: sink slots ``0..sink-1``, the rest the contiguous tokens right before ``end_token``."""
    positions = torch.empty(length, dtype=torch.long, device=device)
    sink = min(sink_tokens, length)
    positions[:sink] = torch.arange(sink, device=device)
    positions[sink:] = torch.arange(end_token - (length - sink), end_token, device=device)
    return positions


def trig_scores(keys: torch.Tensor, positions: torch.Tensor, q_mean: torch.Tensor, q_abs_mean: torch.Tensor, *,
                end_frame: int, tokens_per_frame: int, grid_width: int, offsets: torch.Tensor,
                aggregation: str = "mean") -> torch.Tensor:
    """Scores ``[h, T]`` of post-RoPE ``keys`` ``[h, T, D]`` at assumed absolute token ``positions`` ``[T]`` for the
    query centres ``q_mean`` (complex ``[h, D/2]``) and ``q_abs_mean`` (``[h, D/2]``) of their heads; ``end_frame`` is
    the frame after the newest cached one. ``aggregation``: ``"mean"`` or ``"max"`` over the offsets."""
    pairs = keys.shape[-1] // 2
    omega, temporal = axis_frequencies(pairs, keys.device)
    mask = torch.zeros(pairs, device=keys.device, dtype=torch.float32)
    mask[:temporal] = 1.0
    scale_sq = torch.ones(pairs, device=keys.device, dtype=torch.float32)  # unit-modulus RoPE
    frame = torch.div(positions, tokens_per_frame, rounding_mode="floor")
    rest = positions % tokens_per_frame
    row, col = torch.div(rest, grid_width, rounding_mode="floor"), rest % grid_width
    spatial = (pairs - temporal) // 2
    angle = torch.cat([frame.unsqueeze(1).float() * omega[:temporal].unsqueeze(0),
                       row.unsqueeze(1).float() * omega[temporal:temporal + spatial].unsqueeze(0),
                       col.unsqueeze(1).float() * omega[temporal + spatial:].unsqueeze(0)], dim=1)  # [T, P]
    inverse = torch.polar(torch.ones_like(angle), -angle)
    k = complex_pairs(keys.to(torch.float32))[..., :pairs] * inverse  # [h, T, P] pre-RoPE
    k_abs = torch.abs(k)
    q_mean = q_mean.to(device=keys.device, dtype=torch.complex64)
    q_abs_mean = q_abs_mean.to(device=keys.device, dtype=torch.float32)
    q_mean_abs = torch.abs(q_mean)
    relative = q_mean.unsqueeze(1) * torch.conj(k)
    phi = torch.atan2(relative.imag, relative.real)  # [h, T, P]
    amp = q_mean_abs.unsqueeze(1) * k_abs
    extra = (q_abs_mean - q_mean_abs).unsqueeze(1) * k_abs
    delta = (float(end_frame) - frame.to(torch.float32)).unsqueeze(1) + offsets.unsqueeze(0)  # [T, O]
    phase = delta.unsqueeze(-1) * mask.view(1, 1, -1) * omega.view(1, 1, -1) + phi.unsqueeze(2)  # [h, T, O, P]
    base = (amp.unsqueeze(2) * scale_sq.view(1, 1, 1, -1) * torch.cos(phase)).sum(dim=3)  # [h, T, O]
    additive = (extra * scale_sq.view(1, 1, -1)).sum(dim=2, keepdim=True)  # [h, T, 1]
    combined = base + additive
    return combined.max(dim=2).values if aggregation == "max" else combined.mean(dim=2)


def standardise(scores: torch.Tensor, *, normalize: bool, noise_scale: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Per row zero mean and unit (population) standard deviation (std floored at 1e-6), plus ``U[0, 1) *
    noise_scale`` tie-break noise drawn on the CPU from ``generator`` (``None``: no noise)."""
    if normalize and scores.numel():
        mean = scores.mean(dim=-1, keepdim=True)
        std = scores.std(dim=-1, unbiased=False, keepdim=True).clamp_min(1e-6)
        scores = (scores - mean) / std
    if noise_scale is not None and scores.numel():
        noise = torch.rand(scores.shape, generator=generator, device="cpu", dtype=torch.float32) * float(noise_scale)
        scores = scores + noise.to(device=scores.device, dtype=scores.dtype)
    return scores
