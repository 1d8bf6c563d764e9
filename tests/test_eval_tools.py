"""bench, diagnose, the long-horizon experiment and the mini quality bar, on a tiny random mini model."""

import json

import torch

from deepforcing.cli import main
from deepforcing.eval.diagnostics import AttentionMassProbe, topc_selection_heatmap
from deepforcing.eval.experiment import run_experiment
from deepforcing.mini.bundle import mini_bundle
from deepforcing.mini.quality import quality_bar
from deepforcing.mini.bundle import mini_generator
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
    res = run_experiment(tmp_path, pairs=2, horizon=2, model=str(tiny_mini), labels=["self-forcing", "deep-forcing"],
                         sweep=False, long_horizon=None, log=lambda *_: None)
    assert [r["label"] for r in res["runs"]] == ["world (ground truth)", "self-forcing", "deep-forcing"]
    assert res["runs"][0]["summary"]["object_persistence"][0] > 0.9  # the true world keeps its objects
    assert all(r["frames"] == 42 and r["videos"] == 2 for r in res["runs"])
    table = (tmp_path / "summary.md").read_text()
    assert "| deep-forcing | 2× (42 f) | 2 |" in table
    assert (tmp_path / "drift_curves.png").exists() and (tmp_path / "strips.png").exists()


def test_quality_bar_copy_baseline_is_exact_on_static_parts(tiny_mini):
    res = quality_bar(mini_bundle(tiny_mini), clips=2, context_chunks=2)
    assert set(res) == {"model", "copy_last_frame"}
    assert res["copy_last_frame"]["object_found"] == 1.0  # copying a true frame keeps every object
    assert res["copy_last_frame"]["object_colour_error"] < 0.05
    assert res["model"]["pixel_mse"] > res["copy_last_frame"]["pixel_mse"]  # an untrained model is worse
