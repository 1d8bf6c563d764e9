"""Cache API v2 hooks, each through the real model: pre-RoPE storage rotated at read, query positions, archived /
synthesized tokens written with ``put``, and stream events (prompt switch, scene cut)."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from deepforcing.cache import CacheGeometry, DeepSink, KVCache, SelfForcing, StreamEvent, make_policy
from deepforcing.cache.base import MEMORY, REGIONS, Write
from deepforcing.cache.plan import simulate
from deepforcing.mini.bundle import mini_generator
from deepforcing.models.rope3d import WanRope3D


@pytest.fixture(scope="module")
def generator(tiny_mini):
    return mini_generator(tiny_mini)


def _latents(generator, policy, frames=27, switch_at=None, cut=False):
    rollout = generator.open_rollout("a red circle", policy, seed=5, max_frames=frames)
    out = []
    while rollout.next_frame < frames:
        if switch_at is not None and rollout.next_frame == switch_at:
            rollout.switch_prompt(generator.context("a blue square"), cut=cut)
        out.append(rollout.step().latents)
    return torch.cat(out, 2), rollout


@dataclass
class PreRopeFifo(SelfForcing):
    """Self Forcing's FIFO with keys kept pre-RoPE and rotated at every read (at the positions the slots present)."""

    name: ClassVar[str] = "pre-rope-fifo"

    def key_storage(self, layer: int) -> str:
        return "pre-rope"


@dataclass
class PreRopeDeepSink(DeepSink):
    """Deep Sink's re-alignment on pre-RoPE keys: a moved sink key is its raw key rotated once at its new place."""

    name: ClassVar[str] = "pre-rope-deep-sink"
    sink: int = 4

    def key_storage(self, layer: int) -> str:
        return "pre-rope"


def test_pre_rope_storage_rotated_at_read_is_bit_equal_to_post_rope(generator):
    """Rotating the raw key once at its frame at every read is the same float64 product as rotating it once at
    write: the two storages give the same video, bit for bit (window 9 frames: rolls from chunk 3 on)."""
    post, _ = _latents(generator, make_policy("self-forcing", window=9))
    pre, rollout = _latents(generator, PreRopeFifo(window=9))
    assert rollout.cache.layers[0].store.pre_rope and torch.equal(pre, post)


def test_pre_rope_sink_moves_by_position_only_and_reads_one_exact_rotation(generator):
    """A moved sink on pre-RoPE storage is read as ``rope(raw, new position)`` exactly; the post-RoPE store rotates
    its exact post-RoPE copy by the delta instead, equal only to rounding (the reason a policy picks its storage)."""
    post, post_roll = _latents(generator, make_policy("deep-sink", sink=4, window=9))
    pre, roll = _latents(generator, PreRopeDeepSink(window=9))
    layer, post_layer = roll.cache.layers[-1], post_roll.cache.layers[-1]
    F = layer.store.tokens_per_frame
    assert torch.equal(layer.store.positions, post_layer.store.positions)  # the same placement
    assert int(layer.store.positions[0, 0]) > 0  # the sink did move
    read_keys, sink = layer.attended[0], slice(0, 4 * F)
    slots = torch.arange(4 * F)
    raw = layer.store.keys[:, :, sink]
    assert torch.equal(read_keys[:, :, sink], layer.owner.call.rope.at(raw, layer.store.positions[:, sink], slots % F))
    assert not torch.equal(read_keys[:, :, sink], post_layer.attended[0][:, :, sink])
    assert (read_keys - post_layer.attended[0]).abs().max() < 1e-5
    assert (pre - post).abs().max() < 1e-3


@dataclass
class WindowQueries(SelfForcing):
    """Block-relative positions (∞-RoPE-like): cached keys read at window slots 0..L-1, queries at the last slots."""

    name: ClassVar[str] = "window-queries"

    def key_storage(self, layer: int) -> str:
        return "pre-rope"

    def key_positions(self, layer):
        frames = layer.store.length // layer.store.tokens_per_frame
        return torch.arange(frames).repeat_interleave(layer.store.tokens_per_frame).expand(layer.store.keys.shape[0], -1)

    def query_positions(self, layer):
        call = layer.call  # the chunk's slot in the window (asked before the call's keys are written)
        first = min(call.start_frame, self.window - call.num_frames)
        return torch.arange(first, first + call.num_frames)


