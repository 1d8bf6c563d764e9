"""Load a :class:`~deepforcing.models.wan_causal.CausalWanTransformer` from local files (never from the network).

Accepted inputs (the layouts of Wan2.1-T2V-1.3B, diffusers' ``WanTransformer3DModel`` and Self-Forcing's
``self_forcing_dmd.pt``):

* **original Wan layout** — a folder with a Wan ``config.json`` (``dim``, ``num_heads``, …) and
  ``diffusion_pytorch_model*.safetensors`` (single file or sharded with ``*.safetensors.index.json``); keys
  ``blocks.N.self_attn.q.weight`` …;
* **diffusers layout** — a ``WanTransformer3DModel`` folder (``config.json`` with ``num_attention_heads``…) or a
  pipeline folder containing ``transformer/``;
* **Self-Forcing training checkpoints** — ``torch.save``d dicts ``{"generator_ema": {...}, "generator": {...}}``
  whose keys are ``model.`` + the Wan key, possibly with FSDP wrapper segments (``_fsdp_wrapped_module.``,
  ``_checkpoint_wrapped_module.``), which are stripped; EMA by default (``use_ema=False`` picks ``generator``);
* **plain state dicts** — a ``.safetensors`` / ``.pt`` file in either key layout;
* **LoRA adapters** (LongLive: base checkpoint + rank-256 LoRA, α 256) — merged into the weights,
  see :func:`merge_lora`.

Checkpoint files and ``.safetensors`` alike need a model config for files that carry none (``config=`` a
``config.json`` path of either layout, a dict, or a preset's config). ``torch.load`` always runs with
``weights_only=True``. A wrong or incomplete file raises ``ValueError`` naming the file and the first keys that did
not match (missing and unexpected).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from .checkpoint_io import check_state_dict, load_file, load_weights_folder, torch_load, unwrap_state_dict
from .wan_causal import CausalWanTransformer

__all__ = [
    "load_causal_wan",
    "load_checkpoint_state_dict",
    "read_model_config",
    "wan_config_to_diffusers",
    "to_diffusers_keys",
    "strip_wrapper_prefixes",
    "merge_lora",
    "load_lora_state_dict",
]

_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_SHOW = 8  # keys listed in error messages


# --------------------------------------------------------------------------- configs
def wan_config_to_diffusers(cfg: Mapping[str, Any]) -> dict:
    """Original Wan ``config.json`` fields (plus ``CausalWanModel``'s class defaults) → our constructor kwargs."""
    if cfg.get("model_type", "t2v") != "t2v":
        raise ValueError(f"only text-to-video Wan models are supported, config has model_type={cfg['model_type']!r}")
    try:
        dim, heads = int(cfg["dim"]), int(cfg["num_heads"])
    except KeyError as err:
        raise ValueError(f"Wan config lacks the field {err.args[0]!r}") from None
    if dim % heads:
        raise ValueError(f"Wan config: dim {dim} is not divisible by num_heads {heads}")
    if cfg.get("qk_norm", True) is not True:
        raise ValueError("Wan config: qk_norm=False is not supported (Wan2.1 uses RMSNorm across heads)")
    return {
        "patch_size": tuple(cfg.get("patch_size", (1, 2, 2))),
        "num_attention_heads": heads,
        "attention_head_dim": dim // heads,
        "in_channels": int(cfg.get("in_dim", 16)),
        "out_channels": int(cfg.get("out_dim", 16)),
        "text_dim": int(cfg.get("text_dim", 4096)),
        "freq_dim": int(cfg.get("freq_dim", 256)),
        "ffn_dim": int(cfg["ffn_dim"]),
        "num_layers": int(cfg["num_layers"]),
        "cross_attn_norm": bool(cfg.get("cross_attn_norm", True)),
        "eps": float(cfg.get("eps", 1e-6)),
        "text_len": int(cfg.get("text_len", 512)),
    }


def _diffusers_kwargs(cfg: Mapping[str, Any]) -> dict:
    import inspect

    params = inspect.signature(CausalWanTransformer.__init__).parameters
    out = {k: v for k, v in cfg.items() if k in params and k != "self"}
    if "patch_size" in out:
        out["patch_size"] = tuple(out["patch_size"])
    return out


def read_model_config(config: str | Path | Mapping[str, Any]) -> dict:
    """Constructor kwargs from a ``config.json`` path / folder or a dict, in the original Wan or diffusers layout."""
    if isinstance(config, Mapping):
        cfg = dict(config)
        source = "config dict"
    else:
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path} (pass config= a Wan or diffusers config.json)")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a valid JSON config ({err})") from None
        source = str(path)
    if "num_attention_heads" in cfg:
        return _diffusers_kwargs(cfg)
    if "dim" in cfg and "num_heads" in cfg:
        return wan_config_to_diffusers(cfg)
    raise ValueError(f"{source}: neither a Wan config (dim, num_heads) nor a diffusers Wan transformer config")


