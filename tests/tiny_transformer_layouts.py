"""Tiny random Wan transformers written in the real on-disk layouts (original Wan, diffusers, Self-Forcing .pt)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

# original Wan config.json fields (as in Wan2.1-T2V-1.3B's config.json) of a tiny model
TINY_WAN_CONFIG = {
    "_class_name": "WanModel",
    "model_type": "t2v",
    "dim": 64,
    "ffn_dim": 96,
    "freq_dim": 32,
    "in_dim": 4,
    "out_dim": 4,
    "num_heads": 2,
    "num_layers": 2,
    "text_len": 12,
    "text_dim": 24,
    "eps": 1e-6,
}


def original_wan_state_dict(cfg: dict = TINY_WAN_CONFIG, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the original Wan DiT key names and shapes (of ``diffusion_pytorch_model.safetensors``)."""
    g = torch.Generator().manual_seed(seed)
    d, ffn, fq, td = cfg["dim"], cfg["ffn_dim"], cfg["freq_dim"], cfg["text_dim"]
    cin, cout, patch = cfg["in_dim"], cfg["out_dim"], tuple(cfg.get("patch_size", (1, 2, 2)))
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, cin, *patch),
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, td),
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, fq),
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d),
        "time_projection.1.bias": (6 * d,),
        "head.modulation": (1, 2, d),
        "head.head.weight": (cout * math.prod(patch), d),
        "head.head.bias": (cout * math.prod(patch),),
    }
    for n in range(cfg["num_layers"]):
        b = f"blocks.{n}"
        shapes[f"{b}.modulation"] = (1, 6, d)
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"{b}.{attn}.{proj}.weight"] = (d, d)
                shapes[f"{b}.{attn}.{proj}.bias"] = (d,)
            shapes[f"{b}.{attn}.norm_q.weight"] = (d,)
            shapes[f"{b}.{attn}.norm_k.weight"] = (d,)
        shapes[f"{b}.norm3.weight"] = (d,)
        shapes[f"{b}.norm3.bias"] = (d,)
        shapes[f"{b}.ffn.0.weight"] = (ffn, d)
        shapes[f"{b}.ffn.0.bias"] = (ffn,)
        shapes[f"{b}.ffn.2.weight"] = (d, ffn)
        shapes[f"{b}.ffn.2.bias"] = (d,)
    return {k: torch.randn(*s, generator=g) * 0.1 for k, s in shapes.items()}


def write_original_folder(folder: Path, sd: dict, cfg: dict = TINY_WAN_CONFIG, shards: int = 1) -> Path:
    """Wan layout: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (or shards + index)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    if shards == 1:
        save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
        return folder
    keys = sorted(sd)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: sd[k].contiguous() for k in part}, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def write_self_forcing_checkpoint(path: Path, ema: dict, generator: dict | None = None, fsdp: bool = True) -> Path:
    """Self-Forcing trainer layout: ``{"generator_ema": {"model.<key>": t}, "generator": ...}``, optionally with
    FSDP wrapper segments in the keys."""

    def wrap(sd: dict) -> dict:
        out = {}
        for k, v in sd.items():
            if fsdp and k.startswith("blocks."):
                n, rest = k.split(".", 2)[1], k.split(".", 2)[2]
                k = f"_fsdp_wrapped_module.blocks.{n}._fsdp_wrapped_module._checkpoint_wrapped_module.{rest}"
            out[f"model.{k}"] = v
        return out

    obj = {"generator_ema": wrap(ema)}
    if generator is not None:
        obj["generator"] = wrap(generator)
    torch.save(obj, path)
    return path
