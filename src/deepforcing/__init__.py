"""deepforcing: training-free long video generation with autoregressive video diffusion models.

Deep Sink + Participative Compression (arXiv 2512.05081) and every baseline KV-cache policy, on the causal
Wan2.1 transformer of Self Forcing.
"""

from ._version import __version__

__all__ = ["VideoGenerator", "mini_generator", "make_policy", "policy_names", "__version__"]


def __getattr__(name: str):
    """Lazy top-level API (importing the model stack pulls in diffusers)."""
    if name == "VideoGenerator":
        from .pipeline.generate import VideoGenerator

        return VideoGenerator
    if name == "mini_generator":
        from .mini.bundle import mini_generator

        return mini_generator
    if name in ("make_policy", "policy_names"):
        from . import cache

        return getattr(cache, name)
    raise AttributeError(f"module 'deepforcing' has no attribute {name!r}")
