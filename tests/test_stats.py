"""Paired comparisons (deepforcing.stats.paired_difference): the interval and the sign-flip test."""

import itertools
import math

import numpy as np
import pytest

from deepforcing.stats import mean_ci, paired_difference


def _exact_sign_flip(diff):
    observed = abs(sum(diff))
    sums = [abs(sum(s * d for s, d in zip(signs, diff))) for signs in itertools.product((-1, 1), repeat=len(diff))]
    return sum(x >= observed - 1e-12 for x in sums) / len(sums)


def test_exact_p_value_interval_and_counts():
    a, b = [1.0, 0.5, 2.0, 3.0, 0.2], [0.0, 1.0, 0.5, 0.0, 0.2]
    d = paired_difference(a, b)
    diff = [x - y for x, y in zip(a, b)]
    assert d["p_value"] == pytest.approx(_exact_sign_flip(diff))
    ref = mean_ci(diff)
    assert (d["mean"], d["ci_low"], d["ci_high"]) == pytest.approx((ref["mean"], ref["ci_low"], ref["ci_high"]))
    assert (d["wins"], d["losses"], d["ties"]) == (3, 1, 1)
    assert paired_difference([1, 2, 3, 4], [0, 0, 0, 0])["p_value"] == pytest.approx(2 / 16)  # only ++++ and ----


def test_large_samples_use_seeded_resampling():
    assert paired_difference([1.0] * 20, [0.0] * 20)["p_value"] == pytest.approx(1 / 20_001)  # never as extreme
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    p = paired_difference(x.tolist(), x.tolist()[::-1])["p_value"]
    assert p == paired_difference(x.tolist(), x.tolist()[::-1])["p_value"] and 0.05 < p <= 1.0


def test_missing_values_drop_the_pair_and_lengths_must_match():
    d = paired_difference([1.0, None, math.nan, 2.0], [0.0, 5.0, 1.0, 1.0])
    assert d["n"] == 2 and d["mean"] == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])
    assert math.isnan(paired_difference([None], [1.0])["p_value"])
