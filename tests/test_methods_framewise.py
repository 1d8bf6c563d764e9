"""The 2026 methods on frame-wise Causal Forcing (1-frame chunks; Causal-Forcing issue 39): each one runs and acts,
or the CLI refuses it with one exit-2 line before any weights load. ∞-RoPE's frame-wise roll, flush and refused
cut are tested in test_infinity_rope_presets.py; here Rolling Sink, MemRoPE and LoL's --rope-jitter."""

from __future__ import annotations

import pytest
import torch

from deepforcing.cache import make_policy
from deepforcing.cache.base import KEPT, MEMORY
from deepforcing.cli import main
from deepforcing.model_spec import CheckedModel
from deepforcing.models.loading import load_causal_wan
from deepforcing.models.presets import get_preset
from deepforcing.pipeline.rollout import VideoRollout
from test_infinity_rope_parity import TRACE


@pytest.fixture(scope="module")
def tiny():
    return load_causal_wan(TRACE)


def _framewise(tiny, policy, frames: int):
    """The trace's tiny Wan stepped frame by frame with Causal Forcing++'s 2-step sampler; the rollout and latents."""
    torch.manual_seed(0)
    with torch.no_grad():
        ctx = tiny.encode_context(torch.randn(1, 8, 16))
        rollout = VideoRollout(model=tiny, policy=policy, context=ctx,
                               sampling=get_preset("causal-forcing++-2step").sampling, latent_shape=(4, 4, 6))
        latents = [rollout.step().latents for _ in range(frames)]
    out = torch.cat(latents, dim=2)
    assert out.shape[2] == frames and torch.isfinite(out).all()
    return rollout, out


def test_rolling_sink_replays_one_frame_slices(tiny):
    """Window 6, 1-frame chunks: from frame 6 on the previous frame's slot presents an archived frame instead."""
    rollout, _ = _framewise(tiny, make_policy("rolling-sink-replay", window=6), 9)
    layer = rollout.cache.layers[0]
    F = layer.store.tokens_per_frame
    regions = layer.policy.regions(layer)[0, ::F]
    assert int((regions == KEPT).sum()) >= 1
    replayed = layer.store.token_ids[0, : layer.store.length : F] // F
    slot_frames = layer.store.positions[0, : layer.store.length : F]
    away = replayed != slot_frames
    assert away.any() and (replayed[away] < 6).all()  # read away from its own frame, from the first window's archive


def test_memrope_folds_evicted_frames_into_its_memories(tiny):
    """MemRoPE's 12-frame cache on 1-frame chunks: once full, evicted frames feed the two EMA memory slots."""
    rollout, _ = _framewise(tiny, make_policy("memrope"), 15)
    layer = rollout.cache.layers[0]
    assert "memory" in layer.state
    F = layer.store.tokens_per_frame
    assert int((layer.policy.regions(layer)[0, ::F] == MEMORY).sum()) == 2
    assert layer.store.length // F <= 12


def test_rope_jitter_runs_frame_wise_and_changes_the_video(tiny):
    """Frame 0 sees only itself at temporal position 0, where every head's rotation is the identity: equal; later
    frames attend across positions, where each head's own frequencies show."""
    _, plain = _framewise(tiny, make_policy("memrope"), 6)
    _, jittered = _framewise(tiny, make_policy("memrope", rope_jitter=0.8), 6)
    assert torch.equal(plain[:, :, :1], jittered[:, :, :1])
    assert (plain[:, :, 1:] - jittered[:, :, 1:]).abs().max() > 1e-4


def test_rope_jitter_is_refused_on_rolling_forcing_before_loading(tmp_path, capsys, monkeypatch):
    """Rolling Forcing's own loop has its own cache and RoPE, which the jitter would not reach: one line, exit 2,
    no weights read (the model folder is an empty directory and opening it would fail)."""
    monkeypatch.setattr(CheckedModel, "open", lambda self: pytest.fail("the model was opened"))
    code = main(["generate", "a red cat", "--model", str(tmp_path), "--preset", "rolling-forcing", "--policy",
                 "rolling-forcing-sink", "--sink", "3", "--rope-jitter", "0.8", "-o", str(tmp_path / "x.mp4"),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--rope-jitter: Rolling Forcing's sampler has its own cache" in err


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_a_bad_jitter_is_one_line_before_loading(value, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(CheckedModel, "open", lambda self: pytest.fail("the model was opened"))
    code = main(["generate", "a red cat", "--model", str(tmp_path), "--preset", "causal-forcing++-2step",
                 "--policy", "memrope", "--rope-jitter", value, "-o", str(tmp_path / "x.mp4"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--rope-jitter must be in [0, 1)" in err
