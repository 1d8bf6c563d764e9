"""Participation scores: blocked == dense (Eq. 7), query window semantics of the release ("both")."""

import pytest
import torch

from deepforcing.cache import QueryWindow, dense_participation_scores, participation_scores


@pytest.mark.parametrize("block", [1, 7, 64, 10_000])
def test_blocked_scores_equal_dense(block):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 24, 16, generator=gen)
    k = torch.randn(2, 3, 150, 16, generator=gen)
    dense = dense_participation_scores(q, k)
    blocked = participation_scores(q.sum(dim=2), k, block_tokens=block)
    assert blocked.shape == (2, 150)
    assert torch.allclose(blocked, dense, rtol=1e-5, atol=1e-5)


def test_scores_are_raw_logits_scaled_by_sqrt_d_times_heads():
    q = torch.zeros(1, 2, 1, 4)
    q[0, 0, 0, 0] = 1.0
    k = torch.zeros(1, 2, 3, 4)
    k[0, 0, :, 0] = torch.tensor([1.0, 2.0, -4.0])
    s = participation_scores(q.sum(2), k)
    assert torch.allclose(s, torch.tensor([[1.0, 2.0, -4.0]]) / (2.0 * 2))  # sqrt(4) * 2 heads; no softmax


def test_bf16_keys_are_scored_in_fp32():
    k = torch.randn(1, 2, 40, 8).bfloat16()
    q = torch.randn(1, 2, 8)
    assert participation_scores(q, k).dtype == torch.float32


def test_query_window_keeps_last_r_frames_across_calls():
    w = QueryWindow(frames=4)
    calls = [torch.full((1, 1, 3 * 2, 2), float(i)) for i in range(3)]  # 3 frames of 2 tokens per call
    for c in calls:
        w.push(c, 3)
    # last 4 frames: 1 frame of call 1, 3 frames of call 2 -> 2 tokens * (1*1 + 3*2)
    assert torch.allclose(w.total(), torch.full((1, 1, 2), 2.0 * (1 + 6)))
    w.replace(calls[0], 3)
    assert torch.allclose(w.total(), torch.zeros(1, 1, 2))
