"""Streaming rollout, prompt timeline, Python API and the generate CLI on a tiny random mini model."""

import json
import os
import subprocess
import sys

import av
import pytest
import torch

from deepforcing.cli import main
from deepforcing.mini.bundle import mini_generator
from deepforcing.pipeline.generate import VideoGenerator
from deepforcing.pipeline.timeline import TimelineEntry, load_timeline, parse_timeline, schedule_chunks

from conftest import TINY_MINI as TINY
PROMPT = "a red circle on a dark background"



@pytest.fixture
def generator(tiny_mini):
    torch.set_num_threads(1)
    return mini_generator(tiny_mini)


def frames_of(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


# -------------------------------------------------------------------- timeline
def test_compact_timeline_and_schedule():
    tl = parse_timeline("1s: a red circle; 6f: a blue square; a green triangle")
    assert tl == [TimelineEntry("a red circle", seconds=1.0), TimelineEntry("a blue square", frames=6),
                  TimelineEntry("a green triangle")]
    active = schedule_chunks(tl, 12, 3, lambda s: round(s * 16))
    assert active == [0] * 6 + [1, 1] + [2] * 4  # 16 frames -> switch at chunk 6 (frame 18), +6 frames -> chunk 8


def test_timeline_file_and_errors(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# demo\n2s: a red circle\n3s: a blue square\n")
    assert [e.prompt for e in load_timeline(f)] == ["a red circle", "a blue square"]
    j = tmp_path / "t.json"
    j.write_text(json.dumps([{"prompt": "a", "seconds": 1}, {"prompt": "b", "frames": 9}]))
    assert load_timeline(j)[1].frames == 9
    with pytest.raises(ValueError, match="only the last timeline entry may omit"):
        parse_timeline("a red circle; 2s: a blue square")
    with pytest.raises(FileNotFoundError, match="timeline file not found"):
        load_timeline(tmp_path / "missing.txt")


@pytest.mark.parametrize("head", ["1e9s", "-5s", "inf s", "nan", "10 min", "2m", "1e3f"])
def test_a_duration_that_is_not_one_is_refused_not_read_as_prompt_words(head, tmp_path):
    with pytest.raises(ValueError, match=f"timeline entry 2: '{head}' is not a duration; write seconds like '10s'"):
        parse_timeline(f"2s: a red circle; {head}: a blue square")
    f = tmp_path / "t.txt"
    f.write_text(f"{head}: a blue square\n")
    with pytest.raises(ValueError, match="line 1: .* is not a duration"):
        load_timeline(f)
    # words before a colon that are no duration stay the prompt (a real model's prompt may hold a colon)
    assert parse_timeline("3 cats: on a mat")[0].prompt == "3 cats: on a mat"


# --------------------------------------------------------------------- rollout
def collect(generator, **kw):
    return torch.cat([c.latents for c in generator.stream(PROMPT, **kw)], dim=2)


def test_two_videos_in_one_process_equal_each_alone(generator, tiny_mini):
    a1 = collect(generator, latent_frames=30, policy="deep-forcing", seed=1)
    b1 = collect(generator, latent_frames=30, policy="deep-forcing", seed=2)
    fresh = mini_generator(tiny_mini)
    b_alone = collect(fresh, latent_frames=30, policy="deep-forcing", seed=2)
    assert torch.equal(b1, b_alone)
    assert not torch.equal(a1, b1)


def test_policies_agree_inside_the_window_and_differ_after(generator):
    frames = 36
    out = {p: collect(generator, latent_frames=frames, policy=p, seed=3) for p in ("self-forcing", "deep-forcing", "full")}
    inside = 21
    for p in ("deep-forcing", "full"):
        assert torch.equal(out[p][:, :, :inside], out["self-forcing"][:, :, :inside])
        assert not torch.equal(out[p][:, :, inside:], out["self-forcing"][:, :, inside:])


@pytest.mark.slow
def test_rollout_past_1100_latent_frames_with_bounded_memory(generator):
    stream = generator.stream(PROMPT, latent_frames=1110, policy="deep-forcing", seed=0)
    capacities, lengths = [], []
    for chunk in stream:
        cache = chunk.cache
        capacities.append(cache.layers[0].store.capacity)
        lengths.append(cache.length)
        assert torch.isfinite(chunk.latents).all()
    assert len(lengths) == 370 and chunk.start_frame == 1107  # far past the release's 1024-frame RoPE table
    assert len(set(capacities)) == 1  # pre-allocated once, never grows
    assert max(lengths) == 21 * TINY.tokens_per_frame and max(lengths[7:]) == 19 * TINY.tokens_per_frame


def test_prompt_switch_recaches_recent_window(generator):
    tl = [TimelineEntry("a red circle", frames=27), TimelineEntry("a blue square on a dark background")]
    chunks = list(generator.stream(tl, latent_frames=36, policy="deep-forcing", seed=0))
    assert [c.prompt for c in chunks] == ["a red circle"] * 9 + ["a blue square on a dark background"] * 3
    single = list(generator.stream("a red circle", latent_frames=36, policy="deep-forcing", seed=0))
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(chunks[:9], single[:9]))
    assert not torch.equal(chunks[9].latents, single[9].latents)
    cache = chunks[-1].cache
    assert cache.length <= 21 * TINY.tokens_per_frame


# ------------------------------------------------------------------------- CLI
def test_cli_generate_end_to_end(tiny_mini, tmp_path, capsys):
    out = tmp_path / "video.mp4"
    code = main(["generate", "a blue square on a dark background", "--model", str(tiny_mini), "--frames", "12",
                 "--policy", "deep-forcing", "-o", str(out), "--quiet", "--save-latents", "--save-frames"])
    assert code == 0
    frames = frames_of(out)
    assert len(frames) == 12 and frames[0].shape == (16 * 8, 16 * 8, 3)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["status"] == "complete" and meta["policy"]["policy"] == "deep-forcing"
    assert meta["chunks"] == {"planned": 4, "written": 4} and meta["seed"] == 0
    assert out.with_suffix(".latents.safetensors").exists()
    assert len(list((tmp_path / "video").glob("*.png"))) == 12
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("args, policy, events", [
    # deep-sink at a non-default sink and window: 7 rolls after the window of 12 fills (chunks 4..10), sink moves
    (["--policy", "deep-sink", "--sink", "4", "--window", "12"], {"policy": "deep-sink", "sink": 4, "window": 12},
     {"append": 4, "roll": 7}),
    # deep-forcing at non-default sizes: budget 9 of a window 12 -> compress every other chunk from chunk 4
    (["--policy", "deep-forcing", "--sink", "3", "--budget", "9", "--recent", "3", "--window", "12"],
     {"policy": "deep-forcing", "sink": 3, "budget": 9, "recent": 3, "window": 12}, {"append": 7, "compress": 4}),
])
def test_cli_non_default_policy_reaches_the_cache(tiny_mini, tmp_path, args, policy, events):
    """The CLI's policy and sizes are the ones the cache runs: the sidecar records both the policy and what the
    cache did (a CLI that dropped the sizes, or fell back to the default policy, fails here)."""
    out = tmp_path / "p.mp4"
    assert main(["generate", "a red circle", "--model", str(tiny_mini), "--frames", "33", "-o", str(out),
                 "--quiet", *args]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert {k: meta["policy"][k] for k in policy} == policy
    assert meta["cache"]["events"] == events
    if policy["policy"] == "deep-sink":
        assert meta["cache"]["frames_at_end"] == 12 and meta["cache"]["sink_shift_frames"] > 0
    else:
        assert meta["cache"]["frames_at_end"] in (9, 12)


def test_cli_timeline_and_prompt_file(tiny_mini, tmp_path):
    out = tmp_path / "tl.mp4"
    assert main(["generate", "--timeline", "6f: a red circle; a green square", "--model", str(tiny_mini),
                 "--frames", "12", "-o", str(out), "--quiet"]) == 0
    assert [e["prompt"] for e in json.loads(out.with_suffix(".json").read_text())["timeline"]] == [
        "a red circle", "a green square"]
    pf = tmp_path / "prompts.txt"
    pf.write_text("a red circle\na blue square\n")
    folder = tmp_path / "batch"
    assert main(["generate", "--prompt-file", str(pf), "--model", str(tiny_mini), "--frames", "6",
                 "-o", str(folder), "--quiet"]) == 0
    assert [_unhashed(p.name) for p in sorted(folder.glob("*.mp4"))] == ["0000_a_red_circle_seed0.mp4",
                                                                         "0001_a_blue_square_seed1.mp4"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--policy", "deep-forcin"], "unknown cache policy"),
        (["--policy", "deep-forcing", "--budget", "12"], "raise --budget"),
        (["--policy", "deep-sink", "--sink", "30"], "lower --sink"),
        (["--frames", "0"], "--frames must be positive"),
        (["--seconds", "-2"], "--seconds must be positive"),
        (["-o", "video.avi"], "must be an .mp4"),
        (["--model", "/nonexistent/folder"], "not found"),
        (["--prompt-file", "/nonexistent.txt"], "prompt file not found"),
        (["--timeline", "a red circle; 2s: a blue square"], "only the last timeline entry"),
        (["a purple circle"], "purple"),
        (["--device", "cuda:0"], "CUDA is not available"),
    ],
)
def test_cli_bad_inputs(tiny_mini, tmp_path, capsys, argv, message):
    base = ["generate", "--quiet", "-o", str(tmp_path / "x.mp4"), "--model", str(tiny_mini)]
    if "--seconds" not in argv and "--frames" not in argv:
        base += ["--frames", "3"]
    if torch.cuda.is_available() and "cuda:0" in argv:
        pytest.skip("CUDA present")
    code = main(base + argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists()


def test_killed_generation_leaves_playable_partial_file(tiny_mini, tmp_path):
    """A run killed mid-way keeps every finished chunk in <out>.partial.mp4 and never writes <out>."""
    out = tmp_path / "killed.mp4"
    script = f"""
import os, torch
from deepforcing.mini.bundle import mini_generator
g = mini_generator({str(tiny_mini)!r})
def on_chunk(c):
    if c.index == 2:
        os._exit(9)
g.generate("a red circle", output={str(out)!r}, latent_frames=30, on_chunk=on_chunk)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert not out.exists()
    assert len(frames_of(out.with_name("killed.partial.mp4"))) == 9  # chunks 0-2 (on_chunk runs after the write)


def test_prompt_file_is_sharded_across_two_gloo_ranks(tiny_mini, tmp_path):
    """torchrun with 2 CPU processes (gloo): each rank renders its own share of the prompt file."""
    pf = tmp_path / "prompts.txt"
    pf.write_text("a red circle\na blue square\na green triangle\n")
    folder = tmp_path / "ranks"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "deepforcing.cli", "generate", "--prompt-file", str(pf), "--model", str(tiny_mini),
           "--frames", "6", "-o", str(folder), "--quiet", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [_unhashed(p.name) for p in sorted(folder.glob("*.mp4"))] == [
        "0000_a_red_circle_seed0.mp4", "0001_a_blue_square_seed1.mp4", "0002_a_green_triangle_seed2.mp4"]
    seeds = {json.loads(p.read_text())["seed"] for p in folder.glob("*.json")}
    assert seeds == {0, 1, 2}
    assert proc.stdout.count("wrote ") == 3  # each video rendered by exactly one rank (not 2 x 3)


def _unhashed(name: str) -> str:
    """Default names carry an 8-hex hash of the full request before the seed; drop it to compare."""
    import re

    assert re.search(r"_[0-9a-f]{8}_seed\d+\.mp4$", name), name
    return re.sub(r"_[0-9a-f]{8}(_seed\d+\.mp4)$", r"\1", name)


@pytest.mark.parametrize("argv, expected", [
    (["--policy", "deep-sink", "--sink", "7"], {"policy": "deep-sink", "sink": 7}),
    (["--policy", "self-forcing", "--window", "9"], {"policy": "self-forcing", "window": 9}),
    ([], {"policy": "deep-forcing", "sink": 10, "budget": 16, "recent": 4}),  # the model's default
])
def test_cli_policy_and_sizes_reach_the_rollout(tiny_mini, tmp_path, argv, expected):
    out = tmp_path / "v.mp4"
    assert main(["generate", PROMPT, "--model", str(tiny_mini), "--frames", "6", "-o", str(out), "--quiet",
                 *argv]) == 0
    policy = json.loads(out.with_suffix(".json").read_text())["policy"]
    assert {k: policy.get(k) for k in expected} == expected, policy


def _switched_rollout(generator, recache):
    import dataclasses

    bundle = generator.bundle
    gen = VideoGenerator(dataclasses.replace(bundle, sampling=dataclasses.replace(bundle.sampling, recache=recache)))
    policy = gen.resolve_policy("attention-sink", sink=3, window=12)  # LongLive's cache: 3-frame sink, 12 frames
    rollout = gen.open_rollout("a red circle", policy, seed=0, max_frames=30)
    for _ in range(6):  # 18 frames: past the 12-frame window
        rollout.step()
    before = [layer.store.keys[:, :, : layer.store.length].clone() for layer in rollout.cache.layers]
    rollout.switch_prompt(gen.context("a blue square on a dark background"), keep_sink=True)
    return rollout, before


def test_joint_recache_is_one_pass_over_the_kept_frames_with_the_sink_untouched(generator):
    """LongLive's prompt switch (``recache='joint'``): the frames after the sink are re-encoded in one clean pass in
    which every frame sees all of them; ``chunkwise`` re-encodes them chunk by chunk, causally."""
    tpf = TINY.tokens_per_frame
    joint, before = _switched_rollout(generator, "joint")
    chunkwise, _ = _switched_rollout(generator, "chunkwise")
    for r in (joint, chunkwise):
        assert r.cache.length == 12 * tpf  # the old 3-frame sink + the 9 re-cached frames
        for layer, old in zip(r.cache.layers, before):
            assert torch.equal(layer.store.keys[:, :, : 3 * tpf], old[:, :, : 3 * tpf])  # sink keeps the old prompt
    first = slice(3 * tpf, 6 * tpf)  # the first re-cached chunk
    j0, c0 = joint.cache.layers[0].store.keys, chunkwise.cache.layers[0].store.keys
    # layer 0's keys come before any attention: the same in both modes
    assert torch.allclose(j0[:, :, : 12 * tpf], c0[:, :, : 12 * tpf], atol=1e-6)
    # deeper, the first re-cached chunk saw the later frames only in the joint pass
    j1, c1 = joint.cache.layers[1].store.keys, chunkwise.cache.layers[1].store.keys
    assert not torch.allclose(j1[:, :, first], c1[:, :, first], atol=1e-4)
    assert not torch.equal(joint.step().latents, chunkwise.step().latents)
