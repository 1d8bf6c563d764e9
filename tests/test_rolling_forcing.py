"""Rolling Forcing's loop (pipeline.rolling) against a straightforward reference loop written from its release's
description (TencentARC/RollingForcing pipeline/rolling_forcing_inference.py), on a tiny random model."""

import torch

from conftest import TINY_MINI
from deepforcing.mini.model import MiniModel
from deepforcing.models.contract import SamplingConfig
from deepforcing.models.schedule import FlowMatchSchedule
from deepforcing.pipeline.rolling import RollingForcingRollout, rolling_windows
from deepforcing.pipeline.rollout import GaussianNoise

SAMPLING = SamplingConfig(denoising_steps=(1000, 800, 600, 400, 200), warp=True, shift=5.0, chunk_frames=3,
                          solver="rolling-forcing")


def _model():
    torch.manual_seed(0)
    mini = MiniModel(TINY_MINI).eval()
    context = mini.transformer.encode_context(mini.text_encoder(["a red circle and a blue square"]))
    return mini, context


def test_windows_ramp_up_and_down_like_the_release():
    assert rolling_windows(7, 5) == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (2, 6), (3, 6), (4, 6), (5, 6),
                                     (6, 6)]
    steps = SAMPLING.timesteps(FlowMatchSchedule(shift=5.0)).tolist()
    assert [round(t, 2) for t in steps] == [1000.0, 952.38, 882.35, 769.23, 555.56]


def test_attention_spans_and_anchor_placement(monkeypatch):
    mini, context = _model()
    roll = RollingForcingRollout(mini.transformer, context, mini.latent_shape, num_chunks=12, sampling=SAMPLING)
    spans, anchors = [], []
    layer0 = roll.cache.layers[0]
    update = layer0.update

    def spy(q, k, v):
        keys, _ = update(q, k, v)
        call = roll.cache.call
        spans.append((call.start_frame, call.num_frames, call.clean, keys.shape[2] // TINY_MINI.tokens_per_frame))
        return keys, _

    rope = roll.cache.rope

    class SpyRope:  # records where the anchor is placed
        def place(self, keys, original, target):
            anchors.append(int(target))
            return rope.place(keys, original, target)

    monkeypatch.setattr(layer0, "update", spy)
    roll.cache.rope = SpyRope()
    list(roll.chunks(12))
    noisy = [s for s in spans if not s[2]]
    clean = [s for s in spans if s[2]]
    assert len(noisy) == len(clean) == 12 + 4
    # window 5 (chunks 1-5): anchor + 15 own frames; window 6: anchor + chunk 1 + 15 = 21; never more than 21
    assert noisy[5] == (3, 15, False, 18) and noisy[6] == (6, 15, False, 21)
    assert max(s[3] for s in spans) == 21
    # the last window (chunk 11 alone): anchor + 5 working chunks + itself
    assert noisy[-1] == (33, 3, False, 21)
    # anchor start: right before the working chunks (w = 11: chunks 7-11, one working chunk -> frames 15-17)
    layers = TINY_MINI.layers
    per_window = anchors[::layers]
    assert per_window[0] == 0 and per_window[6] == 21 - 3 - 3  # w=5: none working; w=11: F=21, m=1
    # the clean pass attends to the last 21 cached frames: with 7+ chunks cached, the anchor drops out
    assert clean[11] == (21, 3, True, 21) and clean[4] == (0, 3, True, 3)


class _ReferenceCache:
    """Per layer: every clean chunk's K/V by index (no eviction); key sets built from the release's formulas."""

    def __init__(self, layers, rope):
        self.rope, self.call, self.chunks = rope, None, [dict() for _ in range(layers)]
        self.layers = [self._Layer(self, i) for i in range(layers)]

    def begin_call(self, start_frame, num_frames, clean=False, rope=None):
        self.call, self.call_rope = (start_frame, num_frames, clean), rope

    class _Layer:
        def __init__(self, owner, i):
            self.owner, self.i = owner, i

        def attend(self, q, k, v):  # the model hands over pre-RoPE q, k: rotate them at their frames
            rope = self.owner.call_rope
            return rope.apply(q), *self.update(rope.apply(q), rope.apply(k), v)

        def attention(self, q, k, v, kernel):  # the model's entry: its attention kernel on what attend returns
            return kernel(*self.attend(q, k, v))

        def update(self, q, k, v):
            start, n, clean = self.owner.call
            store, s = self.owner.chunks[self.i], start // 3
            if clean:
                store[s] = (k, v)
                ids = range(max(0, s - 6), s + 1)  # the last 21 frames; chunk 0 (anchor) only while s <= 6
                return torch.cat([store[b][0] for b in ids], 2), torch.cat([store[b][1] for b in ids], 2)
            if s == 0:
                return k, v
            m = min(s - 1, (21 - n - 3) // 3)
            anchor = self.owner.rope.rotate(store[0][0], torch.tensor(start - 3 * m - 3))
            ks = [anchor] + [store[b][0] for b in range(s - m, s)] + [k]
            vs = [store[0][1]] + [store[b][1] for b in range(s - m, s)] + [v]
            return torch.cat(ks, 2), torch.cat(vs, 2)


@torch.no_grad()
def _reference(model, context, latent_shape, nb, seed):
    sched = FlowMatchSchedule(shift=5.0)
    steps = SAMPLING.timesteps(sched).tolist()
    K, P = len(steps), 3
    cache = _ReferenceCache(model.num_layers, model.rope3d.temporal)
    noise = GaussianNoise([seed])
    shape = (1, latent_shape[0], P, *latent_shape[1:])
    noisy, final = {}, {}
    for w in range(nb + K - 1):
        s, e = max(0, w - K + 1), min(nb - 1, w)
        if e == w:
            noisy[e] = noise.initial(e, shape)
        x = torch.cat([noisy[b] for b in range(s, e + 1)], 2)
        t = torch.tensor([[steps[w - b] for b in range(s, e + 1) for _ in range(P)]])
        flow = model(x, t, context, cache, s * P, clean=False)
        x0 = {b: sched.x0_from_flow(x[:, :, (b - s) * P:(b - s + 1) * P], flow[:, :, (b - s) * P:(b - s + 1) * P],
                                    steps[w - b]) for b in range(s, e + 1)}
        for b in range(s, e + 1):
            if w - b == K - 1:
                final[b] = x0[b]
            else:
                noisy[b] = sched.add_noise(x0[b], noise.renoise(b, w - b, x0[b].shape), steps[w - b + 1])
        model(x0[s], torch.zeros(1, P), context, cache, s * P, clean=True)
    return [final[b] for b in range(nb)]


def test_rolling_rollout_equals_the_reference_loop():
    mini, context = _model()
    nb = 11  # past the first eviction (chunk 8) and through the ramp-down
    engine = [c.latents for c in RollingForcingRollout(mini.transformer, context, mini.latent_shape, num_chunks=nb,
                                                       sampling=SAMPLING, seeds=[5]).chunks(nb)]
    ref = _reference(mini.transformer, context, mini.latent_shape, nb, seed=5)
    assert len(engine) == nb
    for a, b in zip(engine, ref):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(engine[0], engine[-1])
