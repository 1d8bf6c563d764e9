"""Parity with TriAttention's LongLive KV compression (WeianMao/triattention@c3744ee ``longlive/``, over
NVlabs/LongLive@2462895), recorded on a tiny random model by ``scripts/record_triattention_trace.py``.

* calibration: the engine's calibration run (global attention, 81 frames, every self-attention call's pre-RoPE
  queries) reproduces the release's calibrate mode's ``calibration.pt`` for the same model and draws;
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
