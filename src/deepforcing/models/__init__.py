"""Model layer: causal Wan transformer, checkpoint loaders, VAE and text-encoder adapters.

Names are imported on first use (PEP 562), so ``deepforcing.models.presets`` can be read without torch or diffusers
(``deepforcing presets`` prints them with neither loaded).
"""

from importlib import import_module

_HOME = {  # public name -> the submodule that defines it
    "load_causal_wan": "loading", "load_checkpoint_state_dict": "loading", "merge_lora": "loading",
    "read_model_config": "loading", "PRESETS": "presets", "ModelPreset": "presets", "get_preset": "presets",
    "preset_names": "presets", "WanRope3D": "rope3d", "FlowMatchSchedule": "schedule",
    "CausalWanTransformer": "wan_causal", "CrossKV": "wan_causal", "sinusoidal_time_embedding": "wan_causal",
}

__all__ = list(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
