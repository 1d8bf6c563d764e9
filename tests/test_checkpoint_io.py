"""One set of checkpoint-file rules for every loader (models.checkpoint_io)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from deepforcing.models.checkpoint_io import (load_file, load_state_dict_strict, load_weights_folder, torch_load,
                                              unwrap_state_dict, weight_files)


def _sharded(folder, name="model", missing=False):
    folder.mkdir()
    save_file({"a": torch.ones(2)}, str(folder / f"{name}-00001-of-00002.safetensors"))
    if not missing:
        save_file({"b": torch.zeros(3)}, str(folder / f"{name}-00002-of-00002.safetensors"))
    index = {"weight_map": {"a": f"{name}-00001-of-00002.safetensors", "b": f"{name}-00002-of-00002.safetensors"}}
    (folder / f"{name}.safetensors.index.json").write_text(json.dumps(index))
    return folder


def test_sharded_folders_merge_and_a_missing_shard_is_named(tmp_path):
    state = load_weights_folder(_sharded(tmp_path / "ok"))
    assert set(state) == {"a", "b"} and state["b"].shape == (3,)
    assert len(weight_files(_sharded(tmp_path / "dm", name="diffusion_pytorch_model"))) == 2
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_weights_folder(_sharded(tmp_path / "broken", missing=True))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no diffusion_pytorch_model"):
        weight_files(tmp_path / "empty")


def test_files_that_cannot_be_read_name_themselves(tmp_path):
    good = tmp_path / "w.safetensors"
    save_file({"x": torch.ones(4)}, str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(ValueError, match="cut.safetensors: cannot be read as safetensors"):
        load_file(cut)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt: cannot be read as a weights-only torch checkpoint"):
        torch_load(bad)
    with pytest.raises(FileNotFoundError, match="nope.pt not found"):
        torch_load(tmp_path / "nope.pt")


def test_self_forcing_checkpoints_unwrap_ema_or_generator():
    ema, raw = {"w": torch.ones(1)}, {"w": torch.zeros(1)}
    both = {"generator_ema": ema, "generator": raw}
    assert unwrap_state_dict(both, "ck.pt", use_ema=True)["w"].item() == 1.0
    assert unwrap_state_dict(both, "ck.pt", use_ema=False)["w"].item() == 0.0
    with pytest.raises(ValueError, match="no 'generator_ema' entry .* try use_ema=False"):
        unwrap_state_dict({"generator": raw}, "ck.pt", use_ema=True)
    assert unwrap_state_dict({"state_dict": raw}, "v.pth")["w"].item() == 0.0
    with pytest.raises(ValueError, match="not tensors"):
        unwrap_state_dict({"w": torch.ones(1), "step": 3}, "v.pth")


def test_strict_loading_names_missing_unexpected_and_misshaped_keys():
    layer = torch.nn.Linear(2, 3)
    with pytest.raises(ValueError, match="missing 1 keys: bias.*unexpected 1 keys: extra"):
        load_state_dict_strict(layer, {"weight": torch.zeros(3, 2), "extra": torch.zeros(1)}, "f.safetensors")
    with pytest.raises(ValueError, match="wrong shape, first weight"):
        load_state_dict_strict(layer, {"weight": torch.zeros(2, 2), "bias": torch.zeros(3)}, "f.safetensors")
    load_state_dict_strict(layer, {"weight": torch.ones(3, 2), "bias": torch.zeros(3)}, "f.safetensors")
    assert layer.weight.sum().item() == 6.0
