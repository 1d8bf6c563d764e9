"""Regression bar of the shipped mini model: a free rollout from the prompt keeps the prompt's objects, inside its
window and well beyond it (the README's main video).

The thresholds sit below the values measured when the model was shipped (MODEL_CARD.md), with margin; a model that
loses its objects (the failure of the first shipped model: persistence 0.1-0.2 from the first frames) fails here.
"""

import numpy as np
import pytest
import torch

from deepforcing.cache import make_policy
from deepforcing.mini.bundle import MINI_DEFAULT_PROMPT, mini_bundle
from deepforcing.mini.measure import MeasureConfig, measure_video, score_tracks, track_objects
from deepforcing.mini.model import DEFAULT_MINI_WEIGHTS
from deepforcing.mini.quality import rollout_videos, slice_tracks

pytestmark = pytest.mark.skipif(not DEFAULT_MINI_WEIGHTS.exists(), reason="shipped mini weights not installed")

# Measured on the shipped v5 model (leg 9b; 4 seeds of the default prompt, 21 frames, deep-forcing, its stored sampler
# and start layout): persistence 0.988 (per seed 0.95, 1.0, 1.0, 1.0), object colour error 0.036. v5 leg 2 gave
# 0.798 / 0.040, v3 0.393 / 0.043, v2 0.167 / 0.064 and the first model 0.155 / 0.150: the persistence bound rejects
# the last three.
MIN_PERSISTENCE = 0.7
MAX_COLOUR_ERROR = 0.07
# 10-20 s of the default video (frames 160-319, 8-15x the window), seeds 0 and 1: v5 leg 9b keeps both objects in
# 0.84 and 0.79 of the frames (leg 2: 0.78 and 0.60); v5 leg 1 (no rollout-context training) and v4 lose one of them
# before 10 s (0.0 and 0.0).
MIN_LONG_PERSISTENCE = 0.6


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


def test_shipped_model_keeps_both_objects_far_beyond_its_window():
    torch.set_num_threads(1)
    videos = rollout_videos(mini_bundle(), make_policy("deep-forcing"), [MINI_DEFAULT_PROMPT] * 2, [0, 1], 320)
    spans = [score_tracks(slice_tracks(track_objects(v, MINI_DEFAULT_PROMPT, MeasureConfig()), 160, 320),
                          MINI_DEFAULT_PROMPT).object_persistence for v in videos]
    assert float(np.mean(spans)) >= MIN_LONG_PERSISTENCE, spans
