"""umT5 text encoder adapter (transformers ``UMT5EncoderModel`` + tokenizer) with a per-prompt embedding cache.

Behaviour reproduced from Wan's own T5 encoder as Self-Forcing uses it (diffusers' ``WanPipeline`` encodes prompts
the same way):

* prompts are cleaned (HTML unescape, ftfy if installed, whitespace collapse), tokenised with padding and
  truncation to ``text_len`` (512) tokens, EOS appended by the tokenizer;
* the encoder output at padded positions is set to exactly 0;
* output ``[B, text_len, dim]``.

Two local layouts are accepted:

* original Wan: ``models_t5_umt5-xxl-enc-bf16.pth`` (Wan's own T5 key names, converted on load) + tokenizer
  folder ``google/umt5-xxl``. The architecture is read off the tensor shapes (vocab, width, layers, heads, ffn,
  buckets); only the relative-position ``max_distance`` (128) is not stored.
* diffusers: ``text_encoder/`` (transformers config + safetensors) + ``tokenizer/``.
"""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch

from .checkpoint_io import load_state_dict_strict, load_weights_folder, torch_load, unwrap_state_dict

ORIGINAL_T5_FILENAME = "models_t5_umt5-xxl-enc-bf16.pth"
ORIGINAL_TOKENIZER_DIR = "google/umt5-xxl"

# Wan T5 block sub-key -> transformers UMT5 sub-key (inside ``encoder.block.N.``)
_WAN_BLOCK_TO_HF = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # GELU(tanh) branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_HF_BLOCK_TO_WAN = {v: k for k, v in _WAN_BLOCK_TO_HF.items()}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF_BLOCK_RE = re.compile(r"^encoder\.block\.(\d+)\.(.+)$")


def wan_t5_to_hf_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Wan T5 encoder state dict to ``UMT5EncoderModel`` names. Unknown keys pass through unchanged."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = _BLOCK_RE.match(k)
        if k == "token_embedding.weight":
            out["shared.weight"] = v
            out["encoder.embed_tokens.weight"] = v
        elif k == "norm.weight":
            out["encoder.final_layer_norm.weight"] = v
        elif m and m.group(2) in _WAN_BLOCK_TO_HF:
            out[f"encoder.block.{m.group(1)}.{_WAN_BLOCK_TO_HF[m.group(2)]}"] = v
        else:
            out[k] = v
    return out


def hf_to_wan_t5_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`wan_t5_to_hf_keys` (used to write test checkpoints in the Wan layout)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = _HF_BLOCK_RE.match(k)
        if k == "shared.weight":
            out["token_embedding.weight"] = v
        elif k == "encoder.embed_tokens.weight":
            continue  # tied to shared.weight
        elif k == "encoder.final_layer_norm.weight":
            out["norm.weight"] = v
        elif m and m.group(2) in _HF_BLOCK_TO_WAN:
            out[f"blocks.{m.group(1)}.{_HF_BLOCK_TO_WAN[m.group(2)]}"] = v
        else:
            raise KeyError(f"no Wan name for {k}")
    return out


def umt5_config_from_wan_state_dict(sd: dict[str, torch.Tensor], source: str | Path, max_distance: int = 128):
    """Infer a ``UMT5Config`` from Wan T5 tensor shapes (umt5-xxl: 256384 x 4096, 24 layers, 64 heads, ffn 10240)."""
    from transformers import UMT5Config

    try:
        vocab, dim = sd["token_embedding.weight"].shape
        num_buckets, heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
        d_ff = sd["blocks.0.ffn.fc1.weight"].shape[0]
        inner = sd["blocks.0.attn.q.weight"].shape[0]
    except KeyError as e:
        raise ValueError(
            f"{source}: not a Wan T5 encoder checkpoint, missing {e.args[0]!r}; first keys: "
            f"{', '.join(sorted(sd)[:5])}"
        ) from None
    layers = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k)))
    return UMT5Config(
        vocab_size=int(vocab), d_model=int(dim), d_kv=int(inner) // int(heads), d_ff=int(d_ff), num_layers=layers,
        num_heads=int(heads), relative_attention_num_buckets=int(num_buckets),
        relative_attention_max_distance=max_distance, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        is_encoder_decoder=False, use_cache=False,
    )


def clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'``: ftfy fix (if installed), double HTML unescape, collapse whitespace."""
    try:
        import ftfy  # optional

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def resolve_text_encoder_path(path: str | Path) -> tuple[str, Path, Path]:
    """Return ``(layout, weights, tokenizer_dir)``; layout is ``"original"`` or ``"diffusers"``."""
    p = Path(path)
    if p.is_file() and p.suffix in (".pth", ".pt"):
        p, weights = p.parent, p
    else:
        weights = p / ORIGINAL_T5_FILENAME
    if weights.is_file():
        tok = p / ORIGINAL_TOKENIZER_DIR
        if not tok.is_dir():
            raise FileNotFoundError(f"{weights} found but its tokenizer folder {tok} is missing")
        return "original", weights, tok
    if (p / "text_encoder" / "config.json").is_file():
        tok = p / "tokenizer"
        if not tok.is_dir():
            raise FileNotFoundError(f"{p / 'text_encoder'} found but the tokenizer folder {tok} is missing")
        return "diffusers", p / "text_encoder", tok
    raise FileNotFoundError(
        f"no umT5 text encoder at {path}: expected {ORIGINAL_T5_FILENAME} + {ORIGINAL_TOKENIZER_DIR}/ (original Wan "
        f"layout) or text_encoder/ + tokenizer/ (diffusers layout)"
    )


class UMT5TextEncoder:
    """Prompt -> ``[B, text_len, dim]`` embeddings with padding zeroed, cached per prompt (LRU).

    The cache key is the raw prompt string; cached tensors are returned as-is (do not modify them in place).
    """

    def __init__(self, model, tokenizer, text_len: int = 512, cache_size: int = 64):
        if text_len <= 0:
            raise ValueError("text_len must be positive")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        text_len: int = 512,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        cache_size: int = 64,
        max_distance: int = 128,
    ) -> "UMT5TextEncoder":
        """Load from a local folder (either layout, see module docstring). Never downloads."""
        from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

        layout, weights, tok_dir = resolve_text_encoder_path(path)
        if layout == "original":
            sd = unwrap_state_dict(torch_load(weights), weights)
            config = umt5_config_from_wan_state_dict(sd, weights, max_distance)
            sd = wan_t5_to_hf_keys(sd)
        else:
            config = UMT5Config.from_pretrained(str(weights), local_files_only=True)
            sd = load_weights_folder(weights)
            if "encoder.embed_tokens.weight" not in sd and "shared.weight" in sd:
                sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
            if "shared.weight" not in sd and "encoder.embed_tokens.weight" in sd:
                sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
        with torch.device("meta"):
            model = UMT5EncoderModel(config)
        load_state_dict_strict(model, sd, weights)
        model.tie_weights()
        model = model.to(device=device, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        return cls(model, tokenizer, text_len=text_len, cache_size=cache_size)

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def clear_cache(self) -> None:
        self._cache.clear()

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, each ``[B, text_len]``."""
        enc = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
                             max_length=self.text_len, add_special_tokens=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    @torch.no_grad()
    def _encode_uncached(self, prompts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return out * mask.unsqueeze(-1).to(out.dtype)  # padded positions exactly 0 (Wan: u[v:] = 0)

    def encode(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Embeddings ``[B, text_len, dim]`` for one prompt or a list; served from the LRU cache when possible."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a non-empty string or list of strings")
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if todo:
            fresh = self._encode_uncached(todo)
            for p, e in zip(todo, fresh):
                self._cache[p] = e
        rows = []
        for p in prompts:
            self._cache.move_to_end(p)
            rows.append(self._cache[p])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.stack(rows)

    __call__ = encode
