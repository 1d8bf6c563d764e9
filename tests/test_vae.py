"""WanVAE adapter: layouts, key conversion, normalisation, streaming decode == one-shot decode."""

import pytest
import torch
from tiny_layouts import TINY_VAE_CONFIG, diffusers_to_original_vae_keys, write_tiny_wan_vae

from deepforcing.models.vae import (
    StreamingDecoder,
    WanVAE,
    WanVAEConfig,
    convert_original_vae_keys,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> WanVAE:
    path = write_tiny_wan_vae(tmp_path_factory.mktemp("vae"), "original")
    return WanVAE.from_pretrained(path, config=TINY_VAE_CONFIG)


def _latents(frames: int, seed: int = 1, h: int = 4, w: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, frames, TINY_VAE_CONFIG.z_dim, h, w, generator=g)


def test_defaults_are_the_real_wan21_vae():
    cfg = WanVAEConfig()
    assert (cfg.base_dim, cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks) == (96, 16, (1, 2, 4, 4), 2)
    assert cfg.temperal_downsample == (False, True, True)
    assert cfg.latents_mean[0] == -0.7571 and cfg.latents_std[-1] == 1.9160


def test_original_key_conversion_agrees_with_diffusers_on_real_layout():
    """Our generic rename == diffusers' convert_wan_vae_to_diffusers on the full-size Wan2.1 key set."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        model = AutoencoderKLWan(**WanVAEConfig().diffusers_kwargs())
    sd = model.state_dict()
    original = diffusers_to_original_vae_keys(sd, model.decoder.up_blocks)
    vocab = ("down_blocks", "up_blocks", "mid_block", "conv_in", "conv_out", "norm_out", "quant_conv", "resnets")
    assert not [k for k in original if any(v in k for v in vocab)]
    assert "decoder.upsamples.3.resample.1.weight" in original and "decoder.upsamples.14.residual.6.bias" in original
    assert "decoder.upsamples.4.shortcut.weight" in original  # the 1.3B's one decoder shortcut
    ours = convert_original_vae_keys(original, model)
    theirs = convert_wan_vae_to_diffusers(original)
    assert set(ours) == set(sd) == set(theirs)


def test_both_layouts_load_the_same_weights(tmp_path):
    a = WanVAE.from_pretrained(write_tiny_wan_vae(tmp_path / "o", "original", seed=3), config=TINY_VAE_CONFIG)
    b = WanVAE.from_pretrained(write_tiny_wan_vae(tmp_path / "d", "diffusers", seed=3))
    assert b.config == TINY_VAE_CONFIG
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    z = _latents(2)
    assert torch.equal(a.decode(z), b.decode(z))


def test_folder_path_finds_original_file(tmp_path):
    write_tiny_wan_vae(tmp_path, "original")
    vae = WanVAE.from_pretrained(tmp_path, config=TINY_VAE_CONFIG)
    assert vae.z_dim == 4


def test_wrong_or_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Wan2.1_VAE.pth"):
        WanVAE.from_pretrained(tmp_path)
    path = write_tiny_wan_vae(tmp_path / "t", "original")
    # real-size config against a tiny file (other depth): key mismatch, named file
    with pytest.raises(ValueError, match=r"Wan2.1_VAE.pth: checkpoint does not match"):
        WanVAE.from_pretrained(path)
    # same depth, other width: shape mismatch
    wide = WanVAEConfig(**{**TINY_VAE_CONFIG.__dict__, "base_dim": 16})
    with pytest.raises(ValueError, match=r"Wan2.1_VAE.pth: \d+ tensors have the wrong shape"):
        WanVAE.from_pretrained(path, config=wide)
    sd = torch.load(path, weights_only=True)
    del sd["decoder.head.2.weight"]
    sd["encoder.bogus.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"missing 1 keys: decoder.conv_out.weight.*unexpected 1 keys: encoder.bogus"):
        WanVAE.from_pretrained(path, config=TINY_VAE_CONFIG)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        WanVAE.from_pretrained(path, config=TINY_VAE_CONFIG)


def test_normalisation_roundtrip_and_formula(tiny_vae):
    mu = torch.randn(2, 4, 3, 2, 2)
    z = tiny_vae.normalize(mu)
    mean = torch.tensor(TINY_VAE_CONFIG.latents_mean).view(1, 4, 1, 1, 1)
    std = torch.tensor(TINY_VAE_CONFIG.latents_std).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(z, (mu - mean) / std)
    torch.testing.assert_close(tiny_vae.denormalize(z), mu)


def test_decode_frame_count_and_range(tiny_vae):
    px = tiny_vae.decode(_latents(3))
    assert px.shape == (1, 1 + 4 * 2, 3, 32, 48)
    assert tiny_vae.num_pixel_frames(3) == 9 and tiny_vae.spatial_scale == 8 and tiny_vae.temporal_scale == 4
    assert px.abs().max() <= 1.0


def test_decode_applies_denormalisation(tiny_vae):
    """decode(z) must equal diffusers decode of z*std+mean."""
    z = _latents(2)
    raw = tiny_vae.denormalize(z.permute(0, 2, 1, 3, 4))
    ref = tiny_vae.model.decode(raw).sample.permute(0, 2, 1, 3, 4)
    assert torch.equal(tiny_vae.decode(z), ref)


@pytest.mark.parametrize("chunks", [(3, 3, 3), (1, 2, 3, 1), (7,)])
def test_streaming_decode_equals_one_shot(tiny_vae, chunks):
    z = _latents(sum(chunks), seed=5)
    full = tiny_vae.decode(z)
    dec = tiny_vae.streaming_decoder()
    parts = list(dec.stream(z.split(list(chunks), dim=1)))
    expected_counts = [1 + 4 * (chunks[0] - 1)] + [4 * c for c in chunks[1:]]
    assert [p.shape[1] for p in parts] == expected_counts
    streamed = torch.cat(parts, dim=1)
    assert streamed.shape == full.shape
    diff = (streamed - full).abs().max().item()
    print(f"streaming vs one-shot max abs diff ({chunks}): {diff:.3e}")
    assert diff < 1e-5
    assert dec.pixel_frames_emitted == full.shape[1] and dec.latent_frames_seen == sum(chunks)


def test_streaming_reset_starts_a_new_video(tiny_vae):
    z1, z2 = _latents(6, seed=7), _latents(6, seed=8)
    dec = StreamingDecoder(tiny_vae)
    first = torch.cat([dec.decode_chunk(c) for c in z1.split(3, dim=1)], dim=1)
    dec.reset()
    second = torch.cat([dec.decode_chunk(c) for c in z2.split(3, dim=1)], dim=1)
    assert (second - tiny_vae.decode(z2)).abs().max() < 1e-5
    assert (first - tiny_vae.decode(z1)).abs().max() < 1e-5
    # without reset the cache of video 1 leaks into video 2 (the test above is therefore meaningful)
    leaky = torch.cat([dec.decode_chunk(c) for c in z2.split(3, dim=1)], dim=1)
    assert leaky.shape[1] != second.shape[1] or (leaky - second).abs().max() > 1e-3


def test_two_streaming_decoders_do_not_interfere(tiny_vae):
    za, zb = _latents(6, seed=9), _latents(6, seed=10)
    da, db = tiny_vae.streaming_decoder(), tiny_vae.streaming_decoder()
    outa, outb = [], []
    for ca, cb in zip(za.split(3, dim=1), zb.split(3, dim=1)):
        outa.append(da.decode_chunk(ca))
        outb.append(db.decode_chunk(cb))
    assert (torch.cat(outa, 1) - tiny_vae.decode(za)).abs().max() < 1e-5
    assert (torch.cat(outb, 1) - tiny_vae.decode(zb)).abs().max() < 1e-5


def test_encode_shapes_and_validation(tiny_vae):
    px = torch.rand(1, 5, 3, 32, 48) * 2 - 1
    z = tiny_vae.encode(px)
    assert z.shape == (1, 2, 4, 4, 6)
    # encode returns the normalised posterior mean
    mu = tiny_vae.model.encode(px.permute(0, 2, 1, 3, 4)).latent_dist.mean
    torch.testing.assert_close(z, tiny_vae.normalize(mu).permute(0, 2, 1, 3, 4))
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        tiny_vae.encode(px[:, :4])
    with pytest.raises(ValueError, match="latents must be"):
        tiny_vae.decode(torch.zeros(1, 2, 16, 4, 6))
