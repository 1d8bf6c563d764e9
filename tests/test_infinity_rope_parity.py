"""∞-RoPE (arXiv 2511.20649) replays its release trace: yesiltepe-hidir/infinity-rope@63d7b84 (recorded by
``scripts/record_infinity_rope_trace.py``): a plain 10-chunk rollout, and an 11-chunk one with a KV Flush at chunk 4
and a KV Flush + RoPE Cut at chunk 8 (the release's prompt DSL ``first[3s] | second[3s#] | third``), through the
``infinity-rope`` policy with the flush and the cut driven by ``VideoRollout.switch_prompt``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepforcing.cache import make_policy
from deepforcing.models.loading import load_causal_wan
from deepforcing.models.presets import get_preset
from deepforcing.pipeline.rollout import VideoRollout
from release_traces import load_trace
from test_causvid_parity import ReplayedNoise, _chunks

TRACE = Path(__file__).parent / "data" / "infinity_rope_trace"
RELEASE = "yesiltepe-hidir/infinity-rope@63d7b84"


@pytest.fixture(scope="module")
def trace():
    meta, t = load_trace(TRACE)
    assert meta["release"] == RELEASE
    return meta, t, load_causal_wan(TRACE)


def _replay(meta, t, model, video: str, policy=None, observer=None) -> torch.Tensor:
    draws = meta["renoise_draws"]
    first = 0 if video == "plain" else draws["plain"]
    noise = ReplayedNoise(_chunks(t[f"noise_{video}"]), t["renoise"][first:first + draws[video]])
    with torch.no_grad():
        contexts = [model.encode_context(t[f"context_{p}"]) for p in meta["prompts"]]
        prompts = t[f"chunk_prompt_{video}"].tolist()
        rollout = VideoRollout(model=model, policy=policy or make_policy("infinity-rope"), context=contexts[prompts[0]],
                               sampling=get_preset("self-forcing").sampling, noise=noise,
                               latent_shape=tuple(t[f"noise_{video}"].shape[2:]))
        rollout.cache.attention_observer = observer
        out = []
        for c in range(meta["events"][video]["chunks"]):
            if c and prompts[c] != prompts[c - 1]:
                rollout.switch_prompt(contexts[prompts[c]], cut=bool(t[f"chunk_cut_{video}"][c]))
            out.append(rollout.step().latents)
    assert not noise.initial_draws and not noise.renoise_draws
    return torch.cat(out, dim=2).permute(0, 2, 1, 3, 4)


@pytest.mark.parametrize("video", ["plain", "events"])
def test_infinity_rope_replays_its_release_trace(trace, video):
    meta, t, model = trace
    err = (_replay(meta, t, model, video) - t[f"latents_{video}"]).abs().amax(dim=(0, 2, 3, 4)).view(-1, 3).amax(1)
    assert len(err) == meta["events"][video]["chunks"] and err.max() < 1e-5, err


def test_slots_and_positions_are_the_releases_at_every_attention_call(trace):
    """Every one of the trace's 210 self-attention reads (2 layers x 105 calls, plain then events): the frame in each
    window slot, the filled length, and the temporal positions of keys and queries (0..5 / 3..5; 0, 1, 2, 45..47 on
    the cut chunk) are the release's."""
    meta, t, model = trace
    rows = []

    def observe(layer, call, q):
        policy, F = layer.policy, layer.store.tokens_per_frame
        pad = lambda x, n: x + [-1] * (n - len(x))  # noqa: E731  (the trace's -1 = slot not read)
        rows.append((layer.index, pad(policy.query_positions(layer).tolist(), 3),
                     pad(policy.key_positions(layer)[0, ::F].tolist(), 6),
                     pad(layer.store.frames()[0, ::F].tolist(), 6), layer.store.length // F))

    for video in ("plain", "events"):
        _replay(meta, t, model, video, observer=observe)
    ours = [torch.tensor([r[i] for r in rows]) for i in range(5)]
    assert len(rows) == meta["attention_calls"]
    for mine, key in zip(ours, ("layer", "query_pos", "key_pos", "slot_frame", "local_end_after")):
        assert torch.equal(mine, t[f"attn_{key}"]), key
    assert (t["attn_key_pos"] == 45).any() and (t["attn_query_pos"] == 45).any()  # the cut chunk is among them


def test_without_the_cut_the_events_video_is_off(trace):
    """The cut matters: a policy whose cut jumps nowhere (cut_to = the chunk's own slots) misses from chunk 8 on."""
    meta, t, model = trace
    ours = _replay(meta, t, model, "events", make_policy("infinity-rope", cut_to=3))
    err = (ours - t["latents_events"]).abs().amax(dim=(0, 2, 3, 4)).view(-1, 3).amax(1)
    assert err[:8].max() < 1e-5 and err[8:].max() > 1e-4, err


def test_a_cut_in_the_timeline_reaches_the_policy(tiny_mini, monkeypatch):
    """``cut <duration>: <prompt>`` in a timeline: the policy hears a scene cut, then the prompt switch, at that
    entry's first chunk (∞-RoPE's RoPE Cut positions on that chunk only)."""
    from deepforcing.cache import InfinityRope
    from deepforcing.mini.bundle import mini_generator
    from deepforcing.pipeline.timeline import parse_timeline

    cuts = [e.cut for e in parse_timeline("6f: a red circle; cut 6f: a blue square; cut the cake")]
    assert cuts == [False, True, False]
    heard, react = [], InfinityRope.react

    def spy(self, event, cache):
        heard.append((event.kind, event.frame))
        return react(self, event, cache)

    monkeypatch.setattr(InfinityRope, "react", spy)
    pieces = list(mini_generator(tiny_mini).stream("6f: a red circle; cut 6f: a blue square; a green triangle",
                                                   latent_frames=15, policy="infinity-rope"))
    assert heard == [("scene-cut", 6), ("prompt-switch", 6), ("prompt-switch", 12)]
    assert pieces[-1].cache.layers[0].state["cut"] == 6


def test_the_papers_flush_is_not_the_releases(trace):
    """The flush's kept frames matter: the paper's sink + 1 (``flush_keep=1``) instead of the release's sink + 2
    matches until the first flush (chunk 4) and misses from there on (5.9e-2 measured)."""
    meta, t, model = trace
    ours = _replay(meta, t, model, "events", make_policy("infinity-rope", flush_keep=1))
    err = (ours - t["latents_events"]).abs().amax(dim=(0, 2, 3, 4)).view(-1, 3).amax(1)
    assert err[:4].max() < 1e-5 and err[4:].max() > 1e-3, err
