"""Mini model v5: the world's scene classes, the start layout and how it reaches frame 0 (training and rollout)."""

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import TINY_MINI
from deepforcing.cache import make_policy
from deepforcing.mini.forward import first_chunk_forward, teacher_forcing_forward, with_layout
from deepforcing.mini.language import CLOSE_COLOURS, WORLD_V5, parse_prompt, sample_scene, scene_class
from deepforcing.mini.layout import start_layout_frames
from deepforcing.mini.model import MiniModel
from deepforcing.mini.quality import SCENE_CLASSES, held_out_pairs, is_held_out
from deepforcing.mini.train import _load_matching, training_scene
from deepforcing.mini.world import render_clip
from deepforcing.pipeline.rollout import VideoRollout

LAYOUT_MINI = dataclasses.replace(TINY_MINI, start_layout=True)


def test_scene_classes_split_the_hard_cases_off():
    assert scene_class(parse_prompt("a big red circle")) == "1-object"
    assert scene_class(parse_prompt("a red circle and a blue square")) == "2-object"
    assert scene_class(parse_prompt("a small red circle")) == "hard"
    assert scene_class(parse_prompt("a red circle and an orange square")) == "hard"  # close colours
    assert scene_class(parse_prompt("a red circle, a blue square and a green triangle")) == "hard"


def test_the_v5_world_draws_mostly_one_or_two_objects_and_no_close_colours():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, mix=WORLD_V5) for _ in range(1000)]
    counts = Counter(len(s.objects) for s in scenes)
    assert 0.05 < counts[3] / 1000 < 0.15 and counts[1] > 350 and counts[2] > 350
    assert not any(pair <= {o.colour for o in s.objects} for s in scenes for pair in CLOSE_COLOURS)
    assert sum(o.size == "small" for s in scenes for o in s.objects) / sum(counts[k] * k for k in counts) < 0.15
    # the original mix is unchanged: the long-horizon study's held-out pool and v1-v4's training draws
    assert sample_scene(np.random.default_rng(900_000)).to_prompt() == \
        "an orange circle moves on a plain white background"


def test_class_pools_are_fixed_of_their_class_and_never_drawn_for_training():
    for cls in SCENE_CLASSES:
        pairs = held_out_pairs(32, cls)
        assert pairs == held_out_pairs(32, cls) and len({p for p, _ in pairs}) >= 30
        assert all(scene_class(parse_prompt(p)) == cls and is_held_out(parse_prompt(p)) for p, _ in pairs)
    seeds = {s for cls in SCENE_CLASSES for _, s in held_out_pairs(32, cls)}
    assert len(seeds) == 96  # every pair has its own noise seed
    rng = np.random.default_rng(1)
    assert not any(is_held_out(training_scene(rng, "v5")) for _ in range(300))
    with pytest.raises(ValueError, match="unknown scene class"):
        held_out_pairs(4, "4-object")


def test_the_start_layout_is_frame_0_of_the_world_on_a_dark_canvas():
    prompt, seed = "a big red circle and a blue square on a striped green background, camera pans left", 7
    layout = start_layout_frames([prompt], [seed], 32)[0]  # [3, 32, 32]
    truth = render_clip(prompt, seed, 1, 32)
    for k, (x, y) in enumerate(truth.states.positions[0]):
        colour = torch.tensor(truth.states.colours[k]) * 2 - 1
        assert torch.allclose(layout[:, int(y), int(x)], colour, atol=0.05)  # each object where it starts
        assert torch.allclose(truth.frames[0, :, int(y), int(x)], colour, atol=0.05)
    corner = layout[:, 0, 0]  # no stripes: the dark canvas
    assert torch.allclose(corner, torch.tensor([0.06, 0.06, 0.08]) * 2 - 1, atol=0.02)


def test_the_layout_reaches_frame_0_only_in_training_and_rollout():
    torch.manual_seed(0)
    model = MiniModel(LAYOUT_MINI).eval()
    with torch.no_grad():  # give the layout channels weight, so they matter
        model.transformer.patch_embedding.weight[:, TINY_MINI.channels:].normal_()
    c, s = TINY_MINI.channels, TINY_MINI.latent_size
    latents, layout = torch.randn(2, c, 6, s, s), torch.randn(2, c, 1, s, s)
    cond = with_layout(model, latents, layout)
    assert cond.shape[1] == 2 * c and torch.equal(cond[:, c:, 0], layout[:, :, 0]) and cond[:, c:, 1:].abs().sum() == 0
    ids = model.text_encoder.token_ids(["a red circle", "a blue square"])
    noisy, sigma = torch.randn(2, c, 3, s, s), torch.tensor([0.9, 0.3])
    with torch.no_grad():
        tf = teacher_forcing_forward(model, latents[:, :, :3], noisy, sigma[:, None].expand(-1, 3), ids, 3,
                                     layout=layout)
        alone = first_chunk_forward(model, noisy, sigma, ids, layout=layout)
        blind = first_chunk_forward(model, noisy, sigma, ids)
    assert torch.allclose(tf, alone, atol=1e-5) and not torch.allclose(alone, blind, atol=1e-3)
    # the rollout appends the same channels: chunk 0 of a rollout = the first-chunk forward's Euler steps
    policy = make_policy("self-forcing", window=6)
    ctx = model.transformer.encode_context(model.text_encoder(["a red circle"]))
    rollout = VideoRollout(model=model.transformer, policy=policy, context=ctx, latent_shape=model.latent_shape,
                           seeds=[0], condition=layout[:1])
    x = torch.randn(1, c, 3, s, s)
    assert torch.equal(rollout._conditioned(x, 0)[:, c:, 0], layout[:1, :, 0])
    assert rollout._conditioned(x, 0)[:, c:, 1:].abs().sum() == 0 and rollout._conditioned(x, 3)[:, c:].abs().sum() == 0
    with pytest.raises(ValueError, match="condition must be"):
        VideoRollout(model=model.transformer, policy=policy, context=ctx, latent_shape=model.latent_shape,
                     seeds=[0], condition=layout)  # two layouts for one video


