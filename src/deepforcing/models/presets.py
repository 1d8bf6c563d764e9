"""Named model/rollout presets. Every value cites its source; unknown values are ``None`` with a note — never guessed.

Sources: the public code releases (Self Forcing ``guandeh17/Self-Forcing``, the Deep Forcing release, and related repos
such as ``NVlabs/LongLive``) and the Deep Forcing paper (arXiv 2512.05081) with its project page.
``dim 1536 …`` etc. is Wan2.1-T2V-1.3B's ``config.json`` plus the class defaults of ``CausalWanModel``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WAN21_T2V_1_3B", "ModelPreset", "PRESETS", "get_preset", "preset_names"]

# Wan2.1-T2V-1.3B (its ``config.json``) in CausalWanTransformer kwargs, named as in diffusers' WanTransformer3DModel.
WAN21_T2V_1_3B: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "text_len": 512,
}


@dataclass(frozen=True)
class ModelPreset:
    """Everything a rollout needs besides weights and prompt.

    Sizes are latent frames. ``policy`` + ``policy_sizes`` are the cache of the model's own release and go to
    :func:`deepforcing.cache.make_policy`; ``default_policy`` (+ ``default_policy_sizes``) is what ``deepforcing
    generate`` uses when the user names no policy (``None``: the release's policy);
    ``denoising_steps`` are nominal steps, warped through the shift-``shift`` table when ``warp`` is true
    (:class:`deepforcing.models.schedule.FlowMatchSchedule`). ``notes`` says where each value comes from and what is
    unknown.
    """

    name: str
    model_config: dict[str, Any]
    chunk_frames: int | None
    window_frames: int | None
    denoising_steps: tuple[int, ...] | None
    warp: bool | None
    shift: float | None
    policy: str
    policy_sizes: dict[str, Any] = field(default_factory=dict)
    default_policy: str | None = None
    default_policy_sizes: dict[str, Any] = field(default_factory=dict)
    latent_height: int = 60  # 480 px / VAE stride 8 (Self Forcing renders 480 x 832)
    latent_width: int = 104  # 832 px / 8
    num_train_timesteps: int = 1000  # FlowMatchScheduler table (Self Forcing's pipeline/causal_inference.py)
    context_noise: float = 0.0  # clean pass at t = 0 (context_noise 0 in Self Forcing's configs; SF issue #87)
    seed: int | None = None
    use_ema: bool = True
    lora_rank: int | None = None
    lora_alpha: float | None = None
    notes: tuple[str, ...] = ()

    def product_policy(self) -> dict[str, Any]:
        """Name, window and sizes of the policy ``generate`` uses by default for this preset."""
        if self.default_policy is None:
            return {"name": self.policy, "window": self.window_frames, **self.policy_sizes}
        return {"name": self.default_policy, "window": self.window_frames, **self.default_policy_sizes}

    def replace(self, **changes) -> "ModelPreset":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelPreset] = {
    "self-forcing": ModelPreset(
        name="self-forcing",
        model_config=WAN21_T2V_1_3B,
        chunk_frames=3,  # num_frame_per_block 3 (Self Forcing configs; chunk-wise Self Forcing, arXiv 2512.05081 §5.1)
        window_frames=21,  # local_attn_size 21 in DF's self_forcing_dmd_sink*.yaml = training length
        denoising_steps=(1000, 750, 500, 250),  # denoising_step_list (Self Forcing's self_forcing_dmd.yaml)
        warp=True,  # warp_denoising_step: true (self_forcing_dmd.yaml) -> t ≈ [1000, 937.5, 833.3, 625]
        shift=5.0,  # FlowMatchScheduler(shift=5.0) / timestep_shift 5.0 (SF pipeline/causal_inference.py, DF configs)
        policy="self-forcing",  # sink 0: FIFO window (SF wan/modules/causal_model.py; DF config sink0)
        default_policy="deep-forcing",  # the product default: the release's sizes were set for this 21-frame window
        seed=1356145,  # Deep Forcing inference.py default; Self Forcing's own default is 0
        use_ema=True,  # --use_ema -> generator_ema (inference.py; DF's scripts always pass it)
        notes=(
            "checkpoint: gdhe17/Self-Forcing (Hugging Face) checkpoints/self_forcing_dmd.pt over Wan2.1-T2V-1.3B",
            "deep-forcing policy defaults (sink 10, budget 16, recent 4, reuse cap 7) are the cache engine's "
            "make_policy('deep-forcing') defaults, as in the DF release (inference.py, causal_model.py); "
            "deep-sink-only uses sink 14 (DS_inference.sh)",
        ),
    ),
    "causvid": ModelPreset(
        name="causvid",
        model_config=WAN21_T2V_1_3B,  # CausVid is built on Wan2.1-T2V-1.3B (tianweiy/CausVid)
        chunk_frames=None,
        window_frames=None,
        denoising_steps=None,
        warp=None,
        shift=None,
        policy="self-forcing",
        notes=(
            "CausVid: Wan2.1-1.3B, DMD 3-4 step, KV cache within 5 s (tianweiy/CausVid)",
            "UNKNOWN in our sources: chunk size, exact denoising step list, warp/shift, checkpoint layout — set them "
            "explicitly (preset.replace(...)) before use; nothing here is guessed",
        ),
    ),
    "longlive": ModelPreset(
        name="longlive",
        model_config=WAN21_T2V_1_3B,  # LongLive 1.0 = Self-Forcing + LoRA on Wan2.1-1.3B (NVlabs/LongLive v1.0)
        chunk_frames=3,  # inherits Self Forcing's chunk-wise pipeline (LongLive 1.0 is Self-Forcing + LoRA)
        window_frames=12,  # local_attn_size 12 (NVlabs/LongLive v1.0)
        denoising_steps=(1000, 750, 500, 250),  # assumed from Self Forcing; not stated for LongLive in our sources
        warp=True,
        shift=5.0,
        policy="attention-sink",
        policy_sizes={"sink": 3},  # sink_size 3, no sink RoPE adjustment (NVlabs/LongLive v1.0)
        lora_rank=256,  # longlive_base.pt + LoRA rank 256, alpha 256 (LongLive v1.0)
        lora_alpha=256.0,
        notes=(
            "weights: longlive_base.pt + LoRA (rank 256, α 256), merged at load (NVlabs/LongLive v1.0)",
            "denoising steps / shift / chunk taken from Self Forcing, which LongLive 1.0 fine-tunes; LongLive's own "
            "values are not in our sources",
            "prompt switching: KV re-cache of the last min(window, t) frames (LongLive interactive_inference.py), "
            "a pipeline feature",
        ),
    ),
    "causal-forcing": ModelPreset(
        name="causal-forcing",
        model_config=WAN21_T2V_1_3B,
        chunk_frames=None,
        window_frames=None,
        denoising_steps=None,
        warp=None,
        shift=None,
        policy="deep-forcing",
        notes=(
            "Deep Forcing also works on Causal Forcing by setting sink_size (Deep Forcing GitHub issue #3); shown on "
            "the project page (cvlab-kaist.github.io/DeepForcing) without hyper-parameters",
            "UNKNOWN in our sources: chunk size, window, steps, shift, checkpoint — set them explicitly before use",
        ),
    ),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> ModelPreset:
    """Preset by name (``self-forcing`` is the default); unknown names raise ``ValueError`` listing the choices."""
    key = name.strip().lower().replace("_", "-")
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[key]
