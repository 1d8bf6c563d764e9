"""The mini model's training recipe: chunk-0 forward, object-weighted loss cells, weight averaging, resume."""

import numpy as np
import pytest
import torch

from conftest import TINY_MINI
from deepforcing.mini.model import MiniModel
from deepforcing.mini.train import (
    TrainConfig,
    WeightAverage,
    first_chunk_forward,
    teacher_forcing_forward,
    train,
)
from deepforcing.mini.world import object_cells, render_batch_with_states


def test_object_cells_mark_the_cells_under_each_object_only():
    _, states = render_batch_with_states(["a big red circle"], [3], 2, 32)
    cells = object_cells(states, 32, 8)  # 4-pixel cells
    x, y = states[0].positions[0, 0]
    assert cells.shape == (1, 2, 8, 8)
    assert cells[0, 0, int(y // 4), int(x // 4)] == 1  # the cell under the centre
    reach = states[0].extents[0] + 2.0  # circumradius + half a cell
    centres = (np.arange(8) + 0.5) * 4
    far = np.hypot(centres[None, :] - x, centres[:, None] - y) > reach
    assert far.any() and cells[0, 0][torch.from_numpy(far)].sum() == 0
    # a big circle (radius 4.5 px) covers a few cells, never most of the frame
    assert 2 <= cells[0, 0].sum() <= 16


def test_first_chunk_forward_is_the_teacher_forcing_prediction_of_chunk_0():
    torch.manual_seed(0)
    model = MiniModel(TINY_MINI).eval()
    c, s = TINY_MINI.channels, TINY_MINI.latent_size
    clean, noisy = torch.randn(2, c, 3, s, s), torch.randn(2, c, 3, s, s)
    sigma = torch.tensor([0.9, 0.3])
    ids = model.text_encoder.token_ids(["a red circle", "a blue square"])
    with torch.no_grad():
        tf = teacher_forcing_forward(model, clean, noisy, sigma[:, None].expand(-1, 3), ids, 3)
        alone = first_chunk_forward(model, noisy, sigma, ids)
    assert torch.allclose(tf, alone, atol=1e-5)


def test_weight_average_follows_the_weights_and_swaps_back():
    model = torch.nn.Linear(2, 2)
    avg = WeightAverage(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    avg.update(model)  # first update: decay min(0.5, 2/11) = 2/11
    d = 2 / 11
    assert torch.allclose(avg.shadow["weight"], d * start + (1 - d) * (start + 1.0))
    trained = model.weight.detach().clone()
    avg.swap(model)
    assert torch.allclose(model.weight, d * start + (1 - d) * trained)
    avg.swap(model)
    assert torch.equal(model.weight, trained)


def test_training_ships_the_averaged_weights_and_resumes(tmp_path):
    cfg = TrainConfig(steps=3, batch=1, clip_frames=6, chunk_frames=3, lr=1e-3, warmup=1, threads=1,
                      run_dir=str(tmp_path / "run"), output=str(tmp_path / "m.safetensors"), checkpoint_every=3,
                      probe_every=1000, ema_decay=0.9, first_chunk_batch=2, object_weight=4.0, model=TINY_MINI)
    train(cfg, log=lambda *_: None)
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ck["state"]["step"] == 3 and ck["state"]["clips"] == 3 * (1 + 2)
    shipped = MiniModel.load(tmp_path / "m.safetensors").state_dict()
    name = "transformer.proj_out.weight"
    assert torch.equal(shipped[name], ck["ema"]["shadow"][name])  # the file holds the average ...
    assert not torch.equal(shipped[name], ck["model"][name])  # ... not the last step's weights
    cfg.steps = 4
    train(cfg, log=lambda *_: None)  # resumes at step 3
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["state"]["step"] == 4
    # fine-tuning: a new run starts from the matching weights of another
    fresh = TrainConfig(**{**cfg.__dict__, "steps": 0, "run_dir": str(tmp_path / "run2"),
                           "output": str(tmp_path / "m2.safetensors"), "init_from": str(tmp_path / "m.safetensors")})
    model = train(fresh, log=lambda *_: None)
    latest = MiniModel.load(tmp_path / "m.safetensors").state_dict()
    assert torch.equal(model.state_dict()[name], latest[name])


def test_self_generated_context_replaces_the_picked_clips_with_the_models_regeneration():
    from deepforcing.mini.train import self_generated_context

    torch.manual_seed(0)
    model = MiniModel(TINY_MINI).train()
    c, s = TINY_MINI.channels, TINY_MINI.latent_size
    clean = torch.randn(8, c, 6, s, s)
    ids = model.text_encoder.token_ids(["a red circle"] * 8)
    off = TrainConfig(self_context=0.0, model=TINY_MINI)
    assert torch.equal(self_generated_context(model, off, clean, ids, torch.Generator().manual_seed(1)), clean)
    half = TrainConfig(self_context=0.5, model=TINY_MINI)
    out = self_generated_context(model, half, clean, ids, torch.Generator().manual_seed(1))
    changed = (out != clean).flatten(1).any(dim=1)
    assert 0 < changed.sum() < 8  # some clips re-generated, the others left exactly true
    assert model.training  # the no-gradient re-generation restores training mode
    # from a vanishing noise level the re-generation is the truth itself (to the step's precision)
    tiny = TrainConfig(self_context=1.0, self_context_sigma=(1e-4, 1e-4), model=TINY_MINI)
    near = self_generated_context(model, tiny, clean, ids, torch.Generator().manual_seed(1))
    assert (near != clean).any() and torch.allclose(near, clean, atol=1e-2)
    # from pure noise it is the model's own sample, far from the truth
    full = TrainConfig(self_context=1.0, self_context_sigma=(1.0, 1.0), model=TINY_MINI)
    far = self_generated_context(model, full, clean, ids, torch.Generator().manual_seed(1))
    assert (far - clean).pow(2).mean() > 0.1


def test_a_deeper_model_initialised_from_a_shallower_one_starts_as_it(tmp_path):
    import dataclasses

    from deepforcing.mini.train import _load_matching

    torch.manual_seed(0)
    shallow = MiniModel(TINY_MINI).eval()
    path = tmp_path / "shallow.safetensors"
    shallow.save(path)
    deep = MiniModel(dataclasses.replace(TINY_MINI, layers=TINY_MINI.layers + 2)).eval()
    _load_matching(deep, str(path), log=lambda *_: None)
    c, s = TINY_MINI.channels, TINY_MINI.latent_size
    noisy, sigma = torch.randn(2, c, 3, s, s), torch.tensor([0.9, 0.4])
    ids = shallow.text_encoder.token_ids(["a red circle", "a blue square"])
    with torch.no_grad():
        assert torch.allclose(first_chunk_forward(deep, noisy, sigma, ids),
                              first_chunk_forward(shallow, noisy, sigma, ids), atol=1e-5)
    assert deep.transformer.blocks[-1].ffn.net[2].weight.abs().sum() == 0  # the new blocks start as the identity
    assert shallow.transformer.blocks[-1].ffn.net[2].weight.abs().sum() > 0


def test_contextual_text_encoder_starts_as_the_bag_of_embeddings_and_then_mixes_words():
    """``text_layers`` adds self-attention over the prompt's words: zero-initialised residual outputs, so a model
    grown from a bag-of-embeddings file starts identical; once trained, a word's row depends on its neighbours;
    padding rows stay zero and the empty (unconditional) prompt stays all zero, not NaN."""
    from deepforcing.mini.model import MiniTextEncoder

    prompts = ["a red circle and a blue square", "a green circle and a blue square", ""]
    torch.manual_seed(0)
    bag = MiniTextEncoder(TINY_MINI.text_dim, TINY_MINI.text_len)
    torch.manual_seed(0)
    contextual = MiniTextEncoder(TINY_MINI.text_dim, TINY_MINI.text_len, layers=2)
    assert torch.equal(bag(prompts), contextual(prompts))
    with torch.no_grad():  # as after training: the residual outputs are no longer zero
        for layer in contextual.layers:
            layer.linear2.weight.normal_(std=0.5)
            layer.self_attn.out_proj.weight.normal_(std=0.5)
    ids = contextual.token_ids(prompts)
    out = contextual(prompts)
    assert torch.isfinite(out).all() and out[2].abs().max() == 0 and out[0][ids[0] == 0].abs().max() == 0
    # "blue square" (object 2) is the same words at the same places in both prompts: only context can change it
    blue = slice(4, 8)
    assert torch.equal(bag(prompts)[0, blue], bag(prompts)[1, blue])
    assert not torch.allclose(out[0, blue], out[1, blue])


@pytest.mark.parametrize("target, message", [("future", "'truth', 'resimulated' or 'resimulated-kept'"),
                                             ("resimulated", "needs the autoencoder codec")])
def test_a_rollout_target_that_cannot_run_is_refused_before_training(tmp_path, target, message):
    import dataclasses

    cfg = TrainConfig(steps=1, batch=1, clip_frames=6, chunk_frames=3, threads=1, run_dir=str(tmp_path / "run"),
                      output=str(tmp_path / "m.safetensors"), rollout_context=1.0, rollout_target=target,
                      model=dataclasses.replace(TINY_MINI, codec="pixels"))
    with pytest.raises(ValueError, match=message):
        train(cfg, log=lambda *_: None)


def _one_step_with_target(tmp_path, name, **target):
    import dataclasses

    from deepforcing.mini.model import MiniModel as Model

    mini = dataclasses.replace(TINY_MINI, codec="autoencoder", latent_channels=4, codec_width=8, patch=1)
    weights = tmp_path / "codec.pt"
    if not weights.exists():
        torch.manual_seed(1)
        torch.save(Model(mini).codec.state_dict(), weights)
    cfg = TrainConfig(steps=1, batch=2, clip_frames=6, chunk_frames=3, threads=1, run_dir=str(tmp_path / name),
                      output=str(tmp_path / f"{name}.safetensors"), rollout_context=1.0, codec_weights=str(weights),
                      model=mini, **target)
    return train(cfg, log=lambda *_: None).state_dict()


def test_a_truth_share_of_one_trains_as_the_true_target_and_of_zero_as_the_resimulated_one(tmp_path):
    truth = _one_step_with_target(tmp_path, "truth", rollout_target="truth")
    all_truth = _one_step_with_target(tmp_path, "share1", rollout_target="resimulated", rollout_truth_share=1.0)
    resim = _one_step_with_target(tmp_path, "resim", rollout_target="resimulated")
    no_truth = _one_step_with_target(tmp_path, "share0", rollout_target="resimulated", rollout_truth_share=0.0)
    name = next(k for k in truth if k.startswith("transformer") and truth[k].dim() == 2)
    assert torch.equal(truth[name], all_truth[name])
    assert torch.equal(resim[name], no_truth[name])
    assert not torch.equal(truth[name], resim[name])  # the re-simulated target changed the update


def test_a_truth_share_outside_zero_to_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"rollout_truth_share must be in \[0, 1\]"):
        _one_step_with_target(tmp_path, "bad", rollout_target="resimulated", rollout_truth_share=1.5)
