"""The leaderboard (`deepforcing experiment --board`): arms stored as they finish and skipped on a rerun, a re-run
arm reproduces its stored numbers, the report holds every arm, ranks tie where intervals overlap, claims are decided
from paired differences, --report-only rebuilds the report; on a tiny random mini model, 2 pairs, short horizons."""

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from deepforcing.cache import POLICIES
from deepforcing.cache.policies import SelfForcing
from deepforcing.cli import main
from deepforcing.eval.kv_cost import formula_bytes
from deepforcing.eval.leaderboard import BoardConfig, run_board
from deepforcing.eval.leaderboard_command import parse_entry_options
from deepforcing.eval.leaderboard_store import WORLD, arm_key, load_arms
from deepforcing.eval.leaderboard_methods import Claim, board_entries, method_info
from deepforcing.eval.leaderboard_report import board_verdicts, cost_verdict, rank_with_ties

LABELS = ["self-forcing", "deep-forcing", "full", "lol"]


@pytest.fixture(scope="module")
def board(tiny_mini, tmp_path_factory):
    out = tmp_path_factory.mktemp("board")
    config = BoardConfig(out=out, pairs=2, horizons=(3.0, 2.0), classes=("1-object",), starts=("prompt", "truth"),
                         labels=LABELS, batch=2, model=str(tiny_mini))
    summary = run_board(config, log=lambda *_: None)
    return config, summary


def test_every_arm_is_stored_and_in_the_report(board):
    config, summary = board
    assert summary["failed"] == [] and len(summary["run"]) == 8
    _, arms, _ = load_arms(config.out)
    by = {(a["start"], a["label"]): a for a in arms}
    assert set(by) == {(None, WORLD)} | {(s, label) for s in ("prompt", "truth") for label in LABELS}
    assert by[("prompt", "full")]["horizons"] == [2.0]  # memory grows with the video: the shortest horizon only
    assert by[("prompt", "self-forcing")]["horizons"] == [2.0, 3.0]
    assert by[("prompt", "lol")]["settings"]["policy"]["rope_jitter"] == 0.8 and by[("prompt", "lol")]["paper_only"]
    assert by[("prompt", "deep-forcing")]["arxiv"] == "2512.05081"
    summary_md = (config.out / "summary.md").read_text()
    for start in ("prompt", "truth"):
        for h in ("2x", "3x"):
            table = summary_md.split(f"### 1-object, start: {start}, {h} the window")[1].split("###")[0]
            expected = LABELS if h == "2x" else [x for x in LABELS if x != "full"]
            for label in expected:
                assert f"| {label} " in table or f"| {label} *(paper only)* |" in table, (start, h, label)
            assert "| full " not in table if h == "3x" else True
    glance = summary_md.split("## At a glance")[1].split("## ")[0]
    assert "| entry | 1-object, prompt | 1-object, truth |" in glance and "at 3x" in glance
    assert all(f"| {label} |" in glance for label in ("self-forcing", "deep-forcing", "lol"))
    assert "| full |" not in glance  # it runs to the shortest horizon only
    for name in ("strips_1-object_prompt_3x.png", "strips_1-object_truth_2x.png", "drift_1-object_truth.png",
                 "quality_vs_cost.png"):
        assert (config.out / name).stat().st_size > 0, name
    # the claim table: Deep Forcing vs Self Forcing decided on every slice, the absent methods listed as not run
    verdicts = json.loads((config.out / "verdicts.json").read_text())
    decided = {(v["start"], v["horizon"]) for v in verdicts if v["a"] == "deep-forcing" and v["b"] == "self-forcing"}
    assert decided == {("prompt", "2x"), ("prompt", "3x"), ("truth", "2x"), ("truth", "3x")}
    assert any(v["a"] == "memrope" and v["verdict"].startswith("not run") for v in verdicts)


def test_cost_columns_measure_the_cache(board):
    config, _ = board
    _, arms, _ = load_arms(config.out)
    by = {(a["start"], a["label"]): a["cost"] for a in arms if a["start"] == "prompt"}
    # every sampled chunk of the first batch is timed: 63 frames (3x) in chunks of 3, the full cache's 42 (2x)
    assert {label: c["chunks_timed"] for (_, label), c in by.items()} == {"self-forcing": 21, "deep-forcing": 21,
                                                                         "lol": 21, "full": 14}
    assert all(c["ms_per_chunk"] > 0 for c in by.values())
    # a bounded cache holds the window; the full cache at 2x holds every frame of the video
    assert by[("prompt", "full")]["kv_bytes_per_video"] > by[("prompt", "self-forcing")]["kv_bytes_per_video"]
    assert by[("prompt", "full")]["wan_1p3b_bf16_bytes"] is None
    sf = by[("prompt", "self-forcing")]["wan_1p3b_bf16_bytes"]
    assert sf == formula_bytes(21, 0) == 2 * 30 * 12 * 128 * 1560 * 21 * 2


