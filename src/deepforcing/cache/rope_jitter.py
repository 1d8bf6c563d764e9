"""LoL's multi-head RoPE jitter (arXiv 2601.16914, "LoL: Longer than Longer"), a RoPE modifier for any policy.

**Paper only, no release parity**: LoL has no public code (METHODS_2026 §1.4); this follows the paper's method
section ("Multi-Head RoPE Jitter") as we read it, and the exact jitter distribution is unverified.

Sink-collapse (the paper's analysis): with sink frames in the cache, the temporal RoPE phases of a far frame and the
sink re-align periodically, and all heads do so at the same frames, so every head snaps to the sink together. The
fix breaks the lock-step: each head ``h`` gets its own temporal RoPE base, drawn once per video from a seed,

    theta_h = theta * (1 + sigma * u_h),   u_h ~ U(-1, 1) i.i.d. per head,   omega_{h,j} = theta_h ** (-2j / d_t)

with ``sigma`` the jitter strength (the paper's best is about 0.8, applied to all heads). Only the temporal
channels change (``d_t`` = Wan's temporal dims, 44 of 128); spatial channels and values keep the model's RoPE. Pair
``j = 0`` has ``omega = 1`` for every base, so it is the same in every head. Queries and keys of a head share its
table, so scores still depend on position differences only, and a sink moved by ``delta`` (Deep Sink, Eq. 6 of
arXiv 2512.05081) is rotated by the same per-head table: the jitter composes with every sink policy.

``sigma = 0`` (the default of every policy) builds nothing: the cache uses the model's RoPE object itself, so every
golden and release trace is unchanged bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .rope import CallRope, TemporalRope, inverse_frequencies, rotate_pairs

__all__ = ["PAPER", "jitter_bases", "JitteredTemporalRope", "JitteredCallRope"]

PAPER = "LoL arXiv 2601.16914 (multi-head RoPE jitter): paper only, no release parity"


def jitter_bases(theta: float, heads: int, strength: float, seed: int) -> torch.Tensor:
    """Per-head RoPE bases ``theta * (1 + strength * u_h)``, ``u_h ~ U(-1, 1)`` from ``seed``, float64 ``[heads]``."""
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"rope jitter strength must be in [0, 1) (the paper's best is 0.8), got {strength}")
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(heads, generator=generator, dtype=torch.float64) * 2.0 - 1.0
    return theta * (1.0 + strength * u)


def _head_omega(pairs: int, bases: torch.Tensor) -> torch.Tensor:
    """``[H, 1, pairs]`` angular frequencies, one temporal table per head (broadcasts against ``[B, H, T, pairs]``)."""
    return torch.stack([inverse_frequencies(2 * pairs, float(b)) for b in bases])[:, None, :]


@dataclass(frozen=True)
class JitteredTemporalRope(TemporalRope):
    """:class:`TemporalRope` with one frequency table per head: what the store uses to re-place a post-RoPE sink."""

    bases: torch.Tensor = field(default=None, compare=False, repr=False)  # [H] float64 per-head bases

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "_head_table", _head_omega(self.pairs, self.bases))  # built once per video

    @property
    def omega(self) -> torch.Tensor:  # type: ignore[override]
        return self._head_table

    @classmethod
    def of(cls, rope: TemporalRope, heads: int, strength: float, seed: int) -> "JitteredTemporalRope":
        return cls(pairs=rope.pairs, theta=rope.theta, bases=jitter_bases(rope.theta, heads, strength, seed))

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """``float64(positions)`` times each head's table: ``[..., H, T, pairs]`` for ``[B, 1, T]`` positions,
        ``[H, m, pairs]`` for ``[m]``, ``[B, H, m, pairs]`` for ``[B, m]`` (a call's frames)."""
        p = positions.to(torch.float64)
        if p.dim() == 2:  # [B, m] frames of a call -> [B, 1, m]
            p = p[:, None, :]
        return p[..., None] * self.omega.to(positions.device)


@dataclass(frozen=True)
class JitteredCallRope:
    """A call's :class:`~deepforcing.cache.rope.CallRope` with the temporal channels rotated by each head's jittered
    table (the model's own rotation everywhere else), float64 then cast as the model rotates."""

    inner: CallRope
    temporal: JitteredTemporalRope
    start_frame: int
    tokens_per_frame: int

    def _temporal(self, rotated: torch.Tensor, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        span = 2 * self.temporal.pairs
        out = rotated.clone()
        out[..., :span] = rotate_pairs(x[..., :span], self.temporal.angles(frames.to(x.device)))
        return out

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.start_frame + torch.arange(x.shape[2], device=x.device) // self.tokens_per_frame
        return self._temporal(self.inner.apply(x), x, frames)

    def at(self, x: torch.Tensor, frames: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
        frames = torch.as_tensor(frames, device=x.device)
        return self._temporal(self.inner.at(x, frames, spatial), x, frames)
