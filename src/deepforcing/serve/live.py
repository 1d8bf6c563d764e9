"""One live, endless, steerable rollout: chunks as they are generated, a prompt switch at the next chunk boundary,
and the cache telemetry the page shows (what is in the KV cache and where the attention goes).

The video is the one ``deepforcing generate`` makes with the same prompt, policy and seed (same rollout, same
streaming decoder); only the length is open-ended (up to ``max_seconds``) and the prompt can change while it runs
(LongLive's KV re-cache, :meth:`~deepforcing.pipeline.rollout.VideoRollout.switch_prompt`). A session may start
from a given image (issue 22: ``generate --image``'s path): it is encoded by the model's codec and written into the
cache at the clean timestep (:meth:`~deepforcing.pipeline.rollout.VideoRollout.prefill`), and shown as the first
chunk (``given``), as ``--keep-input`` writes it.

Telemetry per chunk (no peer shows it): the cache's frames by segment — the policy's own regions
(:meth:`~deepforcing.cache.CachePolicy.regions`: the sink, Deep Sink arXiv 2512.05081 §4.2; the compressed middle,
Participative Compression's Top-C §4.3, or re-inserted archive tokens; synthesized memory tokens; the recent frames)
plus the new chunk — and the attention mass of one layer's queries at the chunk's first denoising step on each
segment (the measurement of the paper's Fig. 4, :class:`~deepforcing.eval.diagnostics.AttentionMassProbe`).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from deepforcing.cache import REGIONS
from deepforcing.eval.diagnostics import AttentionMassProbe
from deepforcing.pipeline.generate import NonFiniteOutputError, VideoGenerator
from deepforcing.pipeline.start import StartFrames
from deepforcing.pipeline.timeline import check_switch_events
from deepforcing.pipeline.writer import to_uint8_frames

__all__ = ["LiveOptions", "LiveChunk", "LiveSession", "SEGMENTS", "encode_frame"]

SEGMENTS = ("sink", "compressed", "memory", "recent", "current")
"""Cache segments in the telemetry: the policy's regions (sink, kept = "compressed", memory, recent; in
:data:`~deepforcing.cache.REGIONS` order) and the new chunk (the recent tokens of the chunk being generated)."""
_SEGMENT_OF_REGION = torch.tensor([SEGMENTS.index(r if r != "kept" else "compressed") for r in REGIONS])


@dataclass(frozen=True)
class LiveOptions:
    """What a client may choose: the prompt (mini words for the mini model), the policy and its sizes in latent
    frames (``None``: the model's defaults), the seed; and the server's limits: the longest video of the session and
    the largest cache (a policy without a bound, ``full``, ends the session when its cache reaches it)."""

    prompt: str = ""
    policy: str | None = None
    seed: int = 0
    window: int | None = None
    sink: int | None = None
    budget: int | None = None
    recent: int | None = None
    max_seconds: float = 600.0
    max_cache_frames: int | None = None

    def sizes(self) -> dict:
        return {k: v for k, v in (("window", self.window), ("sink", self.sink), ("budget", self.budget),
                                  ("recent", self.recent)) if v is not None}


@dataclass
class LiveChunk:
    """One generated chunk: frames (uint8 ``[T, H, W, 3]`` at the model's size; ``display_scale`` upscales them for
    showing and writing) and telemetry."""

    index: int
    start_frame: int
    prompt: str
    frames: np.ndarray
    seconds: float  # wall time: switch (if any) + denoising + clean pass + decode
    cache_frames: dict[str, float] = field(default_factory=dict)  # frames' worth of tokens per segment
    attention: dict[str, float] = field(default_factory=dict)  # attention mass per segment (sums to 1)
    head_groups: list[dict] = field(default_factory=list)  # a per-head policy: per group of layer 0, its name,
    # heads and frames per segment (``cache_frames`` is then the heads' mean); empty when the heads share one cache
    switched: bool = False  # the first chunk under a new prompt
    cut: bool = False  # ... after a scene cut
    switch_seconds: float | None = None  # from the prompt request to the end of this chunk
    given: bool = False  # the start image, as given (resized to the model), not sampled


class LiveSession:
    """An endless rollout of ``generator`` under ``options``; :meth:`next_chunk` generates the next chunk.

    Everything a client can get wrong (unknown words, impossible policy sizes, a cache that cannot fit) raises
    ``ValueError`` here, before any chunk is generated. Not thread-safe: one caller at a time (the server runs it in
    one worker thread per session); :meth:`request_prompt` may be called between chunks.
    """

    def __init__(self, generator: VideoGenerator, options: LiveOptions, *, telemetry: bool = True,
                 start: StartFrames | None = None) -> None:
        self.generator = generator
        self.options = options
        bundle = generator.bundle
        if not options.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {options.max_seconds}")
        self.prompt = options.prompt.strip() or bundle.default_prompt
        if not self.prompt:
            raise ValueError("a prompt is required for this model")
        self.policy = generator.resolve_policy(options.policy, **options.sizes())  # validated by its cache below
        dtype = next((p.dtype for p in bundle.transformer.parameters() if p.is_floating_point()), torch.float32)
        start_latents = None if start is None else start.encode(bundle.codec, generator.device, dtype)
        given = 0 if start_latents is None else start_latents.shape[2]
        self.max_frames = given + bundle.latent_frames_for_seconds(options.max_seconds)
        self.cache_capped = (not self.policy.bounded and options.max_cache_frames is not None
                             and options.max_cache_frames < self.max_frames)
        if self.cache_capped:
            self.max_frames = options.max_cache_frames
        self.rollout = generator.open_rollout(self.prompt, self.policy, seed=options.seed, max_frames=self.max_frames,
                                              given_start=given > 0)
        self.decoder = bundle.codec.streaming_decoder()
        self.decoder.reset()
        layers = len(self.rollout.cache.layers)
        self.probe = AttentionMassProbe(layers={layers // 2}) if telemetry else None
        self.rollout.cache.attention_observer = self.probe
        self._pending: tuple[str, object, float, bool] | None = None  # prompt, its context, when asked, cut
        self.frames_sent = 0
        self._given = None if start is None else self._prefill(start, start_latents)

    # ------------------------------------------------------------------ control
    @property
    def finished(self) -> bool:
        return self.rollout.next_frame >= self.max_frames

    @property
    def limit_reason(self) -> str:
        """Why the session ends at :attr:`max_frames` (the page shows it)."""
        if self.cache_capped:
            return (f"cache limit of {self.max_frames} latent frames reached ({self.policy.name} keeps every frame; "
                    f"a policy with a window runs up to {self.options.max_seconds:g} s)")
        return f"length limit of {self.options.max_seconds:g} s reached"

    def request_prompt(self, prompt: str, *, cut: bool = False) -> None:
        """Switch to ``prompt`` at the next chunk boundary, with a scene cut before it when ``cut`` (a timeline's
        ``cut:`` entry, :mod:`deepforcing.pipeline.timeline`; ∞-RoPE's RoPE Cut, other policies ignore it). A cut
        switches even to the same prompt. Unknown words and events the policy cannot take on this model
        (:meth:`~deepforcing.cache.CachePolicy.validate_event`) raise ``ValueError`` now, not at the boundary."""
        prompt = prompt.strip()
        if not prompt:
            raise ValueError("the new prompt is empty")
        context = self.generator.context(prompt)  # validates (the mini tokenizer names unknown words)
        check_switch_events(self.policy, self.generator.bundle.sampling.chunk_frames, cut=cut)
        self._pending = (prompt, context, time.perf_counter(), cut)

    # ------------------------------------------------------------------ chunks
    @torch.no_grad()
    def _prefill(self, start: StartFrames, latents: torch.Tensor) -> LiveChunk:
        """Write the start's latents into the cache (chunk-sized clean calls) and feed them to the streaming
        decoder (its causal context), as :meth:`VideoGenerator.stream` does; the chunk to show is the start."""
        if not hasattr(self.rollout, "prefill"):
            raise ValueError(f"a start image needs the rolling cache; this model's sampler "
                             f"({type(self.rollout).__name__}) has its own loop")
        t0 = time.perf_counter()
        for block in self.rollout.prefill(latents):
            self.decoder.decode_chunk(block.latents.permute(0, 2, 1, 3, 4))
        if self.probe is not None:
            self.probe.records.clear()  # the prefill's clean calls are not a sampled chunk's attention
        return LiveChunk(-1, 0, self.prompt, to_uint8_frames(start.frames), time.perf_counter() - t0,
                         cache_frames=self._cache_makeup(0), given=True)

    @torch.no_grad()
    def next_chunk(self) -> LiveChunk:
        if self._given is not None:  # the start image first
            chunk, self._given = self._given, None
            self.frames_sent += len(chunk.frames)
            return chunk
        if self.finished:
            raise RuntimeError(f"the session reached its length limit ({self.options.max_seconds:g} s)")
        t0 = time.perf_counter()
        switched, cut, requested = False, False, None
        if self._pending is not None:
            prompt, context, requested, cut = self._pending
            self._pending = None
            if prompt != self.prompt or cut:
                self.rollout.switch_prompt(context, keep_sink=True, cut=cut)
                self.prompt, switched = prompt, True
        res = self.rollout.step()
        if not torch.isfinite(res.latents).all():
            raise NonFiniteOutputError(f"the model produced NaN/Inf latents in chunk {res.index}")
        pixels = (res.frames if res.frames is not None  # a rollout that decodes its own chunks (restarts)
                  else self.decoder.decode_chunk(res.latents.permute(0, 2, 1, 3, 4)))[0]
        frames = to_uint8_frames(pixels)
        now = time.perf_counter()
        chunk = LiveChunk(res.index, res.start_frame, self.prompt, frames, now - t0,
                          cache_frames=self._cache_makeup(res.start_frame), attention=self._attention(res.start_frame),
                          head_groups=self._head_groups(),
                          switched=switched, cut=cut, switch_seconds=(now - requested) if switched else None)
        self.frames_sent += len(frames)
        return chunk

    # ---------------------------------------------------------------- telemetry
    @staticmethod
    def _segment_of(regions: torch.Tensor, frames: torch.Tensor, chunk_start: int) -> torch.Tensor:
        """Segment index (``SEGMENTS``) of each cached token: its region as the policy reports it, and recent
        tokens of the chunk starting at ``chunk_start`` (or later) as the current chunk."""
        seg = _SEGMENT_OF_REGION[regions.long()]
        seg[(seg == SEGMENTS.index("recent")) & (frames >= chunk_start)] = SEGMENTS.index("current")
        return seg

    def _makeup(self, view) -> dict[str, float]:
        seg = _SEGMENT_OF_REGION[self.policy.regions(view)[0].long().cpu()]
        per_frame = view.store.tokens_per_frame
        return {name: float((seg == i).sum()) / per_frame for i, name in enumerate(SEGMENTS[:-1])}

    def _cache_makeup(self, chunk_start: int) -> dict[str, float]:
        """Frames' worth of tokens per region in layer 0's cache after the chunk (the new chunk counts as recent);
        a layer split into head groups: the heads' mean (each group weighted by its heads)."""
        self.rollout.cache.settle()
        views = self.rollout.cache.layers[0].views()
        if len(views) == 1:
            return self._makeup(views[0])
        heads = sum(_heads(view) for view in views)
        makeups = [(_heads(view), self._makeup(view)) for view in views]
        return {name: sum(n * m[name] for n, m in makeups) / heads for name in SEGMENTS[:-1]}

    def _head_groups(self) -> list[dict]:
        """Layer 0's head groups (a per-head policy, :meth:`~deepforcing.cache.CachePolicy.head_groups`): name,
        heads and frames per segment; empty while all heads share one cache."""
        return [{"group": view.group.name, "heads": len(view.group.heads), "frames": self._makeup(view)}
                for view in self.rollout.cache.layers[0].groups]

    def _attention(self, chunk_start: int) -> dict[str, float]:
        if self.probe is None or not self.probe.records:
            return {}
        last = self.probe.records[-1]["chunk_start"]
        records = [r for r in self.probe.records if r["chunk_start"] == last]  # one per head group when split
        self.probe.records.clear()
        if len(records) == 1:  # one cache for all heads: the head-averaged mass as a share of its total
            record = records[0]
            mass = torch.tensor(record["mass"]).mean(dim=0)  # [slots], averaged over heads
            seg = self._segment_of(torch.tensor(record["regions"]), torch.tensor(record["frames"]), chunk_start)
            total = float(mass.sum()) or 1.0
            return {name: float(mass[seg == i].sum()) / total for i, name in enumerate(SEGMENTS)}
        shares, heads = dict.fromkeys(SEGMENTS, 0.0), 0  # head groups: every head's shares, averaged over heads
        for record in records:
            mass = torch.tensor(record["mass"])  # [group heads, slots]
            mass = mass / mass.sum(dim=1, keepdim=True).clamp_min(1e-30)
            seg = self._segment_of(torch.tensor(record["regions"]), torch.tensor(record["frames"]), chunk_start)
            for i, name in enumerate(SEGMENTS):
                shares[name] += float(mass[:, seg == i].sum())
            heads += mass.shape[0]
        return {name: v / heads for name, v in shares.items()}


def _heads(view) -> int:
    """Heads a cache view holds: a head group's, or the layer's (its store's)."""
    return len(view.group.heads) if view.group is not None else view.store.keys.shape[1]


def encode_frame(frame: np.ndarray, quality: int = 90) -> bytes:
    """One uint8 ``[H, W, 3]`` frame as JPEG (4:4:4 chroma, so small coloured objects keep their colour)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()
