"""The TriAttention-for-LongLive release trace (WeianMao/triattention@c3744ee ``longlive/``, over NVlabs/LongLive@2462895;
recorded by ``scripts/record_triattention_trace.py``) is whole and says what the release does on a tiny model:

* the tiny model's calibration statistics, made by the release's own calibrate mode (``QStatsAccumulator`` over the
  81-frame interactive calibration inference): per-(layer, head) complex means of the pre-RoPE queries;
* two 30-frame videos compressed after every chunk's clean pass from frame 9 on (8 compressions of 9 -> 6 frames):
  ``120f`` (configs/triattention_120f.yaml: sink 3) whose budget is exactly sink + the last chunk, so it is the
  LongLive sink-3 cache with a 9-frame window (replayed here through the engine's ``attention-sink``), and
  ``interactive`` (configs/triattention_interactive.yaml's sink 1) where 2 frames' worth of tokens are chosen per
  (layer, head), different tokens per head.

The ``triattention`` policy's replay of both videos is its parity test, not here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from release_traces import load_trace, per_chunk_error, replay_rollout

TRACE = Path(__file__).parent / "data" / "triattention_trace"


@pytest.fixture(scope="module")
def trace():
    return load_trace(TRACE)


def test_the_trace_is_whole(trace):
    meta, t = trace
    assert meta["release"] == "WeianMao/triattention@c3744ee" and meta["longlive_release"] == "NVlabs/LongLive@2462895"
    assert (meta["local_attn_size"], meta["budget_frames"], meta["kv_keep_last_frames"]) == (12, 6, 3)
    assert (meta["kv_compress_every_n_frames"], meta["kv_pruning_mode"], meta["kv_offset_max_frames"]) == (
        3, "layer_perhead", 128)
    F, steps = meta["tokens_per_frame"], len(meta["denoising_step_list"])
    assert meta["kv_budget_tokens"] == 6 * F
    latent = (4, *meta["latent_hw"])
    for name, sink in (("120f", 3), ("interactive", 1)):
        video = meta["videos"][name]
        assert video["sink_size"] == sink
        assert t[f"noise_{name}"].shape == t[f"latents_{name}"].shape == (1, meta["frames"], *latent)
        chunks = meta["frames"] // 3
        assert t[f"renoise_{name}"].shape == (chunks * (steps - 1), 3, *latent) and video["renoise_draws"] == 30
        # compressed after each chunk's clean pass once the cache holds more than the budget: 9 -> 6 frames
        assert video["compressions"] == [[f, 9 * F, 6 * F] for f in range(9, 31, 3)]
        assert t[f"kept_{name}"].shape == (8, 2, 2, 6 * F)
    assert t["noise_calibration"].shape == (1, 81, *latent)
    assert t["renoise_calibration"].shape == (27 * (steps - 1), 3, *latent)


def test_the_calibration_is_the_release_format_for_the_tiny_model(trace):
    meta, _ = trace
    stats = torch.load(TRACE / meta["calibration"]["file"], map_location="cpu", weights_only=True)
    layers, heads, pairs = 2, 2, 12  # the tiny model: head size 24 -> 12 complex pairs
    for key in ("q_mean_real", "q_mean_imag", "q_abs_mean"):
        assert stats[key].shape == (layers, heads, pairs) and stats[key].dtype == torch.float32
    # every self-attention call of the 81-frame calibration: 27 chunks x (4 denoising steps + the clean pass)
    assert stats["token_count"].tolist() == [81 * meta["tokens_per_frame"] * 5] * layers
    assert stats["metadata"]["num_frames"] == 81 and stats["metadata"]["denoising_step_list"] == [1000, 937, 833, 625]
    # |mean| <= mean |.| per frequency pair (the score's two terms), and neither is degenerate
    mean_abs = torch.complex(stats["q_mean_real"], stats["q_mean_imag"]).abs()
    assert bool((mean_abs <= stats["q_abs_mean"] + 1e-6).all()) and float(mean_abs.min()) > 0


def test_120f_keeps_exactly_the_sink_and_the_last_chunk(trace):
    meta, t = trace
    F = meta["tokens_per_frame"]
    expected = torch.cat([torch.arange(3 * F), torch.arange(6 * F, 9 * F)])
    assert torch.equal(t["kept_120f"], expected.expand(8, 2, 2, -1))


def test_interactive_keeps_sink_last_chunk_and_different_tokens_per_head(trace):
    meta, t = trace
    F = meta["tokens_per_frame"]
    kept = t["kept_interactive"]  # [compression, layer, head, 36]
    assert torch.equal(kept[..., :F], torch.arange(F).expand(8, 2, 2, -1))  # the 1-frame sink
    assert torch.equal(kept[..., -3 * F:], torch.arange(6 * F, 9 * F).expand(8, 2, 2, -1))  # the last chunk
    picks = kept[..., F:-3 * F]  # 2 frames' worth chosen from the 5 frames between
    assert picks.shape[-1] == 2 * F and bool(((picks >= F) & (picks < 6 * F)).all())
    assert bool((picks[..., 1:] > picks[..., :-1]).all())
    differ_heads = [not torch.equal(picks[c, layer, 0], picks[c, layer, 1]) for c in range(8) for layer in range(2)]
    differ_layers = [not torch.equal(picks[c, 0, h], picks[c, 1, h]) for c in range(8) for h in range(2)]
    assert all(differ_heads) and all(differ_layers)
    # not whole frames: the score picks tokens, so some frame is kept only in part
    frames = picks // F
    assert any(0 < int((frames[c, 0, 0] == f).sum()) < F for c in range(8) for f in range(1, 6))


def _replay(meta, t, name, policy):
    video = {"context": t["context"], "noise": t[f"noise_{name}"], "renoise": t[f"renoise_{name}"]}
    ours, _ = replay_rollout(TRACE, meta, video, policy, chunk_frames=3)
    return per_chunk_error(ours, t[f"latents_{name}"])


def test_120f_is_the_longlive_sink_cache_with_a_9_frame_window(trace):
    from deepforcing.cache import make_policy

    meta, t = trace
    err = _replay(meta, t, "120f", make_policy("attention-sink", window=9, sink=3))
    assert float(err.max()) < 1e-5, err.tolist()


def test_interactive_matches_longlive_until_its_first_compression_acts(trace):
    from deepforcing.cache import make_policy

    meta, t = trace
    err = _replay(meta, t, "interactive", make_policy("attention-sink", window=12, sink=1))
    assert float(err[:3].max()) < 1e-5, err.tolist()  # chunks 0-2: no compression yet
    assert float(err[3]) > 1e-3  # chunk 3 attends the compressed cache: per-head token sets, not the last frames
