"""deepforcing: training-free long video generation with autoregressive video diffusion models.

Deep Sink + Participative Compression (arXiv 2512.05081) and every baseline KV-cache policy, on the causal
Wan2.1 transformer of Self Forcing.
"""

__version__ = "0.1.0"
