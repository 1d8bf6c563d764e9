"""Attention diagnostics for any model (arXiv 2512.05081 §4.2 Fig. 4, App. H Fig. 16 and App. D Fig. 13).

* :class:`AttentionMassProbe` — at the first denoising step of chosen chunks, the softmax attention of the chunk's
  queries over the cached keys, averaged over queries, per layer and head, summed per source latent frame. Fig. 4
  is this for the last chunk of a full window: deep sinks show up as mass on the first frames *and* the middle.
* :func:`topc_selection_heatmap` — how often each slot of the augmented cache is picked as Top-C over a rollout
  (Fig. 13: query-based selection concentrates right after the sink boundary; random selection is uniform).

Softmax rows are computed in blocks of queries, so memory stays at ``block * cache_len`` per head.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from deepforcing.cache import REGIONS

from deepforcing.cli_options import add_model_arguments

__all__ = ["AttentionMassProbe", "topc_selection_heatmap", "region_mass", "layer_region_mass", "attention_regions",
           "add_diagnose_arguments", "run_diagnose"]


class AttentionMassProbe:
    """Attach with ``cache.attention_observer = probe``; results in ``probe.records``.

    Each record: ``{"chunk_start": f0, "layer": i, "frames": [source frame per slot], "positions": [...],
    "regions": [region index per slot, :data:`~deepforcing.cache.REGIONS`, as the policy reports them],
    "mass": [H, L] (query-averaged softmax weight per slot)}`` for batch element 0; a layer split into head groups
    gives one record per group, with ``"group"`` (its name) and ``"heads"`` (the layer's heads it holds). The keys are those attention
    read (for pre-RoPE storage: rotated at the read positions).
    """

    def __init__(self, chunk_starts: set[int] | None = None, layers: set[int] | None = None, block: int = 1024):
        self.chunk_starts, self.layers, self.block = chunk_starts, layers, block
        self.records: list[dict] = []
        self._seen: set[tuple[int, int]] = set()

    def __call__(self, layer_cache, call, q: torch.Tensor) -> None:
        group = layer_cache.group  # a head group's view of a split layer (CachePolicy.head_groups), else None
        key = (call.start_frame, layer_cache.index, group.name if group is not None else None)
        if call.clean or key in self._seen:
            return  # first denoising step of each chunk only
        self._seen.add(key)
        if self.chunk_starts is not None and call.start_frame not in self.chunk_starts:
            return
        if self.layers is not None and layer_cache.index not in self.layers:
            return
        keys, _ = layer_cache.attended
        k = keys[0].float()  # [H, L, D]
        qq = q[0].float()  # [H, n, D]
        scale = 1.0 / math.sqrt(k.shape[-1])
        mass = torch.zeros(k.shape[0], k.shape[1])
        for s in range(0, qq.shape[1], self.block):
            w = torch.softmax(qq[:, s : s + self.block] @ k.transpose(1, 2) * scale, dim=-1)
            mass += w.sum(dim=1).cpu()
        mass /= qq.shape[1]
        store = layer_cache.store
        record = {
            "chunk_start": call.start_frame,
            "layer": layer_cache.index,
            "frames": store.frames()[0].tolist(),
            "positions": store.positions[0, : store.length].tolist(),
            "regions": layer_cache.owner.policy.regions(layer_cache)[0].tolist(),
            "mass": mass.tolist(),
        }
        if group is not None:  # one record per head group: its name and the layer's heads it holds
            record.update(group=group.name, heads=list(group.heads))
        self.records.append(record)

    def per_frame(self, record: dict) -> dict[int, list[float]]:
        """Mass per source frame (summed over its tokens) for each head."""
        mass = torch.tensor(record["mass"])
        frames = torch.tensor(record["frames"])
        out = {}
        for f in sorted(set(record["frames"])):
            out[int(f)] = mass[:, frames == f].sum(dim=1).tolist()
        return out


def topc_selection_heatmap(events, layers: int) -> torch.Tensor:
    """``[layers, max_T]`` counts of Top-C picks per augmented-cache slot over all compressions."""
    picks = [e for e in events if e.decision.selected is not None]
    if not picks:
        return torch.zeros(layers, 0)
    width = max(e.total for e in picks)
    heat = torch.zeros(layers, width)
    for e in picks:
        heat[e.layer].index_add_(0, e.decision.selected[0].cpu(), torch.ones(e.decision.selected.shape[1]))
    return heat


def region_mass(record: dict, sink_frames: int, chunk_frames: int, tokens_per_frame: int) -> dict[str, float]:
    """Head-averaged attention mass of one probe record split by cache region: the ``sink`` (the first
    ``sink_frames`` frames' slots), the chunk's ``own`` frames, the ``previous`` chunk (the ``chunk_frames`` source
    frames right before it) and the ``middle`` (Top-C picks or the older FIFO tail; everything else). A record
    whose policy reports synthesized ``memory`` slots (its ``regions``) also gets a ``memory`` share."""
    mass = torch.tensor(record["mass"]).mean(dim=0)  # [L]
    frames = torch.tensor(record["frames"])
    start = record["chunk_start"]
    sink = torch.zeros_like(frames, dtype=torch.bool)
    if "group" in record:  # a head group: its own sink (none for most groups), as the policy reports its slots
        sink = torch.tensor(record["regions"]) == REGIONS.index("sink")
    else:
        sink[: sink_frames * tokens_per_frame] = True
    memory = torch.tensor(record["regions"]) == REGIONS.index("memory") if "regions" in record else sink & False
    own = ~sink & ~memory & (frames >= start)
    previous = ~sink & ~memory & (frames < start) & (frames >= start - chunk_frames)
    middle = ~(sink | memory | own | previous)
    shares = (("sink", sink), ("middle", middle), ("previous", previous), ("own", own))
    return {name: float(mass[m].sum()) for name, m in shares + ((("memory", memory),) if memory.any() else ())}


def layer_region_mass(records: list[dict], sink_frames: int, chunk_frames: int, tokens_per_frame: int
                      ) -> dict[int, dict]:
    """:func:`region_mass` per layer; a layer split into head groups gets its heads' mean (each group weighted by
    its heads) and, under ``"groups"``, each group's own shares."""
    by_layer: dict[int, list[dict]] = {}
    for r in records:
        by_layer.setdefault(r["layer"], []).append(r)
    out: dict[int, dict] = {}
    for layer, recs in sorted(by_layer.items()):
        shares = [(len(r.get("heads", ())), region_mass(r, sink_frames, chunk_frames, tokens_per_frame)) for r in recs]
        if "group" not in recs[0]:
            out[layer] = shares[-1][1]
            continue
        heads = sum(n for n, _ in shares)
        names = sorted({k for _, m in shares for k in m})
        out[layer] = {k: sum(n * m.get(k, 0.0) for n, m in shares) / heads for k in names}
        out[layer]["groups"] = {r["group"]: m for r, (_, m) in zip(recs, shares)}
    return out


@torch.no_grad()
def attention_regions(gen, pairs: list[tuple[str, int]], *, frames: int, policies: tuple[str, ...] = (
        "deep-forcing", "self-forcing", "deep-sink")) -> dict:
    """Why a policy helps or not: for each policy, the attention mass per cache region (:func:`region_mass`) at the
    first denoising step of every chunk once the window is full, averaged over those chunks and the (prompt, seed)
    ``pairs``, per layer; and for Top-C policies how concentrated the picks are right after the sink (Fig. 13: the
    share of picks in the first ``C`` frames of candidate slots, divided by that share under uniform picking;
    1 = uniform)."""
    out: dict = {"pairs": [list(p) for p in pairs], "frames": frames, "policies": {}}
    chunk = gen.bundle.sampling.chunk_frames
    for name in policies:
        policy = gen.resolve_policy(name)
        layers: dict[int, list[dict[str, float]]] = {}
        near_ratios = []
        for prompt, seed in pairs:
            probe = AttentionMassProbe()
            for piece in gen.stream(prompt, latent_frames=frames, policy=policy, seed=seed, record_events=True,
                                    attention_observer=probe):
                pass
            cache = piece.cache
            F = cache.geometry.tokens_per_frame
            for r in probe.records:
                if r["chunk_start"] >= policy.window:
                    layers.setdefault(r["layer"], []).append(region_mass(r, policy.sink_frames, chunk, F))
            heat = topc_selection_heatmap(cache.events, len(cache.layers))
            topc = policy.layout["kept"]  # frames of Top-C picks (the heatmap is empty for other policies)
            if heat.numel() and topc:
                picks = [e for e in cache.events if e.decision.selected is not None]
                start = policy.sink_frames * F
                near = heat[:, start:start + topc * F].sum() / heat.sum()
                # uniform picking: each compression's C frames out of its candidate span (the span varies per event)
                recent = policy.layout["recent"]
                uniform = np.mean([min(1.0, topc * F / (e.total - start - recent * F)) for e in picks])
                near_ratios.append(float(near / uniform))
        regions = {layer: {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}
                   for layer, rows in sorted(layers.items())}
        entry: dict = {"sink_frames": policy.sink_frames, "per_layer": regions,
                       "mean": {k: float(np.mean([v[k] for v in regions.values()])) for k in next(iter(regions.values()))}
                       if regions else {}}
        if near_ratios:
            entry["topc_near_sink_ratio"] = float(np.mean(near_ratios))
        out["policies"][name] = entry
    return out


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot(probe: AttentionMassProbe, heat: torch.Tensor, out: Path, sink_tokens: int, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if probe.records:
        last = max(r["chunk_start"] for r in probe.records)
        recs = sorted([r for r in probe.records if r["chunk_start"] == last], key=lambda r: r["layer"])
        fig, axes = plt.subplots(len(recs), 1, figsize=(8, 1.6 * len(recs) + 0.6), squeeze=False)
        for ax, r in zip(axes[:, 0], recs):
            pf = probe.per_frame(r)
            frames = list(pf)
            m = torch.tensor([pf[f] for f in frames]).T.numpy()  # [H, frames]
            ax.imshow(m, aspect="auto", cmap="magma")
            ax.set_ylabel(f"L{r['layer']} {r.get('group', '')} head".replace("  ", " "))
            ax.set_xticks(range(len(frames)), [str(f) for f in frames], fontsize=6)
        axes[-1, 0].set_xlabel(f"cached source frame (chunk starting at frame {last})")
        fig.suptitle(f"{title}: attention mass per cached frame")
        paths.append(_save(fig, out / "attention_mass.png"))
    if heat.numel():
        fig, ax = plt.subplots(figsize=(8, 2.5))
        ax.imshow(heat.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.axvline(sink_tokens - 0.5, color="white", lw=0.8)
        ax.set_xlabel("slot of the augmented cache (white line: end of sink)")
        ax.set_ylabel("layer")
        ax.set_title(f"{title}: Top-C selection frequency")
        paths.append(_save(fig, out / "topc_heatmap.png"))
    return paths


def add_diagnose_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("prompt", nargs="?", default=None, help="prompt (default: the model's default prompt)")
    p.add_argument("--policy", default=None, help="cache policy name (default: the model's product default)")
    add_model_arguments(p)
    p.add_argument("--frames", type=int, default=84, help="latent frames to roll out (default 84 = 4 windows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/diagnostics", help="folder for JSON and PNGs")
    return p


def run_diagnose(args: argparse.Namespace) -> int:
    from deepforcing.model_spec import ModelSpec, check_model, set_threads

    if args.frames < 1:
        raise ValueError(f"--frames must be positive, got {args.frames}")
    model = check_model(ModelSpec.from_args(args))
    if not model.is_mini and not args.prompt:
        raise ValueError("a real model needs a prompt (the mini model has a default one)")
    policy = model.policy(args.policy)  # built once, before the weights load
    gen = model.open()
    set_threads(gen, args.threads)
    window = policy.window
    chunk = gen.bundle.sampling.chunk_frames
    last_start = (math.ceil(args.frames / chunk) - 1) * chunk
    probe = AttentionMassProbe(chunk_starts={window - chunk, last_start})
    for chunk in gen.stream(args.prompt, latent_frames=args.frames, policy=policy, seed=args.seed,
                            record_events=True, attention_observer=probe):
        pass
    cache = chunk.cache
    heat = topc_selection_heatmap(cache.events, len(cache.layers))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    F = cache.geometry.tokens_per_frame
    regions = layer_region_mass([r for r in probe.records if r["chunk_start"] == last_start], policy.sink_frames,
                                gen.bundle.sampling.chunk_frames, F)
    (out / "attention.json").write_text(json.dumps({"policy": policy.describe(), "regions_last_chunk": regions,
                                                    "records": probe.records}))
    print(f"attention mass of the last chunk (frames {last_start}+) by cache region, per layer:")
    for layer, r in sorted(regions.items()):
        print(f"  layer {layer}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k != "groups"))
        for name, shares in r.get("groups", {}).items():  # a layer split into head groups
            print(f"    {name} heads: " + ", ".join(f"{k} {v:.3f}" for k, v in shares.items()))
    sink_tokens = policy.sink_frames * cache.geometry.tokens_per_frame
    for p in _plot(probe, heat, out, sink_tokens, policy.name):
        print(f"wrote {p}")
    return 0
