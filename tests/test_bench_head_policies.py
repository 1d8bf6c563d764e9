"""``deepforcing bench`` reports a per-head policy with its per-checkpoint file (issue 24 item 3): the policy options
pass to the named policies that have them (``--policies self-forcing,forcing-kv --head-profile heads.json``)."""

from __future__ import annotations

import json

import pytest

from deepforcing.cli import main
from deepforcing.eval.bench import policy_options_for


def test_bench_reports_forcing_kv_with_its_head_profile(tiny_mini, tmp_path, capsys):
    heads = tmp_path / "heads.json"
    assert main(["calibrate", "--policy", "forcing-kv", "--out", str(heads), "--model", str(tiny_mini)]) == 0
    capsys.readouterr()
    # the tiny mini model has 16 tokens per frame: 4 patches of 4 tokens, 4 of the 12 candidates kept (1 frame)
    argv = ["bench", "--model", str(tiny_mini), "--policies", "self-forcing,forcing-kv", "--horizons", "4",
            "--head-profile", str(heads), "--patches", "4", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| forcing-kv | 4x" in out
    rows = {r["policy"]: r for r in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    sf, fkv = rows["self-forcing"], rows["forcing-kv"]
    assert fkv["chunks"] == sf["chunks"] >= 9
    tpf = 16
    # after the split: layer 0 whole (sink 1 + last 1 + chunk 3 = 5 frames), layer 1 static heads 5 frames, dynamic
    # heads 6 (sink, 4 kept patches = 1 frame, ring 1, chunk 3): between 5 and 6 frames per head
    assert 5 * tpf <= fkv["cache_tokens_last"] <= 6 * tpf
    assert fkv["cache_tokens_last"] < sf["cache_tokens_last"] and fkv["kv_bytes"] < sf["kv_bytes"]


def test_bench_without_the_profile_is_refused_before_weights_load(tiny_mini, capsys):
    assert main(["bench", "--model", str(tiny_mini), "--policies", "forcing-kv", "--horizons", "1"]) == 2
    assert "needs --head-profile" in capsys.readouterr().err


def test_options_go_to_the_policies_that_have_them():
    got = policy_options_for(["self-forcing", "forcing-kv", "triattention"],
                             {"head_profile": "h.json", "calibration": "s.pt", "patches": None})
    assert got == {"self-forcing": {}, "forcing-kv": {"head_profile": "h.json"}, "triattention": {"calibration": "s.pt"}}
    with pytest.raises(ValueError, match="--head-profile: no option of self-forcing"):
        policy_options_for(["self-forcing"], {"head_profile": "h.json"})
