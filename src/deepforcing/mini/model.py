"""The mini model: the same causal Wan transformer with a tiny config, plus world-sized text and "VAE" adapters.

* Transformer: :class:`~deepforcing.models.wan_causal.CausalWanTransformer` (the class that runs the real 1.3B
  checkpoints), here on pixels: ``in_channels = 3``, a spatial patch of ``patch`` pixels, Wan's 3D RoPE.
* Text: :class:`MiniTextEncoder`, a learned embedding of the world's word vocabulary
  (:data:`deepforcing.mini.language.VOCAB`) plus a learned position embedding, optionally followed by a few
  transformer layers (``text_layers``, contextual like UMT5); padding rows are zero, as the real UMT5 adapter
  zeroes padded positions.
* "VAE": ``codec = "autoencoder"`` — :class:`~deepforcing.mini.codec.MiniAutoencoder`, a small learned per-frame
  autoencoder (32x32 RGB -> 8x8 x ``latent_channels``, normalised latents), in the role of Wan's VAE (the pipeline
  decodes each chunk through its streaming decoder); ``codec = "pixels"`` — the identity on pixels (the first
  model). The streaming decoders have the interface of the Wan VAE's.

Weights and config live in one safetensors file (config in its metadata), small enough to ship in the package.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from deepforcing.atomic_write import write_atomically
from deepforcing.models.checkpoint_io import load_file
from deepforcing.models.wan_causal import CausalWanTransformer

from .codec import MiniAutoencoder, PixelCodec
from .language import VOCAB, tokenize

__all__ = ["MiniConfig", "MiniTextEncoder", "PixelCodec", "MiniModel", "DEFAULT_MINI_WEIGHTS"]

DEFAULT_MINI_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "mini" / "mini_model.safetensors"


@dataclass(frozen=True)
class MiniConfig:
    """Sizes of the mini model. ``frame_size`` pixels square; ``patch`` latent cells per token side.

    ``text_layers``: self-attention layers of the text encoder, so that each word's embedding can carry the words it
    belongs with (a colour its shape), as UMT5's contextual embeddings do for Wan; 0 keeps the word embeddings
    independent.

    ``codec``: ``"pixels"`` (latents are the pixels) or ``"autoencoder"`` (learned, ``latent_channels`` channels at a
    quarter of the frame size, ``codec_width`` convolution channels).
    """

    frame_size: int = 32
    patch: int = 8
    dim: int = 256  # must exceed the token size 3 * patch**2 = 192, or the model cannot carry the noise it removes
    heads: int = 4
    layers: int = 4
    ffn_dim: int = 512
    text_dim: int = 64
    text_len: int = 16
    freq_dim: int = 64
    text_layers: int = 0  # transformer layers over the word embeddings (0: a bag of embeddings, the v1-v3 models)
    codec: str = "pixels"
    latent_channels: int = 8
    codec_width: int = 64
    start_layout: bool = False  # frame 0 gets the encoded start layout as extra input channels (v5, mini.layout)

    def __post_init__(self) -> None:
        if self.codec not in ("pixels", "autoencoder"):
            raise ValueError(f"unknown mini codec {self.codec!r}; use 'pixels' or 'autoencoder'")
        if self.latent_size % self.patch:
            raise ValueError(f"latent size {self.latent_size} is not divisible by the patch {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by {self.heads} heads")
        if self.dim < self.channels * self.patch**2:
            raise ValueError(f"dim {self.dim} is smaller than a token's {self.channels * self.patch ** 2} values: the "
                             f"model could not represent (and so remove) the noise; raise dim or lower the patch")

    @property
    def channels(self) -> int:
        """Channels of one latent frame."""
        return 3 if self.codec == "pixels" else self.latent_channels

    @property
    def latent_size(self) -> int:
        """Side of one latent frame (the frame size, or a quarter of it for the autoencoder)."""
        return self.frame_size if self.codec == "pixels" else self.frame_size // 4

    @property
    def condition_channels(self) -> int:
        """Extra input channels of the transformer: the encoded start layout of frame 0 (0 without one)."""
        return self.channels if self.start_layout else 0

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_size // self.patch) ** 2


class MiniTextEncoder(torch.nn.Module):
    """Prompt → ``[B, text_len, text_dim]``: learned word + position embeddings, then ``layers`` pre-norm
    transformer layers over the prompt's words (padding is masked out of attention and its rows are zero, as the
    real UMT5 adapter zeroes padded positions).

    The layers start as the identity (zero output projections of attention and feed-forward, the adaLN-zero idea of
    :meth:`MiniModel.init_wan_style`), so an encoder grown from a bag-of-embeddings model starts as that model.
    """

    def __init__(self, text_dim: int, text_len: int, layers: int = 0, heads: int = 4) -> None:
        super().__init__()
        self.text_len = text_len
        self.words = torch.nn.Embedding(len(VOCAB) + 1, text_dim, padding_idx=0)
        self.positions = torch.nn.Parameter(torch.zeros(text_len, text_dim))
        torch.nn.init.normal_(self.words.weight, std=1.0)
        with torch.no_grad():
            self.words.weight[0].zero_()
        self.layers = torch.nn.ModuleList(
            torch.nn.TransformerEncoderLayer(text_dim, heads, 4 * text_dim, dropout=0.0, activation="gelu",
                                             batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        with torch.no_grad():
            for layer in self.layers:
                for out in (layer.self_attn.out_proj, layer.linear2):
                    out.weight.zero_()
                    out.bias.zero_()

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """Token ids per prompt; the empty prompt is all padding (the unconditional input of guidance)."""
        ids = [tokenize(p, max_len=self.text_len) if p.strip() else [0] * self.text_len for p in prompts]
        return torch.tensor(ids, dtype=torch.long, device=self.positions.device)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        keep = ids > 0
        x = (self.words(ids) + self.positions[: ids.shape[1]]) * keep.unsqueeze(-1)
        if self.layers:
            # an all-padding prompt (the unconditional input) would mask every key: let it attend its zero rows
            ignore = ~keep & keep.any(dim=1, keepdim=True)
            for layer in self.layers:
                x = layer(x, src_key_padding_mask=ignore)
            x = torch.where(keep.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        return x

    def forward(self, prompts: list[str]) -> torch.Tensor:
        return self.embed_ids(self.token_ids(prompts))


class MiniModel(torch.nn.Module):
    """Transformer + text encoder + codec of the mini model (the pixel codec has no weights)."""

    def __init__(self, config: MiniConfig) -> None:
        super().__init__()
        self.config = config
        p = config.patch
        self.transformer = CausalWanTransformer(
            patch_size=(1, p, p),
            num_attention_heads=config.heads,
            attention_head_dim=config.dim // config.heads,
            in_channels=config.channels + config.condition_channels,
            out_channels=config.channels,
            text_dim=config.text_dim,
            freq_dim=config.freq_dim,
            ffn_dim=config.ffn_dim,
            num_layers=config.layers,
            text_len=config.text_len,
        )
        self.text_encoder = MiniTextEncoder(config.text_dim, config.text_len, config.text_layers)
        self.codec = PixelCodec() if config.codec == "pixels" else MiniAutoencoder(config.latent_channels,
                                                                                     config.codec_width)

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
        return (self.config.channels, self.config.latent_size, self.config.latent_size)

    def start_condition(self, prompts: list[str], seeds: list[int]) -> torch.Tensor | None:
        """The condition of video frame 0 ``[B, C, 1, h, w]``: each prompt's start layout for its seed
        (:mod:`deepforcing.mini.layout`); ``None`` for a model without layout channels."""
        if not self.config.start_layout:
            return None
        from .layout import start_layout_latents

        return start_layout_latents(self.codec, prompts, seeds, self.config.frame_size)

    def save(self, path: str | Path, metadata: dict | None = None) -> None:
        """Write weights + config (and ``metadata``) to one safetensors file, atomically."""
        meta = {"config": json.dumps(asdict(self.config)), "format": "deepforcing-mini-v1"}
        meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        write_atomically(path, lambda temporary: save_file(tensors, str(temporary), metadata=meta))

    @classmethod
    def load(cls, path: str | Path | None = None, *, device: torch.device | str = "cpu") -> "MiniModel":
        """Load a mini model file (default: the one shipped in the package)."""
        path = Path(path) if path is not None else DEFAULT_MINI_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(
                f"mini model weights not found at {path}; train them with `deepforcing train-mini` or reinstall the package"
            )
        meta = _raw_metadata(path)
        if meta.get("format") != "deepforcing-mini-v1":
            raise ValueError(f"{path} is not a deepforcing mini model file (missing format metadata)")
        model = cls(MiniConfig(**json.loads(meta["config"])))
        state = {k: v.to(device) for k, v in load_file(path).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        return model.to(device).eval()

    @staticmethod
    def read_metadata(path: str | Path | None = None) -> dict:
        path = Path(path) if path is not None else DEFAULT_MINI_WEIGHTS
        return {k: json.loads(v) for k, v in _raw_metadata(path).items() if k != "format"}


def _raw_metadata(path: Path) -> dict[str, str]:
    """The safetensors header metadata; a truncated or foreign file raises ``ValueError`` naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as err:  # noqa: BLE001 — SafetensorError / OSError, re-raised with the file name
        raise ValueError(f"{path}: cannot be read as safetensors (truncated or corrupt? {err})") from None
