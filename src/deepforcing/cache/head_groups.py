"""Per-head caches: a layer split into head groups, each with its own store, and the groups' kernel calls.

A policy that overrides :meth:`~deepforcing.cache.CachePolicy.head_groups` (Dummy Forcing, arXiv 2601.20499;
Forcing-KV, arXiv 2605.09681; TriAttention, arXiv 2604.04921) gives a layer's heads different key sets.
:meth:`LayerCache.attention <deepforcing.cache.session.LayerCache.attention>` calls into this module:

* :func:`new_groups`: the policy's groups when a call starts a new chunk of a layer not split yet (checked to cover
  every head once);
* :func:`split`: that call writes into the layer's one store as before, then each group takes its heads' slots into a
  store of its own (:meth:`~deepforcing.cache.store.LayerKVStore.subset`), keeps what its decision keeps and the one
  store goes;
* :func:`attend`: every later call of a split layer, each group writing, deciding and reading on its own view;
* :func:`grouped_kernel`: one kernel call per group, or per pack of groups with equal key counts, outputs scattered
  back to head order;
* :func:`store_bytes_bound`: what :meth:`~deepforcing.cache.session.KVCache.estimate_bytes` bounds the groups'
  stores by.

The group's view (:class:`~deepforcing.cache.session.HeadGroupCache`) is a ``LayerCache`` and lives beside it in the
session; :func:`split` is handed its constructor, so this module imports the session for annotations only. Design and
the hooks' order: ``docs/cache_api.md``, "Head groups".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from .base import CachePolicy, HeadGroup, Write
from .store import LayerKVStore

if TYPE_CHECKING:  # the session imports this module; these names are for annotations only
    from .session import CacheGeometry, CallInfo, LayerCache

__all__ = ["Kernel", "GroupRead", "new_groups", "split", "attend", "grouped_kernel", "store_bytes_bound"]

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""The model's attention: ``(q, keys, values)`` ``[B, h, n, D]`` / ``[B, h, L, D]`` -> output ``[B, h, n, D]``."""

GroupRead = tuple["LayerCache", torch.Tensor, torch.Tensor, torch.Tensor]
"""One group's read: its view, its heads' rotated queries and the keys/values they attend to."""

ViewFactory = Callable[["LayerCache", HeadGroup, LayerKVStore], "LayerCache"]
"""Makes a group's view: ``(layer, group, store)`` -> a ``LayerCache`` of the group's heads (``HeadGroupCache``)."""


def new_groups(layer: LayerCache, k: torch.Tensor) -> tuple[HeadGroup, ...] | None:
    """The policy's head groups when this call starts a new chunk of a layer not split yet, else ``None``."""
    owner = layer.owner
    if not owner.splits_heads or owner.call is None:
        return None
    end = (owner.call.start_frame + owner.call.num_frames) * owner.geometry.tokens_per_frame
    if end <= layer.global_end:
        return None
    groups = owner.policy.head_groups(layer)
    if not groups:
        return None
    heads = sorted(h for g in groups for h in g.heads)
    if heads != list(range(k.shape[1])):
        raise ValueError(f"{owner.policy.name}: layer {layer.index}'s head groups must cover heads "
                         f"0..{k.shape[1] - 1} once each, got {[g.heads for g in groups]}")
    if owner.jitter is not None:
        raise ValueError(f"{owner.policy.name}: --rope-jitter's per-head tables do not apply to head groups")
    return tuple(groups)


