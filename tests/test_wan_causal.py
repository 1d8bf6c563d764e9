"""Causal Wan transformer: cached rollout vs block-causal full forward, RoPE, time embedding, context, dtypes."""

from __future__ import annotations

import math

import pytest
import torch

from deepforcing.cache import make_policy
from deepforcing.models.rope3d import WanRope3D
from deepforcing.models.schedule import FlowMatchSchedule
from deepforcing.models.wan_causal import CausalWanTransformer, sinusoidal_time_embedding

TINY = dict(num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4, text_dim=24, freq_dim=32,
            ffn_dim=48, num_layers=2, text_len=10)
H, W, CHUNK = 4, 6, 3


def tiny_model(seed: int = 0, **over) -> CausalWanTransformer:
    torch.manual_seed(seed)
    model = CausalWanTransformer(**{**TINY, **over})
    with torch.no_grad():  # no degenerate (zero / one) tensors, like the golden model
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return model.eval()


def ctx_for(model, batch=1, rows=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return model.encode_context(torch.randn(batch, rows, model.config.text_dim, generator=g))


def test_cached_full_policy_rollout_equals_block_causal_forward():
    """Inside the training horizon (7 chunks = 21 frames), chunk-by-chunk with policy "full" == one masked forward."""
    model = tiny_model()
    ctx = ctx_for(model)
    steps = FlowMatchSchedule().warp([1000, 750, 500, 250])
    chunks = 7
    cache = model.make_cache(make_policy("full"), height=H, width=W, chunk_frames=CHUNK)
    g = torch.Generator().manual_seed(3)
    clean = torch.randn(1, 4, chunks * CHUNK, H, W, generator=g)
    noisy, clean_flows = [], []
    with torch.no_grad():
        for i in range(chunks):
            f0 = i * CHUNK
            per_step = []
            for t in steps:
                x = torch.randn(1, 4, CHUNK, H, W, generator=g)
                per_step.append((x, t, model(x, t.expand(1, CHUNK), ctx, cache, f0)))
            noisy.append(per_step)
            clean_flows.append(model(clean[:, :, f0 : f0 + CHUNK], torch.zeros(1, CHUNK), ctx, cache, f0))
        assert cache.length == chunks * CHUNK * (H // 2) * (W // 2)

        full_clean = model.forward_full(clean, torch.zeros(1, chunks * CHUNK), ctx, chunk_frames=CHUNK)
        torch.testing.assert_close(full_clean, torch.cat(clean_flows, dim=2), atol=2e-5, rtol=1e-5)

        worst = 0.0
        for i in (0, 3, 6):
            for x, t, flow in noisy[i]:
                seq = torch.cat([clean[:, :, : i * CHUNK], x], dim=2)
                ts = torch.cat([torch.zeros(1, i * CHUNK), t.expand(1, CHUNK)], dim=1)
                out = model.forward_full(seq, ts, ctx, chunk_frames=CHUNK)[:, :, i * CHUNK :]
                worst = max(worst, float((out - flow).abs().max()))
        assert worst < 2e-5, worst


def test_block_causal_mask_hides_future_chunks():
    model = tiny_model()
    ctx = ctx_for(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 6, H, W, generator=g)
    t = torch.full((1, 6), 500.0)
    with torch.no_grad():
        a = model.forward_full(x, t, ctx, chunk_frames=CHUNK)
        x2 = x.clone()
        x2[:, :, 3:] += 1.0
        b = model.forward_full(x2, t, ctx, chunk_frames=CHUNK)
    assert torch.equal(a[:, :, :3], b[:, :, :3])
    assert (a[:, :, 3:] - b[:, :, 3:]).abs().max() > 1e-3


def _reference_rope(x: torch.Tensor, start: int, f: int, h: int, w: int) -> torch.Tensor:
    """The reference arithmetic: 1024-row complex128 tables per axis, polar(1, p * theta^(-2j/d)), complex multiply."""
    d = x.shape[-1]
    ds, dt = 2 * (d // 6), d - 4 * (d // 6)

    def table(dim):
        freqs = torch.outer(torch.arange(1024), 1.0 / torch.pow(10000, torch.arange(0, dim, 2).to(torch.float64).div(dim)))
        return torch.polar(torch.ones_like(freqs), freqs)

    ft, fh, fw = table(dt), table(ds), table(ds)
    freqs = torch.cat(
        [
            ft[start : start + f].view(f, 1, 1, -1).expand(f, h, w, -1),
            fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
            fw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, -1)
    xc = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs).flatten(-2).to(x.dtype)


def test_rope3d_matches_reference_table_and_is_unbounded():
    rope = WanRope3D(32)
    assert (rope.temporal_dim, rope.spatial_dim) == (12, 10)
    x = torch.randn(1, 2, 3 * 6, 32)
    ours = rope.apply(x, rope.angles(297, 3, 2, 3))
    torch.testing.assert_close(ours, _reference_rope(x, 297, 3, 2, 3), atol=1e-6, rtol=0)
    # far beyond the reference's 1024-frame table: temporal pairs rotate by exactly p * omega
    far = rope.angles(10_000, 1, 1, 1)
    omega = 1.0 / torch.pow(10000.0, torch.arange(0, 12, 2, dtype=torch.float64) / 12)
    assert torch.equal(far[0, :6], 10_000.0 * omega)
    assert torch.equal(far[0, 6:], torch.zeros(10, dtype=torch.float64))


def test_time_embedding_is_float64_cos_then_sin():
    t = torch.tensor([0.0, 625.0, 1000.0])
    emb = sinusoidal_time_embedding(8, t)
    assert emb.dtype == torch.float64
    k = torch.arange(4, dtype=torch.float64)
    expected = torch.cat([torch.cos(t[:, None].double() * 10000 ** (-k / 4)), torch.sin(t[:, None].double() * 10000 ** (-k / 4))], 1)
    torch.testing.assert_close(emb, expected, atol=0, rtol=0)
    assert torch.equal(emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0], dtype=torch.float64))


def test_context_is_zero_padded_to_text_len_and_padding_rows_matter():
    model = tiny_model()
    g = torch.Generator().manual_seed(5)
    text = torch.randn(1, 4, model.config.text_dim, generator=g)
    a = model.encode_context(text)
    b = model.encode_context(torch.cat([text, torch.zeros(1, model.config.text_len - 4, model.config.text_dim)], 1))
    assert a.keys[0].shape == (1, 2, model.config.text_len, 32)
    assert all(torch.equal(x, y) for x, y in zip(a.keys + a.values, b.keys + b.values))
    assert a.keys[0][0, :, -1].abs().sum() > 0  # padding rows give bias-driven keys, attended without a mask
    with pytest.raises(ValueError, match="text_len"):
        model.encode_context(torch.zeros(1, model.config.text_len + 1, model.config.text_dim))
    with pytest.raises(ValueError, match="text embeddings"):
        model.encode_context(torch.zeros(1, 3, model.config.text_dim + 1))


def test_scalar_timestep_broadcasts_and_bad_shapes_are_rejected():
    model = tiny_model()
    ctx = ctx_for(model)
    x = torch.randn(1, 4, 3, H, W)
    with torch.no_grad():
        a = model.forward_full(x, torch.tensor(700.0), ctx, chunk_frames=3)
        b = model.forward_full(x, torch.full((1, 3), 700.0), ctx, chunk_frames=3)
    assert torch.equal(a, b)
    cache = model.make_cache(make_policy("self-forcing"), height=H, width=W, chunk_frames=3)
    with pytest.raises(ValueError, match="timesteps"):
        model(x, torch.zeros(1, 2), ctx, cache, 0)
    with pytest.raises(ValueError, match="latents"):
        model(x[:, :3], torch.zeros(1, 3), ctx, cache, 0)
    with pytest.raises(ValueError, match="patch"):
        model(torch.randn(1, 4, 3, 5, 6), torch.zeros(1, 3), ctx, cache, 0)


def test_batch_rows_are_independent():
    model = tiny_model()
    g = torch.Generator().manual_seed(2)
    text = torch.randn(2, 5, model.config.text_dim, generator=g)
    x = torch.randn(2, 4, 3, H, W, generator=g)
    t = torch.tensor([[1000.0] * 3, [250.0] * 3])
    with torch.no_grad():
        both = model(x, t, model.encode_context(text), model.make_cache(make_policy("full"), height=H, width=W, chunk_frames=3, batch=2), 0)
        one = model(x[1:], t[1:], model.encode_context(text[1:]), model.make_cache(make_policy("full"), height=H, width=W, chunk_frames=3), 0)
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_tracks_float32(dtype):
    model = tiny_model()
    ctx32 = ctx_for(model)
    x = torch.randn(1, 4, 3, H, W)
    t = torch.full((1, 3), 937.5)
    with torch.no_grad():
        ref = model(x, t, ctx32, model.make_cache(make_policy("self-forcing"), height=H, width=W, chunk_frames=3), 0)
        half = tiny_model().to(dtype)
        ctx = ctx_for(half)
        out = half(x, t, ctx, half.make_cache(make_policy("self-forcing"), height=H, width=W, chunk_frames=3), 0)
    assert out.dtype == dtype and half.make_cache(make_policy("full"), height=H, width=W, chunk_frames=3).layers[0].store.keys.dtype == dtype
    assert torch.isfinite(out).all()
    err = float((out.float() - ref).abs().max() / ref.abs().max())
    assert err < 0.05, err


def test_unsupported_configs_are_rejected():
    with pytest.raises(ValueError, match="qk_norm"):
        CausalWanTransformer(**{**TINY, "qk_norm": "rms_norm"})
    with pytest.raises(ValueError, match="temporal patch"):
        CausalWanTransformer(**{**TINY, "patch_size": (2, 2, 2)})
