"""The mini world: a procedural video world with known ground truth, for the project's own small video model.

* ``language`` — the prompt grammar (``parse_prompt``, ``SceneSpec``, ``sample_scene``, ``tokenize``, ``VOCAB``);
* ``world`` — deterministic rendering from (scene, seed) with per-frame ground-truth states (``render_clip``,
  ``render_batch``);
* ``measure`` — ground-truth metrics of generated videos against their prompt (``measure_video``).
"""

from .language import VOCAB, BackgroundSpec, ObjectSpec, SceneSpec, parse_prompt, sample_scene, tokenize, tokenize_spec
from .measure import MeasureConfig, ObjectTracks, VideoMetrics, measure_video, score_tracks, track_objects
from .world import Clip, WorldStates, render_batch, render_clip, to_uint8

__all__ = [
    "VOCAB",
    "BackgroundSpec",
    "Clip",
    "MeasureConfig",
    "ObjectSpec",
    "ObjectTracks",
    "SceneSpec",
    "VideoMetrics",
    "WorldStates",
    "measure_video",
    "parse_prompt",
    "render_batch",
    "render_clip",
    "sample_scene",
    "score_tracks",
    "to_uint8",
    "tokenize",
    "tokenize_spec",
    "track_objects",
]