def test_truth_start_keeps_the_true_first_frames(board):
    config, _ = board
    _, arms, _ = load_arms(config.out)
    world = next(a for a in arms if a["label"] == WORLD)
    truth = next(a for a in arms if (a["start"], a["label"]) == ("truth", "self-forcing"))
    prompt = next(a for a in arms if (a["start"], a["label"]) == ("prompt", "self-forcing"))
    np.testing.assert_array_equal(truth["strips"]["3x"][0], world["strips"]["3x"][0])  # frame 0 is the true one
    assert not np.array_equal(prompt["strips"]["3x"][0], world["strips"]["3x"][0])


def test_rerun_skips_stored_arms_and_a_rerun_arm_reproduces(board, tiny_mini):
    config, _ = board
    key = arm_key("1-object", "truth", "deep-forcing")
    path = config.out / "arms" / f"{key}.json"
    stored = json.loads(path.read_text())
    path.unlink()
    again = run_board(config, log=lambda *_: None)
    assert again["run"] == [key] and len(again["skipped"]) == 7
    rerun = json.loads(path.read_text())
    assert rerun["videos"] == stored["videos"] and rerun["settings"] == stored["settings"]



def test_other_settings_do_not_reuse_a_stored_arm(board, tmp_path):
    config, _ = board
    import shutil

    shutil.copytree(config.out, tmp_path / "copy")
    other = BoardConfig(**{**config.__dict__, "out": tmp_path / "copy", "horizons": (2.0,),
                           "labels": ["self-forcing"], "starts": ("prompt",)})
    assert run_board(other, log=lambda *_: None)["run"] == [arm_key("1-object", "prompt", "self-forcing")]


def test_report_only_rebuilds_the_report(board, tmp_path):
    config, _ = board
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(config.out, out)
    before = (out / "summary.md").read_text()
    (out / "summary.md").unlink()
    (out / "quality_vs_cost.png").unlink()
    assert main(["experiment", "--board", "--report-only", "--out", str(out)]) == 0
    assert (out / "summary.md").read_text() == before and (out / "quality_vs_cost.png").stat().st_size > 0


def test_ranks_tie_where_intervals_overlap():
    # a: [0.8, 0.9]; b: [0.7, 0.85] overlaps a; c: [0.5, 0.6] below both; d: [0.55, 0.75] overlaps b and c
    ranks = rank_with_ties([(0.85, 0.8, 0.9), (0.78, 0.7, 0.85), (0.55, 0.5, 0.6), (0.65, 0.55, 0.75)])
    assert ranks == [1, 1, 3, 2]
    assert rank_with_ties([(0.2, 0.1, 0.3), (0.5, 0.45, 0.55)], higher_is_better=False) == [1, 2]
    assert rank_with_ties([(float("nan"),) * 3, (0.5, float("nan"), float("nan"))]) == [2, 1]


def _arm(label, persistence, ms, kv, start="prompt"):
    videos = [{"inside": {}, "beyond": {"2x": {"object_persistence": x, "count_accuracy": 0.5,
                                               "object_colour_error": 0.1, "speed_ratio": 1.0}}, "drift": {"2x": {}}}
              for x in persistence]
    return {"label": label, "scene_class": "1-object", "start": start, "horizons": [2.0], "videos": videos,
            "cost": {"ms_per_chunk": ms, "kv_bytes_per_video": kv}}


