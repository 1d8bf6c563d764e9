"""The bench's memory formula (benchmarks/policy_chunk_cost.py) reads each policy's footprint from its own layout:
check that layout is what the cache really holds once it stops growing, for every registered bounded policy."""

import pytest

from deepforcing.cache import make_policy, policy_names
from deepforcing.cache.plan import simulate


@pytest.mark.parametrize("name", [n for n in policy_names() if make_policy(n).bounded])
def test_layout_is_the_steady_state_cache(name):
    policy = make_policy(name)
    held = [r.cache_frames for r in simulate(policy, 14)]
    assert min(held[-4:]) == sum(policy.layout.values())  # after an eviction: exactly the layout
    assert max(held[-4:]) <= sum(policy.layout.values()) + 3  # one appended chunk more at most (Top-C: 16 -> 19)
    assert max(held) <= policy.window  # the first fill peaks at the window (allocated: window + one chunk)


def test_only_rolling_sink_keeps_an_archive():
    archives = {n: make_policy(n).archive_frames for n in policy_names()}
    assert archives.pop("rolling-sink-replay") == 21 and set(archives.values()) == {0}
