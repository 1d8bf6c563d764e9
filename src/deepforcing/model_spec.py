"""One way to name a model, for every command and the Python API: :class:`ModelSpec` -> :func:`check_model` (every
refusal, before any weights load) -> :meth:`CheckedModel.open` -> a :class:`~deepforcing.pipeline.generate.
VideoGenerator`.

::

    from deepforcing.model_spec import ModelSpec, open_generator
    gen = open_generator(ModelSpec())                                        # the shipped mini model
    gen = open_generator(ModelSpec("/models/Wan2.1-T2V-1.3B", checkpoint="self_forcing_dmd.pt", device="cuda"))

The options are declared once (:func:`deepforcing.cli_options.add_model_arguments`); ``generate``, ``serve``,
``bench``, ``diagnose``, ``eval --model`` and ``experiment`` read them with :meth:`ModelSpec.from_args`.

Layer: beside ``mini`` and ``eval`` (it opens the mini model as well as Wan folders; the pipeline below cannot import
the mini family). A mini model file is opened once: its header and tensors are read together here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deepforcing.cache import CachePolicy
    from deepforcing.models.contract import ModelBundle
    from deepforcing.models.presets import ModelPreset
    from deepforcing.pipeline.generate import VideoGenerator
    from deepforcing.pipeline.start import StartGeometry
    from deepforcing.models.vae import WanVAEConfig

__all__ = ["ModelSpec", "CheckedModel", "check_model", "open_generator", "resolve_device", "set_threads",
           "MINI", "MINI_FORMAT"]

MINI = "mini"  # --model value of the embedded mini model
MINI_FORMAT = "deepforcing-mini-v1"  # the "format" metadata of a mini model file
REAL_ONLY = ("checkpoint", "preset", "lora", "resolution", "dtype")  # options that size or load a Wan model


@dataclass(frozen=True)
class ModelSpec:
    """What the user named: ``model`` is ``"mini"`` (the shipped mini model), a mini model ``.safetensors`` file or a
    Wan2.1 folder (original or diffusers layout); the rest applies to Wan folders, except ``device`` and
    ``attention_backend`` (any model). ``restart`` off rolls one cache where the preset restarts (CausVid)."""

    model: str = MINI
    checkpoint: str | None = None
    preset: str | None = None
    lora: str | None = None
    resolution: str | None = None  # "HxW" in pixels (preset: 480x832)
    dtype: str | None = None  # float32 / bfloat16 / float16 (default: bfloat16 on GPU, float32 on CPU)
    device: str | None = None  # cpu, cuda, cuda:N (default: cuda if available)
    attention_backend: str | None = None  # a diffusers backend name: native, flash, sage, _native_math, ...
    restart: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ModelSpec":
        """The spec of a command's parsed model options (:func:`~deepforcing.cli_options.add_model_arguments`)."""
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        if getattr(args, "no_restart", False):
            given["restart"] = False
        return cls(**given)

    @property
    def mini_path(self) -> Path | None:
        """The mini model file named (``None``: the shipped one, or a Wan model)."""
        return None if self.model == MINI or not _is_file(self.model) else Path(self.model)


def resolve_device(name: str | None) -> str:
    """``name`` checked (cpu, cuda, cuda:N, and CUDA must be there), or the default: this rank's GPU, else the CPU."""
    import torch

    if name:
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise ValueError(f"unknown --device {name!r}; use cpu, cuda or cuda:N") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"--device {name!r} is not supported; use cpu, cuda or cuda:N")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {name} requested but CUDA is not available on this machine; use --device cpu")
        return name
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def check_threads(threads: int | None) -> None:
    """``--threads``: unset (chosen by model size) or at least 1."""
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")


def set_threads(generator: "VideoGenerator", threads: int | None) -> int | None:
    """CPU intra-op threads: ``threads``, or by model size (one for small models such as the mini model, every core
    otherwise); ``None`` and nothing set on a GPU. Returns the number set."""
    import torch

    from deepforcing.pipeline.resources import choose_threads

    check_threads(threads)
    if generator.device.type != "cpu" and threads is None:
        return None
    threads = threads or choose_threads(sum(p.numel() for p in generator.bundle.transformer.parameters()))
    torch.set_num_threads(threads)
    return threads


