"""∞-RoPE (arXiv 2511.20649; yesiltepe-hidir/infinity-rope@63d7b84) on the engine's presets: its own 6-frame window
whatever the model's attention window; on frame-wise Causal Forcing the release's flush (sink + 2 frames, not the
ordinary roll) and its refusal of a scene cut (its ``rope_cut`` moves 3 frames and fails on 1-frame blocks), as one
exit-2 line before any weights load."""

from __future__ import annotations

import pytest
import torch

from deepforcing.cache import make_policy
from deepforcing.cli import main
from deepforcing.model_spec import CheckedModel
from deepforcing.models.loading import load_causal_wan
from deepforcing.models.presets import get_preset
from deepforcing.pipeline.generate import policy_from_defaults
from deepforcing.pipeline.rollout import VideoRollout
from deepforcing.pipeline.timeline import check_timeline_events, parse_timeline
from test_infinity_rope_parity import TRACE

PRESETS = ["self-forcing", "causal-forcing", "longlive", "causvid", "causal-forcing-framewise",
           "causal-forcing++-2step", "causal-forcing++-1step"]


@pytest.mark.parametrize("preset", PRESETS)
def test_the_release_window_not_the_models(preset):
    """Every preset's product default carries its attention window (21, LongLive's 12); ∞-RoPE keeps the release's
    6 frames (sink 1): the window is part of the method (own_window); --window still sets it."""
    defaults = get_preset(preset).product_policy()
    assert defaults["window"] in (12, 21)
    p = policy_from_defaults(defaults, "infinity-rope")
    assert (p.window, p.sink, p.cut_to, p.flush_keep) == (6, 1, 45, 2)
    assert policy_from_defaults(defaults, "infinity-rope", window=9).window == 9
    assert policy_from_defaults(defaults, "self-forcing").window == defaults["window"]  # others: the model's


@pytest.fixture(scope="module")
def tiny():
    return load_causal_wan(TRACE)


def _framewise(tiny, frames: int, switch_at: int | None = None, cut: bool = False):
    """The trace's tiny Wan stepped frame by frame (Causal Forcing++ 2-step sampler) with ∞-RoPE; a prompt switch
    before frame ``switch_at``. Returns the rollout and, per frame, layer 0's slot frames and read positions."""
    torch.manual_seed(0)
    with torch.no_grad():
        contexts = [tiny.encode_context(torch.randn(1, 8, 16)) for _ in range(2)]
        rollout = VideoRollout(model=tiny, policy=make_policy("infinity-rope"), context=contexts[0],
                               sampling=get_preset("causal-forcing++-2step").sampling, latent_shape=(4, 4, 6))
        seen = []

        def observe(layer, call, q):
            if layer.index == 0 and call.clean:
                F = layer.store.tokens_per_frame
                seen.append((layer.store.frames()[0, ::F].tolist(), layer.policy.query_positions(layer).tolist(),
                             layer.policy.key_positions(layer)[0, ::F].tolist()))

        rollout.cache.attention_observer = observe
        for f in range(frames):
            if f == switch_at:
                rollout.switch_prompt(contexts[1], cut=cut)
            assert torch.isfinite(rollout.step().latents).all()
    return rollout, seen


def test_frame_wise_rolls_one_frame_and_flushes_to_the_sink_and_two_frames(tiny):
    """1-frame chunks in a 6-frame window: sink + 4 previous + the frame, queries at slot 5 once full. The KV Flush
    before frame 9 keeps the sink and frames 7, 8 (the release's kv_flush: slots 1..2 <- the last 2, local_end 3),
    so frame 9 reads 4 keys at 0..3 with its query still at 5, as the release's no-roll branch rotates it."""
    _, seen = _framewise(tiny, 11, switch_at=9)
    assert seen[2] == ([0, 1, 2], [2], [0, 1, 2])
    assert seen[8] == ([0, 4, 5, 6, 7, 8], [5], [0, 1, 2, 3, 4, 5])
    assert seen[9] == ([0, 7, 8, 9], [5], [0, 1, 2, 3])
    assert seen[10] == ([0, 7, 8, 9, 10], [5], [0, 1, 2, 3, 4])
    _, plain = _framewise(tiny, 11)
    assert plain[9][0] == [0, 5, 6, 7, 8, 9]  # without the switch: the ordinary roll


