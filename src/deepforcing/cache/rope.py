"""Exact, unbounded rotary position arithmetic for cached keys.

Wan's 3D RoPE (``rope_params`` / ``causal_rope_apply`` in Self Forcing's ``wan/modules/causal_model.py``) rotates
interleaved channel pairs ``(2j, 2j+1)`` of every head by ``exp(i * p * omega_j)``; the first ``temporal_pairs`` pairs
carry the latent-frame index ``p``. The released Deep Forcing code (``causal_model.py``, ``causal_model_DS.py``) looks
``p`` up in a 1024-entry table and re-aligns sink keys by rotating the cached (already rotated, bf16) keys in place
again and again, which caps videos at 1024 latent frames and accumulates rounding error.

Here angles are computed on the fly as ``float64(p) * omega`` (the same float64 product the table holds, so results
match the reference to rounding) for any integer position, and every re-placement rotates from an exact base
(see :class:`~deepforcing.cache.store.LayerKVStore`), so a key moved 10,000 times equals a key rotated once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import torch

__all__ = ["inverse_frequencies", "rotate_pairs", "TemporalRope", "CallRope", "TemporalCallRope"]


def inverse_frequencies(dim: int, theta: float = 10000.0) -> torch.Tensor:
    """``theta ** (-2j / dim)`` for ``j = 0 .. dim/2 - 1`` in float64 (Wan's ``rope_params`` exponent)."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"rotary dimension must be a positive even number, got {dim}")
    return 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64).div(dim))


def rotate_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of the last dim of ``x`` by ``angles`` (float64, last dim = number of pairs).

    Computes ``(a + ib) * (cos θ + i sin θ)`` in float64 and casts back to ``x.dtype`` — the arithmetic of Wan's
    ``rope_apply`` (complex128 multiply, then cast). ``angles`` broadcasts against ``x[..., ::2]``.
    """
    pairs = x.shape[-1] // 2
    if angles.shape[-1] != pairs:
        raise ValueError(f"angles cover {angles.shape[-1]} pairs but x has {pairs}")
    x64 = x.to(torch.float64).unflatten(-1, (pairs, 2))
    a, b = x64[..., 0], x64[..., 1]
    cos, sin = torch.cos(angles), torch.sin(angles)
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


@dataclass(frozen=True)
class TemporalRope:
    """The temporal part of a head's rotary embedding: the first ``2 * pairs`` real channels.

    Attributes:
        pairs: number of complex pairs carrying the latent-frame index (Wan: ``(d - 4 * (d // 6)) / 2``).
        theta: RoPE base (Wan: 10000).
    """

    pairs: int
    theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.pairs <= 0:
            raise ValueError(f"temporal RoPE needs at least one channel pair, got {self.pairs}")

    @classmethod
    def for_wan_head(cls, head_dim: int, theta: float = 10000.0) -> "TemporalRope":
        """Wan's split (``causal_model.py``): temporal dims ``d - 4 * (d // 6)``, e.g. 44 of 128, 12 of 32."""
        return cls(pairs=(head_dim - 4 * (head_dim // 6)) // 2, theta=theta)

    @cached_property
    def omega(self) -> torch.Tensor:
        """Angular frequency of each temporal pair, float64 ``[pairs]``."""
        return inverse_frequencies(2 * self.pairs, self.theta)

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """``float64(positions)[..., None] * omega`` — exact for any integer position."""
        return positions.to(torch.float64)[..., None] * self.omega.to(positions.device)

    def rotate(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Shift the temporal phase of ``keys`` ``[B, H, T, D]`` by ``delta`` frames (``[B, T]`` or scalar tensor).

        Spatial channels and values are untouched (arXiv 2512.05081 Eq. 6). Returns a new tensor.
        """
        delta = torch.as_tensor(delta, device=keys.device)
        if delta.dim() == 2:  # [B, T] -> [B, 1, T]
            delta = delta[:, None, :]
        span = 2 * self.pairs
        out = keys.clone()
        out[..., :span] = rotate_pairs(keys[..., :span], self.angles(delta))
        return out

    def place(self, keys: torch.Tensor, original: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        """Keys ``[B, H, T, D]`` rotated at their ``original`` positions, re-placed at ``target`` (``[B, T]`` or a
        scalar): one rotation by ``target - original`` from an exact base (Rolling Forcing's anchor,
        :class:`~deepforcing.cache.rolling.RollingCache`; the cache's sink,
        :meth:`~deepforcing.cache.store.LayerKVStore.shift_anchor`, does the same arithmetic on the temporal channels
        only, in place)."""
        return self.rotate(keys, torch.as_tensor(target, device=keys.device) - original)


class CallRope(Protocol):
    """The model's full rotary embedding bound to one forward call's grid (what pre-RoPE storage and query
    positions need; :meth:`deepforcing.models.rope3d.WanRope3D.bind` makes one).

    Token ``i`` of a call sits in latent frame ``start + i // F`` at spatial index ``i % F``; rotation is the
    release's arithmetic (float64 angles, complex multiply in float64, cast back)."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, H, n, D]`` (the call's own tokens) rotated at their own frames."""
        ...

    def at(self, x: torch.Tensor, frames: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, H, m, D]`` rotated at temporal positions ``frames`` and spatial indices ``spatial``
        (``[m]`` or ``[B, m]`` each)."""
        ...


@dataclass(frozen=True)
class TemporalCallRope:
    """A :class:`CallRope` that rotates only the temporal channels (no spatial axes): what a model-free dry run
    (:func:`deepforcing.cache.plan.simulate`) needs to drive :meth:`~deepforcing.cache.session.LayerCache.attend`."""

    rope: TemporalRope
    start_frame: int
    tokens_per_frame: int

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.start_frame + torch.arange(x.shape[2], device=x.device) // self.tokens_per_frame
        return self.at(x, frames, frames)

    def at(self, x: torch.Tensor, frames: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
        frames = torch.as_tensor(frames, device=x.device)
        return self.rope.rotate(x, frames if frames.dim() == 2 else frames.expand(x.shape[0], -1))
