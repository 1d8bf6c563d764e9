"""Wan's 3D rotary position embedding with unbounded temporal positions.

Wan splits each head's ``D`` real channels into three groups of interleaved pairs (``rope_params`` in Self
Forcing's ``wan/modules/causal_model.py``; diffusers' ``WanRotaryPosEmbed`` splits the same way): temporal
``D - 4 * (D // 6)`` dims (44 of 128, 12 of 32), then height and width ``2 * (D // 6)`` dims each. Group ``g`` rotates
pair ``j`` by ``p * theta ** (-2j / dim_g)`` where ``p`` is the token's latent-frame index, row or column.

The reference precomputes a 1024-row table of these angles (so videos stop at 1024 latent frames). Here the angles
are computed on the fly as ``float64(p) * inverse_frequencies(dim_g)`` — the same float64 product the table holds —
for any integer frame index, and applied with :func:`deepforcing.cache.rotate_pairs` (float64 math, cast back), the
arithmetic of the reference's complex128 multiply.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from deepforcing.cache import TemporalRope, inverse_frequencies, rotate_pairs

__all__ = ["WanRope3D", "BoundWanRope"]


@dataclass(frozen=True)
class WanRope3D:
    """3D RoPE of one attention head of size ``head_dim`` (Wan split, base ``theta``)."""

    head_dim: int
    theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.head_dim <= 0 or self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"Wan 3D RoPE needs an even head size >= 6, got {self.head_dim}")

    @property
    def spatial_dim(self) -> int:
        """Real dims of the height group (= width group): ``2 * (D // 6)``."""
        return 2 * (self.head_dim // 6)

    @property
    def temporal_dim(self) -> int:
        """Real dims of the temporal group: ``D - 4 * (D // 6)``."""
        return self.head_dim - 2 * self.spatial_dim

    @property
    def temporal(self) -> TemporalRope:
        """The temporal part, as the cache engine needs it to re-align keys."""
        return TemporalRope.for_wan_head(self.head_dim, self.theta)

    @cached_property
    def _omegas(self) -> tuple[torch.Tensor, torch.Tensor]:
        return inverse_frequencies(self.temporal_dim, self.theta), inverse_frequencies(self.spatial_dim, self.theta)

    @cached_property
    def _omegas_by_device(self) -> dict:
        return {}

    def _omegas_on(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """:attr:`_omegas` on ``device``, copied there once (a pre-RoPE cache rotates at every layer's read)."""
        key = None if device is None else torch.device(device)
        if key not in self._omegas_by_device:
            self._omegas_by_device[key] = tuple(w.to(key) for w in self._omegas)
        return self._omegas_by_device[key]

    def angles(self, start_frame: int, num_frames: int, height: int, width: int, device=None) -> torch.Tensor:
        """Rotation angles ``[num_frames * height * width, D / 2]`` (float64) for tokens in (frame, row, col) order.

        Frames are absolute latent-frame indices ``start_frame ..`` (any size); rows / columns start at 0.
        """
        omega_t, omega_s = self._omegas_on(device)
        f = torch.arange(start_frame, start_frame + num_frames, dtype=torch.float64, device=device)
        h = torch.arange(height, dtype=torch.float64, device=device)
        w = torch.arange(width, dtype=torch.float64, device=device)
        at = (f[:, None] * omega_t)[:, None, None, :].expand(num_frames, height, width, -1)
        ah = (h[:, None] * omega_s)[None, :, None, :].expand(num_frames, height, width, -1)
        aw = (w[:, None] * omega_s)[None, None, :, :].expand(num_frames, height, width, -1)
        return torch.cat([at, ah, aw], dim=-1).reshape(num_frames * height * width, self.head_dim // 2)

    @staticmethod
    def apply(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` ``[B, H, n, D]`` by ``angles`` ``[n, D / 2]`` (float64 math, result in ``x.dtype``)."""
        return rotate_pairs(x, angles)

    def bind(self, angles: torch.Tensor, width: int) -> "BoundWanRope":
        """This embedding bound to one call: its tokens' ``angles`` (from :meth:`angles`) and the grid's ``width``
        (patch columns), for the cache (:class:`deepforcing.cache.rope.CallRope`)."""
        return BoundWanRope(self, angles, width)


@dataclass(frozen=True)
class BoundWanRope:
    """:class:`WanRope3D` bound to one forward call (the cache's ``CallRope``): rotate the call's own tokens, or any
    tokens at chosen temporal positions (pre-RoPE keys read at window slots, queries at policy positions)."""

    rope: WanRope3D
    angles: torch.Tensor  # [n, D / 2] of the call's tokens at their own frames
    width: int

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return rotate_pairs(x, self.angles)

    def at(self, x: torch.Tensor, frames: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, H, m, D]`` at temporal positions ``frames`` and spatial indices ``spatial`` (``[m]`` or
        ``[B, m]``): the same float64 products as :meth:`WanRope3D.angles`, so a key rotated here at its own frame
        equals the model's rotation bit for bit."""
        omega_t, omega_s = self.rope._omegas_on(x.device)
        frames, spatial = torch.broadcast_tensors(frames.to(x.device), spatial.to(x.device))
        rows = spatial.div(self.width, rounding_mode="floor").to(torch.float64)
        cols = spatial.remainder(self.width).to(torch.float64)
        angles = torch.cat([frames.to(torch.float64)[..., None] * omega_t, rows[..., None] * omega_s,
                            cols[..., None] * omega_s], dim=-1)
        return rotate_pairs(x, angles[:, None] if angles.dim() == 3 else angles)
