"""The bench's memory formula (benchmarks/policy_chunk_cost.py) reads each policy's footprint from its own layout:
check that layout is what the cache really holds once it stops growing, for every registered bounded policy."""

import pytest

from deepforcing.cache import CachePolicy, make_policy, policy_names
from deepforcing.cache.plan import simulate


def _per_head(name: str) -> bool:
    return type(make_policy(name)).head_groups is not CachePolicy.head_groups


@pytest.mark.parametrize("name", [n for n in policy_names() if make_policy(n).bounded and not _per_head(n)])
def test_layout_is_the_steady_state_cache(name):
    policy = make_policy(name)
    held = [r.cache_frames for r in simulate(policy, 14)]
    assert min(held[-4:]) == sum(policy.layout.values())  # after an eviction: exactly the layout
    assert max(held[-4:]) <= sum(policy.layout.values()) + 3  # one appended chunk more at most (Top-C: 16 -> 19)
    assert max(held) <= policy.window  # the first fill peaks at the window (allocated: window + one chunk)


def test_only_rolling_sink_keeps_an_archive():
    archives = {n: make_policy(n).archive_frames for n in policy_names()}
    assert archives.pop("rolling-sink-replay") == 21 and set(archives.values()) == {0}


@pytest.mark.parametrize("name", ["dummy-forcing"])  # per-head policies that need no calibration file
def test_a_per_head_policys_layout_bounds_every_head_group(name):
    """A policy with head groups states its layout before the split (every head's cache at its largest): no group,
    and so no head mean, ever holds more once full; the groups' own frames are plan's per-group rows."""
    policy = make_policy(name)
    assert _per_head(name)
    reports = simulate(policy, 14)
    bound = sum(policy.layout.values())
    assert max(r.cache_frames for r in reports) <= policy.window
    assert any(r.groups for r in reports[-4:])
    for r in reports[-4:]:
        assert all(g["cache_frames"] <= bound + 3 for g in r.groups or [])
        assert r.cache_frames <= bound
