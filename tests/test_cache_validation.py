"""Invalid configurations are rejected with messages that say what to change."""

import pytest
import torch

from cache_driver import make_cache, run_chunks
from deepforcing.cache import make_policy
from deepforcing.cli import main


@pytest.mark.parametrize(
    "name, sizes, chunk, message",
    [
        ("deep-sink", {"sink": 21}, 3, "lower --sink"),
        ("attention-sink", {"sink": 25, "window": 21}, 3, "smaller than the window"),
        ("deep-forcing", {"budget": 14}, 3, "raise --budget to at least 15"),
        ("deep-forcing", {"budget": 22}, 3, "exceeds the window"),
        ("deep-forcing", {"recent": 2}, 3, "raise --recent to at least 3"),
        ("self-forcing", {"window": 2}, 3, "use --window >= 3"),
        ("deep-sink", {"sink": -1}, 3, "must be >= 0"),
        ("deep-forcing", {"recent": 0}, 3, "must be > 0"),
        ("self-forcing", {"window": 0}, 3, "must be > 0"),
        ("self-forcing", {}, 0, "chunk size must be positive"),
        ("deep-sink", {"sink": 19}, 3, "lower --sink to at most 18"),
        ("deep-forcing", {"queries": "all"}, 3, "'both', 'past' or 'denoising'"),
    ],
)
def test_invalid_configurations(name, sizes, chunk, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        make_cache(make_policy(name, **sizes), chunk_frames=chunk)


def test_unknown_policy_and_option():
    with pytest.raises(ValueError, match="choose one of: self-forcing, attention-sink"):
        make_policy("deep-forcin")
    with pytest.raises(ValueError, match="has no option budget"):
        make_policy("deep-sink", budget=16)
    assert make_policy("Deep_Forcing").name == "deep-forcing"


def test_out_of_order_chunks_are_rejected():
    cache = make_cache(make_policy("self-forcing"))
    run_chunks(cache, 2)
    cache.begin_call(9, 3)
    with pytest.raises(ValueError, match="chunks must be generated in order"):
        cache.layers[0].update(*(torch.randn(1, 2, 18, 32) for _ in range(3)))


def test_update_without_begin_call_is_an_error():
    cache = make_cache(make_policy("self-forcing"))
    with pytest.raises(RuntimeError, match="begin_call"):
        cache.layers[0].update(*(torch.randn(1, 2, 18, 32) for _ in range(3)))


def test_cli_reports_bad_sizes_cleanly(capsys):
    assert main(["plan", "--policy", "deep-forcing", "--budget", "12"]) == 2
    err = capsys.readouterr().err
    assert "budget (12) must exceed sink + recent" in err and "Traceback" not in err
    assert main(["plan", "--policy", "nope"]) == 2
    assert "unknown cache policy" in capsys.readouterr().err


def test_presets_command_lists_values_and_their_sources(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "self-forcing: chunk 3, window 21, steps (1000, 750, 500, 250), warp True, shift 5.0" in out
    assert ("causvid: chunk 3, window 21, steps (1000, 757, 522), restarts every window from 3 frames, warp False, "
            "shift 8.0") in out
    assert "causal-forcing++-1step: chunk 1, window 21, steps (1000,), first chunk steps (1000, 750, 500, 250)" in out
    assert "source of denoising_steps: tianweiy/CausVid@ca21150:configs/wan_causal_dmd.yaml" in out
    # the product default lives on the preset, next to the release's own policy
    assert "shift 5.0, default policy deep-forcing (release: self-forcing)" in out
    assert "longlive: chunk 3, window 12" in out and "default policy attention-sink {'sink': 3}" in out
