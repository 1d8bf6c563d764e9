"""UMT5TextEncoder: Wan-layout conversion, both layouts agree, padding zeroed, per-prompt LRU cache."""

import pytest
import torch
from tiny_layouts import tiny_umt5_model, write_tiny_umt5

from deepforcing.models.text_encoder import (
    ORIGINAL_T5_FILENAME,
    UMT5TextEncoder,
    clean_prompt,
    hf_to_wan_t5_keys,
    wan_t5_to_hf_keys,
)

torch.set_num_threads(1)
TEXT_LEN = 16


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5")
    orig = UMT5TextEncoder.from_pretrained(write_tiny_umt5(root / "orig", "original", seed=4), text_len=TEXT_LEN)
    diff = UMT5TextEncoder.from_pretrained(write_tiny_umt5(root / "diff", "diffusers", seed=4), text_len=TEXT_LEN)
    return orig, diff


def test_wan_key_names_match_the_reference_list():
    """The Wan T5 names of ``models_t5_umt5-xxl-enc-bf16.pth``, layer 0, map onto transformers UMT5 names and back."""
    wan = ["token_embedding.weight", "norm.weight", "blocks.0.norm1.weight", "blocks.0.norm2.weight",
           "blocks.0.attn.q.weight", "blocks.0.attn.k.weight", "blocks.0.attn.v.weight", "blocks.0.attn.o.weight",
           "blocks.0.ffn.gate.0.weight", "blocks.0.ffn.fc1.weight", "blocks.0.ffn.fc2.weight",
           "blocks.0.pos_embedding.embedding.weight"]
    model = tiny_umt5_model()
    hf = wan_t5_to_hf_keys({k: torch.zeros(1) for k in wan})
    layer0 = {k for k in model.state_dict() if not k.startswith("encoder.block.1.")}
    assert set(hf) == layer0
    assert hf_to_wan_t5_keys(hf).keys() == set(wan)
    # the gate branch (GELU) is wi_0, the linear branch wi_1
    assert "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in wan_t5_to_hf_keys({"blocks.0.ffn.gate.0.weight": 0})


def test_both_layouts_give_identical_embeddings(layouts):
    orig, diff = layouts
    prompts = ["a red cat runs on the green grass", "fox jumps"]
    a, b = orig.encode(prompts), diff.encode(prompts)
    assert a.shape == (2, TEXT_LEN, 16)
    assert torch.equal(a, b)
    assert orig.model.config.num_layers == 2 and orig.model.config.num_heads == 2 and orig.model.config.d_kv == 8


def test_padding_is_exactly_zero_and_content_is_not(layouts):
    enc, _ = layouts
    ids, mask = enc.tokenize(["fox jumps"])
    n = int(mask.sum())
    assert n == 3 and ids[0, 2].item() == enc.tokenizer.eos_token_id  # 2 words + </s>
    e = enc.encode("fox jumps")[0]
    assert torch.all(e[n:] == 0)
    assert torch.all(e[:n].abs().sum(-1) > 0)


def test_embedding_matches_direct_model_call(layouts):
    enc, _ = layouts
    ids, mask = enc.tokenize(["ocean waves crash"])
    ref = enc.model(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
    torch.testing.assert_close(enc.encode(["ocean waves crash"]), ref)


def test_truncation_to_text_len(layouts):
    enc, _ = layouts
    long = " ".join(["cat"] * 40)
    ids, mask = enc.tokenize([long])
    assert ids.shape == (1, TEXT_LEN) and int(mask.sum()) == TEXT_LEN
    assert enc.encode(long).shape == (1, TEXT_LEN, 16)


def test_whitespace_cleaning():
    assert clean_prompt("  a \n red\t\tcat &amp;amp; ") == "a red cat &"


def test_lru_cache(layouts, monkeypatch):
    _, enc = layouts
    enc.cache_size = 2
    enc.clear_cache()
    calls = []
    real = enc._encode_uncached
    monkeypatch.setattr(enc, "_encode_uncached", lambda ps: calls.append(list(ps)) or real(ps))
    first = enc.encode(["red cat", "blue sky", "red cat"])
    assert calls == [["red cat", "blue sky"]]
    assert torch.equal(first[0], first[2])
    enc.encode("red cat")  # hit; "red cat" becomes most recent
    assert len(calls) == 1
    enc.encode("green grass")  # evicts "blue sky"
    enc.encode("red cat")
    assert len(calls) == 2
    enc.encode("blue sky")
    assert calls[-1] == ["blue sky"] and len(calls) == 3
    assert list(enc._cache) == ["red cat", "blue sky"]


def test_missing_and_wrong_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="models_t5_umt5-xxl-enc-bf16.pth"):
        UMT5TextEncoder.from_pretrained(tmp_path)
    root = write_tiny_umt5(tmp_path / "o", "original")
    sd = torch.load(root / ORIGINAL_T5_FILENAME, weights_only=True)
    del sd["blocks.1.attn.k.weight"]
    torch.save(sd, root / ORIGINAL_T5_FILENAME)
    with pytest.raises(ValueError, match=r"models_t5_umt5-xxl-enc-bf16.pth: .*missing 1 keys: encoder.block.1.layer.0"):
        UMT5TextEncoder.from_pretrained(root)
    torch.save({"something.else": torch.zeros(2)}, root / ORIGINAL_T5_FILENAME)
    with pytest.raises(ValueError, match="not a Wan T5 encoder checkpoint"):
        UMT5TextEncoder.from_pretrained(root)