def test_cost_claims_are_decided_by_paired_differences_and_cost():
    b = _arm("self-forcing", [0.80, 0.60, 0.90, 0.70], ms=140.0, kv=1000)
    same = _arm("x", [0.80, 0.60, 0.90, 0.70], ms=100.0, kv=700)
    claim = Claim("X", "same quality, faster, less memory", "x", "self-forcing", kind="cost", faster=True,
                  less_memory=True)
    row = cost_verdict(claim, same, b, "2x")
    assert row["verdict"] == "supported" and row["speedup"] == pytest.approx(1.4)
    assert row["memory_ratio"] == pytest.approx(0.7)
    worse = _arm("x", [0.70, 0.50, 0.80, 0.60], ms=100.0, kv=700)  # every pair 0.1 lower: significantly worse
    assert cost_verdict(claim, worse, b, "2x")["verdict"] == "contradicted"
    slower = _arm("x", [0.80, 0.60, 0.90, 0.70], ms=150.0, kv=700)
    assert cost_verdict(claim, slower, b, "2x")["verdict"] == "contradicted"
    # a 0.5 % margin: a noisy difference whose interval reaches far below -0.5 % is not shown
    noisy = _arm("x", [0.85, 0.55, 0.95, 0.65], ms=100.0, kv=1000)
    margin = Claim("X", "< 0.5 % drop at +39 % speed", "x", "self-forcing", kind="cost", margin=0.005, faster=True,
                   speedup=1.39)
    row = cost_verdict(margin, noisy, b, "2x")
    assert row["verdict"].startswith("not shown") and row["relative_persistence"]["ci_low"] < -0.005
    assert row["relative_persistence"]["mean"] == pytest.approx(0.0)
    modest = _arm("x", [0.80, 0.60, 0.90, 0.70], ms=120.0, kv=1000)  # x1.17: faster, short of the claimed x1.39
    assert cost_verdict(margin, modest, b, "2x")["verdict"].startswith("partly supported")
    assert cost_verdict(margin, same, b, "2x")["verdict"] == "supported"  # x1.40


def test_board_verdicts_decide_present_claims_and_list_absent_ones():
    arms = [_arm("deep-forcing", [0.9, 0.8, 0.95, 0.85], 100.0, 1000),
            _arm("self-forcing", [0.5, 0.4, 0.6, 0.45], 100.0, 1000)]
    rows = board_verdicts(arms)
    (df,) = [r for r in rows if (r["a"], r["b"]) == ("deep-forcing", "self-forcing")]
    assert df["verdict"] == "supported" and df["metrics"]["object_persistence"]["mean"] == pytest.approx(0.3875)
    memrope = [r for r in rows if r["a"] == "memrope"]
    assert [r["verdict"] for r in memrope] == ["not run (memrope)", "not run (memrope, infinity-rope)"]


@dataclass
class _Later(SelfForcing):
    name: ClassVar[str] = "later-method"
    source: ClassVar[str] = "arXiv 2699.01234; someone/later@abcdef1 model.py"


@dataclass
class _Broken(SelfForcing):
    name: ClassVar[str] = "broken-method"

    def validate(self, chunk_frames: int) -> None:
        raise RuntimeError("needs a calibration file")


def test_a_registered_policy_joins_the_board_and_a_failing_one_is_reported(tiny_mini, tmp_path):
    POLICIES.register(_Later)
    POLICIES.register(_Broken)
    try:
        entries = {e.label: e for e in board_entries()}
        assert "later-method" in entries and entries["lol"].paper_only and entries["full"].short
        info = method_info(entries["later-method"])
        assert (info.arxiv, info.release) == ("2699.01234", "someone/later@abcdef1")
        config = BoardConfig(out=tmp_path, pairs=2, horizons=(2.0,), classes=("2-object",), starts=("prompt",),
                             labels=["broken-method"], batch=2, model=str(tiny_mini))
        summary = run_board(config, log=lambda *_: None)
        key = arm_key("2-object", "prompt", "broken-method")
        assert summary["failed"] == [key] and summary["run"] == []
        assert "needs a calibration file" in json.loads((tmp_path / "arms" / f"{key}.failed.json").read_text())["error"]
        assert f"`{key}`: RuntimeError: needs a calibration file" in (tmp_path / "summary.md").read_text()
    finally:
        POLICIES.unregister("later-method")
        POLICIES.unregister("broken-method")


def test_board_command_checks_its_options_and_lists_entries(capsys):
    for argv, message in ((["--classes", "3-object"], "--classes must name scene classes"),
                          (["--starts", "image"], "--starts must name start modes"),
                          (["--policies", "nope"], "unknown board entry 'nope'"),
                          (["--pairs", "65"], "--pairs must be in 2..64"),
                          (["--start", "truth"], "use --starts")):
        assert main(["experiment", "--board", *argv]) == 2
        assert message in capsys.readouterr().err, argv
    assert parse_entry_options(["forcing-kv:head_profile=h.json", "forcing-kv:patches=4", "lol:rope-jitter=0.5"]) == {
        "forcing-kv": {"head_profile": "h.json", "patches": 4}, "lol": {"rope_jitter": 0.5}}
    assert main(["experiment", "--board", "--entry-option", "forcing-kv:nope=1"]) == 2
    assert "policy 'forcing-kv' has no option nope" in capsys.readouterr().err
    assert main(["experiment", "--board", "--entry-option", "later:patches=1"]) == 2
    assert "--entry-option names unknown board entry 'later'" in capsys.readouterr().err
    assert main(["experiment", "--board", "--list"]) == 0
    out = capsys.readouterr().out
    assert "lol" in out and "paper only" in out and "2601.16914" in out
    assert len(out.strip().splitlines()) == len(board_entries())


