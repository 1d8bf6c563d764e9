"""Tiny random checkpoints in the REAL on-disk layouts, written into a (tmp) folder, for offline tests.

* ``write_tiny_wan_vae(dir, layout="original" | "diffusers")``: ``Wan2.1_VAE.pth`` with original Wan key names,
  or a diffusers ``vae/`` folder (config.json + diffusion_pytorch_model.safetensors).
* ``write_tiny_umt5(dir, layout="original" | "diffusers")``: ``models_t5_umt5-xxl-enc-bf16.pth`` with Wan T5 key
  names + tokenizer folder ``google/umt5-xxl``, or diffusers ``text_encoder/`` + ``tokenizer/`` folders.

The same ``seed`` gives the same weights in both layouts, so loaders can be compared layout against layout.
(The transformer's tiny layouts are added by the model engineer.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from deepforcing.models.text_encoder import (
    ORIGINAL_T5_FILENAME,
    ORIGINAL_TOKENIZER_DIR,
    hf_to_wan_t5_keys,
)
from deepforcing.models.vae import ORIGINAL_VAE_FILENAME, WanVAE, WanVAEConfig

TINY_VAE_CONFIG = WanVAEConfig(
    base_dim=8,
    z_dim=4,
    dim_mult=(1, 2, 2, 2),
    num_res_blocks=1,
    temperal_downsample=(False, True, True),
    latents_mean=(0.1, -0.2, 0.3, -0.4),
    latents_std=(1.5, 0.5, 2.0, 1.0),
)

# ------------------------------------------------------------------------------------------------ VAE


def _residual_to_original(rest: str) -> str:
    for new, old in (("norm1.", "residual.0."), ("conv1.", "residual.2."), ("norm2.", "residual.3."),
                     ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut.")):
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest


def diffusers_to_original_vae_keys(sd: dict[str, torch.Tensor], up_blocks) -> dict[str, torch.Tensor]:
    """Inverse of the loader's rename: diffusers ``AutoencoderKLWan`` names -> original Wan2.1 VAE names.

    Written independently of the loader (flat decoder index computed from the per-stage block sizes).
    """
    flat_start, n = [], 0
    for block in up_blocks:
        flat_start.append(n)
        n += len(block.resnets) + (1 if block.upsamplers is not None else 0)
    out = {}
    for k, v in sd.items():
        if k.startswith("quant_conv."):
            new = "conv1." + k[len("quant_conv."):]
        elif k.startswith("post_quant_conv."):
            new = "conv2." + k[len("post_quant_conv."):]
        else:
            part, rest = k.split(".", 1)
            if rest.startswith("conv_in."):
                new = f"{part}.conv1.{rest[len('conv_in.'):]}"
            elif rest.startswith("norm_out."):
                new = f"{part}.head.0.{rest[len('norm_out.'):]}"
            elif rest.startswith("conv_out."):
                new = f"{part}.head.2.{rest[len('conv_out.'):]}"
            elif rest.startswith("mid_block.resnets."):
                i, tail = rest[len("mid_block.resnets."):].split(".", 1)
                new = f"{part}.middle.{2 * int(i)}.{_residual_to_original(tail)}"
            elif rest.startswith("mid_block.attentions.0."):
                new = f"{part}.middle.1.{rest[len('mid_block.attentions.0.'):]}"
            elif rest.startswith("down_blocks."):
                i, tail = rest[len("down_blocks."):].split(".", 1)
                new = f"encoder.downsamples.{i}.{_residual_to_original(tail)}"
            elif rest.startswith("up_blocks."):
                s, kind, j, tail = rest[len("up_blocks."):].split(".", 3)
                s = int(s)
                if kind == "resnets":
                    new = f"decoder.upsamples.{flat_start[s] + int(j)}.{_residual_to_original(tail)}"
                else:  # upsamplers.0
                    idx = flat_start[s] + len(up_blocks[s].resnets)
                    new = f"decoder.upsamples.{idx}.{tail}"
            else:
                raise KeyError(k)
        out[new] = v
    return out


def write_tiny_wan_vae(
    folder: str | Path, layout: str = "original", config: WanVAEConfig = TINY_VAE_CONFIG, seed: int = 0
) -> Path:
    """Write a tiny random Wan2.1 VAE; returns the path to pass to ``WanVAE.from_pretrained``.

    original -> ``<folder>/Wan2.1_VAE.pth``; diffusers -> ``<folder>/vae`` (config.json + safetensors).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vae = WanVAE.from_config(config, seed=seed)
    # random RMS-norm gains/biases so a wrong mapping of any tensor is visible in the output
    with torch.no_grad():
        for name, p in vae.model.named_parameters():
            if name.endswith("gamma") or name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("gamma") else 0.0))
    if layout == "original":
        sd = diffusers_to_original_vae_keys(vae.model.state_dict(), vae.model.decoder.up_blocks)
        path = folder / ORIGINAL_VAE_FILENAME
        torch.save({k: v.clone() for k, v in sd.items()}, path)
        return path
    if layout == "diffusers":
        path = folder / "vae"
        vae.model.save_pretrained(str(path), safe_serialization=True)
        return path
    raise ValueError(f"unknown layout {layout!r}")


# ------------------------------------------------------------------------------------------------ UMT5

TINY_WORDS = ("a red cat runs on the green grass blue sky over hills fox jumps slowly quickly under bright sun "
              "ocean waves crash against rocks camera pans left right").split()


def write_tiny_tokenizer(folder: str | Path) -> Path:
    """A tiny word-level fast tokenizer (pad=0, eos=1, unk=2; appends </s> like T5), saved as HF files."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in TINY_WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    folder = Path(folder)
    fast.save_pretrained(str(folder))
    return folder


def tiny_umt5_model(seed: int = 0, vocab_size: int = 64):
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(vocab_size=vocab_size, d_model=16, num_layers=2, num_heads=2, d_kv=8, d_ff=24,
                     feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                     relative_attention_max_distance=128, dropout_rate=0.0)
    torch.manual_seed(seed)
    model = UMT5EncoderModel(cfg).eval()
    with torch.no_grad():  # non-trivial norm gains so a swapped norm mapping shows up
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model


def write_tiny_umt5(folder: str | Path, layout: str = "original", seed: int = 0) -> Path:
    """Write a tiny random UMT5 encoder + tokenizer; returns the folder to pass to ``UMT5TextEncoder.from_pretrained``.

    original -> ``<folder>/models_t5_umt5-xxl-enc-bf16.pth`` (Wan T5 keys) + ``<folder>/google/umt5-xxl/``;
    diffusers -> ``<folder>/text_encoder/`` + ``<folder>/tokenizer/``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_umt5_model(seed)
    if layout == "original":
        sd = hf_to_wan_t5_keys(model.state_dict())
        torch.save({k: v.clone() for k, v in sd.items()}, folder / ORIGINAL_T5_FILENAME)
        write_tiny_tokenizer(folder / ORIGINAL_TOKENIZER_DIR)
    elif layout == "diffusers":
        model.save_pretrained(str(folder / "text_encoder"))
        write_tiny_tokenizer(folder / "tokenizer")
    else:
        raise ValueError(f"unknown layout {layout!r}")
    (folder / "tiny_layout.json").write_text(json.dumps({"layout": layout, "seed": seed}))
    return folder
