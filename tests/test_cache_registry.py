"""The policy registry: a policy written in one file appears in `--policy`, `plan` and the live page; old names work;
options (the command-line flags) are read from the policy."""

import json
import sys
import textwrap

import pytest

from deepforcing.cache import POLICIES, make_policy, policy_names, policy_option_table
from deepforcing.cache.registry import PLUGIN_ENV
from deepforcing.cli import build_parser, main

TOY = '''
"""A toy policy in one file: a FIFO whose sink is its own option name, registered on import."""
from dataclasses import dataclass
from typing import ClassVar

import torch

from deepforcing.cache import CachePolicy, Decision, option, register_policy


@register_policy
@dataclass
class ToyFifo(CachePolicy):
    """The first ``anchor`` frames stay where they are; behind them, a FIFO window."""

    name: ClassVar[str] = "toy-fifo"
    aliases: ClassVar[tuple[str, ...]] = ("toy-old",)
    anchor: int = option(2, "toy: sink frames")

    @property
    def sink_frames(self) -> int:
        return self.anchor

    def select(self, ctx):
        sink, overflow = self.anchor * ctx.tokens_per_frame, ctx.total - self.window * ctx.tokens_per_frame
        keep = [i for i in range(ctx.total) if i < sink or i >= sink + overflow]
        return Decision(keep=torch.tensor([keep]).expand(ctx.token_ids.shape[0], -1), event="roll")
'''


@pytest.fixture
def toy_policy(tmp_path, monkeypatch):
    (tmp_path / "toy_policy_plugin.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(PLUGIN_ENV, "toy_policy_plugin")
    yield "toy-fifo"
    POLICIES.unregister("toy-fifo")
    POLICIES._imported.discard("toy_policy_plugin")
    sys.modules.pop("toy_policy_plugin", None)


def test_a_policy_in_one_file_appears_in_policy_plan_and_options(toy_policy, capsys):
    assert "toy-fifo" in policy_names() and "toy-old" in POLICIES and "toy-old" not in policy_names()
    help_text = build_parser()._subparsers._group_actions[0].choices["plan"].format_help()
    assert "toy-fifo" in help_text and "--anchor" in help_text and "toy: sink frames" in help_text
    assert main(["plan", "--policy", "toy-old", "--anchor", "4", "--chunks", "9", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["sink_frames"] for r in rows][-1] == 4 and rows[-1]["cache_frames"] == 21
    assert rows[-1]["sink_positions"] == [0, 3]  # a fixed sink: never moved


def test_a_policy_in_one_file_appears_on_the_live_page(toy_policy, tiny_mini):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from deepforcing.mini.bundle import mini_generator
    from deepforcing.serve.app import ServeConfig, create_app
    from deepforcing.serve.live import LiveOptions, LiveSession

    generator = mini_generator(tiny_mini)
    with TestClient(create_app(lambda: generator, ServeConfig())) as client:
        assert "toy-fifo" in client.get("/api/info").json()["policies"]
    live = LiveSession(generator, LiveOptions(prompt="a red circle", policy="toy-fifo", window=9), telemetry=False)
    assert live.policy.name == "toy-fifo" and live.next_chunk().cache_frames["sink"] == 2


def test_the_old_rolling_sink_name_is_the_rolling_forcing_sink():
    old, new = make_policy("rolling-sink", sink=4), make_policy("rolling-forcing-sink", sink=4)
    assert old == new and old.name == "rolling-forcing-sink" and "rolling-sink" not in policy_names()
    assert POLICIES.aliases()["rolling-sink"] == "rolling-forcing-sink"


def test_options_are_read_from_the_policies():
    table = {o.name: o for o in policy_option_table()}
    assert table["placement"].flag == "--sink-placement" and table["placement"].choices == ("reference", "adjacent")
    assert table["reuse_cap"].type is int and "block_tokens" not in table  # internal knob, not a flag
    defaults = {o.name: o.default for o in make_policy("deep-forcing").options()}
    shared = {"rope_jitter": 0.0, "rope_jitter_seed": 0}  # LoL's RoPE modifier, every policy's, listed last, off
    assert defaults == {"window": 21, "sink": 10, "budget": 16, "recent": 4, "reuse_cap": 7, "queries": "both",
                        "topc_rope": "keep", **shared}
    assert list(defaults)[-2:] == list(shared)
    assert {o.name: o.default for o in make_policy("attention-sink").options()} == {"window": 21, "sink": 3, **shared}


def test_every_policy_describes_its_regions():
    for name in policy_names():
        layout = make_policy(name).layout
        assert set(layout) == {"sink", "kept", "memory", "recent"}
    assert make_policy("deep-forcing").layout == {"sink": 10, "kept": 2, "memory": 0, "recent": 4}
    assert make_policy("attention-sink").layout == {"sink": 3, "kept": 0, "memory": 0, "recent": 18}
    assert make_policy("full").layout["recent"] is None
    assert "YoungRaeKimm/MemRoPE@b89bf5b" in make_policy("memrope").describe()["source"]  # the sidecar names it
    assert "source" not in make_policy("deep-forcing").describe()  # unchanged sidecar for the paper's policies


def test_registering_another_class_under_a_taken_name_is_refused():
    from dataclasses import dataclass
    from typing import ClassVar

    from deepforcing.cache import SelfForcing, register_policy

    @dataclass
    class Impostor(SelfForcing):
        name: ClassVar[str] = "deep-forcing"

    with pytest.raises(ValueError, match="registered twice"):
        register_policy(Impostor)


def test_plan_shows_each_2026_method_by_its_own_regions_and_read_positions():
    from deepforcing.cache.plan import simulate

    r = simulate(make_policy("rolling-sink-replay"), 21)[-1]  # the release's slot map after chunk 20
    assert (r.topc_frames, r.recent_frames, r.topc_positions, r.recent_positions) == (18, 3, [42, 59], [60, 62])
    r = simulate(make_policy("memrope"), 6)[-1]  # block-relative: memory at slots 3-4, the rest up to slot 11
    assert (r.sink_frames, r.memory_frames, r.recent_frames) == (3, 2, 7)
    assert (r.memory_positions, r.recent_positions) == ([3, 4], [5, 11])
    r = simulate(make_policy("infinity-rope"), 6)[-1]  # window slots 0..5, never the frames 15..17
    assert (r.sink_frames, r.recent_frames, r.sink_positions, r.recent_positions) == (1, 5, [0, 0], [1, 5])