def test_a_policy_needing_a_per_checkpoint_file_gets_it_made_for_the_model(tiny_mini, tmp_path, capsys):
    # forcing-kv needs its head profile (deepforcing calibrate makes it once per model) and, on 16 tokens per frame,
    # a patch count that divides them
    config = BoardConfig(out=tmp_path, pairs=2, horizons=(2.0,), classes=("1-object",), starts=("prompt",),
                         labels=["forcing-kv"], batch=2, model=str(tiny_mini),
                         entry_options={"forcing-kv": {"patches": 4}})
    summary = run_board(config, log=lambda *_: None)
    assert summary["failed"] == [] and summary["run"] == [arm_key("1-object", "prompt", "forcing-kv")]
    (profile,) = (tmp_path / "calibration").glob("forcing-kv_*_heads.json")
    assert [p.name for p in profile.parent.iterdir()] == [profile.name]  # written whole: no temporary file left
    lines = capsys.readouterr().out.splitlines()
    wrote = [line for line in lines if line.startswith("wrote ")]  # calibrate's own lines name the final file
    assert wrote and all(str(profile) in line and "partial" not in line for line in wrote), wrote
    assert json.loads(profile.read_text())["num_layers"] == 2
    _, arms, _ = load_arms(tmp_path)
    arm = next(a for a in arms if a["label"] == "forcing-kv")
    assert arm["settings"]["policy"]["head_profile"] == str(profile) and arm["settings"]["policy"]["patches"] == 4
    assert run_board(config, log=lambda *_: None)["skipped"] == [arm_key("1-object", "prompt", "forcing-kv")]


def test_a_failed_calibration_does_not_stop_the_board(tiny_mini, tmp_path, monkeypatch):
    import deepforcing.eval.calibrate as calibrate

    def broken(args):
        raise RuntimeError("calibration crashed")

    monkeypatch.setattr(calibrate, "run_calibrate", broken)
    lines = []
    config = BoardConfig(out=tmp_path, pairs=2, horizons=(2.0,), classes=("1-object",), starts=("prompt",),
                         labels=["triattention"], batch=2, model=str(tiny_mini))
    summary = run_board(config, log=lines.append)
    assert any("calibrating triattention FAILED (RuntimeError: calibration crashed)" in x for x in lines)
    assert not list((tmp_path / "calibration").glob("triattention_*"))  # nothing half-made in place
    # its release default scores nothing (budget = sink + last frames), so it runs without the statistics
    assert summary["run"] == [arm_key("1-object", "prompt", "triattention")]
    _, arms, _ = load_arms(tmp_path)
    assert next(a for a in arms if a["label"] == "triattention")["settings"]["policy"]["calibration"] is None


def test_the_overview_orders_entries_by_mean_count_accuracy_at_the_longest_horizon():
    from deepforcing.eval.leaderboard_report import overview_lines

    def arm(label, count, scene_class="1-object", start="prompt"):
        videos = [{"beyond": {"2x": {"object_persistence": 1.0, "count_accuracy": c}}} for c in count]
        return {"label": label, "scene_class": scene_class, "start": start, "horizons": [1.0, 2.0],
                "videos": videos, "cost": {"ms_per_chunk": 5.0, "kv_bytes_per_video": 1, "wan_1p3b_bf16_bytes": 2**30}}

    arms = [arm("a", [0.2, 0.4]), arm("b", [0.9, 0.7]), arm("a", [0.9, 0.9], "2-object"),
            arm("b", [0.1, 0.1], "2-object"), arm("c", [1.0, 1.0], "hard")]
    lines = overview_lines(arms, {"settings": {"horizons": [1.0, 2.0]}})
    table = [x for x in lines if x.startswith("| ")]
    assert table[0] == ("| entry | 1-object, prompt | 2-object, prompt | mean count | CPU ms / chunk | "
                        "KV GiB (1.3B bf16) |")
    # a: (0.3 + 0.9) / 2 = 0.6 ahead of b: (0.8 + 0.1) / 2 = 0.45; the hard class is not a headline slice
    assert table[1] == "| a | 0.300 / 1.000 | 0.900 / 1.000 | 0.600 | 5 | 1.00 |"
    assert table[2].startswith("| b | 0.800 / 1.000 | 0.100 / 1.000 | 0.450 |")
    assert len(table) == 3
