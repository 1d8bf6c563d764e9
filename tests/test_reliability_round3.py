"""Issue 23, classes 1, 2, 3 and 6, by fault injection: a full disk (a small tmpfs where mounting is allowed, else a
patched free-space reading or a failing write), the Python API held to the CLI's limits, a raising ``on_chunk``,
unwritable outputs and bad numbers for every command, Ctrl-C while importing, long prompts, and presets the CLI
cannot finish (LongLive without its LoRA, ``--no-restart`` where nothing restarts)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid
from pathlib import Path

import av
import numpy as np
import pytest

from deepforcing.cli import main
from deepforcing.pipeline import writer
from deepforcing.pipeline.validation import RequestError, error_line, shorten


def _decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _noise(frames: int, seed: int) -> np.ndarray:  # incompressible: every chunk costs its full size
    return np.random.default_rng(seed).integers(0, 256, (frames, 64, 64, 3), dtype=np.uint8)


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KB tmpfs (root only), unmounted afterwards; skipped where mounting is not allowed."""
    folder = tmp_path / "disk"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def generator(tiny_mini):
    from deepforcing.model_spec import ModelSpec, open_generator

    return open_generator(ModelSpec(str(tiny_mini)))


# ------------------------------------------------------------------ class 1: a full disk
def test_a_full_tmpfs_stops_on_a_whole_fragment_with_room_for_the_sidecar(small_disk):
    w = writer.Mp4StreamWriter(small_disk / "v.mp4", fps=16)
    with pytest.raises(writer.NoSpaceError, match="no room on the disk"):
        for seed in range(100):
            w.write(_noise(4, seed))
    w.abort()
    assert w.chunks_written >= 2
    assert _decoded_frames(w.partial_path) == w.frames_written  # decodes to its end: no torn fragment
    assert writer.free_bytes(small_disk) >= writer.RESERVE_BYTES - 4096  # the sidecar still fits
    writer.write_sidecar(small_disk / "v.partial.json", {"status": "failed"})


def test_a_write_that_fails_half_way_is_cut_back_to_the_last_whole_fragment(tmp_path, monkeypatch):
    w = writer.Mp4StreamWriter(tmp_path / "v.mp4", fps=16)
    w.write(_noise(3, 0))
    w.write(_noise(3, 1))
    size = w.partial_path.stat().st_size
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 100:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer.os, "write", half_then_full)
    with pytest.raises(OSError):
        w.write(_noise(3, 2))
    monkeypatch.undo()
    w.abort()
    assert w.partial_path.stat().st_size == size and w.frames_written == 6
    assert _decoded_frames(w.partial_path) == 6


def test_no_room_for_the_first_chunk_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "free_bytes", lambda folder: 1000)
    w = writer.Mp4StreamWriter(tmp_path / "v.mp4", fps=16)
    with pytest.raises(writer.NoSpaceError):
        w.write(_noise(2, 0))
    assert not w.partial_path.exists()
    with pytest.raises(writer.NoSpaceError, match="latents"):
        import torch

        writer.save_latents(tmp_path / "l.safetensors", torch.zeros(100))
    assert list(tmp_path.iterdir()) == []