def test_a_layout_model_grown_from_a_plain_one_starts_as_it(tmp_path):
    torch.manual_seed(0)
    plain = MiniModel(TINY_MINI).eval()
    path = tmp_path / "plain.safetensors"
    plain.save(path)
    grown = MiniModel(LAYOUT_MINI).eval()
    _load_matching(grown, str(path), log=lambda *_: None)
    w = grown.transformer.patch_embedding.weight
    assert w.shape[1] == 2 * TINY_MINI.channels and w[:, TINY_MINI.channels:].abs().sum() == 0
    c, s = TINY_MINI.channels, TINY_MINI.latent_size
    noisy, sigma = torch.randn(2, c, 3, s, s), torch.tensor([0.9, 0.4])
    ids = plain.text_encoder.token_ids(["a red circle", "a blue square"])
    with torch.no_grad():
        assert torch.allclose(first_chunk_forward(grown, noisy, sigma, ids, layout=torch.randn(2, c, 1, s, s)),
                              first_chunk_forward(plain, noisy, sigma, ids), atol=1e-6)


def test_generate_gives_a_layout_model_its_prompts_layout_and_the_prompt_only_mode_zeros(tmp_path):
    from deepforcing.mini.bundle import mini_generator

    torch.manual_seed(0)
    path = tmp_path / "layout.safetensors"
    MiniModel(LAYOUT_MINI).save(path)
    gen = mini_generator(path)
    cond = gen.start_condition("a red circle", 3)
    assert cond.shape == (1, TINY_MINI.channels, 1, TINY_MINI.latent_size, TINY_MINI.latent_size)
    assert not torch.equal(cond, gen.start_condition("a red circle", 4))  # the seed places the objects
    assert mini_generator(path, start_layout=False).start_condition("a red circle", 3).abs().sum() == 0
    chunks = list(gen.stream("a red circle", latent_frames=6, policy="self-forcing"))
    assert len(chunks) == 2 and torch.isfinite(chunks[1].frames).all()


def test_rolled_out_context_keeps_the_true_first_chunk_and_rolls_out_the_rest():
    from deepforcing.mini.train import TrainConfig, rolled_out_context

    torch.manual_seed(0)
    model = MiniModel(LAYOUT_MINI)
    model.train()
    c, s = TINY_MINI.channels, TINY_MINI.latent_size
    clean, layout = torch.randn(4, c, 9, s, s), torch.randn(4, c, 1, s, s)
    ids = model.text_encoder.token_ids(["a red circle"] * 4)
    steps = {"denoising_steps": [1000.0, 500.0], "warp": False, "solver": "euler"}
    off = TrainConfig(model=LAYOUT_MINI, probe_sampling=steps)
    assert rolled_out_context(model, off, clean, ids, torch.Generator().manual_seed(0), layout) is clean
    cfg = TrainConfig(model=LAYOUT_MINI, probe_sampling=steps, rollout_context=0.5)
    gen = torch.Generator().manual_seed(0)
    pick = torch.rand(4, generator=torch.Generator().manual_seed(0)) < 0.5
    assert 0 < pick.sum() < 4  # this seed picks some clips, not all
    out = rolled_out_context(model, cfg, clean, ids, gen, layout)
    assert model.training  # back in training mode
    assert torch.equal(out[:, :, :3], clean[:, :, :3])  # the true first chunk stays
    assert torch.equal(out[~pick], clean[~pick])  # clips not picked keep their true context
    assert (out[pick][:, :, 3:] - clean[pick][:, :, 3:]).abs().mean() > 0.1  # the rest is the model's own
    assert torch.isfinite(out).all()


def test_a_given_start_replaces_the_drawn_layout(tmp_path):
    """With a start image the layout of the prompt and seed would contradict the given frame: zeros instead."""
    from deepforcing.mini.bundle import mini_generator

    torch.manual_seed(0)
    path = tmp_path / "layout.safetensors"
    MiniModel(LAYOUT_MINI).save(path)
    gen = mini_generator(path)
    assert gen.start_condition("a red circle", 3).abs().sum() > 0
    assert gen.start_condition("a red circle", 3, given_start=True).abs().sum() == 0
    policy = gen.resolve_policy("self-forcing")
    assert gen.open_rollout("a red circle", policy, seed=3, given_start=True).condition.abs().sum() == 0
    assert gen.open_rollout("a red circle", policy, seed=3).condition.abs().sum() > 0


def test_rolled_out_context_can_start_after_more_true_chunks():
    from deepforcing.mini.train import TrainConfig, rolled_out_context

    torch.manual_seed(0)
    model = MiniModel(LAYOUT_MINI)
    c, s = TINY_MINI.channels, TINY_MINI.latent_size
    clean, layout = torch.randn(2, c, 9, s, s), torch.randn(2, c, 1, s, s)
    ids = model.text_encoder.token_ids(["a red circle"] * 2)
    steps = {"denoising_steps": [1000.0, 500.0], "warp": False, "solver": "euler"}
    cfg = TrainConfig(model=LAYOUT_MINI, probe_sampling=steps, rollout_context=1.0, rollout_true_chunks=2)
    out = rolled_out_context(model, cfg, clean, ids, torch.Generator().manual_seed(0), layout)
    assert torch.equal(out[:, :, :6], clean[:, :, :6])  # two true chunks kept
    assert (out[:, :, 6:] - clean[:, :, 6:]).abs().mean() > 0.1  # the last one is the model's own
