"""The mini model: the same causal Wan transformer with a tiny config, plus world-sized text and "VAE" adapters.

* Transformer: :class:`~deepforcing.models.wan_causal.CausalWanTransformer` (the class that runs the real 1.3B
  checkpoints), here on pixels: ``in_channels = 3``, a spatial patch of ``patch`` pixels, Wan's 3D RoPE.
* Text: :class:`MiniTextEncoder`, a learned embedding of the world's word vocabulary
  (:data:`deepforcing.mini.language.VOCAB`) plus a learned position embedding; padding rows are zero, as the
  real UMT5 adapter zeroes padded positions.
* "VAE": :class:`PixelCodec`, the identity on pixels in ``[-1, 1]`` (one latent frame = one video frame); its
  streaming decoder has the interface of the Wan VAE's.

Weights and config live in one safetensors file (config in its metadata), small enough to ship in the package.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from deepforcing.models.wan_causal import CausalWanTransformer

from .language import VOCAB, tokenize

__all__ = ["MiniConfig", "MiniTextEncoder", "PixelCodec", "MiniModel", "DEFAULT_MINI_WEIGHTS"]

DEFAULT_MINI_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "mini" / "mini_model.safetensors"


@dataclass(frozen=True)
class MiniConfig:
    """Sizes of the mini model. ``frame_size`` pixels square; ``patch`` pixels per token side."""

    frame_size: int = 32
    patch: int = 8
    dim: int = 256  # must exceed the token size 3 * patch**2 = 192, or the model cannot carry the noise it removes
    heads: int = 4
    layers: int = 4
    ffn_dim: int = 512
    text_dim: int = 64
    text_len: int = 16
    freq_dim: int = 64

    def __post_init__(self) -> None:
        if self.frame_size % self.patch:
            raise ValueError(f"frame size {self.frame_size} is not divisible by the patch {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by {self.heads} heads")
        if self.dim < 3 * self.patch**2:
            raise ValueError(f"dim {self.dim} is smaller than a token's {3 * self.patch ** 2} pixel values: the "
                             f"model could not represent (and so remove) the noise; raise dim or lower the patch")

    @property
    def tokens_per_frame(self) -> int:
        return (self.frame_size // self.patch) ** 2


class MiniTextEncoder(torch.nn.Module):
    """Prompt → ``[B, text_len, text_dim]`` from learned word and position embeddings (padding rows are zero)."""

    def __init__(self, text_dim: int, text_len: int) -> None:
        super().__init__()
        self.text_len = text_len
        self.words = torch.nn.Embedding(len(VOCAB) + 1, text_dim, padding_idx=0)
        self.positions = torch.nn.Parameter(torch.zeros(text_len, text_dim))
        torch.nn.init.normal_(self.words.weight, std=1.0)
        with torch.no_grad():
            self.words.weight[0].zero_()

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        ids = [tokenize(p, max_len=self.text_len) for p in prompts]
        return torch.tensor(ids, dtype=torch.long, device=self.positions.device)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids > 0).unsqueeze(-1)
        return (self.words(ids) + self.positions[: ids.shape[1]]) * mask

    def forward(self, prompts: list[str]) -> torch.Tensor:
        return self.embed_ids(self.token_ids(prompts))


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

    def streaming_decoder(self) -> "PixelCodec":
        return self

    def reset(self) -> None:
        pass

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode(latents)


class MiniModel(torch.nn.Module):
    """Transformer + text encoder of the mini model (the codec has no weights)."""

    def __init__(self, config: MiniConfig) -> None:
        super().__init__()
        self.config = config
        p = config.patch
        self.transformer = CausalWanTransformer(
            patch_size=(1, p, p),
            num_attention_heads=config.heads,
            attention_head_dim=config.dim // config.heads,
            in_channels=3,
            out_channels=3,
            text_dim=config.text_dim,
            freq_dim=config.freq_dim,
            ffn_dim=config.ffn_dim,
            num_layers=config.layers,
            text_len=config.text_len,
        )
        self.text_encoder = MiniTextEncoder(config.text_dim, config.text_len)
        self.codec = PixelCodec()

    @torch.no_grad()
    def init_wan_style(self) -> None:
        """Wan's reference initialisation: Xavier-uniform linears, zero biases, zero output head and zero block
        gates, so every block starts as the identity and the first prediction is zero flow (DiT's adaLN-zero)."""
        tr = self.transformer
        for module in tr.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    module.bias.zero_()
        torch.nn.init.zeros_(tr.proj_out.weight)
        torch.nn.init.zeros_(tr.proj_out.bias)
        for block in tr.blocks:
            table = block.scale_shift_table  # [1, 6, dim]: shift, scale, gate, c_shift, c_scale, c_gate
            table.normal_(std=self.config.dim ** -0.5)  # Wan: randn / sqrt(dim)
            table[:, 2].zero_()
            table[:, 5].zero_()

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (3, self.config.frame_size, self.config.frame_size)

    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        """Write weights + config (and ``metadata``) to one safetensors file, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"config": json.dumps(asdict(self.config)), "format": "deepforcing-mini-v1"}
        meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path | None = None, *, device: torch.device | str = "cpu") -> "MiniModel":
        """Load a mini model file (default: the one shipped in the package)."""
        path = Path(path) if path is not None else DEFAULT_MINI_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(
                f"mini model weights not found at {path}; train them with `deepforcing train-mini` or reinstall the package"
            )
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "deepforcing-mini-v1":
            raise ValueError(f"{path} is not a deepforcing mini model file (missing format metadata)")
        model = cls(MiniConfig(**json.loads(meta["config"])))
        state = load_file(str(path), device=str(device))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        return model.to(device).eval()

    @staticmethod
    def read_metadata(path: str | Path | None = None) -> dict:
        from safetensors import safe_open

        path = Path(path) if path is not None else DEFAULT_MINI_WEIGHTS
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return {k: json.loads(v) for k, v in meta.items() if k != "format"}
