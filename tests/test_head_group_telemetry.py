"""Head groups in what describes a cache: ``plan`` (per-group rows), the attention probe behind ``diagnose`` (one
record per group) and the live page's telemetry (per-group sizes, head-weighted makeup), shown with Dummy Forcing."""

from __future__ import annotations

import json

import pytest
import torch

from deepforcing.cache import make_policy
from deepforcing.cache.plan import GROUP_HEADS, simulate
from deepforcing.eval.diagnostics import AttentionMassProbe, layer_region_mass


def test_plan_reports_every_head_group_and_their_head_mean():
    reports = simulate(make_policy("dummy-forcing"), 5, chunk_frames=3, tokens_per_frame=4)
    assert [r.groups is None for r in reports] == [True, True, False, False, False]
    assert (reports[0].cache_frames, reports[1].cache_frames) == (3, 6)  # frame 0 + the last chunk + the chunk
    expected = {"sink": (4, 1), "dummy": (4, 0), "neighbour": (6, 0)}  # (frames, sink frames) with 3-frame chunks
    for r in reports[2:]:
        groups = {g["group"]: g for g in r.groups}
        assert sum(g["heads"] for g in r.groups) == GROUP_HEADS and "dummy" in groups
        for name, g in groups.items():
            assert (g["cache_frames"], g["sink_frames"]) == expected[name]
            assert g["recent_positions"][1] == r.start_frame + 2
        assert r.cache_frames == sum(g["cache_frames"] * g["heads"] for g in r.groups) / GROUP_HEADS
    assert "groups" not in simulate(make_policy("self-forcing"), 2)[0].to_dict()  # other policies' rows unchanged


def test_plan_command_prints_the_groups(capsys):
    from deepforcing.cli import main

    assert main(["plan", "--policy", "dummy-forcing", "--chunks", "4"]) == 0
    out = capsys.readouterr().out
    assert "dummy" in out and f"of {GROUP_HEADS} heads" in out
    assert main(["plan", "--policy", "dummy-forcing", "--chunks", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "groups" not in rows[1] and {g["group"] for g in rows[2]["groups"]} >= {"dummy"}


def test_the_probe_records_each_group_and_diagnose_weighs_them_by_heads():
    from deepforcing.cache import CacheGeometry, KVCache
    from deepforcing.cache.rope import TemporalCallRope, TemporalRope

    rope, probe = TemporalRope(pairs=2), AttentionMassProbe()
    cache = KVCache(make_policy("dummy-forcing"), CacheGeometry(4, 3), num_layers=2, batch=1, heads=4, head_dim=8,
                    rope=rope, attention_observer=probe)
    gen = torch.Generator().manual_seed(0)
    for f0 in (0, 3, 6):
        for clean in (False, True):
            cache.begin_call(f0, 3, clean=clean, rope=TemporalCallRope(rope, f0, 4))
            for layer in cache.layers:
                q, k, v = (torch.randn(1, 4, 12, 8, generator=gen) for _ in range(3))
                layer.attention(q, k, v, torch.nn.functional.scaled_dot_product_attention)
    last = [r for r in probe.records if r["chunk_start"] == 6]
    assert sorted((r["layer"], r["group"]) for r in last) == sorted(
        (layer.index, v.group.name) for layer in cache.layers for v in layer.groups)
    assert all(len(r["mass"]) == len(r["heads"]) for r in last)
    shares = layer_region_mass(last, sink_frames=1, chunk_frames=3, tokens_per_frame=4)
    for layer, row in shares.items():
        assert set(row["groups"]) == {v.group.name for v in cache.layers[layer].groups}
        assert sum(v for k, v in row.items() if k != "groups") == pytest.approx(1.0, abs=1e-5)
        if "dummy" in row["groups"]:  # [last frame | chunk]: no sink in a dummy head's cache
            assert row["groups"]["dummy"]["sink"] == 0.0 and row["groups"]["dummy"]["previous"] > 0


def test_the_live_page_shows_head_groups(tiny_mini):
    pytest.importorskip("fastapi")
    from deepforcing.mini.bundle import mini_generator
    from deepforcing.serve.live import LiveOptions, LiveSession

    generator = mini_generator(tiny_mini)
    live = LiveSession(generator, LiveOptions(prompt="a red circle", policy="dummy-forcing", seed=1))
    chunks = [live.next_chunk() for _ in range(4)]
    assert chunks[1].head_groups == [] and sum(chunks[1].cache_frames.values()) == 6
    groups = chunks[3].head_groups
    heads = generator.bundle.transformer.num_heads
    assert groups and sum(g["heads"] for g in groups) == heads
    sizes = {"sink": 1 + 3, "dummy": 1 + 3, "neighbour": 3 + 3}
    for g in groups:
        assert sum(g["frames"].values()) == sizes[g["group"]]
    mean = sum(sizes[g["group"]] * g["heads"] for g in groups) / heads
    assert sum(chunks[3].cache_frames.values()) == pytest.approx(mean)
    assert sum(chunks[3].attention.values()) == pytest.approx(1.0, abs=1e-4)