def split(layer: LayerCache, groups: tuple[HeadGroup, ...], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
          kernel: Kernel, view: ViewFactory) -> torch.Tensor:
    """This call writes into the one store as before (decision and ``after_write`` included); then each group
    takes its heads' slots into its own store (a ``view(layer, group, store)``) and keeps what its ``decide_group``
    keeps; the one store goes."""
    call, q_rot, stored = layer._rotate(q, k)
    layer._write(q_rot, stored, v, raw_keys=k)
    store, n = layer.store, k.shape[2]
    F = layer.owner.geometry.tokens_per_frame
    views = []
    for group in groups:
        capacity = group.capacity_frames(layer.owner.geometry.chunk_frames) * F
        group_view = view(layer, group, store.subset(list(group.heads), max(capacity, store.length),
                                                     group.sink_frames * F))
        group_view.rope = call.rope
        group_view.global_end = layer.global_end
        layer.groups.append(group_view)  # (the first group counts the layer's events)
        group_view._apply_policy(call, store.length - n, n)
        group_view.store.fit(capacity)
        views.append(group_view)
    layer.store = None
    reads = []
    for group_view in views:
        h = group_view.heads
        keys, values = group_view.store.view()
        keys, values = layer.owner.policy.read(group_view, keys, values)
        reads.append(_read(group_view, call, q_rot[:, h], keys, values, None, read=False))
    return grouped_kernel(q_rot, reads, kernel)


def attend(layer: LayerCache, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: Kernel) -> torch.Tensor:
    """A call of a split layer: the queries rotated once, every group writing its heads' keys into its own store
    (decision on a new chunk, ``after_write``, ``read``, ``observe_attention`` on the group's view), then
    :func:`grouped_kernel`."""
    call, q_rot, stored = layer._rotate(q, k)
    reads = []
    for view in layer.groups:
        view.rope = call.rope
        h = view.heads
        keys, values, write = view._write(q_rot[:, h], stored[:, h], v[:, h], raw_keys=k[:, h])
        reads.append(_read(view, call, q_rot[:, h], keys, values, write))
    layer.global_end = layer.groups[0].global_end
    return grouped_kernel(q_rot, reads, kernel)


def _read(view: LayerCache, call: CallInfo, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
          write: Write | None, read: bool = True) -> GroupRead:
    """A group's read after its write: the policy's read, deferral, statistics, the observer."""
    owner = view.owner
    if read:
        keys, values = owner.policy.read(view, keys, values)
    if view._defers and write is not None:
        view._after_attention = write
    if owner.observes:
        owner.policy.observe_attention(view, q, keys, values)
    view._attended(call, q, keys, values)
    return view, q, keys, values


def grouped_kernel(q_rot: torch.Tensor, reads: list[GroupRead], kernel: Kernel) -> torch.Tensor:
    """One kernel call per group, or per pack of groups with equal key counts; outputs back in head order."""
    out = torch.empty_like(q_rot)
    calls: dict[object, list] = {}
    for read in reads:
        view, _, keys, _ = read
        pack = view.group.pack
        calls.setdefault((pack, keys.shape[2]) if pack is not None else id(view), []).append(read)
    for batch in calls.values():
        if len(batch) == 1:
            view, q, keys, values = batch[0]
            out[:, view.heads] = kernel(q, keys, values)
            continue
        result = kernel(*(torch.cat([r[i] for r in batch], 1) for i in (1, 2, 3)))
        start = 0
        for view, q, _, _ in batch:
            out[:, view.heads] = result[:, start:start + q.shape[1]]
            start += q.shape[1]
    return out


def store_bytes_bound(policy: CachePolicy, geometry: CacheGeometry, *, batch: int, heads: int, head_dim: int,
                      dtype: torch.dtype, anchor_tokens: int) -> int:
    """A bound on one layer's group stores after a split, ``0`` for a policy without head groups or with an unbounded
    :attr:`~CachePolicy.layout`: every head at ``sum(layout) + chunk`` frames in a store of its own (its own per-slot
    metadata; ``anchor_tokens`` the layer's exact sink copy, capped at that size)."""
    if type(policy).head_groups is CachePolicy.head_groups or None in policy.layout.values():
        return 0
    slots = (sum(policy.layout.values()) + geometry.chunk_frames) * geometry.tokens_per_frame
    return heads * LayerKVStore.nbytes(batch=batch, heads=1, head_dim=head_dim, capacity=slots, dtype=dtype,
                                       anchor_tokens=min(anchor_tokens, slots))
