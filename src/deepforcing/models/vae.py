"""Wan2.1 VAE adapter: loading, latent normalisation, one-shot and streaming decode.

Wraps diffusers' ``AutoencoderKLWan`` (a causal 3D-conv VAE, 4x temporal / 8x spatial). Facts used here (Self
Forcing's ``wan/modules/vae.py`` and diffusers' ``AutoencoderKLWan``):

* latents are normalised per channel: ``z_norm = (mu - mean) / std``; decoding uses ``z * std + mean``;
* the decoder runs one latent frame at a time with a causal feature cache (``CACHE_T = 2`` frames per conv);
  the first latent frame yields 1 pixel frame and every later one 4;
* diffusers' ``decode`` clears that cache at start and end, so streaming needs our own loop:
  :class:`StreamingDecoder` keeps its own cache across chunks and reproduces ``decode`` exactly.

Tensor layout of this adapter's public API is *frame-major*, like the pipeline's noise ``[B, F, C, h, w]``:
latents ``[B, F, z_dim, h, w]`` and pixels ``[B, T, 3, H, W]`` in ``[-1, 1]``.

Depends on diffusers internals (``WanCausalConv3d``, ``decoder(x, feat_cache, feat_idx, first_chunk)``); the
streaming-equals-one-shot test pins that surface.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from .checkpoint_io import load_state_dict_strict, load_weights_folder, torch_load, unwrap_state_dict

WAN21_LATENTS_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

ORIGINAL_VAE_FILENAME = "Wan2.1_VAE.pth"
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


@dataclass
class WanVAEConfig:
    """Architecture of a Wan2.1-style VAE. Defaults are the released Wan2.1 VAE (``Wan2.1_VAE.pth``).

    Tiny test models pass e.g. ``base_dim=8, dim_mult=(1, 1, 1, 1), num_res_blocks=1``.
    ``temperal_downsample`` keeps diffusers' spelling; its length is ``len(dim_mult) - 1``.
    """

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    def __post_init__(self) -> None:
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample needs len(dim_mult) - 1 = {len(self.dim_mult) - 1} entries, "
                f"got {len(self.temperal_downsample)}"
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(
                f"latents_mean/latents_std need z_dim = {self.z_dim} values each, "
                f"got {len(self.latents_mean)} and {len(self.latents_std)}"
            )
        if any(s <= 0 for s in self.latents_std):
            raise ValueError("latents_std must be positive")

    @property
    def temporal_scale(self) -> int:
        """Pixel frames per latent frame after the first (Wan2.1: 4), from the config alone (no weights)."""
        return 2 ** sum(bool(t) for t in self.temperal_downsample)

    def diffusers_kwargs(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_diffusers_config(cls, cfg: dict) -> "WanVAEConfig":
        if cfg.get("is_residual") or cfg.get("patch_size") is not None:
            raise ValueError("this adapter supports the Wan2.1 VAE only (is_residual/patch_size are Wan2.2 options)")
        names = {f for f in cls.__dataclass_fields__}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in names}
        return cls(**kw)


# --------------------------------------------------------------------------------------------------------------
# Original Wan checkpoint (`Wan2.1_VAE.pth`) -> diffusers key names.
# --------------------------------------------------------------------------------------------------------------

_RESIDUAL_RENAMES = (
    (".residual.0.", ".norm1."),
    (".residual.2.", ".conv1."),
    (".residual.3.", ".norm2."),
    (".residual.6.", ".conv2."),
    (".shortcut.", ".conv_shortcut."),
)


def _rename_residual(rest: str) -> str:
    rest = "." + rest
    for old, new in _RESIDUAL_RENAMES:
        if rest.startswith(old):
            return new[1:] + rest[len(old):]
    return rest[1:]


def _decoder_upsample_targets(model) -> list[str]:
    """Flat original index ``decoder.upsamples.N`` -> diffusers module prefix, read off the built model.

    The original decoder is one flat ``Sequential``: per stage, ``num_res_blocks + 1`` residual blocks followed
    by one resample layer (except after the last stage). diffusers groups the same modules per stage.
    """
    targets = []
    for s, block in enumerate(model.decoder.up_blocks):
        targets += [f"decoder.up_blocks.{s}.resnets.{r}" for r in range(len(block.resnets))]
        if block.upsamplers is not None:
            targets.append(f"decoder.up_blocks.{s}.upsamplers.0")
    return targets


def convert_original_vae_keys(state_dict: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Rename an original Wan2.1 VAE state dict to diffusers ``AutoencoderKLWan`` names.

    Works for any depth/width (unlike diffusers' ``convert_wan_vae_to_diffusers``, which hard-codes the 1.3B
    layout); a test checks both agree on the real layout. Unknown keys are passed through unchanged so that the
    strict key check afterwards reports them.
    """
    ups = _decoder_upsample_targets(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key
        if key.startswith("conv1."):
            new = "quant_conv." + key[len("conv1."):]
        elif key.startswith("conv2."):
            new = "post_quant_conv." + key[len("conv2."):]
        else:
            part, _, rest = key.partition(".")
            if part in ("encoder", "decoder"):
                sub, _, rest2 = rest.partition(".")
                if sub == "conv1":
                    new = f"{part}.conv_in.{rest2}"
                elif sub == "head":
                    idx, _, tail = rest2.partition(".")
                    new = {"0": f"{part}.norm_out.{tail}", "2": f"{part}.conv_out.{tail}"}.get(idx, key)
                elif sub == "middle":
                    idx, _, tail = rest2.partition(".")
                    if idx in ("0", "2"):
                        new = f"{part}.mid_block.resnets.{int(idx) // 2}.{_rename_residual(tail)}"
                    elif idx == "1":
                        new = f"{part}.mid_block.attentions.0.{tail}"
                elif sub == "downsamples" and part == "encoder":
                    idx, _, tail = rest2.partition(".")
                    new = f"encoder.down_blocks.{idx}.{_rename_residual(tail)}"
                elif sub == "upsamples" and part == "decoder":
                    idx, _, tail = rest2.partition(".")
                    if idx.isdigit() and int(idx) < len(ups):
                        new = f"{ups[int(idx)]}.{_rename_residual(tail)}"
        out[new] = value
    return out


# --------------------------------------------------------------------------------------------------------------
# Loading helpers
# --------------------------------------------------------------------------------------------------------------


def _build_autoencoder(config: WanVAEConfig, meta: bool):
    from diffusers import AutoencoderKLWan

    if meta:
        with torch.device("meta"):
            return AutoencoderKLWan(**config.diffusers_kwargs())
    return AutoencoderKLWan(**config.diffusers_kwargs())


def resolve_vae_path(path: str | Path) -> tuple[str, Path]:
    """Return ``(layout, path)`` with layout ``"original"`` (a .pth file) or ``"diffusers"`` (a folder)."""
    p = Path(path)
    if p.is_file():
        if p.suffix in (".pth", ".pt", ".bin"):
            return "original", p
        raise ValueError(f"{p}: expected a .pth VAE checkpoint or a folder")
    if p.is_dir():
        for cand in (p / ORIGINAL_VAE_FILENAME,):
            if cand.is_file():
                return "original", cand
        for cand in (p, p / "vae"):
            if (cand / "config.json").is_file() and any(cand.glob("*.safetensors")):
                return "diffusers", cand
    raise FileNotFoundError(
        f"no Wan VAE found at {p}: expected {ORIGINAL_VAE_FILENAME} (original Wan layout) or a diffusers "
        f"'vae/' folder with config.json + {DIFFUSERS_WEIGHTS_NAME}"
    )


# --------------------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------------------


class WanVAE(torch.nn.Module):
    """Wan2.1 VAE with normalised latents and frame-major tensors.

    ``encode``: pixels ``[B, T, 3, H, W]`` in [-1, 1] (``T = 1 + 4k``) -> normalised latents ``[B, F, z, h, w]``.
    ``decode``: normalised latents -> pixels ``[B, 1 + 4(F-1), 3, H, W]`` clamped to [-1, 1].
    """

    def __init__(self, model, config: WanVAEConfig):
        super().__init__()
        self.model = model
        self.config = config
        self.model.use_tiling = False  # tiling is incompatible with a cross-chunk feature cache
        self.register_buffer("latents_mean", torch.tensor(config.latents_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("latents_std", torch.tensor(config.latents_std, dtype=torch.float32), persistent=False)

    # ---- construction ----
    @classmethod
    def from_config(cls, config: WanVAEConfig | None = None, seed: int | None = None) -> "WanVAE":
        """A randomly initialised VAE (tests, tiny models)."""
        config = config or WanVAEConfig()
        if seed is not None:
            torch.manual_seed(seed)
        return cls(_build_autoencoder(config, meta=False), config).eval()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        config: WanVAEConfig | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> "WanVAE":
        """Load from a local path: ``Wan2.1_VAE.pth`` (or its folder) or a diffusers ``vae/`` folder.

        For the original layout the architecture comes from ``config`` (default: the real Wan2.1 VAE); for the
        diffusers layout from ``config.json`` (``config`` must then be None or agree).
        """
        layout, p = resolve_vae_path(path)
        if layout == "original":
            config = config or WanVAEConfig()
            model = _build_autoencoder(config, meta=True)
            sd = convert_original_vae_keys(unwrap_state_dict(torch_load(p), p), model)
        else:
            cfg_file = p / "config.json"
            try:
                file_cfg = WanVAEConfig.from_diffusers_config(json.loads(cfg_file.read_text()))
            except (json.JSONDecodeError, TypeError) as e:
                raise ValueError(f"{cfg_file}: not a valid AutoencoderKLWan config ({e})") from e
            if config is not None and config != file_cfg:
                raise ValueError(f"{cfg_file}: config differs from the one passed in; pass config=None")
            config = file_cfg
            model = _build_autoencoder(config, meta=True)
            sd = load_weights_folder(p)
        load_state_dict_strict(model, sd, p)
        return cls(model, config).to(device=device, dtype=dtype).eval()

    # ---- geometry ----
    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def spatial_scale(self) -> int:
        return 2 ** (len(self.config.dim_mult) - 1)

    @property
    def temporal_scale(self) -> int:
        return self.config.temporal_scale

    def num_pixel_frames(self, num_latent_frames: int) -> int:
        """1 + 4(F - 1): the first latent frame decodes to one frame, each later one to ``temporal_scale``."""
        return 0 if num_latent_frames == 0 else 1 + self.temporal_scale * (num_latent_frames - 1)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- normalisation (per-channel latent mean / std of the Wan2.1 VAE) ----
    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.z_dim, 1, 1, 1)
        return (self.latents_mean.to(like.device, like.dtype).view(shape),
                self.latents_std.to(like.device, like.dtype).view(shape))

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """Channel-first VAE means ``[B, z, F, h, w]`` -> normalised latents (same layout)."""
        mean, std = self._stats(mu)
        return (mu - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return z * std + mean

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5 or latents.shape[2] != self.z_dim:
            raise ValueError(f"latents must be [B, F, {self.z_dim}, h, w], got {tuple(latents.shape)}")

    # ---- encode / decode ----
    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, T, 3, H, W]`` in [-1, 1] -> normalised latent means ``[B, F, z, h, w]``."""
        if pixels.ndim != 5 or pixels.shape[2] != 3:
            raise ValueError(f"pixels must be [B, T, 3, H, W], got {tuple(pixels.shape)}")
        t = pixels.shape[1]
        if (t - 1) % self.temporal_scale != 0:
            raise ValueError(f"frame count must be 1 + {self.temporal_scale}k, got {t}")
        x = pixels.permute(0, 2, 1, 3, 4).to(self.device, self.dtype)
        mu = self.model.encode(x).latent_dist.mean
        return self.normalize(mu).permute(0, 2, 1, 3, 4)

    def encode_chunk(self, pixels: torch.Tensor) -> torch.Tensor:
        """The layout of :meth:`StreamingDecoder.decode_chunk` reversed (that of :meth:`encode`)."""
        return self.encode(pixels)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """One-shot decode with diffusers' own ``decode``. Normalised ``[B, F, z, h, w]`` -> ``[B, T, 3, H, W]``."""
        self._check_latents(latents)
        z = self.denormalize(latents.permute(0, 2, 1, 3, 4).to(self.device, self.dtype))
        return self.model.decode(z).sample.permute(0, 2, 1, 3, 4)

    def streaming_decoder(self) -> "StreamingDecoder":
        return StreamingDecoder(self)


class StreamingDecoder:
    """Decode a latent video chunk by chunk, keeping the VAE's causal feature cache across chunks.

    Create one per video (or call :meth:`reset`). ``decode_chunk`` returns the pixel frames of that chunk at once:
    ``1 + 4(F_c - 1)`` for the first chunk, ``4 F_c`` afterwards, so the concatenation over all chunks equals the
    one-shot :meth:`WanVAE.decode` (the same per-frame decoder calls on the same cache; see tests/test_vae.py).
    The cache lives in this object, not in the shared diffusers module, so two decoders never interfere.
    """

    def __init__(self, vae: WanVAE):
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.vae = vae
        self._num_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.model.decoder.modules())
        self.reset()

    def reset(self) -> None:
        """Forget the previous video: empty feature cache, frame counter back to 0."""
        self._feat_cache: list = [None] * self._num_convs
        self.latent_frames_seen = 0
        self.pixel_frames_emitted = 0

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised ``[B, F_c, z, h, w]`` -> pixels ``[B, T_c, 3, H, W]`` in [-1, 1]."""
        vae = self.vae
        vae._check_latents(latents)
        z = vae.denormalize(latents.permute(0, 2, 1, 3, 4).to(vae.device, vae.dtype))
        x = vae.model.post_quant_conv(z)  # 1x1x1 conv: no temporal context, safe to apply per chunk
        outs = []
        for i in range(x.shape[2]):
            first = self.latent_frames_seen == 0
            outs.append(vae.model.decoder(x[:, :, i : i + 1], feat_cache=self._feat_cache, feat_idx=[0],
                                          first_chunk=first))
            self.latent_frames_seen += 1
        out = torch.clamp(torch.cat(outs, dim=2), -1.0, 1.0).permute(0, 2, 1, 3, 4)
        self.pixel_frames_emitted += out.shape[1]
        return out

    def stream(self, latent_chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Yield decoded pixel chunks as soon as each latent chunk is decoded (starts a new video)."""
        self.reset()
        for chunk in latent_chunks:
            yield self.decode_chunk(chunk)
