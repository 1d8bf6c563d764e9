"""Bad requests and faults of `deepforcing generate`: exit code 2, one line that says what to do, and no output file.

Every case here is refused before any model loads (the request is validated whole first), except the NaN model,
which is found by the per-chunk finite check.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from deepforcing.cli import main
from deepforcing.mini.model import MiniModel
from deepforcing.generate_command import output_lock


def _generate(tmp_path, capsys, argv, tiny_mini, env=None, monkeypatch=None):
    if env and monkeypatch is not None:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    code = main(["generate", "--quiet", "--frames", "6", "--model", str(tiny_mini), *argv])
    err = capsys.readouterr().err
    return code, err


BAD = [
    (["a red circle", "--prompt", "a blue square"], "give the prompt once"),
    (["--dtype", "bfloat16"], "--dtype only applies to real models"),
    (["--checkpoint", "x.pt"], "--checkpoint only applies to real models"),
    (["--resolution", "64x64", "--preset", "self-forcing"], "--preset, --resolution only apply to real models"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--device", "quantum"], "unknown --device 'quantum'"),
    (["-o", "OUT/adir.mp4"], "is a folder"),
    (["-o", "OUT/exists.mp4"], "already exists; pass --overwrite"),
    (["-o", "OUT/afile.txt/x.mp4"], "cannot write to the folder"),
    (["--prompt-file", "OUT/comments.txt"], "holds no prompts"),
    (["--prompt-file", "OUT/badline.txt", "-o", "OUT/batch"], "unknown word 'purple'"),
    (["--timeline", "OUT/huge.json"], "longer than 86400 s"),
    (["--policy", "self-forcing", "--window", "0"], "window"),
]


@pytest.fixture()
def out_dir(tmp_path):
    (tmp_path / "exists.mp4").write_bytes(b"keep me")
    (tmp_path / "adir.mp4").mkdir()
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "comments.txt").write_text("# only a comment\n\n")
    (tmp_path / "badline.txt").write_text("a red circle\na blue square\na purple circle\n")
    (tmp_path / "huge.json").write_text(json.dumps([{"prompt": "a red circle", "seconds": 1e308}]))
    return tmp_path


@pytest.mark.parametrize("argv, message", BAD)
def test_bad_request_exits_2_with_one_line_and_writes_nothing(tiny_mini, out_dir, capsys, argv, message):
    before = {p: p.stat().st_size for p in out_dir.rglob("*") if p.is_file()}
    argv = [a.replace("OUT", str(out_dir)) for a in argv]
    code, err = _generate(out_dir, capsys, argv, tiny_mini)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepforcing generate: error:"), err
    assert message in lines[0]
    after = {p: p.stat().st_size for p in out_dir.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing overwritten (exists.mp4 keeps its bytes)
    assert not list(out_dir.rglob("*.mp4.lock"))


@pytest.mark.parametrize("seconds", ["inf", "nan", "1e9", "-2"])
def test_impossible_lengths_are_refused_before_allocating(tiny_mini, tmp_path, capsys, seconds):
    code = main(["generate", "--quiet", "--seconds", seconds, "--model", str(tiny_mini), "-o", str(tmp_path / "v.mp4")])
    assert code == 2
    assert "--seconds must be positive and at most 86400" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("env, message", [({"WORLD_SIZE": "abc"}, "must be whole numbers"),
                                          ({"WORLD_SIZE": "2", "RANK": "5"}, "0 <= RANK < WORLD_SIZE")])
def test_bad_distributed_environment(tiny_mini, tmp_path, capsys, monkeypatch, env, message):
    code, err = _generate(tmp_path, capsys, ["-o", str(tmp_path / "v.mp4")], tiny_mini, env, monkeypatch)
    assert code == 2 and message in err
    assert not list(tmp_path.iterdir())


def test_corrupt_model_file_is_named(tmp_path, capsys, tiny_mini):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(tiny_mini.read_bytes()[:1000])
    code = main(["generate", "--quiet", "--frames", "3", "--model", str(bad), "-o", str(tmp_path / "v.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "cut.safetensors is neither a deepforcing mini model file" in err
    assert not (tmp_path / "v.mp4").exists()


def test_a_held_lock_refuses_a_second_writer_and_a_stale_one_is_taken_over(tiny_mini, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    with output_lock(out):  # this process holds it: a concurrent run must refuse
        code, err = _generate(tmp_path, capsys, ["-o", str(out)], tiny_mini)
        assert code == 2 and f"pid {os.getpid()}" in err and "is writing" in err
    assert not out.exists()
    (tmp_path / "v.mp4.lock").write_text("999999999")  # a pid that does not exist: stale
    code, _ = _generate(tmp_path, capsys, ["-o", str(out)], tiny_mini)
    assert code == 0 and out.exists() and not (tmp_path / "v.mp4.lock").exists()


def test_overwrite_replaces_and_default_names_do_not_collide(tiny_mini, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # two prompts sharing their first 48 characters got the same default name before
    a = "a red circle and a blue square and a green triangle on a dark background"
    b = "a red circle and a blue square and a green triangle on a plain white background"
    for prompt in (a, b):
        assert main(["generate", prompt, "--quiet", "--frames", "3", "--model", str(tiny_mini)]) == 0
    assert len(list((tmp_path / "outputs").glob("*.mp4"))) == 2
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old")
    assert main(["generate", "--quiet", "--frames", "3", "--model", str(tiny_mini), "-o", str(out),
                 "--overwrite"]) == 0
    assert out.stat().st_size > 100
    assert oct(out.with_suffix(".json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not 0600 any more


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_nan_weights_stop_with_a_clear_error_and_no_final_video(tiny_mini, tmp_path, capsys):
    model = MiniModel.load(tiny_mini)
    with torch.no_grad():
        model.transformer.proj_out.weight.fill_(float("nan"))
    bad = tmp_path / "nan.safetensors"
    model.save(bad)
    out = tmp_path / "v.mp4"
    code = main(["generate", "--quiet", "--frames", "6", "--model", str(bad), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "NaN/Inf latents in chunk 0" in err
    assert not out.exists() and not (tmp_path / "v.partial.mp4").exists()


def test_timeline_without_length_runs_its_own_length_and_may_be_long(tiny_mini, tmp_path, capsys):
    timeline = "3f: a red circle; " * 30 + "3f: a blue square"  # 600+ characters: not tried as a file name
    out = tmp_path / "t.mp4"
    assert main(["generate", "--quiet", "--timeline", timeline, "--model", str(tiny_mini), "-o", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["latent_frames"] == 31 * 3 and meta["status"] == "complete" and meta["threads"] == 1


def test_a_prompt_may_contain_a_semicolon_for_real_models(tiny_mini):
    from deepforcing.mini.bundle import mini_generator

    gen = mini_generator(tiny_mini)
    assert [e.prompt for e in gen._timeline("a cat; then a dog")] == ["a cat; then a dog"]
    assert [e.prompt for e in gen._timeline("2s: a cat; a dog")] == ["a cat", "a dog"]


@pytest.mark.slow
def test_sigterm_keeps_the_finished_chunks_and_a_sidecar(tiny_mini, tmp_path):
    out = tmp_path / "v.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "deepforcing.cli", "generate", "--quiet", "--frames", "30000",
                             "--model", str(tiny_mini), "-o", str(out)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    partial = tmp_path / "v.partial.mp4"
    deadline = time.time() + 120
    while time.time() < deadline and not (partial.exists() and partial.stat().st_size > 2000):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: the finished chunks are in" in err
    assert partial.exists() and not out.exists()
    meta = json.loads((tmp_path / "v.partial.json").read_text())
    assert meta["status"] == "interrupted" and meta["chunks"]["written"] >= 1


OTHER_COMMANDS = [
    (["bench", "--horizons", "0"], "--horizons must be positive"),
    (["bench", "--horizons=-1,2"], "--horizons must be positive"),
    (["bench", "--threads", "0", "--horizons", "1"], "--threads must be at least 1"),
    (["bench", "--policies", "nope", "--horizons", "1"], "unknown cache policy 'nope'"),
    (["experiment", "--pairs", "0"], "--pairs must be at least 2"),
    (["experiment", "--pairs", "257"], "--pairs must be at most 256"),
    (["experiment", "--horizons", "-1"], "--horizons must be comma-separated multiples"),
    (["experiment", "--horizons", "12,inf"], "--horizons must be comma-separated multiples"),
    (["experiment", "--horizons", "1"], "each above 1"),
    (["experiment", "--policies", "self-forcing,nope"], "unknown arm(s) 'nope'"),
    (["experiment", "--report-only"], "--report-only needs a finished run"),
    (["diagnose", "--frames", "0"], "--frames must be positive"),
    (["diagnose", "--policy", "nope"], "unknown cache policy"),
    (["eval", "OUT/junk.mp4"], "cannot open"),
    (["eval", "OUT/missing.mp4"], "video file not found"),
    (["plan", "--chunks", "0"], "--chunks must be positive"),
    (["train-mini", "--euler-steps", "1000,x"], "--euler-steps must be comma-separated numbers"),
    (["train-mini", "--self-context-sigma", "0.5"], "--self-context-sigma must be LO,HI"),
    (["train-mini", "--self-context-sigma", "0.9,0.3"], "0 < LO <= HI <= 1"),
    (["train-mini", "--self-context", "1.5"], "0 <= --self-context <= 1"),
]


@pytest.mark.parametrize("argv, message", OTHER_COMMANDS)
def test_other_subcommands_refuse_bad_arguments(tmp_path, capsys, argv, message):
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    code = main([*argv, *(["--out", str(tmp_path / "out")] if argv[0] in ("bench", "experiment", "diagnose") else [])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_more_bad_requests(tiny_mini, tmp_path, capsys):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("a red circle \xe9\n".encode("latin-1"))
    pf = tmp_path / "two.txt"
    pf.write_text("a red circle\na blue square\n")
    cases = [
        (["--prompt-file", str(latin)], "is not UTF-8 text"),
        (["--prompt-file", str(pf), "-o", str(tmp_path / "one.mp4")], "--output is a folder"),
        (["--seconds", "nan"], "--seconds must be positive"),
    ]
    for argv, message in cases:
        code = main(["generate", "--quiet", "--model", str(tiny_mini), *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.txt", "two.txt"]


def test_disk_full_keeps_the_finished_chunks_and_says_where(tiny_mini, tmp_path, capsys, monkeypatch):
    import errno

    from deepforcing.pipeline import writer

    real_write, calls = writer.Mp4StreamWriter.write, []

    def failing_write(self, frames):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, frames)

    monkeypatch.setattr(writer.Mp4StreamWriter, "write", failing_write)
    out = tmp_path / "v.mp4"
    code = main(["generate", "--quiet", "--frames", "12", "--model", str(tiny_mini), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "the disk is full; free space" in err and "v.partial.mp4" in err  # what to do, not errno
    assert not out.exists() and (tmp_path / "v.partial.mp4").exists() and not (tmp_path / "v.mp4.lock").exists()
    assert json.loads((tmp_path / "v.partial.json").read_text())["status"] == "failed"  # the sidecar says so


def test_a_stale_partial_sidecar_is_removed_by_a_later_success(tiny_mini, tmp_path):
    out = tmp_path / "v.mp4"
    (tmp_path / "v.partial.json").write_text('{"status": "interrupted"}')
    assert main(["generate", "--quiet", "--frames", "3", "--model", str(tiny_mini), "-o", str(out)]) == 0
    assert out.exists() and not (tmp_path / "v.partial.json").exists()


def test_huge_window_is_sized_to_the_video_and_refused_when_it_cannot_fit(tiny_mini, tmp_path, capsys, monkeypatch):
    from deepforcing.pipeline import generate

    out = tmp_path / "short.mp4"  # a 6-frame video allocates 6 frames, whatever the window
    assert main(["generate", "--quiet", "--frames", "6", "--model", str(tiny_mini), "--policy", "self-forcing",
                 "--window", "99999999999", "-o", str(out)]) == 0
    monkeypatch.setattr(generate, "available_memory_bytes", lambda device: 2**30)  # a 1 GiB machine
    code = main(["generate", "--quiet", "--frames", "9000000", "--model", str(tiny_mini), "--policy", "self-forcing",
                 "--window", "99999999999", "-o", str(tmp_path / "long.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "the KV cache of this request needs" in err and "1.0 GiB is free" in err
    assert not (tmp_path / "long.mp4").exists() and not (tmp_path / "long.partial.mp4").exists()


def test_truncated_mini_file_through_the_api_names_the_file(tiny_mini, tmp_path):
    from deepforcing.mini.bundle import mini_generator

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny_mini.read_bytes()[:500])
    with pytest.raises(ValueError, match="cut.safetensors: cannot be read as safetensors"):
        mini_generator(cut)
