"""Regression bar of the shipped mini model: a short free rollout from the prompt alone keeps the prompt's objects.

The thresholds sit below the values measured when the model was shipped (MODEL_CARD.md), with margin; a model that
loses its objects (the failure of the first shipped model: persistence 0.1-0.2 from the first frames) fails here.
"""

import numpy as np
import pytest
import torch

from deepforcing.cache import make_policy
from deepforcing.mini.bundle import MINI_DEFAULT_PROMPT, mini_bundle
from deepforcing.mini.measure import measure_video
from deepforcing.mini.model import DEFAULT_MINI_WEIGHTS
from deepforcing.mini.quality import rollout_videos

pytestmark = pytest.mark.skipif(not DEFAULT_MINI_WEIGHTS.exists(), reason="shipped mini weights not installed")

# Measured on the shipped v4 model (4 seeds of the default prompt, 21 frames, its stored sampler): persistence
# 0.798 (per seed 1.0, 0.19, 1.0, 1.0), object colour error 0.037. v3 gave 0.393 / 0.043, v2 0.167 / 0.064 and the
# first model 0.155 / 0.150: the persistence bound rejects all three. Raise the bounds as the model improves.
MIN_PERSISTENCE = 0.55
MAX_COLOUR_ERROR = 0.07


def test_shipped_model_keeps_the_default_prompts_objects():
    torch.set_num_threads(1)
    bundle = mini_bundle()
    assert bundle.sampling.solver == "euler" and bundle.latent_shape[0] == 8  # the learned codec's latents
    seeds = [0, 1, 2, 3]
    videos = rollout_videos(bundle, make_policy("deep-forcing"), [MINI_DEFAULT_PROMPT] * len(seeds), seeds, 21)
    metrics = [measure_video(v, MINI_DEFAULT_PROMPT) for v in videos]
    persistence = float(np.mean([m.object_persistence for m in metrics]))
    colour = float(np.nanmean([m.object_colour_error for m in metrics]))
    assert persistence >= MIN_PERSISTENCE, persistence
    assert colour <= MAX_COLOUR_ERROR, colour
