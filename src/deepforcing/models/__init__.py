"""Model layer: causal Wan transformer, checkpoint loaders, VAE and text-encoder adapters."""

# causal Wan transformer, loaders, presets, schedule (issue 5)
from .loading import load_causal_wan, load_checkpoint_state_dict, merge_lora, read_model_config  # noqa: E402
from .presets import PRESETS, ModelPreset, get_preset, preset_names  # noqa: E402
from .rope3d import WanRope3D  # noqa: E402
from .schedule import FlowMatchSchedule  # noqa: E402
from .wan_causal import CausalWanTransformer, CrossKV, sinusoidal_time_embedding  # noqa: E402

__all__ = [
    "load_causal_wan", "load_checkpoint_state_dict", "merge_lora", "read_model_config", "PRESETS", "ModelPreset",
    "get_preset", "preset_names", "WanRope3D", "FlowMatchSchedule", "CausalWanTransformer", "CrossKV",
    "sinusoidal_time_embedding",
]
