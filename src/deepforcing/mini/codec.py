"""The mini model's codecs: what Wan's VAE is to the real models, at the mini world's size.

* :class:`PixelCodec` — the identity on pixels in ``[-1, 1]`` (one latent frame = one video frame). The first mini
  model used it; it forces the transformer to paint 8x8-pixel patches itself, which a 4-layer model does badly.
* :class:`MiniAutoencoder` — a small learned per-frame convolutional autoencoder, ``[3, S, S] -> [C, S/4, S/4]``
  (32x32 RGB -> 8x8x8 latents). Latents are normalised to unit scale by a stored per-channel mean / std, as the
  Wan VAE's latents are normalised by its published ``latents_mean`` / ``latents_std``. The decoder is trained on
  slightly noised latents so that a sampled latent a little off the data manifold still decodes to clean shapes.

Both expose the interface the pipeline uses for the Wan VAE: ``temporal_scale``, ``spatial_scale``,
``encode(pixels [B, 3, T, H, W])``, ``decode(latents [B, C, T, h, w])`` and ``streaming_decoder()`` whose
``decode_chunk(latents [B, f, C, h, w]) -> pixels [B, f, 3, H, W]`` decodes chunk by chunk (frames are
independent here, so streaming decode equals one-shot decode exactly).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PixelCodec", "MiniAutoencoder"]


class PixelCodec:
    """Identity "VAE": latents are the frames, ``[B, 3, f, H, W]`` in ``[-1, 1]``; one latent frame per frame."""

    temporal_scale = 1
    spatial_scale = 1

    def num_pixel_frames(self, num_latent_frames: int) -> int:
        return num_latent_frames

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1, 1)

    def encode_chunk(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` -> the same (the layout of ``decode_chunk``'s input)."""
        return pixels

    def streaming_decoder(self) -> "PixelCodec":
        return self

    def reset(self) -> None:
        pass

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode(latents)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MiniAutoencoder(nn.Module):
    """Per-frame conv autoencoder with a spatial stride of 4 (two stride-2 stages).

    Args:
        latent_channels: channels of the latent grid (8).
        width: channels of the convolutions (64).
    """

    temporal_scale = 1
    spatial_scale = 4

    def __init__(self, latent_channels: int = 8, width: int = 64) -> None:
        super().__init__()
        w = width
        self.latent_channels = latent_channels
        self.encoder = nn.Sequential(  # 32x32 -> 16x16 -> 8x8 (numbers for 32x32 frames)
            nn.Conv2d(3, w // 4, 3, padding=1), nn.GELU(),
            nn.Conv2d(w // 4, w // 2, 4, stride=2, padding=1), _Residual(w // 2),
            nn.Conv2d(w // 2, w, 4, stride=2, padding=1), _Residual(w), nn.GELU(),
            nn.Conv2d(w, latent_channels, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, w, 3, padding=1), _Residual(w), _Residual(w),
            nn.ConvTranspose2d(w, w // 2, 4, stride=2, padding=1), _Residual(w // 2),
            nn.ConvTranspose2d(w // 2, w // 4, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w // 4, w // 4, 3, padding=1), nn.GELU(),
            nn.Conv2d(w // 4, 3, 3, padding=1),
        )
        # latent normalisation (set from data after training; identity before)
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))

    # ---------------------------------------------------------------- per frame
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` in [-1, 1] -> normalised latents ``[N, C, H/4, W/4]``."""
        z = self.encoder(frames)
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode_frames(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[N, C, h, w]`` -> frames ``[N, 3, 4h, 4w]`` (not clamped)."""
        z = latents * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        return self.decoder(z)

    # ------------------------------------------------------- VAE-like interface
    def num_pixel_frames(self, num_latent_frames: int) -> int:
        return num_latent_frames

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` -> ``[B, C, T, h, w]``."""
        b, c, t, h, w = pixels.shape
        z = self.encode_frames(pixels.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        return z.reshape(b, t, *z.shape[1:]).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def encode_chunk(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` in [-1, 1] -> ``[B, T, C, h, w]`` (the layout of ``decode_chunk``'s input)."""
        return self.encode(pixels.permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, h, w]`` -> pixels ``[B, 3, T, H, W]`` in [-1, 1]."""
        b, c, t, h, w = latents.shape
        x = self.decode_frames(latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).to(self.latent_std.dtype))
        return x.reshape(b, t, *x.shape[1:]).permute(0, 2, 1, 3, 4).clamp(-1, 1)

    def streaming_decoder(self) -> "MiniAutoencoder":
        return self

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, f, C, h, w]`` -> ``[B, f, 3, H, W]`` in [-1, 1] (frames are decoded independently)."""
        b, f, c, h, w = latents.shape
        x = self.decode_frames(latents.reshape(b * f, c, h, w).to(self.latent_std.dtype))
        return x.reshape(b, f, *x.shape[1:]).clamp(-1, 1)