# --------------------------------------------------------------------------- keys
def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove FSDP / activation-checkpoint / compile wrapper segments and a leading ``model.`` (Self-Forcing's
    ``WanDiffusionWrapper`` prefix) or ``base_model.model.`` (PEFT) from every key."""
    out = {}
    for key, value in state_dict.items():
        for seg in _WRAPPER_SEGMENTS:
            key = key.replace(seg, "")
        out[key] = value
    for prefix in ("base_model.model.", "model.", "module."):
        if out and all(k.startswith(prefix) for k in out) and not any(k.startswith("model.diffusion_model.") for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def _is_original_layout(keys) -> bool:
    return any(".self_attn." in k or k.startswith("head.head") or k.startswith("time_embedding.") for k in keys)


def to_diffusers_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename original Wan keys to diffusers ones with diffusers' own
    ``convert_wan_transformer_to_diffusers`` (q→to_q, modulation→scale_shift_table, norm2↔norm3, …); a state dict
    already in the diffusers layout is returned unchanged."""
    sd = dict(state_dict)
    if not _is_original_layout(sd):
        return sd
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(sd)


# --------------------------------------------------------------------------- files
# file rules (safetensors, weights-only torch.load, sharded folders, Self Forcing checkpoints): .checkpoint_io


def load_checkpoint_state_dict(path: str | Path, *, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], dict | None]:
    """State dict (diffusers key layout) and the config found next to it (``None`` for bare files).

    ``path``: a model folder (original or diffusers layout, or a pipeline folder with ``transformer/``), a
    ``.safetensors`` state dict, or a ``.pt``/``.pth``/``.ckpt`` (plain state dict or Self-Forcing checkpoint).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    config = None
    if path.is_dir():
        if (path / "transformer" / "config.json").is_file():
            path = path / "transformer"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: model folder without config.json (expected Wan or diffusers layout)")
        config = read_model_config(path / "config.json")
        sd: dict[str, torch.Tensor] = {}
        sd.update(load_weights_folder(path))
    elif path.suffix == ".safetensors":
        sd = load_file(str(path))
    elif path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
        sd = unwrap_state_dict(torch_load(path), path, use_ema=use_ema)
    else:
        raise ValueError(f"{path}: unknown checkpoint type (use a folder, .safetensors, .pt or .pth)")
    return to_diffusers_keys(strip_wrapper_prefixes(sd)), config


def load_causal_wan(
    path: str | Path,
    *,
    config: str | Path | Mapping[str, Any] | None = None,
    use_ema: bool = True,
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
    lora_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> CausalWanTransformer:
    """Build the causal transformer from local weights (see the module docstring for the accepted layouts).

    Args:
        path: weights folder or file.
        config: model config for files that carry none (required for bare ``.pt`` / ``.safetensors``); overrides a
            folder's own config when given.
        use_ema: Self-Forcing checkpoints: ``generator_ema`` (default, as the Deep Forcing scripts) or ``generator``.
        lora, lora_alpha, lora_scale: a LoRA adapter merged into the weights (:func:`merge_lora`).
        dtype, device: where the model lives.
    """
    sd, found = load_checkpoint_state_dict(path, use_ema=use_ema)
    if config is not None:
        kwargs = read_model_config(config)
    elif found is not None:
        kwargs = found
    else:
        raise ValueError(f"{path}: the file carries no model config; pass config= a config.json (Wan or diffusers)")
    with torch.device("meta"):
        model = CausalWanTransformer(**kwargs)
    check_state_dict(model.state_dict(), sd, path)
    if lora is not None:
        sd = merge_lora(sd, load_lora_state_dict(lora), alpha=lora_alpha, scale=lora_scale, source=str(lora))
    keep_fp32 = tuple(CausalWanTransformer._keep_in_fp32_modules or ())
    sd = {k: v.to(dtype=_param_dtype(k, v, dtype, keep_fp32)) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    # non-persistent buffers (diffusers' 1024-row RoPE table, unused by our forward) are rebuilt off the meta device
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    model.rope = WanRotaryPosEmbed(model.config.attention_head_dim, model.config.patch_size, model.config.rope_max_seq_len)
    return model.to(device=device).eval()


def _param_dtype(key: str, value: torch.Tensor, dtype: torch.dtype, keep_fp32: tuple[str, ...]) -> torch.dtype:
    """Target dtype of one tensor: ``dtype``, except diffusers' keep-in-fp32 modules (norms, time embedder,
    modulation tables) which stay float32 in half precision, as ``from_pretrained(torch_dtype=...)`` does."""
    if not value.is_floating_point():
        return value.dtype
    if dtype != torch.float32 and any(part in keep_fp32 for part in key.split(".")):
        return torch.float32
    return dtype


# --------------------------------------------------------------------------- LoRA
def load_lora_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """LoRA tensors from a ``.safetensors`` / ``.pt`` file (a plain dict, or nested under ``generator_lora`` /
    ``lora`` / ``generator`` / ``state_dict``), with wrapper prefixes stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    obj: Any = load_file(str(path)) if path.suffix == ".safetensors" else torch_load(path)
    if isinstance(obj, Mapping):
        for key in ("generator_lora", "lora", "generator_ema", "generator", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not any("lora_A" in k or "lora_down" in k for k in obj):
        raise ValueError(f"{path}: no LoRA tensors (keys with lora_A/lora_B or lora_down/lora_up) found")
    return strip_wrapper_prefixes(obj)


def merge_lora(
    state_dict: Mapping[str, torch.Tensor],
    lora: Mapping[str, torch.Tensor],
    *,
    alpha: float | None = None,
    scale: float = 1.0,
    source: str = "LoRA",
) -> dict[str, torch.Tensor]:
    """Merge LoRA pairs into the base weights: ``W += scale * (alpha / r) * B @ A`` (computed in float32).

    LoRA keys may name modules in the original Wan layout (``blocks.0.self_attn.q.lora_A.weight``, as LongLive's PEFT
    adapters on ``CausalWanModel``) or the diffusers layout (``blocks.0.attn1.to_q.lora_A.weight``); PEFT's
    ``lora_A/lora_B`` and kohya's ``lora_down/lora_up`` names are accepted, as is a per-module ``.alpha`` tensor.
    ``alpha`` defaults to the per-module tensor, else the rank (scale 1, LongLive's α = r = 256). Merging is exact
    for linear layers, so the merged model equals the base model with the adapter attached.
    """
    out = dict(state_dict)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in lora.items():
        for tag, role in ((".lora_A.", "A"), (".lora_down.", "A"), (".lora_B.", "B"), (".lora_up.", "B")):
            if tag in key:
                module = key.split(tag)[0]
                pairs.setdefault(module, {})[role] = value
                break
        else:
            if key.endswith(".alpha"):
                pairs.setdefault(key[: -len(".alpha")], {})["alpha"] = value
    if not pairs:
        raise ValueError(f"{source}: no LoRA pairs found")
    original = _is_original_layout(pairs) or any(".ffn.0" in m or ".ffn.2" in m or ".cross_attn." in m for m in pairs)
    unmatched = []
    for module, parts in pairs.items():
        if "A" not in parts or "B" not in parts:
            raise ValueError(f"{source}: module {module!r} lacks its {'lora_B' if 'A' in parts else 'lora_A'} tensor")
        target = f"{module}.weight"
        if original:
            from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

            target = next(iter(convert_wan_transformer_to_diffusers({target: parts["A"]})))
        if target not in out:
            unmatched.append(module)
            continue
        a, b = parts["A"].float().flatten(1), parts["B"].float().flatten(1)
        rank = a.shape[0]
        if b.shape[1] != rank:
            raise ValueError(f"{source}: LoRA for {module!r} has lora_A of rank {rank} but lora_B of rank "
                             f"{b.shape[1]}; the file is inconsistent")
        module_alpha = float(parts["alpha"]) if "alpha" in parts else (alpha if alpha is not None else rank)
        base = out[target]
        delta = (b @ a) * (scale * module_alpha / rank)
        if delta.shape != base.shape:
            raise ValueError(f"{source}: LoRA for {module!r} gives {tuple(delta.shape)}, weight is {tuple(base.shape)}")
        out[target] = (base.float() + delta).to(base.dtype)
    if unmatched:
        raise ValueError(f"{source}: LoRA modules not in the model, first: {unmatched[:_SHOW]}")
    return out