@dataclass
class CheckedModel:
    """A :class:`ModelSpec` that passed every check that needs no weights, ready to :meth:`open`. A mini model file
    is already read (``mini``: its metadata and tensors); a Wan model has its ``preset``."""

    spec: ModelSpec
    device: str
    preset: "ModelPreset | None" = None
    mini: tuple[dict[str, str], dict[str, Any], Path] | None = None
    _bundle: "ModelBundle | None" = None

    @property
    def is_mini(self) -> bool:
        return self.mini is not None

    def default_policy(self) -> dict:
        """The product default policy (name, window, sizes): the preset's, or the mini model's."""
        if self.preset is not None:
            return self.preset.product_policy()
        return dict(self._mini_bundle().default_policy)

    @property
    def chunk_frames(self) -> int:
        """Latent frames per chunk (the preset's, or the sampler stored in the mini model file), without weights."""
        if self.preset is not None:
            return self.preset.sampling.chunk_frames
        from deepforcing.mini.bundle import sampling_from_metadata

        meta = self.mini[0]
        return sampling_from_metadata({k: json.loads(v) for k, v in meta.items() if k != "format"}).chunk_frames

    def policy(self, name: str | None = None, **sizes) -> "CachePolicy":
        """The cache policy ``name`` (``None``: the product default) with ``sizes`` (``None`` values: defaults; the
        model's window unless one is given), built once here and passed down; impossible sizes raise ``ValueError``."""
        from deepforcing.cache import CachePolicy
        from deepforcing.pipeline.generate import policy_from_defaults

        policy = policy_from_defaults(self.default_policy(), name, **sizes)
        if type(policy).validate_model is not CachePolicy.validate_model:  # only policies that check read the config
            policy.validate_model(*self.attention_shape())
        if type(policy).validate_tokens is not CachePolicy.validate_tokens:
            policy.validate_tokens(self.tokens_per_frame())
        if policy.rope_jitter and self.preset is not None and self.preset.sampling.solver == "rolling-forcing":
            raise ValueError("--rope-jitter: Rolling Forcing's sampler has its own cache and RoPE (pipeline.rolling), "
                             "which the jitter does not reach; drop --rope-jitter or use a chunk-wise preset")
        return policy

    def attention_shape(self) -> tuple[int, int]:
        """(transformer layers, attention heads per layer), from the model's config without loading weights."""
        if self.is_mini:
            from deepforcing.mini.model import MiniConfig

            config = MiniConfig(**json.loads(self.mini[0]["config"]))
            return config.layers, config.heads
        from deepforcing.models.bundle import transformer_config

        config = transformer_config(self.spec.model)
        return int(config["num_layers"]), int(config["num_attention_heads"])

    def tokens_per_frame(self) -> int:
        """Tokens per latent frame (the latent size over the transformer's patch), from the configs without weights."""
        if self.is_mini:
            from deepforcing.mini.model import MiniConfig

            return MiniConfig(**json.loads(self.mini[0]["config"])).tokens_per_frame
        from deepforcing.models.bundle import transformer_config

        patch = transformer_config(self.spec.model).get("patch_size", (1, 2, 2))
        latent = (self.preset.latent_height, self.preset.latent_width)
        size = _resolution(self.spec.resolution)
        if size is not None:
            config = self._vae_config()
            spatial = 2 ** (len(config.dim_mult) - 1)
            latent = (size[0] // spatial, size[1] // spatial)
        return (latent[0] // patch[1]) * (latent[1] // patch[2])

    def horizon_pixel_frames(self) -> int:
        """Pixel frames of the model's training horizon (its attention window through its codec), without loading
        weights: the first window ``eval --model`` holds the rest of a video against."""
        window = self.policy().window
        if self.is_mini:
            return self._mini_bundle().pixel_frames(window)

        config = self._vae_config()
        return 1 + config.temporal_scale * (window - 1)

    def open(self) -> "VideoGenerator":
        """Load the weights: the generator, with the attention backend set."""
        from deepforcing.pipeline.generate import VideoGenerator

        bundle = self._mini_bundle() if self.is_mini else self._wan_bundle()
        if self.spec.attention_backend is not None:
            bundle.transformer.set_attention_backend(self.spec.attention_backend)  # diffusers' own switch
        return VideoGenerator(bundle, device=self.device)

    def start_geometry(self, policy) -> "StartGeometry":
        """What a start image or clip must fit, without loading a Wan model: its pixel size (``--resolution`` or the
        preset's), the VAE's temporal scale (its config), the chunk and ``policy``'s window. (The mini model is small
        and read already.)"""
        from deepforcing.pipeline.start import StartGeometry

        if self.is_mini:
            bundle = self._mini_bundle()
            _, h, w = bundle.latent_shape
            scale = getattr(bundle.codec, "spatial_scale", 1)
            return StartGeometry(h * scale, w * scale, bundle.temporal_scale, bundle.sampling.chunk_frames,
                                 policy.window)

        config = self._vae_config()
        spatial = 2 ** (len(config.dim_mult) - 1)
        size = _resolution(self.spec.resolution) or (self.preset.latent_height * spatial,
                                                     self.preset.latent_width * spatial)
        return StartGeometry(size[0], size[1], config.temporal_scale, self.chunk_frames, policy.window)

    def _vae_config(self) -> "WanVAEConfig":
        """The Wan VAE's config (original layout: the defaults; diffusers layout: its ``config.json``), no weights."""
        from deepforcing.models.vae import WanVAEConfig, resolve_vae_path


        layout, path = resolve_vae_path(self.spec.model)
        if layout == "original":
            return WanVAEConfig()
        return WanVAEConfig.from_diffusers_config(json.loads((path / "config.json").read_text()))

    def _mini_bundle(self) -> "ModelBundle":
        if self._bundle is None:
            from deepforcing.mini.bundle import bundle_from_model, sampling_from_metadata
            from deepforcing.mini.model import MiniConfig, MiniModel
            from deepforcing.models.checkpoint_io import load_state_dict_strict

            meta, tensors, path = self.mini
            model = MiniModel(MiniConfig(**json.loads(meta["config"])))
            load_state_dict_strict(model, tensors, path)
            sampling = sampling_from_metadata({k: json.loads(v) for k, v in meta.items() if k != "format"})
            self._bundle = bundle_from_model(model.to(self.device).eval(), sampling)
        return self._bundle

    def _wan_bundle(self) -> "ModelBundle":
        from deepforcing.models.bundle import wan_bundle

        bundle = wan_bundle(self.spec.model, checkpoint=self.spec.checkpoint, preset=self.preset.name,
                            dtype=self.spec.dtype, device=self.device, lora=self.spec.lora,
                            resolution=_resolution(self.spec.resolution))
        if not self.spec.restart:
            bundle.sampling = dataclasses.replace(bundle.sampling, restart_overlap=0)
        return bundle


def check_model(spec: ModelSpec) -> CheckedModel:
    """Every refusal that needs no weights, as one-line errors: options that do not apply to the model, an unknown
    preset, dtype or attention backend, a device that is not there, a path that is no model. A mini model file is
    read here (once)."""
    if spec.attention_backend is not None:
        from diffusers.models.attention_dispatch import AttentionBackendName

        if spec.attention_backend.lower() not in {b.value for b in AttentionBackendName}:
            choices = ", ".join(b.value for b in AttentionBackendName)
            raise ValueError(f"unknown attention backend {spec.attention_backend!r}; choose one of: {choices}")
    if spec.model == MINI or _is_file(spec.model):
        used = [f"--{name}" for name in REAL_ONLY if getattr(spec, name)] + ([] if spec.restart else ["--no-restart"])
        mini = _read_mini_file(spec.mini_path)
        if mini is None:
            raise ValueError(f"{spec.model} is neither a deepforcing mini model file (safetensors with mini metadata; "
                             f"this one is truncated, corrupt or of another kind) nor a model folder; pass --model "
                             f"mini, a mini model file or a Wan2.1 folder")
        if used:
            raise ValueError(f"{', '.join(used)} only appl{'ies' if len(used) == 1 else 'y'} to real models "
                             f"(--model /path/to/wan-folder); the mini model has fixed sizes and runs in float32")
        return CheckedModel(spec, resolve_device(spec.device), mini=mini)
    if not Path(spec.model).is_dir():
        raise FileNotFoundError(f"model folder not found: {spec.model}; pass --model mini or a local Wan2.1 folder")
    from deepforcing.models.presets import get_preset

    preset = get_preset(spec.preset or "self-forcing")
    if preset.lora_rank and spec.lora is None:  # the base weights alone are not the release's model
        raise ValueError(f"--preset {preset.name} runs its release's base weights with a LoRA (rank "
                         f"{preset.lora_rank}): pass --lora /path/to/lora.pt as well (see deepforcing presets)")
    if not spec.restart and not preset.sampling.restart_overlap:
        raise ValueError(f"--no-restart applies to presets that restart their rollout every window (causvid); "
                         f"{preset.name} rolls one cache already: drop --no-restart")
    if spec.dtype is not None and spec.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unknown dtype {spec.dtype!r}; choose one of float32, bfloat16, float16")
    _resolution(spec.resolution)
    for name, path in (("checkpoint", spec.checkpoint), ("lora", spec.lora)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"--{name} file not found: {path}")
    return CheckedModel(spec, resolve_device(spec.device), preset=preset)


def open_generator(spec: ModelSpec) -> "VideoGenerator":
    """The generator of ``spec`` (checked, then loaded)."""
    return check_model(spec).open()


def _resolution(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--resolution must look like 480x832, got {text!r}") from None
    return height, width


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except OSError:  # e.g. "File name too long"
        return False


def _read_mini_file(path: Path | None) -> tuple[dict[str, str], dict[str, Any], Path] | None:
    """(metadata, tensors, path) of a mini model file (``None``: the shipped one), read in one open; ``None`` for
    a file that is not one (another safetensors file, a truncated one, not safetensors at all)."""
    from safetensors import safe_open

    if path is None:
        from deepforcing.mini.model import DEFAULT_MINI_WEIGHTS

        path = DEFAULT_MINI_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"mini model weights not found at {path}; train them with `deepforcing "
                                    f"train-mini` or reinstall the package")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != MINI_FORMAT:
                return None
            return meta, {name: f.get_tensor(name) for name in f.keys()}, path
    except Exception:  # noqa: BLE001 — SafetensorError / OSError: not a mini model file, said by the caller
        return None
