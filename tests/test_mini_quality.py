"""The mini model's quality bars: held-out pairs, free rollouts through the codec, the training split."""

import numpy as np
import pytest

from deepforcing.mini.bundle import mini_bundle
from deepforcing.mini.language import parse_prompt
from deepforcing.mini.quality import BAR_METRICS, free_rollout_bar, held_out_pairs, is_held_out
from deepforcing.mini.train import training_scene


def test_held_out_pairs_are_fixed_and_never_drawn_for_training():
    pairs = held_out_pairs(32)
    assert pairs == held_out_pairs(32) and len({p for p, _ in pairs}) >= 30
    assert all(is_held_out(parse_prompt(p)) for p, _ in pairs)
    rng = np.random.default_rng(0)
    assert not any(is_held_out(training_scene(rng)) for _ in range(500))
    with pytest.raises(ValueError, match="pairs must be in"):
        held_out_pairs(0)


def test_free_rollout_bar_reports_mean_and_interval_inside_and_beyond(tiny_mini):
    bar = free_rollout_bar(mini_bundle(tiny_mini), pairs=3, horizons=(2,), policies=("self-forcing",),
                           keep_videos=1)
    row = bar["self-forcing"]
    assert set(row) == {"inside", "beyond_2x", "videos", "inside_persistence_by_objects"}
    by_count = row["inside_persistence_by_objects"]  # the 3 held-out pairs split by their prompts' object count
    assert sum(r["n"] for r in by_count.values()) == 3 and set(by_count) <= {1, 2, 3}
    for part in ("inside", "beyond_2x"):
        assert set(row[part]) == set(BAR_METRICS)
        r = row[part]["background_colour_error"]
        assert r["n"] == 3 and r["ci_low"] <= r["mean"] <= r["ci_high"]
    assert tuple(row["videos"][0].shape) == (42, 3, 16, 16)  # 2 windows of decoded 16x16 frames


def test_from_truth_bar_finds_where_the_shipped_model_loses_objects():
    """Shown the true layout under little noise the shipped model keeps it; from pure noise (a free first chunk)
    it loses objects: the diagnostic separates the two (v3 on 64 pairs: 0.98 at sigma 0.5, 0.60 at 1.0)."""
    from deepforcing.mini.model import MiniModel
    from deepforcing.mini.quality import from_truth_bar

    result = from_truth_bar(MiniModel.load(), sigmas=(0.3, 1.0), pairs=16, steps=6)
    assert result["truth"]["object_persistence"] == 1.0
    assert result[0.3]["object_persistence"] >= 0.9
    assert result[1.0]["object_persistence"] <= result[0.3]["object_persistence"] - 0.15
