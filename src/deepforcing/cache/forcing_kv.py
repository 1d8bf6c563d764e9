"""Forcing-KV (arXiv 2605.09681; release ``zju-jiyicheng/Forcing-KV`` @ 50ac1f4, ``wan/modules/causal_model_forcingkv.py``
``CausalWanSelfAttention.forward`` / ``dynamic_compression`` and ``CausalWanModel._apply_offline_head_allocation``;
settings ``configs/forcing-kv/forcingkv_self_forcing_inference.yaml``; head profiles ``configs_head/``).

Until AR step ``split_after`` (1) has run its clean pass, every layer keeps a plain post-RoPE cache of ``sink`` (1)
frame plus the last ``max(static_frames, ring_frames)`` (1) frame, the incoming chunk on top. From the next chunk on,
each layer >= 1 is split by an offline **head profile** (a JSON per checkpoint) into

* **static** heads: ``[sink][last static_frames frames][chunk]`` — a FIFO;
* **dynamic** heads: ``[sink][buffer][last ring_frames frames][chunk]``, where the buffer holds ``buffer_frames``
  (1) frame's worth of *patches*: at every new chunk the candidates are the previous ring frames and the previous
  chunk's first ``3 - ring_frames`` frames, each cut into ``patches`` (6) runs of ``tokens_per_frame / patches``
  tokens; a patch's score is the mean over its tokens of the cosine similarity of the keys (post-RoPE, the dynamic
  heads' channels flattened) to the same token of the next frame, computed on **layer 1, batch 0** and shared by
  every layer; the ``round(3 * patches * retention)`` lowest-scoring patches are kept (the release raises unless that
  equals ``buffer_frames * patches``).

Layer 0 keeps its plain cache. The release builds the buffer after each chunk's clean pass from that pass's keys; the
same keys are in the dynamic group's store when the next chunk arrives, so the policy chooses there, before any
attention reads the buffer (the same choice at the same point of the stream). Blocks are 3 frames (the release's
``3 * frame_tokens`` and ``// 3``).

The head profile: a head is static when its attention mass on the last ``LAST_K`` (4) key frames over its mass on key
frames ``[SKIP_FIRST_K:]`` is >= ``THRESHOLD`` (0.8) (``configs_head/head_profile.py``; the shipped Self Forcing
profile says ``naive_sink_3_thr08``, i.e. skip 3, while the script's default is 1). :func:`static_share` is that
statistic, :func:`head_profile_json` the file ``head_profile.py`` writes, :class:`HeadProfile` reads one (the
release's key names) and refuses one that does not fit the model; ``deepforcing calibrate --policy forcing-kv``
makes one for a user's checkpoint (:mod:`deepforcing.eval.head_profile`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..atomic_write import write_atomically
from .base import ChunkContext, Decision, HeadGroup, fifo_keep
from .options import option
from .policies import FifoSelector
from .registry import register_policy

__all__ = ["ForcingKV", "HeadProfile", "HeadProfileError", "static_share", "head_profile_json", "THRESHOLD",
           "SKIP_FIRST_K", "LAST_K", "RELEASE_BLOCK_FRAMES"]

THRESHOLD, SKIP_FIRST_K, LAST_K = 0.8, 3, 4  # the shipped Self Forcing profile (configs_head, "naive_sink_3_thr08")
RELEASE_BLOCK_FRAMES = 3  # the release's block size, written into its cache code
STATIC_NAMES = ("static_head", "static_heads", "local_head", "local_heads", "spatial_head", "spatial_heads")
DYNAMIC_NAMES = ("dynamic_head", "dynamic_heads", "temporal_head", "temporal_heads")


class HeadProfileError(ValueError):
    """A head profile that is missing, unreadable or made for another model (the message says what to do)."""


# ------------------------------------------------------------------------------------------------ the head profile
def static_share(frame_mass: torch.Tensor, last: int = LAST_K, skip: int = SKIP_FIRST_K) -> torch.Tensor:
    """``configs_head/head_profile.py``'s ``compute_attn_score`` over ``[..., rows, key frames]`` attention mass
    (rows: queries): the mass on the last ``last`` key frames over the mass on key frames ``[skip:]``, per ``...``."""
    frames = frame_mass.shape[-1]
    if not 0 <= skip < frames:
        raise ValueError(f"skip {skip} must be smaller than the {frames} key frames (profile a longer video)")
    valid = frame_mass[..., skip:].sum(dim=(-1, -2))
    if (valid <= 0).any():
        raise ValueError("attention mass must be positive")
    return frame_mass[..., -min(last, frames):].sum(dim=(-1, -2)) / valid


def head_profile_json(shares: torch.Tensor, threshold: float = THRESHOLD) -> dict:
    """The file ``head_profile.py`` writes (``build_head_config``), from ``[layers, heads]`` :func:`static_share`
    values: per layer the heads at or above ``threshold`` (static) and below (dynamic)."""
    layers, heads = shares.shape
    return {"format": "forcingkv_offline", "profile": "nosink_3", "num_layers": layers, "num_heads": heads,
            "layers": [{"layer_idx": i,
                        "static_head": [h for h in range(heads) if float(shares[i, h]) >= threshold],
                        "dynamic_head": [h for h in range(heads) if float(shares[i, h]) < threshold]}
                       for i in range(layers)]}


def write_head_profile(path: str | Path, profile: dict) -> Path:
    """``profile`` as ``head_profile.py`` saves it (``save_json``: indent 2, UTF-8, a final newline); written to a
    temporary sibling and renamed (:func:`~deepforcing.atomic_write.write_atomically`), so ``path`` is never a
    half-written profile."""
    text = json.dumps(profile, indent=2, ensure_ascii=False) + "\n"
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


@dataclass(frozen=True)
class HeadProfile:
    """Static and dynamic heads of every layer, read from a head-profile JSON (the release's reader,
    ``_load_offline_head_groups``, accepts the same key names; this one refuses what it would silently patch up:
    heads out of range, a layer missing, a head in both or neither group)."""

    static: tuple[tuple[int, ...], ...]
    dynamic: tuple[tuple[int, ...], ...]
    source: str = ""

    @property
    def num_layers(self) -> int:
        return len(self.static)

    @property
    def num_heads(self) -> int:
        return len(self.static[0]) + len(self.dynamic[0]) if self.static else 0

    @classmethod
    def load(cls, path: str | Path) -> "HeadProfile":
        path = Path(path)
        what = (f"forcing-kv head profile {path}", "make one for your checkpoint with `deepforcing calibrate --policy "
                                                   "forcing-kv --out heads.json <model options>`")
        if not path.is_file():
            raise HeadProfileError(f"{what[0]} not found; {what[1]}")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise HeadProfileError(f"{what[0]} is not a JSON file ({err}); {what[1]}") from None
        layers = payload.get("layers") if isinstance(payload, dict) else payload
        if isinstance(layers, dict):
            layers = [dict(item, layer_idx=item.get("layer_idx", key)) for key, item in layers.items()
                      if isinstance(item, dict)]
        if not isinstance(layers, list) or not layers or not all(isinstance(x, dict) for x in layers):
            raise HeadProfileError(f"{what[0]} has no list of layers (static_head / dynamic_head per layer); {what[1]}")
        by_layer: dict[int, tuple[list[int], list[int]]] = {}
        for index, item in enumerate(layers):
            try:
                layer = int(item.get("layer_idx", index))
                static = sorted({int(h) for name in STATIC_NAMES for h in item.get(name) or []})
                dynamic = sorted({int(h) for name in DYNAMIC_NAMES for h in item.get(name) or []})
            except (TypeError, ValueError):
                raise HeadProfileError(f"{what[0]}: layer entry {index} has non-integer heads; {what[1]}") from None
            by_layer[layer] = (static, dynamic)
        num_layers = int(payload.get("num_layers", len(by_layer))) if isinstance(payload, dict) else len(by_layer)
        if sorted(by_layer) != list(range(num_layers)):
            raise HeadProfileError(f"{what[0]} names layers {sorted(by_layer)}, expected 0..{num_layers - 1} once "
                                   f"each; {what[1]}")
        heads = len(by_layer[0][0]) + len(by_layer[0][1])
        num_heads = int(payload.get("num_heads", heads)) if isinstance(payload, dict) else heads
        for layer, (static, dynamic) in sorted(by_layer.items()):
            if sorted(static + dynamic) != list(range(num_heads)):
                raise HeadProfileError(f"{what[0]}: layer {layer}'s static {static} and dynamic {dynamic} heads must "
                                       f"cover heads 0..{num_heads - 1} once each; {what[1]}")
        ordered = [by_layer[i] for i in range(num_layers)]
        return cls(tuple(tuple(s) for s, _ in ordered), tuple(tuple(d) for _, d in ordered), str(path))

    def check(self, num_layers: int, num_heads: int) -> None:
        """Refuse a profile made for another transformer shape, and one whose layer 1 has no dynamic head (the
        release scores the buffer's patches on layer 1's dynamic heads)."""
        if (self.num_layers, self.num_heads) != (num_layers, num_heads):
            raise HeadProfileError(
                f"forcing-kv head profile {self.source} is for {self.num_layers} layers x {self.num_heads} heads, the "
                f"model has {num_layers} x {num_heads}; make one for this checkpoint with `deepforcing calibrate "
                f"--policy forcing-kv --out heads.json <model options>`")
        if num_layers > 1 and not self.dynamic[1]:
            raise HeadProfileError(f"forcing-kv head profile {self.source}: layer 1 has no dynamic head, but the "
                                   f"buffer's patches are scored on layer 1's dynamic heads (as the release does)")


# ------------------------------------------------------------------------------------------------------ the policy
@register_policy
@dataclass
class ForcingKV(FifoSelector):
    """Forcing-KV: per-head static / dynamic caches from an offline head profile, a 1-frame buffer of the least
    self-similar patches for the dynamic heads (module doc)."""

    name: ClassVar[str] = "forcing-kv"
    source: ClassVar[str] = ("arXiv 2605.09681; zju-jiyicheng/Forcing-KV@50ac1f4 wan/modules/causal_model_forcingkv.py, "
                             "configs/forcing-kv/forcingkv_self_forcing_inference.yaml")
    own_window: ClassVar[bool] = True
    window: int = option(5, "forcing-kv: frames of the plain cache before the split, chunk included: sink + max("
                            "static, ring) + 3 (the release's sink + local + block)")
    sink: int = 1
    head_profile: str = option("", "forcing-kv: the checkpoint's head profile JSON (static / dynamic heads per "
                                   "layer; the release ships configs_head/*.json, `deepforcing calibrate --policy "
                                   "forcing-kv` makes one)", flag="head-profile")
    static_frames: int = option(1, "forcing-kv: recent frames of the static heads (release spatial_context_length)")
    ring_frames: int = option(1, "forcing-kv: recent frames of the dynamic heads, 1-3 (temporal_context_length)")
    buffer_frames: int = option(1, "forcing-kv: frames' worth of kept patches of the dynamic heads "
                                   "(dynamic_context_length)")
    patches: int = option(6, "forcing-kv: patches per frame (num_frame_patch; must divide tokens per frame)")
    retention: float = option(0.33, "forcing-kv: share of the 3 x patches candidates kept (sim_retention_ratio)")
    split_after: int = option(1, "forcing-kv: the chunk after whose clean pass layers >= 1 split (ar_start)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for what in ("static_frames", "ring_frames", "buffer_frames", "split_after"):
            self._check_positive(what, getattr(self, what), allow_zero=what != "ring_frames")
        if not 1 <= self.ring_frames <= RELEASE_BLOCK_FRAMES:
            raise ValueError(f"forcing-kv: --ring-frames must be 1..3 (the release's dynamic heads), got "
                             f"{self.ring_frames}")
        self._check_positive("patches", self.patches)
        if not 0.0 <= self.retention <= 1.0:
            raise ValueError(f"forcing-kv: --retention must be in [0, 1], got {self.retention}")
        kept = round(RELEASE_BLOCK_FRAMES * self.patches * self.retention)
        if kept != self.buffer_frames * self.patches:
            raise ValueError(f"forcing-kv: the buffer holds {self.buffer_frames} x {self.patches} patches but "
                             f"round(3 x {self.patches} x {self.retention}) = {kept} are kept (the release refuses "
                             f"this too); set --retention or --buffer-frames to match")
        self._profile: HeadProfile | None = None

    # ------------------------------------------------------------------ description
    @property
    def layout(self) -> dict[str, int | None]:
        """The dynamic heads' layout (the larger group of a split layer); static heads keep no buffer."""
        return {"sink": self.sink, "kept": self.buffer_frames, "memory": 0,
                "recent": self.ring_frames + RELEASE_BLOCK_FRAMES}

    def validate(self, chunk_frames: int) -> None:
        super().validate(chunk_frames)
        if chunk_frames != RELEASE_BLOCK_FRAMES:
            raise ValueError(f"forcing-kv: the release's caches are written for 3-frame chunks, this model makes "
                             f"{chunk_frames}-frame chunks; use a 3-frame-chunk preset (self-forcing, causal-forcing)")
        plain = self.sink + max(self.static_frames, self.ring_frames) + chunk_frames
        if self.window != plain:
            raise ValueError(f"forcing-kv: the plain cache is sink + max(static, ring) + chunk = {plain} frames, not "
                             f"--window {self.window}; drop --window")

    def validate_event(self, kind: str, chunk_frames: int) -> None:
        raise ValueError(f"forcing-kv: a {kind} is not reproduced (the release's interactive pipeline, "
                         f"pipeline/interactive_causal_inference_forcingkv.py, drops the head groups and re-caches "
                         f"on a switch; not ported): generate one prompt without cuts")

    def validate_model(self, num_layers: int, num_heads: int) -> None:
        self.profile().check(num_layers, num_heads)

    def validate_tokens(self, tokens_per_frame: int) -> None:
        if tokens_per_frame % self.patches:
            divisors = [d for d in range(1, tokens_per_frame + 1) if tokens_per_frame % d == 0 and d > 1]
            raise ValueError(f"forcing-kv: {tokens_per_frame} tokens per frame do not split into --patches "
                             f"{self.patches} (the release requires it); pass --patches dividing {tokens_per_frame}, "
                             f"e.g. {divisors[:6]}")

    def profile(self) -> HeadProfile:
        """The head profile (read once); refuses a policy built without ``--head-profile``."""
        if self._profile is None:
            if not self.head_profile:
                raise HeadProfileError("forcing-kv needs --head-profile PATH: the checkpoint's static / dynamic heads "
                                       "(the release ships configs_head/forcingkv_heads_selfforcing.json for Self "
                                       "Forcing; `deepforcing calibrate --policy forcing-kv --out heads.json` makes "
                                       "one for any checkpoint)")
            self._profile = HeadProfile.load(self.head_profile)
        return self._profile

    # ------------------------------------------------------------------------ hooks
    def head_groups(self, layer) -> tuple[HeadGroup, ...] | None:
        """Layers >= 1 split at the first chunk after ``split_after``'s clean pass (the release's switch)."""
        chunk = layer.owner.geometry.chunk_frames
        if layer.index == 0 or layer.owner.call.start_frame < (self.split_after + 1) * chunk:
            return None
        self.validate_tokens(layer.owner.geometry.tokens_per_frame)
        profile = self.profile()
        profile.check(len(layer.owner.layers), layer.owner.heads)
        static, dynamic = profile.static[layer.index], profile.dynamic[layer.index]
        groups = []
        if static:
            groups.append(HeadGroup("static", static, self.sink + self.static_frames + chunk, self.sink))
        if dynamic:
            groups.append(HeadGroup("dynamic", dynamic, self.sink + self.buffer_frames + self.ring_frames + chunk,
                                    self.sink))
        return tuple(groups)

    def decide_group(self, ctx: ChunkContext) -> Decision:
        group = ctx.group
        if group.name == "static":
            return fifo_keep(ctx, group.window, group.sink_frames)
        if not ctx.state.get("split"):  # the switch: the ring frames of the plain cache, no buffer yet
            ctx.state["split"] = True
            return fifo_keep(ctx, self.sink + self.ring_frames + RELEASE_BLOCK_FRAMES, self.sink)
        return self._buffer_decision(ctx)

    def _buffer_decision(self, ctx: ChunkContext) -> Decision:
        """``[sink][old buffer][ring][previous chunk][new chunk]`` -> ``[sink][kept patches][last ring frames of the
        previous chunk][new chunk]`` (module doc; ``dynamic_compression``)."""
        Fr, C, r = ctx.tokens_per_frame, RELEASE_BLOCK_FRAMES, self.ring_frames
        candidates = ctx.total - (2 * C + r) * Fr  # first candidate slot: the old ring frames
        if candidates < self.sink * Fr:
            raise RuntimeError(f"forcing-kv: dynamic store of {ctx.total} tokens is shorter than sink + ring + two "
                               f"chunks")
        shared = ctx.shared if ctx.shared is not None else ctx.state
        key = ("forcing-kv patches", ctx.start_frame)
        if ctx.layer == 1 or key not in shared:
            shared[key] = self._score_patches(ctx.keys[:1, :, candidates:candidates + (C + 1) * Fr], Fr)
            shared.pop(("forcing-kv patches", ctx.start_frame - C), None)
        kept = shared[key]  # ascending flat indices frame * patches + patch over the 3 candidate frames
        run = Fr // self.patches
        slots = (candidates + kept[:, None] * run + torch.arange(run, device=kept.device)).flatten()
        recent = torch.arange(ctx.total - (C + r) * Fr, ctx.total, device=kept.device)
        keep = torch.cat([torch.arange(self.sink * Fr, device=kept.device), slots, recent])
        batch = ctx.token_ids.shape[0]
        return Decision(keep=keep.expand(batch, -1), selected=slots.expand(batch, -1), event="compress")

    def _score_patches(self, chain: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
        """``chain``: batch 0's 4 consecutive frames of keys ``[1, h, 4F, D]`` (3 candidates and the next frame):
        the indices of the ``buffer_frames * patches`` patches whose tokens' keys are least similar to the next
        frame's (mean cosine similarity over a patch's tokens, heads' channels flattened)."""
        C, run = RELEASE_BLOCK_FRAMES, tokens_per_frame // self.patches
        tokens = chain[0].permute(1, 0, 2).flatten(1)  # [4F, h * D]
        frames = tokens.unflatten(0, (C + 1, self.patches, run))
        scores = F.cosine_similarity(frames[:C], frames[1:], dim=-1).mean(dim=-1)  # [3, patches]
        kept = torch.topk(scores.flatten(), self.buffer_frames * self.patches, largest=False).indices
        return torch.sort(kept).values