def test_query_and_key_positions_are_the_policys():
    """Queries at the last window slots, cached keys at slots 0..L-1 (never their frames 12..20), each one float64
    rotation of the raw tensors at those positions, also after the window rolls."""
    rope, grid = WanRope3D(32), (2, 3)
    F = grid[0] * grid[1]
    cache = KVCache(WindowQueries(window=9), CacheGeometry(F, 3), num_layers=1, batch=1, heads=2, head_dim=32,
                    rope=rope.temporal)
    layer, gen = cache.layers[0], torch.Generator().manual_seed(0)
    for f0 in range(0, 21, 3):
        q, k, v = (torch.randn(1, 2, 3 * F, 32, generator=gen) for _ in range(3))
        cache.begin_call(f0, 3, rope=rope.bind(rope.angles(f0, 3, *grid), grid[1]))
        q_rot, keys, _ = layer.attend(q, k, v)
    slots = torch.arange(9 * F)
    assert layer.store.frames()[0, ::F].tolist() == list(range(12, 21))  # the window holds frames 12..20
    at = rope.bind(rope.angles(0, 1, *grid), grid[1]).at
    assert torch.equal(q_rot, at(q, (6 + torch.arange(3 * F) // F), torch.arange(3 * F) % F))
    assert torch.equal(keys, at(layer.store.keys[:, :, : 9 * F], slots // F, slots % F))
    assert torch.equal(layer.store.keys[:, :, -3 * F:], k)  # stored pre-RoPE
    assert not torch.equal(q_rot, rope.apply(q, rope.angles(18, 3, *grid)))  # not the true frames


def test_window_relative_positions_only_shift_a_contiguous_window(generator):
    """RoPE is relative: reading a gap-free FIFO window at slots 0..L-1 with queries at its last slots moves every
    position by the same amount, so the video is that of absolute positions up to float rounding (not bit-equal:
    other angles are rotated)."""
    plain, _ = _latents(generator, make_policy("self-forcing", window=9), frames=18)
    moved, _ = _latents(generator, WindowQueries(window=9), frames=18)
    assert torch.equal(plain[:, :, :9], moved[:, :, :9])  # the window's first 9 frames: slots are the frames
    assert 0 < (plain[:, :, 9:] - moved[:, :, 9:]).abs().max() < 1e-4


@dataclass
class EvictedMemory(SelfForcing):
    """MemRoPE-like synthesized tokens: at every roll, the evicted frames' mean K and V (per head and channel) are
    written as one memory frame right after the sink of ``sink`` frames (EMA weight ``alpha`` after the first)."""

    name: ClassVar[str] = "evicted-memory"
    alpha: float = 0.5

    def key_storage(self, layer: int) -> str:
        return "pre-rope"

    def capacity_frames(self, chunk_frames: int) -> int:
        return self.window + chunk_frames + 1

    def decide(self, ctx):
        F = ctx.tokens_per_frame
        has_memory = "memory" in ctx.state
        start = F if has_memory else 0  # the memory frame sits in slot frame 0
        if ctx.total - start <= (self.window - 1) * F:
            return super().decide(ctx)
        overflow = ctx.total - start - (self.window - 1) * F
        evicted = slice(start, start + overflow)
        mean_k = ctx.keys[:, :, evicted].mean(2, keepdim=True)
        mean_v = ctx.values[:, :, evicted].mean(2, keepdim=True)
        if has_memory:
            old_k, old_v = ctx.state["memory"]
            mean_k, mean_v = self.alpha * mean_k + (1 - self.alpha) * old_k, self.alpha * mean_v + (1 - self.alpha) * old_v
        ctx.state["memory"] = (mean_k, mean_v)
        ctx.state["pending"] = not has_memory
        keep = torch.cat([torch.arange(0, start), torch.arange(start + overflow, ctx.total)])
        return type(super().decide(ctx))(keep=keep[None].expand(ctx.token_ids.shape[0], -1), event="roll")

    def after_write(self, layer, write: Write) -> None:
        if not (write.new_chunk and "memory" in layer.state):
            return
        F = layer.store.tokens_per_frame
        k, v = layer.state["memory"]
        b, h, _, d = k.shape
        ids = torch.arange(F)  # the memory frame presents frame 0's spatial layout at position 0
        layer.put(0, k.expand(b, h, F, d), v.expand(b, h, F, d), ids, torch.zeros(F, dtype=torch.long),
                  insert=layer.state.pop("pending", False))

    def regions(self, layer):
        codes = super().regions(layer)
        if "memory" in layer.state:
            codes[:, : layer.store.tokens_per_frame] = MEMORY
        return codes


def test_synthesized_memory_tokens_are_written_with_put_and_reported_as_memory(generator):
    policy = EvictedMemory(window=9)
    _, rollout = _latents(generator, policy, frames=18)
    layer = rollout.cache.layers[-1]
    F = layer.store.tokens_per_frame
    assert layer.store.length == 9 * F  # memory frame + 8 recent frames
    k, v = layer.state["memory"]
    assert torch.equal(layer.store.values[:, :, :F], v.expand(-1, -1, F, -1))
    assert torch.equal(layer.store.keys[:, :, :F], k.expand(-1, -1, F, -1))
    assert layer.store.frames()[0, F:].tolist() == sorted(layer.store.frames()[0, F:].tolist())
    regions = policy.regions(layer)[0]
    assert REGIONS[int(regions[0])] == "memory" and int((regions == MEMORY).sum()) == F
    report = simulate(EvictedMemory(window=9), 6)[-1]
    assert (report.memory_frames, report.recent_frames, report.memory_positions) == (1, 8, [0, 0])


@dataclass
class FlushOnSwitch(SelfForcing):
    """∞-RoPE-like KV flush: at a prompt switch keep only the last ``keep`` frames; remember scene cuts."""

    name: ClassVar[str] = "flush-on-switch"
    keep: int = 2

    def react(self, event: StreamEvent, cache: KVCache):
        for layer in cache.layers:
            layer.state.setdefault("events", []).append((event.kind, event.frame))
        if event.kind != "prompt-switch":
            return "default"
        F = cache.geometry.tokens_per_frame
        for layer in cache.layers:
            store = layer.store
            keep = torch.arange(store.length - self.keep * F, store.length)[None]
            store.keep(keep.expand(store.token_ids.shape[0], -1))
        return "handled"


def test_a_policy_that_handles_the_prompt_switch_replaces_the_recache(generator):
    _, rollout = _latents(generator, FlushOnSwitch(window=9), frames=15, switch_at=9, cut=True)
    layer = rollout.cache.layers[0]
    assert layer.state["events"] == [("scene-cut", 9), ("prompt-switch", 9)]
    F = layer.store.tokens_per_frame
    # after the flush (frames 7-8) the chunks 9-11 and 12-14 were appended: no re-cache ran
    assert layer.store.frames()[0, ::F].tolist() == [7, 8, 9, 10, 11, 12, 13, 14]
    _, default = _latents(generator, make_policy("self-forcing", window=9), frames=15, switch_at=9)
    assert default.cache.layers[0].store.frames()[0, ::F].tolist() == [6, 7, 8, 9, 10, 11, 12, 13, 14]


def test_attention_probe_records_the_policys_regions_and_reports_memory(generator):
    """The diagnostics read regions from the policy: a memory policy's probe record carries them and the attention
    mass by region gets a ``memory`` share (all shares sum to 1)."""
    from deepforcing.eval.diagnostics import AttentionMassProbe, region_mass

    probe = AttentionMassProbe(chunk_starts={15}, layers={0})
    rollout = generator.open_rollout("a red circle", make_policy("memrope"), seed=5, max_frames=18)
    rollout.cache.attention_observer = probe
    for _ in range(6):
        rollout.step()
    record = probe.records[0]
    F = rollout.cache.geometry.tokens_per_frame
    assert record["regions"][::F] == [0] * 3 + [MEMORY] * 2 + [3] * 7
    shares = region_mass(record, 3, 3, F)
    assert set(shares) == {"sink", "middle", "previous", "own", "memory"} and shares["memory"] > 0
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
