"""bench, diagnose, the long-horizon experiment and the mini quality bar, on a tiny random mini model."""

import json

import numpy as np
import pytest
import torch

from deepforcing.cli import main
from deepforcing.eval.diagnostics import AttentionMassProbe, region_mass, topc_selection_heatmap
from deepforcing.eval.experiment import run_experiment
from deepforcing.eval.experiment_report import claim_verdicts
from deepforcing.mini.bundle import mini_bundle, mini_generator
from deepforcing.mini.quality import held_out_pairs, quality_bar
from deepforcing.pipeline.generate import VideoGenerator

from conftest import TINY_MINI as TINY



def test_bench_reports_flat_cache_for_bounded_policies(tiny_mini, tmp_path, capsys):
    assert main(["bench", "--model", str(tiny_mini), "--policies", "self-forcing,deep-forcing,full",
                 "--horizons", "1,4", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    by = {(r["policy"], r["horizon_multiple"]): r for r in rows}
    F = TINY.tokens_per_frame
    assert by[("deep-forcing", 4.0)]["cache_tokens_max"] == 21 * F
    assert by[("deep-forcing", 4.0)]["cache_tokens_last"] in (16 * F, 19 * F)
    # bounded: window + one chunk (24 frames) for any length past the window; a 21-frame video allocates only 21
    assert by[("self-forcing", 4.0)]["kv_bytes"] * 21 == by[("self-forcing", 1.0)]["kv_bytes"] * 24
    assert by[("full", 4.0)]["cache_tokens_last"] == 84 * F  # the only policy whose memory grows
    assert "| deep-forcing | 4x (84 f)" in capsys.readouterr().out


def test_attention_probe_masses_sum_to_one_and_topc_heatmap_counts_picks(tiny_mini):
    gen = mini_generator(tiny_mini)
    probe = AttentionMassProbe()
    for chunk in gen.stream("a red circle", latent_frames=45, policy="deep-forcing", record_events=True,
                            attention_observer=probe):
        pass
    assert {r["layer"] for r in probe.records} == {0, 1}
    for r in probe.records:
        mass = torch.tensor(r["mass"])
        assert torch.allclose(mass.sum(dim=1), torch.ones(mass.shape[0]), atol=1e-4)
    cache = chunk.cache
    heat = topc_selection_heatmap(cache.events, 2)
    compressions = sum(1 for e in cache.events if e.kind == "compress" and e.layer == 0)
    assert compressions == 4  # chunks 7, 9, 11, 13
    assert heat[0].sum().item() == compressions * 2 * TINY.tokens_per_frame
    assert heat[:, : 10 * TINY.tokens_per_frame].sum() == 0  # the sink is never a candidate


def test_diagnose_command_writes_plots(tiny_mini, tmp_path):
    assert main(["diagnose", "--model", str(tiny_mini), "--frames", "30", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "attention_mass.png").stat().st_size > 0 and (tmp_path / "topc_heatmap.png").exists()


def test_experiment_small(tiny_mini, tmp_path):
    res = run_experiment(tmp_path, pairs=2, horizons=(3, 2), model=str(tiny_mini),
                         labels=["self-forcing", "deep-forcing", "deep-sink S=18"], log=lambda *_: None)
    arms = {a["label"]: a for a in res["arms"]}
    assert list(arms) == ["world (ground truth)", "self-forcing", "deep-forcing", "deep-sink S=18"]
    assert arms["self-forcing"]["horizons"] == [2.0, 3.0]  # a headline arm runs to the longest horizon...
    assert arms["deep-sink S=18"]["horizons"] == [2.0]  # ...an ablation to the shortest
    truth = arms["world (ground truth)"]["videos"]
    assert all(v["beyond"]["3x"]["object_persistence"] > 0.9 for v in truth)  # the true world keeps its objects
    # inside the window every policy writes the same frames: only what happens beyond it can differ
    for v_sf, v_df in zip(arms["self-forcing"]["videos"], arms["deep-forcing"]["videos"]):
        assert v_sf["inside"] == v_df["inside"]
    assert res["prompts"] == [p for p, _ in held_out_pairs(2)]
    attention = res["attention"]["policies"]
    for entry in attention.values():  # every query's softmax row sums to 1 over the four regions
        assert sum(entry["mean"].values()) == pytest.approx(1.0, abs=1e-4)
    assert attention["self-forcing"]["mean"]["sink"] == 0.0 and attention["deep-sink"]["mean"]["sink"] > 0
    assert attention["deep-forcing"]["topc_near_sink_ratio"] >= 0 and "topc_near_sink_ratio" not in attention["deep-sink"]
    verdicts = json.loads((tmp_path / "verdicts.json").read_text())
    pairs = {(v["a"], v["b"], v["horizon"]) for v in verdicts}
    assert ("deep-forcing", "self-forcing", "2x") in pairs and ("deep-forcing", "self-forcing", "3x") in pairs
    assert not any(v["a"] == "deep-sink S=18" for v in verdicts)  # its partner (S=14) did not run
    table = (tmp_path / "summary.md").read_text()
    assert "| deep-forcing | 2 |" in table and "Not run: attention-sink S=3" in table
    for name in ("drift_curves_2x.png", "drift_curves_3x.png", "strips_2x.png", "strips_3x.png", "sink_sweep.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    with np.load(tmp_path / "strips.npz") as strips:
        assert "3x|deep-forcing" in strips.files and "3x|deep-sink S=18" not in strips.files
    (tmp_path / "summary.md").unlink()
    assert main(["experiment", "--report-only", "--out", str(tmp_path)]) == 0  # redrawn from the files alone
    assert (tmp_path / "summary.md").read_text() == table


def _synthetic(a_values, b_values):
    def videos(values):
        return [{"inside": {}, "beyond": {"2x": {"object_persistence": x, "count_accuracy": 0.5,
                                                  "object_colour_error": 0.1, "speed_ratio": 1.0}},
                 "drift": {"2x": {}}} for x in values]
    return {"horizons": [2.0], "arms": [{"label": "a", "horizons": [2.0], "videos": videos(a_values)},
                                        {"label": "b", "horizons": [2.0], "videos": videos(b_values)}]}


def test_claim_verdicts_follow_the_paired_interval():
    better = _synthetic([0.9, 0.8, 0.95, 0.85], [0.5, 0.4, 0.6, 0.45])
    (row,) = claim_verdicts(better, [("a beats b", "a", "b", +1)])
    assert row["verdict"] == "supported" and row["better"] == ["object_persistence"]
    assert row["metrics"]["object_persistence"]["mean"] == pytest.approx(0.3875)
    assert claim_verdicts(better, [("b beats a", "b", "a", +1)])[0]["verdict"] == "contradicted"
    assert claim_verdicts(better, [("a is worse", "a", "b", -1)])[0]["verdict"] == "contradicted"
    assert claim_verdicts(better, [("option", "b", "a", 0)])[0]["verdict"] == "a worse"
    noisy = _synthetic([0.9, 0.1, 0.8, 0.2], [0.5, 0.5, 0.5, 0.5])
    assert claim_verdicts(noisy, [("a beats b", "a", "b", +1)])[0]["verdict"].startswith("not supported")
    assert claim_verdicts(noisy, [("a beats c", "a", "c", +1)]) == []  # an arm that did not run: no row


def test_region_mass_splits_the_cache_by_source_frame():
    # 2 tokens per frame; slots: sink frames 0-1, a Top-C pick of frame 5, previous chunk frames 7-8, own 9-10
    frames = [0, 0, 1, 1, 5, 7, 7, 8, 8, 9, 9, 10, 10]
    mass = [[0.1, 0.1, 0.05, 0.05, 0.1, 0.05, 0.05, 0.05, 0.05, 0.1, 0.1, 0.1, 0.1]] * 2
    r = region_mass({"chunk_start": 9, "frames": frames, "mass": mass}, sink_frames=2, chunk_frames=2,
                    tokens_per_frame=2)
    assert r == pytest.approx({"sink": 0.3, "middle": 0.1, "previous": 0.2, "own": 0.4})


def test_quality_bar_copy_baseline_is_exact_on_static_parts(tiny_mini):
    res = quality_bar(mini_bundle(tiny_mini), clips=2, context_chunks=2)
    assert set(res) == {"model", "copy_last_frame"}
    assert res["copy_last_frame"]["object_found"] == 1.0  # copying a true frame keeps every object
    assert res["copy_last_frame"]["object_colour_error"] < 0.05
    assert res["model"]["pixel_mse"] > res["copy_last_frame"]["pixel_mse"]  # an untrained model is worse


def test_experiment_lists_its_arms(capsys):
    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    assert "PC only (S=0)" in out and "deep-forcing queries=past" in out and len(out.strip().splitlines()) == 16
