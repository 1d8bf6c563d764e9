"""Parity with TriAttention's LongLive KV compression (WeianMao/triattention@c3744ee ``longlive/``, over
NVlabs/LongLive@2462895), recorded on a tiny random model by ``scripts/record_triattention_trace.py``.

* calibration: the engine's calibration run (global attention, 81 frames, every self-attention call's pre-RoPE
  queries) reproduces the release's calibrate mode's ``calibration.pt`` for the same model and draws;
* compression: the ``triattention`` policy replays both videos (``120f``: the release defaults, sink 3;
  ``interactive``: sink 1, two frames' worth scored per (layer, head)) chunk by chunk to <= 1e-5, and every
  compression keeps exactly the release's slots in every (layer, head);
* the command line: ``deepforcing calibrate --policy triattention`` writes a tiny real-layout checkpoint's file that
  ``generate --policy triattention --calibration`` runs with, and a missing or other-model file is refused before
  the weights load.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from release_traces import load_trace

TRACE = Path(__file__).parent / "data" / "triattention_trace"


@pytest.fixture(scope="module")
def trace():
    return load_trace(TRACE)


@pytest.fixture(scope="module")
def model():
    from deepforcing.models.loading import load_causal_wan

    return load_causal_wan(TRACE)


def _sampling():
    from deepforcing.models.contract import SamplingConfig
    from deepforcing.models.presets import get_preset

    spec = get_preset("longlive")
    return SamplingConfig(denoising_steps=spec.denoising_steps, warp=spec.warp, shift=spec.shift,
                          chunk_frames=spec.chunk_frames)


def test_calibration_reproduces_the_release_calibrate_mode(trace, model):
    from deepforcing.cache.triattention_stats import load_query_centres
    from deepforcing.pipeline.triattention_calibration import CALIBRATION_FRAMES, collect_query_stats
    from test_causvid_parity import ReplayedNoise, _chunks

    meta, t = trace
    assert meta["calibration"]["frames"] == CALIBRATION_FRAMES
    with torch.no_grad():
        context = model.encode_context(t["context"])
    noise = ReplayedNoise(_chunks(t["noise_calibration"]), t["renoise_calibration"])
    ours = collect_query_stats(model, context=context, latent_shape=tuple(t["noise_calibration"].shape[2:]),
                               sampling=_sampling(), noise=noise).centres()
    assert not noise.initial_draws and not noise.renoise_draws
    release = load_query_centres(TRACE / "calibration.pt")
    assert torch.equal(ours.token_count, release.token_count)
    assert float((ours.mean - release.mean).abs().max()) <= 1e-6 * float(release.mean.abs().max())
    assert float((ours.abs_mean - release.abs_mean).abs().max()) <= 1e-6 * float(release.abs_mean.max())


def test_calibration_files_round_trip_and_refuse_other_models(tmp_path, trace, model):
    from deepforcing.cache.triattention_stats import CalibrationError, QueryStatsAccumulator, load_query_centres

    release = load_query_centres(TRACE / "calibration.pt")
    release.check(layers=2, heads=2, head_dim=24)
    with pytest.raises(CalibrationError, match="2 layers x 2 heads x 24 channels, the model has 30 x 12 x 128"):
        release.check(layers=30, heads=12, head_dim=128)
    with pytest.raises(CalibrationError, match="not found"):
        load_query_centres(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CalibrationError, match="not a readable calibration file"):
        load_query_centres(tmp_path / "junk.pt")
    torch.save({"q_mean_real": torch.zeros(1, 1, 2)}, tmp_path / "partial.pt")
    with pytest.raises(CalibrationError, match="lacks q_mean_imag, q_abs_mean, token_count"):
        load_query_centres(tmp_path / "partial.pt")
    acc = QueryStatsAccumulator(1, 2, 4)
    q = torch.tensor([[[[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, -1.0]]]])  # [B=1, n=1, heads=2, D=4]
    acc.add(0, q)
    acc.add(0, -q)
    path = acc.save(tmp_path / "tiny.pt", {"model_name": "toy"})
    got = load_query_centres(path)
    assert got.shape == (1, 2, 2) and got.token_count.tolist() == [2.0] and got.metadata == {"model_name": "toy"}
    assert torch.equal(got.mean, torch.zeros(1, 2, 2, dtype=torch.complex64))  # q and -q cancel
    assert torch.allclose(got.abs_mean[0, 0], torch.tensor([5.0 ** 0.5, 5.0]))  # |1+2i|, |3+4i|


def _replay(trace, name: str, **options):
    from deepforcing.cache import make_policy
    from deepforcing.models.loading import load_causal_wan
    from deepforcing.pipeline.rollout import VideoRollout
    from release_traces import per_chunk_error
    from test_causvid_parity import ReplayedNoise, _chunks

    meta, t = trace
    sink = meta["videos"][name]["sink_size"]
    policy = make_policy("triattention", sink=sink, calibration=str(TRACE / "calibration.pt"), **options)
    model = load_causal_wan(TRACE)
    with torch.no_grad():
        rollout = VideoRollout(model=model, policy=policy, context=model.encode_context(t["context"]),
                               latent_shape=tuple(t[f"noise_{name}"].shape[2:]), sampling=_sampling(),
                               noise=ReplayedNoise(_chunks(t[f"noise_{name}"]), t[f"renoise_{name}"]),
                               record_events=True)
        ours = torch.cat([rollout.step().latents for _ in range(meta["frames"] // 3)], dim=2).permute(0, 2, 1, 3, 4)
    return per_chunk_error(ours, t[f"latents_{name}"]), rollout.cache


@pytest.mark.parametrize("name", ["120f", "interactive"])
def test_the_policy_replays_the_release(trace, name):
    meta, t = trace
    err, cache = _replay(trace, name)
    assert float(err.max()) <= 1e-5, err.tolist()
    # every compression of the release (but its last, after the final chunk) keeps the same slots per (layer, head)
    F, budget = meta["tokens_per_frame"], meta["kv_budget_tokens"]
    compressions = [e for e in cache.events if e.kind == "compress"]
    starts = sorted({e.start_frame for e in compressions})
    assert starts == [c[0] for c in meta["videos"][name]["compressions"][:-1]]
    kept = t[f"kept_{name}"]
    for e in compressions:
        c, head = starts.index(e.start_frame), int(e.group.split()[-1])
        assert e.length_before == 9 * F and e.total == 12 * F
        assert torch.equal(e.decision.keep[0, :budget], kept[c, e.layer, head]), (name, e.start_frame, e.layer, head)
        assert torch.equal(e.decision.keep[0, budget:], torch.arange(9 * F, 12 * F))  # then the new chunk
    assert len(compressions) == len(starts) * 2 * 2  # 2 layers x 2 heads
    # the heads really differ (interactive) and the cache is per head: packed into one attention call
    layer = cache.layers[0]
    assert [v.group.heads for v in layer.views()] == [(0,), (1,)]
    if name == "interactive":
        ids = [v.store.token_ids[0, : v.store.length] for v in layer.views()]
        assert not torch.equal(ids[0], ids[1])


def test_the_tie_noise_seed_matters_only_at_ties_and_the_score_matters(trace):
    err, _ = _replay(trace, "interactive", tie_seed=1)
    assert float(err.max()) <= 1e-5  # noise of 1e-6 on standardised scores: no near-tie in this trace
    err, _ = _replay(trace, "interactive", aggregation="max")
    assert float(err[3:].max()) > 1e-3  # another score (max over offsets) picks other tokens


def test_the_policy_refuses_what_it_cannot_run(tmp_path):
    from deepforcing.cache import CacheGeometry, KVCache, TemporalRope, make_policy
    from deepforcing.cache.triattention_stats import CalibrationError
    from deepforcing.models.rope3d import WanRope3D

    calibration = str(TRACE / "calibration.pt")
    with pytest.raises(CalibrationError, match="needs the checkpoint's calibration statistics: --calibration PATH"):
        make_policy("triattention").validate_model(2, 2)
    make_policy("triattention", calibration=calibration).validate_model(2, 2)
    with pytest.raises(CalibrationError, match="2 layers x 2 heads x 24 channels, the model has 30 x 12; calibrate"):
        make_policy("triattention", calibration=calibration).validate_model(30, 12)
    with pytest.raises(CalibrationError, match="not found"):
        make_policy("triattention", calibration=str(tmp_path / "none.pt"))
    with pytest.raises(ValueError, match="budget \\(12\\) must be below the window \\(12\\)"):
        make_policy("triattention", budget=12)
    with pytest.raises(ValueError, match="prompt-switch is not supported"):
        make_policy("triattention").validate_event("prompt-switch", 3)
    # a head size other than the calibration's: refused when the cache meets the model, before any attention
    policy = make_policy("triattention", calibration=calibration)
    cache = KVCache(policy, CacheGeometry(tokens_per_frame=6, chunk_frames=3), num_layers=2, batch=1, heads=2,
                    head_dim=12, rope=TemporalRope.for_wan_head(12))
    rope3d = WanRope3D(12)
    cache.begin_call(0, 3, rope=rope3d.bind(rope3d.angles(0, 3, 2, 3), 3))
    q = k = v = torch.zeros(1, 2, 18, 12)
    with pytest.raises(CalibrationError, match="the model has 2 x 2 x 12"):
        cache.layers[0].attention(q, k, v, lambda q, k, v: q)


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    """A tiny random Wan2.1 model in the diffusers pipeline layout (DiT + VAE + umT5)."""
    from deepforcing.models.loading import load_causal_wan
    from tiny_layouts import write_tiny_umt5, write_tiny_wan_vae
    from tiny_transformer_layouts import TINY_WAN_CONFIG, original_wan_state_dict, write_original_folder

    cfg = {**TINY_WAN_CONFIG, "text_dim": 16}
    original = tmp_path_factory.mktemp("wan_original")
    write_original_folder(original, original_wan_state_dict(cfg, seed=1), cfg)
    folder = tmp_path_factory.mktemp("wan_diffusers")
    load_causal_wan(original).save_pretrained(str(folder / "transformer"))
    write_tiny_wan_vae(folder, layout="diffusers")
    write_tiny_umt5(folder, layout="diffusers")
    return folder


def test_calibrate_a_checkpoint_then_generate_with_it(wan_folder, tmp_path, capsys, monkeypatch):
    import json

    from deepforcing.cache.triattention_stats import QueryStatsAccumulator
    from deepforcing.cli import main
    from deepforcing.model_spec import CheckedModel
    from deepforcing.models.loading import load_causal_wan

    real = ["--model", str(wan_folder), "--resolution", "32x48"]
    out = tmp_path / "calibration.pt"
    assert main(["calibrate", "a red cat", "--policy", "triattention", "--out", str(out), "--frames", "9",
                 *real]) == 0, capsys.readouterr().err
    assert f"--calibration {out}" in capsys.readouterr().out
    model = load_causal_wan(wan_folder / "transformer")
    stats = torch.load(out, weights_only=True)
    assert stats["q_mean_real"].shape == (model.num_layers, model.num_heads, model.head_dim // 2)
    assert stats["token_count"].tolist() == [9 * 6 * 5] * model.num_layers  # 9 frames x 6 tokens x 5 calls
    video = tmp_path / "tri.mp4"
    generate = ["generate", "a red cat", *real, "--frames", "15", "--policy", "triattention", "--sink", "1", "-o"]
    assert main([*generate, str(video), "--calibration", str(out), "--quiet"]) == 0, capsys.readouterr().err
    sidecar = json.loads(video.with_suffix(".json").read_text())
    assert sidecar["policy"]["policy"] == "triattention" and sidecar["policy"]["calibration"] == str(out)
    # refused before any weights load: no calibration, or one made for another model
    monkeypatch.setattr(CheckedModel, "open", lambda self: pytest.fail("the model was opened"))
    capsys.readouterr()
    assert main([*generate, str(tmp_path / "x.mp4"), "--quiet"]) == 2
    assert "--calibration PATH" in capsys.readouterr().err
    other = tmp_path / "other.pt"  # statistics of a model with 3 heads
    other_stats = QueryStatsAccumulator(model.num_layers, 3, model.head_dim)
    other_stats.add(0, torch.ones(1, 1, 3, model.head_dim))
    other_stats.save(other)
    assert main([*generate, str(tmp_path / "x.mp4"), "--calibration", str(other), "--quiet"]) == 2
    assert f"{model.num_layers} layers x 3 heads x {model.head_dim} channels, the model has {model.num_layers} x " \
           f"{model.num_heads}; calibrate" in capsys.readouterr().err
