"""Dummy Forcing (arXiv 2601.20499; release ``csguoh/DummyForcing`` @ 28128ed: ``wan/modules/causal_model.py``
``CausalWanSelfAttention.forward`` and ``CausalWanModel._forward_inference``, ``wan/modules/dummyforcing.py``
``online_head_classification`` / ``dynamic_head_programming`` / ``heterogeneous_memory_allocation``; settings
``configs/self_forcing_inference.yaml``: ``ar_start 1``, ``denoise_start 0``, ``local_context_length 1``,
``num_dummy 180`` of Wan2.1-1.3B's 30 x 12 heads).

Up to chunk ``ar_start`` every head reads ``[frame 0 | the last local chunk | the current chunk]`` (here: a FIFO of
``window`` frames behind a ``sink``-frame sink; the release's ``local_context_length`` chunks are ``window - sink -
chunk`` frames, 3 with the defaults). On the clean pass of chunk ``ar_start`` every layer samples ``F // 3`` query
rows of the chunk (``F`` the tokens of one frame; the release's ``torch.randint`` on the global generator, here
:meth:`DummyForcing.sample_rows` on the cache's own), takes their softmax attention over the keys it reads and averages,
per head, the mass on the first frame, on the middle and on the current chunk. Once all layers have it, the heads of
**all layers together** are assigned (the first layer asks, at the next chunk): both masses are normalised over all
heads, the ``dummy_fraction`` of heads whose larger normalised mass is smallest become *dummy* heads (the release:
180 of 360), the others *sink* heads when their first-frame mass is at least their middle mass, else *neighbour*
heads. From the next chunk on each layer holds three head groups (:class:`~deepforcing.cache.HeadGroup`):

* sink heads read ``[the sink | current chunk]``;
* dummy heads read ``[the frame before the current chunk | current chunk]`` (attended in one call with the sink heads,
  as the release packs them);
* neighbour heads read ``[the last window - sink - chunk frames | current chunk]``.

Keys are post-RoPE at their absolute frames, as the release stores them (its Triton RoPE and head extraction have
torch fallbacks, ``rope_triton.py`` / ``extract_head_triton.py``, which are the parity oracle here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import HeadGroup
from .options import option
from .policies import FifoSelector
from .registry import register_policy

__all__ = ["DummyForcing", "assign_heads", "SINK_HEAD", "NEIGHBOUR_HEAD", "DUMMY_HEAD", "HEAD_KINDS"]

SINK_HEAD, NEIGHBOUR_HEAD, DUMMY_HEAD = range(3)  # the release's groups 0 ("first"), 1 ("mid"), 2 ("last")
HEAD_KINDS = ("sink", "neighbour", "dummy")
_STATE = "dummy_forcing_heads"  # KVCache.state: the global assignment, [layers, heads] of the kinds above
_PACK = "sink+dummy"


def assign_heads(mass: torch.Tensor, num_dummy: int) -> torch.Tensor:
    """The release's ``dynamic_head_programming``: ``mass`` ``[layers, heads, 3]`` (first frame, middle, current
    chunk) -> the kind of every head ``[layers, heads]``. The first-frame and middle masses are normalised over all
    heads; the ``num_dummy`` heads with the smallest larger-of-the-two are dummy, the rest sink heads when their
    normalised first-frame mass is at least their middle one, else neighbour heads."""
    layers, heads, _ = mass.shape
    first, middle = (mass[:, :, i].reshape(-1) for i in (0, 1))
    first, middle = first / first.sum(), middle / middle.sum()
    order = torch.argsort(torch.maximum(first, middle))
    kinds = torch.where(first < middle, NEIGHBOUR_HEAD, SINK_HEAD)
    kinds[order[:num_dummy]] = DUMMY_HEAD
    return kinds.reshape(layers, heads)


@register_policy
@dataclass
class DummyForcing(FifoSelector):
    """Dummy Forcing: an online, cross-layer split of the heads into sink, dummy and neighbour heads, each with its
    own short cache (module docstring)."""

    name: ClassVar[str] = "dummy-forcing"
    source: ClassVar[str] = ("arXiv 2601.20499; csguoh/DummyForcing@28128ed wan/modules/causal_model.py, "
                             "wan/modules/dummyforcing.py")
    own_window: ClassVar[bool] = True
    window: int = option(7, "dummy-forcing: frames every head reads before the split: the sink, the neighbour "
                            "heads' context and the current chunk (release: 1 + 3 + 3, local_context_length 1)")
    sink: int = option(1, "dummy-forcing: sink frames (frame 0; what sink heads read besides the current chunk)")
    ar_start: int = option(1, "dummy-forcing: chunk whose clean pass classifies the heads; the split starts at the "
                              "next chunk (release: 1)")
    dummy_fraction: float = option(0.5, "dummy-forcing: share of all heads (every layer's) made dummy heads "
                                        "(release: num_dummy 180 of 360)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("ar_start", self.ar_start)
        if not isinstance(self.dummy_fraction, (int, float)) or not 0.0 <= self.dummy_fraction <= 1.0:
            raise ValueError(f"{self.name}: --dummy-fraction must be in [0, 1], got {self.dummy_fraction!r}")

    def validate(self, chunk_frames: int) -> None:
        super().validate(chunk_frames)
        if self.window - self.sink - chunk_frames < 1:
            raise ValueError(f"{self.name}: the window ({self.window}) must hold the sink ({self.sink}), at least one "
                             f"frame before the chunk and the chunk ({chunk_frames}); raise --window to at least "
                             f"{self.sink + chunk_frames + 1}")

    # ------------------------------------------------------------- statistics
    def sample_rows(self, layer, count: int, high: int) -> torch.Tensor:
        """The query rows the classification samples (the release: ``torch.randint(0, high, (count,))`` on the global
        generator; here the cache's own, so the noise stream is untouched)."""
        return torch.randint(0, high, (count,), generator=layer.owner.generator)

    def observe_attention(self, layer, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """On chunk ``ar_start``'s clean pass: each head's mean softmax mass of sampled query rows on the first frame,
        the middle and the current chunk (``online_head_classification``), kept in ``layer.state``."""
        call = layer.call
        if layer.group is not None or not call.clean or call.start_frame != self.ar_start * call.num_frames:
            return
        n = q.shape[2]
        # the release's HW: one frame's tokens (L // 3 with its 3-frame blocks) when ar_start is 1, else the chunk's
        first = n // call.num_frames if self.ar_start == 1 else n
        rows = self.sample_rows(layer, first // 3, n).to(q.device)
        scores = torch.matmul(q[:, :, rows], keys.transpose(-2, -1)) / (q.shape[-1] ** 0.5)
        weights = torch.softmax(scores, dim=-1)
        current = weights[..., -n:].sum(dim=-1).mean(dim=-1)
        middle = weights[..., first:-n].sum(dim=-1).mean(dim=-1)
        head = weights[..., :first].sum(dim=-1).mean(dim=-1)
        layer.state["frame_mass"] = torch.stack([head, middle, current])  # [3, B, H]

    # ------------------------------------------------------------- the split
    def head_kinds(self, cache) -> torch.Tensor | None:
        """The global assignment ``[layers, heads]`` (:data:`HEAD_KINDS`), made once every layer has its statistics
        (``heterogeneous_memory_allocation``; batch element 0, as the release), or ``None`` before."""
        kinds = cache.state.get(_STATE)
        if kinds is None:
            masses = [layer.state.get("frame_mass") for layer in cache.layers]
            if any(m is None for m in masses):
                return None
            mass = torch.stack([m[:, 0] for m in masses]).transpose(1, 2)  # [layers, heads, 3]
            total = mass.shape[0] * mass.shape[1]
            kinds = assign_heads(mass.float().cpu(), round(self.dummy_fraction * total))
            cache.state[_STATE] = kinds
        return kinds

    def head_groups(self, layer) -> tuple[HeadGroup, ...] | None:
        call = layer.call
        if call.start_frame < (self.ar_start + 1) * call.num_frames:
            return None
        kinds = self.head_kinds(layer.owner)
        if kinds is None:
            raise RuntimeError(f"{self.name}: chunk {call.start_frame // call.num_frames} needs the head statistics of "
                               f"chunk {self.ar_start}'s clean pass, which not every layer recorded")
        chunk = call.num_frames
        sizes = {SINK_HEAD: (self.sink + chunk, self.sink, _PACK), DUMMY_HEAD: (1 + chunk, 0, _PACK),
                 NEIGHBOUR_HEAD: (self.window - self.sink, 0, None)}
        groups = []
        for kind in (SINK_HEAD, DUMMY_HEAD, NEIGHBOUR_HEAD):
            heads = torch.nonzero(kinds[layer.index] == kind).flatten().tolist()
            if heads:
                window, sink, pack = sizes[kind]
                groups.append(HeadGroup(HEAD_KINDS[kind], tuple(heads), window=window, sink_frames=sink, pack=pack))
        return tuple(groups)
