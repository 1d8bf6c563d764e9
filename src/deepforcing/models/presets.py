"""Named model/rollout presets. Every value cites the release file it was read from (``ModelPreset.sources``:
repository@commit:file:line); a value no release states is never guessed (a preset that would need one is not
offered).

Sources: the public code releases of Self Forcing, the Deep Forcing release (commit ea9961a), CausVid, LongLive 1.0 and
Causal Forcing, and the Deep Forcing paper (arXiv 2512.05081) with its project page.
``dim 1536 …`` etc. is Wan2.1-T2V-1.3B's ``config.json`` plus the class defaults of ``CausalWanModel``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .contract import SamplingConfig

__all__ = ["WAN21_T2V_1_3B", "ModelPreset", "PRESETS", "get_preset", "preset_names"]

_SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingConfig))

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

    Sizes are latent frames. ``sampling`` is the sampler of the release (:class:`~deepforcing.models.contract.
    SamplingConfig`: nominal ``denoising_steps`` warped through the shift-``shift`` table when ``warp`` is true,
    ``chunk_frames``, solver, re-cache, restart, first-chunk steps; the clean context pass at t = 0, as in every
    release), handed to the bundle as it is; its fields also read as the preset's (``preset.chunk_frames``).
    ``window_frames`` is the attention window. ``policy`` + ``policy_sizes`` are the cache of the model's own release
    and go to :func:`deepforcing.cache.make_policy`; ``default_policy`` (+ ``default_policy_sizes``) is the product
    default every command uses when the user names no policy (``None``: the release's policy). ``use_ema`` picks ``generator_ema`` (else
    ``generator``) of a training checkpoint, as the release's inference script does. ``sources`` names the release
    file each value was read from; ``notes`` says what differs from the release and what is unknown.
    """

    name: str
    model_config: dict[str, Any]
    sampling: SamplingConfig
    window_frames: int
    policy: str
    policy_sizes: dict[str, Any] = field(default_factory=dict)
    default_policy: str | None = None
    default_policy_sizes: dict[str, Any] = field(default_factory=dict)
    latent_height: int = 60  # 480 px / VAE stride 8 (Self Forcing renders 480 x 832)
    latent_width: int = 104  # 832 px / 8
    num_train_timesteps: int = 1000  # FlowMatchScheduler table (Self Forcing's pipeline/causal_inference.py)
    seed: int | None = None
    use_ema: bool = True
    lora_rank: int | None = None
    lora_alpha: float | None = None
    notes: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)  # value -> "repo@commit:file:line" it was read from

    def product_policy(self) -> dict[str, Any]:
        """Name, window and sizes of the policy ``generate`` uses by default for this preset."""
        if self.default_policy is None:
            return {"name": self.policy, "window": self.window_frames, **self.policy_sizes}
        return {"name": self.default_policy, "window": self.window_frames, **self.default_policy_sizes}

    def replace(self, **changes) -> "ModelPreset":
        return dataclasses.replace(self, **changes)

    def __getattr__(self, name: str) -> Any:
        """The sampler's settings read through (``preset.chunk_frames`` is ``preset.sampling.chunk_frames``)."""
        if name in _SAMPLING_FIELDS:
            return getattr(self.sampling, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


_SF = "guandeh17/Self-Forcing@33593df"  # Self Forcing release
_DF = "cvlab-kaist/DeepForcing@ea9961a"  # Deep Forcing release ("code release")
_CV = "tianweiy/CausVid@ca21150"
_LL = "NVlabs/LongLive@2462895"  # the last LongLive 1.0 (Wan2.1-T2V-1.3B) commit
_CF = "thu-ml/Causal-Forcing@1fc7bbc"
_RF = "TencentARC/RollingForcing@a1477d0"

def _causal_forcing_framewise(name: str, steps: tuple[int, ...], first_chunk_steps: tuple[int, ...] | None,
                              checkpoint: str, note: str, sources: dict[str, str]) -> ModelPreset:
    """Causal Forcing's frame-wise models: one latent frame per step in its 21-frame global cache, warped steps at
    shift 5, ``generator_ema`` (its README runs them with --use_ema); ``sources`` are file:line in its release."""
    return ModelPreset(
        name=name,
        model_config=WAN21_T2V_1_3B,
        sampling=SamplingConfig(chunk_frames=1, denoising_steps=steps, first_chunk_steps=first_chunk_steps, warp=True,
                                shift=5.0),
        window_frames=21,
        policy="self-forcing",
        use_ema=True,
        notes=(f"checkpoint: zhuhz22/Causal-Forcing (Hugging Face) {checkpoint}, 'generator_ema' (its README runs it "
               f"with --use_ema); {note}",),
        sources={value: f"{_CF}:{where}" for value, where in sorted(
            {**sources, "window_frames": "utils/wan_wrapper.py:121 (local_attn_size -1: the 21-frame global cache)",
             "policy": "utils/wan_wrapper.py:122 (sink_size 0)"}.items(), key=lambda kv: _SOURCE_ORDER.index(kv[0]))},
    )


_SOURCE_ORDER = ("chunk_frames", "window_frames", "denoising_steps", "first_chunk_steps", "warp", "shift", "policy",
                 "use_ema")


PRESETS: dict[str, ModelPreset] = {
    "self-forcing": ModelPreset(
        name="self-forcing",
        model_config=WAN21_T2V_1_3B,
        # warped -> t = [1000, 937.5, 833.3, 625]
        sampling=SamplingConfig(chunk_frames=3, denoising_steps=(1000, 750, 500, 250), warp=True, shift=5.0),
        window_frames=21,
        policy="self-forcing",
        default_policy="deep-forcing",  # the product default: the release's sizes were set for this 21-frame window
        seed=1356145,  # Deep Forcing inference.py default; Self Forcing's own default is 0
        use_ema=True,
        notes=(
            "checkpoint: gdhe17/Self-Forcing (Hugging Face) checkpoints/self_forcing_dmd.pt over Wan2.1-T2V-1.3B",
            "deep-forcing defaults sink 10, budget 16, recent 4, reuse cap 7 are the release's; deep-sink alone "
            "uses sink 14",
        ),
        sources={
            "chunk_frames": f"{_SF}:configs/self_forcing_dmd.yaml:48 (num_frame_per_block)",
            "window_frames": f"{_DF}:configs/self_forcing_dmd/self_forcing_dmd_sink10.yaml:47 (local_attn_size; "
                             f"SF's global cache holds the same 21 frames)",
            "denoising_steps": f"{_SF}:configs/self_forcing_dmd.yaml:7-11",
            "warp": f"{_SF}:configs/self_forcing_dmd.yaml:12 (warp_denoising_step)",
            "shift": f"{_SF}:configs/self_forcing_dmd.yaml:15 (timestep_shift)",
            "policy": f"{_SF}:utils/wan_wrapper.py:122 (sink_size 0)",
            "deep-forcing sizes": f"{_DF}:inference.py:38, configs/self_forcing_dmd/self_forcing_dmd_sink10.yaml:48",
            "use_ema": f"{_SF}:inference.py:69-71 (--use_ema -> generator_ema, as its README runs it)",
            "context_noise": f"{_SF}:configs/default_config.yaml:10",
        },
    ),
    "causvid": ModelPreset(
        name="causvid",
        model_config=WAN21_T2V_1_3B,
        sampling=SamplingConfig(chunk_frames=3, denoising_steps=(1000, 757, 522), warp=False, shift=8.0,
                                restart_overlap=3),
        window_frames=21,
        policy="self-forcing",
        use_ema=False,
        notes=(
            "checkpoint: tianweiy/CausVid (Hugging Face) autoregressive_checkpoint/model.pt, key 'generator' (no EMA)",
            "long videos as its release makes them: a fresh cache (RoPE from 0) every 21 frames, started from the "
            "previous rollout's pixel frame -9 re-encoded by the VAE + its last 2 latents at t = 0; its last 9 pixel "
            "frames are dropped (the prefix re-makes them). --no-restart rolls one cache with --policy instead",
        ),
        sources={
            "chunk_frames": f"{_CV}:configs/wan_causal_dmd.yaml:52",
            "window_frames": f"{_CV}:causvid/models/wan/causal_inference.py:48-58 (fixed 21-frame KV cache)",
            "denoising_steps": f"{_CV}:configs/wan_causal_dmd.yaml:14-18 ([1000, 757, 522, 0], trailing 0 dropped "
                               f"in causal_inference.py:23-27)",
            "warp": f"{_CV}:configs/wan_causal_dmd.yaml:53",
            "shift": f"{_CV}:causvid/models/wan/wan_wrapper.py:104-107, configs/wan_causal_dmd.yaml:20",
            "policy": f"{_CV}:causvid/models/wan/causal_model.py:140-143 (writes at its absolute place, attends to "
                      f"everything before: no sink, no roll; equal to self-forcing inside 21 frames)",
            "use_ema": f"{_CV}:minimal_inference/autoregressive_inference.py:25-30 (loads 'generator')",
            "context_noise": f"{_CV}:causvid/models/wan/causal_inference.py:188-197 (clean pass at t = 0)",
            "restart_overlap": f"{_CV}:minimal_inference/longvideo_autoregressive_inference.py:16-17,61-83 "
                               f"(num_overlap_frames 3); causal_inference.py:128-156 (prefix blocks at t = 0)",
        },
    ),
    "longlive": ModelPreset(
        name="longlive",
        model_config=WAN21_T2V_1_3B,
        sampling=SamplingConfig(chunk_frames=3, denoising_steps=(1000, 750, 500, 250), warp=True, shift=5.0,
                                recache="joint"),
        window_frames=12,
        policy="attention-sink",
        policy_sizes={"sink": 3},
        use_ema=False,
        lora_rank=256,
        lora_alpha=256.0,
        notes=(
            "weights: Efficient-Large-Model/LongLive longlive_base.pt + lora.pt (PEFT, rank 256, alpha 256 on the 10 "
            "linears of each block); the release keeps the LoRA unmerged, we merge it (W0 + B A, scale 1)",
            "prompt switch: the last min(12, t) frames re-encoded under the new prompt at t = 0 in one pass with no "
            "causal mask inside it (the cache branch of its attention ignores the block mask it builds); the 3 sink "
            "frames keep the first prompt (global_sink) and the pass's first 3 frames are dropped, so 9 frames are "
            "re-cached, each attending the old sink and all 9 — recache='joint'",
        ),
        sources={
            "chunk_frames": f"{_LL}:configs/longlive_inference.yaml:7",
            "window_frames": f"{_LL}:configs/longlive_inference.yaml:10 (local_attn_size)",
            "denoising_steps": f"{_LL}:configs/longlive_inference.yaml:1-5",
            "warp": f"{_LL}:configs/longlive_inference.yaml:6",
            "shift": f"{_LL}:configs/longlive_inference.yaml:11",
            "policy": f"{_LL}:configs/longlive_inference.yaml:12 (sink_size 3), wan/modules/causal_model.py:321-333",
            "lora": f"{_LL}:configs/longlive_inference.yaml:30-36, utils/lora_utils.py:31-48",
            "use_ema": f"{_LL}:inference.py:73-95 (use_ema false by default -> 'generator')",
            "prompt switch": f"{_LL}:pipeline/interactive_causal_inference.py:34-96",
            "recache": f"{_LL}:pipeline/interactive_causal_inference.py:53-91 (one generator call over the frames), "
                       "wan/modules/causal_model.py:230-345 (kv-cache branch: sink-protected writes, plain attention "
                       "over sink + window)",
        },
    ),
    "rolling-forcing": ModelPreset(
        name="rolling-forcing",
        model_config=WAN21_T2V_1_3B,
        # warped -> t = [1000, 952.4, 882.4, 769.2, 555.6]: the window's five noise levels
        sampling=SamplingConfig(chunk_frames=3, denoising_steps=(1000, 800, 600, 400, 200), warp=True, shift=5.0,
                                solver="rolling-forcing"),
        window_frames=21,
        policy="rolling-forcing-sink",
        policy_sizes={"sink": 3},
        use_ema=True,
        notes=(
            "checkpoint: TencentARC/RollingForcing (Hugging Face) checkpoints/rolling_forcing_dmd.pt, generator_ema "
            "(FSDP segments stripped)",
            "inference: 5 chunks denoised jointly at staggered levels, one-chunk anchor re-placed before the working "
            "chunks, attention capped at 21 frames (pipeline.rolling); needs at least 5 chunks; no prompt timelines",
        ),
        sources={
            "chunk_frames": f"{_RF}:configs/rolling_forcing_dmd.yaml:45",
            "window_frames": f"{_RF}:wan/modules/causal_model.py:76 (max attention 21 frames)",
            "denoising_steps": f"{_RF}:configs/rolling_forcing_dmd.yaml:7-12",
            "warp": f"{_RF}:configs/rolling_forcing_dmd.yaml:13",
            "shift": f"{_RF}:configs/rolling_forcing_dmd.yaml:16",
            "policy": f"{_RF}:wan/modules/causal_model.py:211 (one-block anchor), 276-281 (re-placed)",
            "solver": f"{_RF}:pipeline/rolling_forcing_inference.py:168-295",
            "use_ema": f"{_RF}:inference.py:66-82 (README runs --use_ema)",
        },
    ),
    "causal-forcing": ModelPreset(
        name="causal-forcing",
        model_config=WAN21_T2V_1_3B,
        sampling=SamplingConfig(chunk_frames=3, denoising_steps=(1000, 750, 500, 250), warp=True, shift=5.0),
        window_frames=21,
        policy="self-forcing",
        default_policy="deep-forcing",  # Deep Forcing runs on it by setting the sink (project page, its issue #3)
        use_ema=False,
        notes=(
            "checkpoint: zhuhz22/Causal-Forcing (Hugging Face) chunkwise/causal_forcing.pt, key 'generator' (its "
            "README runs it without --use_ema); inference is Self Forcing's, only the training differs",
            "its frame-wise models are the presets causal-forcing-framewise (4 steps) and causal-forcing++-2step / "
            "-1step (a 4-step first frame)",
        ),
        sources={
            "chunk_frames": f"{_CF}:configs/causal_forcing_dmd_chunkwise.yaml:42",
            "window_frames": f"{_CF}:utils/wan_wrapper.py:121 (local_attn_size -1: the 21-frame global cache)",
            "denoising_steps": f"{_CF}:configs/causal_forcing_dmd_chunkwise.yaml:7-11",
            "warp": f"{_CF}:configs/causal_forcing_dmd_chunkwise.yaml:12",
            "shift": f"{_CF}:configs/causal_forcing_dmd_chunkwise.yaml:15",
            "policy": f"{_CF}:utils/wan_wrapper.py:122 (sink_size 0)",
            "use_ema": f"{_CF}:inference.py:69-82, README.md:36-42",
        },
    ),
    **{preset.name: preset for preset in (
        _causal_forcing_framewise(
            "causal-forcing-framewise", (1000, 750, 500, 250), None, "framewise/causal_forcing.pt",
            "one latent frame per autoregressive step, Self Forcing's loop",
            {"chunk_frames": "configs/causal_forcing_dmd_framewise.yaml:47 (num_frame_per_block 1)",
             "denoising_steps": "configs/causal_forcing_dmd_framewise.yaml:7-11",
             "warp": "configs/causal_forcing_dmd_framewise.yaml:12",
             "shift": "configs/causal_forcing_dmd_framewise.yaml:15,50",
             "use_ema": "README.md:141-146 (--use_ema), inference.py:69-82"}),
        _causal_forcing_framewise(
            "causal-forcing++-2step", (1000, 500), (1000, 750, 500, 250), "causal-forcing++/framewise-2step.pt",
            "frame 0 is denoised in 4 steps (denoising_step_list_first_chunk), every later frame in 2",
            {"chunk_frames": "configs/causal_forcing_dmd_framewise_2step.yaml:50",
             "denoising_steps": "configs/causal_forcing_dmd_framewise_2step.yaml:7-9",  # warped -> 1000, 833.3
             "first_chunk_steps": "configs/causal_forcing_dmd_framewise_2step.yaml:10-14, "
                                  "pipeline/causal_inference.py:34-44,222-229",
             "warp": "configs/causal_forcing_dmd_framewise_2step.yaml:15 (both lists warped)",
             "shift": "configs/causal_forcing_dmd_framewise_2step.yaml:18,53",
             "use_ema": "README.md:124-129 (--use_ema)"}),
        _causal_forcing_framewise(
            "causal-forcing++-1step", (1000,), (1000, 750, 500, 250), "causal-forcing++/framewise-1step.pt",
            "frame 0 is denoised in 4 steps, every later frame in 1",
            {"chunk_frames": "configs/causal_forcing_dmd_framewise_1step.yaml:49",
             "denoising_steps": "configs/causal_forcing_dmd_framewise_1step.yaml:7-8",
             "first_chunk_steps": "configs/causal_forcing_dmd_framewise_1step.yaml:9-13, "
                                  "pipeline/causal_inference.py:34-44,222-229",
             "warp": "configs/causal_forcing_dmd_framewise_1step.yaml:14 (both lists warped)",
             "shift": "configs/causal_forcing_dmd_framewise_1step.yaml:17,52",
             "use_ema": "README.md:132-137 (--use_ema)"}),
    )},
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> ModelPreset:
    """Preset by name (``self-forcing`` is the default); unknown names raise ``ValueError`` listing the choices."""
    key = name.strip().lower().replace("_", "-")
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[key]
