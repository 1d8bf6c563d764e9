"""Participation scores for Participative Compression (arXiv 2512.05081 §4.3, Eq. 7; the release's causal_model.py).

``phi_j = sum_r q_r . k_j`` over the recent queries ``r`` — raw logits, no softmax — and, as in the released code,
summed over the heads of the layer and divided by ``sqrt(D) * H`` (a constant that does not change the ranking).
Because the fusion is a sum, ``sum_r q_r . k_j = (sum_r q_r) . k_j``: the query side collapses to one vector per head
and the scores cost one matrix-vector product over the keys. Keys are read in blocks of ``block_tokens`` so the extra
memory is bounded by ``block_tokens * H * D * 4`` bytes (fp32 upcast of one block), whatever the cache length; the
dense ``[queries x keys]`` score matrix (≈7 GB for a 21-frame cache at 480x832) is never formed.
"""

from __future__ import annotations

import math

import torch

__all__ = ["QueryWindow", "participation_scores", "dense_participation_scores", "DEFAULT_BLOCK_TOKENS"]

DEFAULT_BLOCK_TOKENS = 8192


def participation_scores(
    query_sum: torch.Tensor, keys: torch.Tensor, *, block_tokens: int = DEFAULT_BLOCK_TOKENS
) -> torch.Tensor:
    """Scores ``[B, T]`` (fp32) of keys ``[B, H, T, D]`` against the summed recent queries ``[B, H, D]``.

    Peak extra memory: one fp32 block of ``min(T, block_tokens) * H * D`` values plus the ``[B, T]`` output.
    """
    if block_tokens <= 0:
        raise ValueError(f"block_tokens must be positive, got {block_tokens}")
    batch, heads, length, dim = keys.shape
    q = query_sum.to(torch.float32).reshape(batch, 1, heads * dim)
    scale = 1.0 / (math.sqrt(dim) * heads)
    out = torch.empty(batch, length, dtype=torch.float32, device=keys.device)
    for start in range(0, length, block_tokens):
        block = keys[:, :, start : start + block_tokens].to(torch.float32)  # [B, H, t, D]
        flat = block.permute(0, 2, 1, 3).reshape(batch, -1, heads * dim)  # [B, t, H*D]
        out[:, start : start + block.shape[2]] = torch.bmm(flat, q.transpose(1, 2)).squeeze(-1) * scale
    return out


def dense_participation_scores(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Reference definition: the full ``[R x T]`` logit matrix per head, summed over queries and heads.

    ``queries``: ``[B, H, R, D]``; only for tests and diagnostics (memory ``O(R * T)``).
    """
    dim, heads = keys.shape[-1], keys.shape[1]
    logits = torch.einsum("bhrd,bhtd->bhrt", queries.float(), keys.float())
    return logits.sum(dim=(1, 2)) / (math.sqrt(dim) * heads)


class QueryWindow:
    """The recent-query buffer of one layer, kept as per-frame query sums (fp32 ``[B, H, D]`` each).

    The released code keeps the last ``R`` frames' worth of post-RoPE query tokens from *every* forward (4 denoising
    steps and the clean pass), so at a compression it holds the previous chunk's last clean frame plus the new chunk's
    step-0 frames (the paper's "both", Tab. 5). Since scores only need the sum, a frame is stored as its sum.
    """

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self._sums: list[torch.Tensor] = []

    def push(self, queries: torch.Tensor, num_frames: int) -> None:
        """Append the queries ``[B, H, num_frames * F, D]`` of one call, frame by frame."""
        per_frame = queries.unflatten(2, (num_frames, -1)).to(torch.float32).sum(dim=3)  # [B, H, f, D]
        self._sums.extend(per_frame.unbind(dim=2))
        del self._sums[: max(0, len(self._sums) - self.frames)]

    def replace(self, queries: torch.Tensor, num_frames: int) -> None:
        """Hold exactly this call's frames (the "denoising only" query set)."""
        self._sums.clear()
        self.push(queries, num_frames)

    def total(self) -> torch.Tensor | None:
        """Sum of the buffered queries ``[B, H, D]``, or ``None`` if empty."""
        if not self._sums:
            return None
        return torch.stack(self._sums, dim=0).sum(dim=0)

    def clear(self) -> None:
        self._sums.clear()