def test_a_flush_keeps_what_it_is_told(tiny):
    """The paper's flush (sink + 1 frame) through --flush-keep; chunk-wise it then reads fewer keys than a roll."""
    policy = make_policy("infinity-rope", flush_keep=1)
    with torch.no_grad():
        ctx = tiny.encode_context(torch.zeros(1, 8, 16))
        rollout = VideoRollout(model=tiny, policy=policy, context=ctx, sampling=get_preset("self-forcing").sampling,
                               latent_shape=(4, 4, 6))
        for _ in range(3):
            rollout.step()
        rollout.switch_prompt(ctx)
    assert rollout.cache.layers[0].store.frames()[0, ::6].tolist() == [0, 8]
    with pytest.raises(ValueError, match="flush_keep must be >= 0"):
        make_policy("infinity-rope", flush_keep=-1)


def test_a_cut_on_frame_wise_chunks_is_refused_in_python(tiny):
    with pytest.raises(ValueError, match="needs 3-frame chunks .* 1-frame"):
        _framewise(tiny, 8, switch_at=7, cut=True)
    policy = make_policy("infinity-rope")
    check_timeline_events(parse_timeline("3f: a; cut: b"), policy, 3)  # chunk-wise: fine
    check_timeline_events(parse_timeline("3f: a; b"), policy, 1)  # a flush alone: fine frame-wise
    with pytest.raises(ValueError, match="drop 'cut' from the timeline or use a chunk-wise preset"):
        check_timeline_events(parse_timeline("3f: a; cut: b"), policy, 1)
    check_timeline_events(parse_timeline("3f: a; cut: b"), make_policy("deep-forcing"), 1)  # others ignore cuts


@pytest.mark.parametrize("preset", ["causal-forcing-framewise", "causal-forcing++-2step", "causal-forcing++-1step"])
def test_the_cli_refuses_a_cut_on_frame_wise_presets_before_loading(preset, tmp_path, capsys, monkeypatch):
    """One line, exit 2, and no weights read: the model folder is an empty directory and opening it would fail."""
    monkeypatch.setattr(CheckedModel, "open", lambda self: pytest.fail("the model was opened"))
    code = main(["generate", "--model", str(tmp_path), "--preset", preset, "--policy", "infinity-rope",
                 "--timeline", "2f: a red cat; cut 2f: a blue dog", "-o", str(tmp_path / "x.mp4"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "infinity-rope: a scene cut needs 3-frame chunks" in err and "chunk-wise preset" in err


def test_the_live_page_lists_it_and_its_sessions_flush(tiny_mini):
    """The live page's policy list (the registry) names infinity-rope with its release; a live session with it
    switches prompt by a KV Flush: the cache keeps the sink + 2 frames and nothing is re-run."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from deepforcing.mini.bundle import mini_generator
    from deepforcing.serve.app import ServeConfig, create_app
    from deepforcing.serve.live import LiveOptions, LiveSession

    generator = mini_generator(tiny_mini)
    with TestClient(create_app(lambda: generator, ServeConfig())) as client:
        info = client.get("/api/info").json()
    assert "infinity-rope" in info["policies"]
    assert "yesiltepe-hidir/infinity-rope@63d7b84" in info["policy_descriptions"]["infinity-rope"]
    live = LiveSession(generator, LiveOptions(prompt="a red circle", policy="infinity-rope"))
    for _ in range(3):
        live.next_chunk()
    calls = []
    model = generator.bundle.transformer
    inner = model.forward
    model.forward = lambda *a, **k: calls.append(1) or inner(*a, **k)  # counts the model calls of the switch chunk
    live.request_prompt("a blue square")
    switched = live.next_chunk()
    del model.forward
    steps = len(generator.bundle.sampling.denoising_steps)
    assert switched.switched and len(calls) == steps + 1  # the chunk's steps + its clean pass: no re-cache
    assert (switched.cache_frames["sink"], switched.cache_frames["recent"]) == (1, 5)