def test_generate_refuses_a_full_disk_before_any_work(tiny_mini, tmp_path, capsys, monkeypatch):
    import deepforcing.model_spec as model_spec

    monkeypatch.setattr(writer, "free_bytes", lambda folder: 100_000)
    monkeypatch.setattr(model_spec.CheckedModel, "open", lambda self: pytest.fail("the model was loaded"))
    assert main(["generate", "--quiet", "--frames", "3", "--model", str(tiny_mini), "-o", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no room on the disk" in err and "[Errno" not in err and len(err.splitlines()) == 1


def test_a_prompt_file_goes_on_after_a_full_disk(tiny_mini, tmp_path, capsys, monkeypatch):
    """The first video hits a full disk at its second chunk (whole partial + failed sidecar); the next prompt is
    still tried and finishes; the command ends with exit 2 naming what was not written."""
    real_write, calls = writer.Mp4StreamWriter._append_whole, []

    def full_once(self, payload):
        calls.append(1)
        if len(calls) == 2:
            raise writer.NoSpaceError(errno.ENOSPC, "no room on the disk (injected)")
        return real_write(self, payload)

    monkeypatch.setattr(writer.Mp4StreamWriter, "_append_whole", full_once)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "out"
    code = main(["generate", "--quiet", "--frames", "6", "--model", str(tiny_mini), "--prompt-file", str(prompts),
                 "-o", str(out), "--save-latents"])
    err = capsys.readouterr().err
    assert code == 2 and "1 of 2 videos could not be written" in err
    names = sorted(p.name for p in out.iterdir())
    first = next(out / n for n in names if n.startswith("0000") and n.endswith(".partial.mp4"))
    assert _decoded_frames(first) > 0
    sidecar = json.loads(first.with_suffix(".json").read_text())
    assert sidecar["status"] == "failed" and sidecar["latents"].startswith("not saved")
    assert any(n.startswith("0001") and n.endswith("seed1.mp4") for n in names)  # the second video is whole


# ------------------------------------------------------------------ class 2: the API is as strict as the CLI
@pytest.mark.parametrize("kwargs, message", [
    ({"latent_frames": 10**12}, "between 1 and 10000000"),
    ({"seconds": "2"}, "seconds must be a number"),
    ({"seconds": float("inf")}, "at most 86400"),
    ({"seconds": True}, "seconds must be a number"),
    ({"latent_frames": 4.5}, "whole number"),
    ({"latent_frames": 3, "seconds": 1}, "exactly one"),
    ({"latent_frames": 3, "seed": 1.7}, "seed must be a whole number"),
    ({"latent_frames": 3, "seed": True}, "seed must be a whole number"),
    ({"latent_frames": 3, "seed": -1}, "seed must be between"),
    ({"latent_frames": 3, "policy": 42}, "policy must be a policy name"),
    ({"latent_frames": 3, "output": 123}, "output must be a file path"),
    ({"latent_frames": 3, "output": "v.avi"}, "must be an .mp4 path"),
    ({"latent_frames": 3, "on_chunk": "print"}, "on_chunk must be callable"),
    ({"latent_frames": 3, "prompt": 7}, "prompt must be text"),
    ({"latent_frames": 3, "prompt": "x" * 20_000}, "longer than 10,000 characters"),
])
def test_the_api_refuses_what_the_cli_refuses(generator, tmp_path, kwargs, message):
    kwargs = {"output": tmp_path / "v.mp4", **kwargs}
    kwargs["output"] = tmp_path / kwargs["output"] if isinstance(kwargs["output"], str) else kwargs["output"]
    prompt = kwargs.pop("prompt", None)
    with pytest.raises(RequestError, match=message) as caught:
        generator.generate(prompt, **kwargs)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, TypeError)
    assert len(str(caught.value)) < 300 and list(tmp_path.iterdir()) == []  # nothing written


def test_the_api_checks_the_output_folder_before_the_rollout(generator, tmp_path, monkeypatch):
    monkeypatch.setattr(generator, "open_rollout", lambda *a, **k: pytest.fail("the rollout started"))
    (tmp_path / "FILE").write_text("x")
    with pytest.raises(RequestError, match="is a file, not a folder"):
        generator.generate(None, output=tmp_path / "FILE" / "v.mp4", latent_frames=3)
    monkeypatch.setattr(writer, "free_bytes", lambda folder: 100_000)
    with pytest.raises(writer.NoSpaceError, match="no room on the disk"):
        generator.generate(None, output=tmp_path / "v.mp4", latent_frames=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


def test_stream_checks_too(generator):
    with pytest.raises(RequestError, match="between 1 and 10000000"):
        next(generator.stream(latent_frames=10**12))
    with pytest.raises(RequestError, match="seed"):
        next(generator.stream(latent_frames=3, seed=True))


def test_a_raising_on_chunk_leaves_a_closed_playable_partial_and_a_sidecar(generator, tmp_path):
    def fails_at_the_second_chunk(chunk):
        if chunk.index == 1:
            raise RuntimeError("consumer failed")

    out = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError, match="consumer failed"):
        generator.generate(None, output=out, latent_frames=9, on_chunk=fails_at_the_second_chunk)
    partial = tmp_path / "v.partial.mp4"
    assert not out.exists() and _decoded_frames(partial) > 0
    sidecar = json.loads((tmp_path / "v.partial.json").read_text())
    assert sidecar["status"] == "failed" and sidecar["error"] == "RuntimeError: consumer failed"
    assert sidecar["chunks"]["written"] == 2 and sidecar["chunks"]["planned"] == 3
    os.replace(partial, tmp_path / "again.mp4")  # closed: nothing holds it open
    assert _decoded_frames(tmp_path / "again.mp4") > 0


# ------------------------------------------------------------------ class 3: every command checks first
def _no_training(monkeypatch):
    import deepforcing.mini.train as train

    monkeypatch.setattr(train, "train", lambda cfg: pytest.fail("training started"))


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "--batch must be at least 1"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--max-minutes", "-1"], "--max-minutes must be a positive"),
    (["--max-minutes", "nan"], "--max-minutes must be a positive"),
    (["--lr", "inf"], "--lr must be a positive"),
    (["--ema", "1"], "--ema must be in [0, 1)"),
    (["--text-dropout", "2"], "--text-dropout must be between 0 and 1"),
    (["--init-from", "missing.pt"], "--init-from file not found"),
    (["--output", "model.pt"], "--output must be a .safetensors"),
    (["--output", "FILE/model.safetensors"], "cannot write to the folder"),
    (["--run-dir", "FILE/run"], "cannot write to the folder"),
])
def test_train_mini_refuses_before_training(tmp_path, capsys, monkeypatch, argv, message):
    _no_training(monkeypatch)
    (tmp_path / "FILE").write_text("a file, not a folder")
    argv = [a.replace("FILE", str(tmp_path / "FILE")) for a in argv]
    base = ["train-mini", "--run-dir", str(tmp_path / "run"), "--output", str(tmp_path / "m.safetensors")]
    assert main([*base, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_train_mini_refuses_a_read_only_output_folder(tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    if not mounted:
        folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("cannot make a read-only folder here")
        code = main(["train-mini", "--run-dir", str(tmp_path / "run"), "--output", str(folder / "m.safetensors")])
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True) if mounted else folder.chmod(0o755)
    assert code == 2 and "cannot write to the folder" in capsys.readouterr().err


def test_eval_checks_numbers_inputs_and_output_before_decoding(tmp_path, capsys, monkeypatch):
    import deepforcing.eval.command as command

    monkeypatch.setattr(command, "evaluate_video", lambda *a, **k: pytest.fail("a video was decoded"))
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    (tmp_path / "FILE").write_text("x")
    cases = [
        (["--window-seconds", "inf"], "--window-seconds) must be positive"),
        (["--window-seconds", "-2"], "--window-seconds) must be positive"),
        (["--out", str(tmp_path / "FILE")], "is a file; give a folder"),
        (["--out", str(tmp_path / "FILE" / "sub")], "is a file, not a folder"),
    ]
    for argv, message in cases:
        assert main(["eval", str(video), *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert main(["eval", str(video), str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "r")]) == 2
    assert "video file not found" in capsys.readouterr().err


def test_bench_and_plan_refuse_before_work(tmp_path, capsys):
    (tmp_path / "FILE").write_text("x")
    assert main(["bench", "--out", str(tmp_path / "FILE" / "b")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "locked").mkdir(mode=0o555)
    if not os.access(tmp_path / "locked", os.W_OK):  # root may write anywhere but on a read-only filesystem
        assert main(["bench", "--out", str(tmp_path / "locked" / "b")]) == 2
        assert "is not writable" in capsys.readouterr().err
    assert not (tmp_path / "locked" / "b").exists()
    assert main(["bench", "--policies", ","]) == 2
    assert "names no policy" in capsys.readouterr().err
    assert main(["plan", "--policy", "full", "--chunks", "100000"]) == 2
    assert "--chunks must be positive and at most 500" in capsys.readouterr().err


def test_ctrl_c_while_the_command_imports_is_one_line(monkeypatch, capsys):
    import deepforcing.cli as cli

    def interrupted(command):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["generate"]) == 130
    assert capsys.readouterr().err.strip() == "deepforcing: interrupted"


def test_a_10_mb_prompt_is_not_echoed(tiny_mini, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle " + "x" * 10_000_000 + "\n")
    assert main(["generate", "--quiet", "--model", str(tiny_mini), "--prompt-file", str(prompts)]) == 2
    err = capsys.readouterr().err
    assert "longer than 10,000 characters" in err and len(err) < 1000


def test_errno_texts_say_what_to_do(tmp_path):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert error_line(full).startswith("the disk is full; free space")
    ro = OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/x.mp4")
    assert error_line(ro) == "/mnt/x.mp4: that filesystem is read-only; write elsewhere"
    exists = OSError(errno.EEXIST, os.strerror(errno.EEXIST), "out")
    assert "remove it or choose another name" in error_line(exists)
    ours = OSError(errno.ENOSPC, "writing v.mp4 failed")
    assert error_line(ours) == "writing v.mp4 failed"  # our own text, without the errno prefix
    assert error_line(ValueError("cannot open x ([Errno 1094995529] Invalid data)")) == "cannot open x (Invalid data)"
    assert error_line(ValueError("a\nb")) == "a b" and len(error_line(ValueError("y" * 10**6))) < 1100
    assert shorten("z" * 500, 10) == "zzzzzzzzzz… (500 characters)"


# ------------------------------------------------------------------ class 6: presets the CLI cannot finish
@pytest.fixture
def wan_folder(tmp_path):
    folder = tmp_path / f"wan-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    return folder


def test_longlive_needs_its_lora_and_no_restart_needs_a_restarting_preset(wan_folder, capsys, monkeypatch):
    import deepforcing.models.bundle as bundle

    monkeypatch.setattr(bundle, "wan_bundle", lambda *a, **k: pytest.fail("the weights were loaded"))
    base = ["generate", "--quiet", "--frames", "3", "--model", str(wan_folder), "a red circle"]
    assert main([*base, "--preset", "longlive"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--preset longlive runs its release's base weights with a LoRA" in err and "--lora" in err
    assert main([*base, "--no-restart"]) == 2
    assert "--no-restart applies to presets that restart" in capsys.readouterr().err
