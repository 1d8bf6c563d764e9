"""Training recipe of the mini model: teacher forcing on world clips no longer than the attention window.

Objective (flow matching with clean context, the inference-time situation of a Self Forcing rollout): a clip of
``clip_frames`` frames (= the window, so long videos are true extrapolation) is split into chunks; every chunk gets
its own noise level ``sigma`` (shifted-uniform, ``shift``), and the model sees the sequence
``[clean frames | noisy frames]`` with a mask under which

* clean chunk ``a`` attends clean chunks ``<= a`` (what the clean-context pass writes to the KV cache),
* noisy chunk ``a`` attends clean chunks ``< a`` and itself (what a denoising step sees through the cache),

both halves at the frames' true temporal RoPE positions. The loss is the MSE of the predicted flow
``v = noise - x0`` on the noisy half. Progress is checked against what matters for generation: the x0 error at
the first sampling step given context, without context, and the copy-the-last-frame baseline.

With the learned codec (``MiniConfig.codec = "autoencoder"``), clips are encoded to latents by the frozen,
separately trained autoencoder (``codec_weights``, see :mod:`deepforcing.mini.train_codec`) and everything above
happens on latents, as Self Forcing trains on Wan VAE latents. ``first_chunk_weight`` up-weights the loss of chunk
0, the one generated from the prompt alone. Every ``rollout_probe_every`` steps a few free rollouts from the prompt
alone (the user's situation, :func:`deepforcing.mini.quality.free_rollout_bar`) are scored and logged.

Resumable: a checkpoint (model, optimiser, step, RNG, log) is written every ``checkpoint_every`` steps and on
Ctrl-C; running again continues from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .forward import first_chunk_forward, teacher_forcing_forward
from .language import WORLD_V5, SceneMix, sample_scene, tokenize_spec
from .layout import start_layout_latents
from .model import DEFAULT_MINI_WEIGHTS, MiniConfig, MiniModel
from .quality import free_rollout_bar, is_held_out
from .rollout_target import resimulated_targets
from .world import object_cells, render_batch_with_states

ROLLOUT_TARGETS = ("truth", "resimulated", "resimulated-kept")  # TrainConfig.rollout_target's values

__all__ = ["TrainConfig", "train", "teacher_forcing_forward", "first_chunk_forward", "context_probe",
           "self_generated_context"]


@dataclass
class TrainConfig:
    steps: int = 4000
    batch: int = 12
    clip_frames: int = 21
    chunk_frames: int = 3
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    shift: float = 2.0
    seed: int = 0
    threads: int = 2
    run_dir: str = "runs/mini"
    output: str = str(DEFAULT_MINI_WEIGHTS)
    checkpoint_every: int = 100
    probe_every: int = 100
    max_minutes: float | None = None
    curriculum: tuple[tuple[int, int], ...] = ()  # ((clip_frames, until_step), ...): shorter clips first
    init: str = "diffusers"  # "diffusers" (library defaults) or "wan" (zero head and gates, see MiniModel.init_wan_style)
    codec_weights: str | None = None  # trained MiniAutoencoder state dict (required for codec="autoencoder")
    first_chunk_weight: float = 1.0
    text_dropout: float = 0.0  # fraction of clips trained without their prompt (enables classifier-free guidance)
    rollout_probe_every: int = 0  # 0: off
    rollout_probe_pairs: int = 8
    probe_sampling: dict | None = None  # SamplingConfig fields for the rollout probe (default: the model's)
    ema_decay: float = 0.0  # 0: off; else the shipped weights are this exponential moving average of the trained ones
    first_chunk_batch: int = 0  # extra one-chunk clips per step, generated from the prompt alone (chunk 0's task)
    object_weight: float = 1.0  # loss weight of the latent cells that carry an object (background cells: 1)
    init_from: str | None = None  # start from this checkpoint.pt / model file's matching weights (fine-tuning)
    self_context: float = 0.0  # fraction of long clips whose context is the model's own re-generation of it
    self_context_sigma: tuple[float, float] = (0.3, 0.9)  # noise levels the context is re-generated from
    self_context_steps: int = 2  # Euler steps of that re-generation (no gradient)
    rollout_context: float = 0.0  # fraction of long clips whose chunks after the first are the model's own rollout
    rollout_true_chunks: int = 1  # true chunks before the rollout starts; 0: a random number per batch (1..chunks-1)
    rollout_target: str = "truth"  # target of rolled-out chunks: "truth", "resimulated" or "resimulated-kept"
    # (mini.rollout_target; "-kept": objects the rollout lost stay out of the target instead of being restored)
    rollout_truth_share: float = 0.0  # with a re-simulated target: fraction of rolled-out clips that keep the truth
    world: str = "original"  # the scene mix drawn: "original" (v1-v4) or "v5" (language.WORLD_V5)
    layout_dropout: float = 0.1  # layout models: fraction of clips trained without their start layout (prompt-only mode)
    model: MiniConfig = field(default_factory=MiniConfig)

    def frames_at(self, step: int) -> int:
        """Clip length at ``step``: the curriculum's entry, else ``clip_frames`` (the full window)."""
        for frames, until in self.curriculum:
            if step < until:
                return frames
        return self.clip_frames


class WeightAverage:
    """Exponential moving average of the trainable weights (what is shipped when ``ema_decay > 0``); the decay
    ramps up as ``min(decay, (1 + n) / (10 + n))`` so early averages do not remember the random initialisation."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach(), 1 - d)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self.shadow = {n: v.clone() for n, v in state["shadow"].items()}

    @torch.no_grad()
    def swap(self, model: torch.nn.Module) -> None:
        """Exchange the model's weights with the averaged ones (call twice to restore)."""
        for n, p in model.named_parameters():
            if n in self.shadow:
                tmp = p.detach().clone()
                p.copy_(self.shadow[n])
                self.shadow[n] = tmp


def _load_matching(model: MiniModel, path: str, log) -> None:
    """Copy every weight of ``path`` (checkpoint.pt or a model file) whose name and shape match ``model``'s."""
    if path.endswith(".safetensors"):
        from deepforcing.models.checkpoint_io import load_file

        state = load_file(path)
    else:
        ck = torch.load(path, weights_only=False)
        state = ck["model"]
        if ck.get("ema"):
            state = {**state, **ck["ema"]["shadow"]}
    own = model.state_dict()
    state = dict(state)
    key = "transformer.patch_embedding.weight"
    if key in state and key in own and state[key].shape[1] < own[key].shape[1] and state[key].shape[2:] == own[key].shape[2:]:
        # new input channels (the start layout) start at zero, so the grown model computes what the old one did
        old_in, new_in = state[key].shape[1], own[key].shape[1]
        wider = own[key].new_zeros(own[key].shape)
        wider[:, :old_in] = state[key]
        state[key] = wider
        log(f"{key}: {new_in} input channels, the {new_in - old_in} new ones start at zero")
    taken = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(taken, strict=False)
    log(f"initialised {len(taken)}/{len(own)} tensors from {path}")
    grown = _start_new_blocks_as_identity(model, taken)
    if grown:
        log(f"blocks {grown} are new: their output projections start at zero, so the grown model starts as the old one")


def _start_new_blocks_as_identity(model: MiniModel, taken: dict) -> list[int]:
    """Zero the residual outputs (self-attention, cross-attention, FFN) of transformer blocks that ``taken`` has no
    weight for: a deeper model initialised from a shallower one then computes exactly what the shallower one did,
    and training grows the new blocks from there (zero-initialised residual branches)."""
    new = []
    for i, block in enumerate(model.transformer.blocks):
        if any(k.startswith(f"transformer.blocks.{i}.") for k in taken):
            continue
        with torch.no_grad():
            for layer in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[2]):
                layer.weight.zero_()
                layer.bias.zero_()
        new.append(i)
    return new


WORLDS: dict[str, SceneMix] = {"original": SceneMix(), "v5": WORLD_V5}


def training_scene(rng: np.random.Generator, world: str = "original"):
    """A random scene of ``world``'s mix that is not one of the quality bars' held-out scenes."""
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; use one of {', '.join(WORLDS)}")
    while True:
        scene = sample_scene(rng, mix=WORLDS[world])
        if not is_held_out(scene):
            return scene


def _batch(cfg: TrainConfig, rng: np.random.Generator, device, frames: int | None = None,
           batch: int | None = None, codec=None, with_world: bool = False) -> tuple:
    """World clips as latents ``[B, C, T, h, w]`` (pixels for the pixel codec), their token ids, the per-cell
    loss weights ``[B, T, h, w]`` (``object_weight`` on cells that carry an object, 1 elsewhere) and, for a layout
    model, each clip's encoded start layout ``[B, C, 1, h, w]`` (else None); ``with_world`` adds the scenes and
    their ground truth (what re-simulated rollout targets continue)."""
    batch = cfg.batch if batch is None else batch
    frames = frames or cfg.clip_frames
    specs = [training_scene(rng, cfg.world) for _ in range(batch)]
    seeds = rng.integers(0, 2**31 - 1, size=batch).tolist()
    clips, states = render_batch_with_states(specs, seeds, frames, cfg.model.frame_size)  # [B, T, 3, H, W]
    ids = torch.tensor([tokenize_spec(s, cfg.model.text_len) for s in specs], dtype=torch.long)
    latents = clips.permute(0, 2, 1, 3, 4).contiguous()
    if codec is not None:
        latents = codec.encode(latents)
    weights = 1.0 + (cfg.object_weight - 1.0) * object_cells(states, cfg.model.frame_size, latents.shape[-1])
    layout = None
    if cfg.model.start_layout:
        layout = start_layout_latents(codec, specs, seeds, cfg.model.frame_size).to(device)
    out = (latents.to(device), ids.to(device), weights.to(device), layout)
    return out + (specs, states) if with_world else out


@torch.no_grad()
def self_generated_context(model: MiniModel, cfg: TrainConfig, clean: torch.Tensor, token_ids: torch.Tensor,
                           gen: torch.Generator, layout: torch.Tensor | None = None) -> torch.Tensor:
    """The clean half of a teacher-forcing batch with, for ``self_context`` of the clips, every chunk replaced by
    the model's own re-generation of it: noised to a per-chunk level drawn from ``self_context_sigma`` and
    integrated back to 0 in ``self_context_steps`` Euler steps, each chunk given the true chunks before it.

    Why: at inference a chunk's context is the model's own output, never the truth (the exposure that Self
    Forcing, arXiv 2506.08009, trains on with self-rollout). Re-generated context keeps the true layout (so the
    true next chunk stays the right target) but carries the model's own kind of error — faded, doubled or
    blurred objects — so the loss teaches the next chunk to repair it instead of copying it forward.
    """
    if cfg.self_context <= 0:  # off: no random draws either, so runs without it keep their random stream
        return clean
    b, _, frames, _, _ = clean.shape
    pick = torch.rand(b, generator=gen) < cfg.self_context
    if not pick.any():
        return clean
    lo, hi = cfg.self_context_sigma
    start = lo + (hi - lo) * torch.rand(b, frames // cfg.chunk_frames, generator=gen)
    start = start.repeat_interleave(cfg.chunk_frames, dim=1)  # [B, T]
    x = (1 - start[:, None, :, None, None]) * clean + start[:, None, :, None, None] * torch.randn(
        clean.shape, generator=gen)
    steps = cfg.self_context_steps
    with _sampling(model):
        for k in range(steps):
            sigma, after = start * (1 - k / steps), start * (1 - (k + 1) / steps)
            flow = teacher_forcing_forward(model, clean, x, sigma, token_ids, cfg.chunk_frames, layout=layout)
            x = x + (after - sigma)[:, None, :, None, None] * flow  # dx/dsigma = noise - x0 = the predicted flow
    return torch.where(pick[:, None, None, None, None], x, clean)


@torch.no_grad()
def rolled_out_context(model: MiniModel, cfg: TrainConfig, clean: torch.Tensor, token_ids: torch.Tensor,
                       gen: torch.Generator, layout: torch.Tensor | None = None) -> torch.Tensor:
    """The clean half of a teacher-forcing batch where, for ``rollout_context`` of the clips, every chunk after the
    first (after the first ``rollout_true_chunks``; 0 draws that number per batch, so a shorter drift precedes some
    targets) is the model's own free continuation of the clip's true start: the true chunks are written to a KV
    cache by the clean pass and the rest is generated chunk by chunk with the model's sampler
    (``probe_sampling``), through the same rollout a user runs (:class:`~deepforcing.pipeline.rollout.VideoRollout`).

    Why (Self Forcing, arXiv 2506.08009 §3: train on the model's own rollouts, not on ground-truth context): the
    next chunk's loss is then taken on the context the model will really have — its own fading, slowed or
    colour-bled chunks — while its target stays the world's true continuation, which the true first chunk fixes
    (same objects, same start velocities), so the model learns to pull its rollout back to the true trajectory
    instead of carrying its errors forward. Unlike Self Forcing's distribution-matching loss this needs no teacher:
    the world's ground truth is the target. Sampling runs without gradient (Self Forcing back-propagates only
    through the last denoising step; here not at all)."""
    return _rollout(model, cfg, clean, token_ids, gen, layout)[0]


@torch.no_grad()
def _rollout(model: MiniModel, cfg: TrainConfig, clean: torch.Tensor, token_ids: torch.Tensor,
             gen: torch.Generator, layout: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int], int]:
    """:func:`rolled_out_context` plus which clips were rolled out and after how many true chunks."""
    if cfg.rollout_context <= 0:  # off: no random draws either
        return clean, [], 0
    from deepforcing.cache import make_policy
    from deepforcing.pipeline.rollout import VideoRollout

    b, _, frames, h, w = clean.shape
    pick = torch.rand(b, generator=gen) < cfg.rollout_context
    if not pick.any() or frames <= cfg.chunk_frames:
        return clean, [], 0
    rows = pick.nonzero()[:, 0]
    # a cache per video, no side branch: unguided
    sampling = dataclasses.replace(_probe_sampling(cfg), guidance=1.0, first_chunk_guidance=None)
    tr = model.transformer
    context = tr.encode_context(model.text_encoder.embed_ids(token_ids[rows]))
    seeds = torch.randint(0, 2**31 - 1, (len(rows),), generator=gen).tolist()
    rollout = VideoRollout(model=tr, policy=make_policy("full"), context=context, latent_shape=(clean.shape[1], h, w),
                           sampling=sampling, seeds=seeds, max_frames=frames,
                           condition=None if layout is None else layout[rows])
    n_chunks = frames // cfg.chunk_frames
    true_chunks = cfg.rollout_true_chunks or int(torch.randint(1, n_chunks, (1,), generator=gen))
    true_chunks = min(true_chunks, n_chunks)
    first = clean[rows, :, : true_chunks * cfg.chunk_frames]
    chunks = [first]
    with _sampling(model):
        rollout.prefill(first)  # the true prefix, chunk by chunk at the clean timestep, as a rollout writes its own
        while rollout.next_frame < frames:
            chunks.append(rollout.step().latents)
    out = clean.clone()
    out[rows] = torch.cat(chunks, dim=2)[:, :, :frames].to(clean.dtype)
    return out, rows.tolist(), true_chunks


def _resimulated_rows(cfg: TrainConfig, rows: list[int], gen: torch.Generator) -> list[int]:
    """The rolled-out clips whose target is re-simulated; the others (``rollout_truth_share`` of them, drawn per clip)
    keep the true continuation. A share of 0 or 1 draws nothing, so it trains exactly as one target alone."""
    if cfg.rollout_truth_share <= 0.0:
        return rows
    if cfg.rollout_truth_share >= 1.0:
        return []
    keep_truth = (torch.rand(len(rows), generator=gen) < cfg.rollout_truth_share).tolist()
    return [r for r, truth in zip(rows, keep_truth) if not truth]


def _train_mode(model: MiniModel, on: bool = True) -> None:
    """Training (or eval) mode for the trainable parts; the frozen codec always stays in eval mode."""
    model.train(on)
    if isinstance(model.codec, torch.nn.Module):
        model.codec.eval()


@contextlib.contextmanager
def _sampling(model: MiniModel):
    """The model in eval mode for a block (the model sampling its own context), back to its mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        _train_mode(model, was_training)


def _probe_sampling(cfg: TrainConfig):
    """The sampler the model is trained and probed with (``probe_sampling``; Self Forcing's 4 steps without one)."""
    from .bundle import sampling_from_metadata

    return sampling_from_metadata({"sampling": cfg.probe_sampling or {}})


def _drop_layout(cfg: TrainConfig, layout: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor | None:
    """Zero the start layout of ``layout_dropout`` of the clips (the prompt-only mode a layout model keeps)."""
    if layout is None or cfg.layout_dropout <= 0:
        return layout
    keep = torch.rand(layout.shape[0], generator=gen) >= cfg.layout_dropout
    return layout * keep[:, None, None, None, None].to(layout.dtype)


def _drop_text(cfg: TrainConfig, ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The empty prompt (all padding: the unconditional model of guidance) for ``text_dropout`` of the clips."""
    if cfg.text_dropout <= 0:
        return ids
    drop = torch.rand(ids.shape[0], generator=gen) < cfg.text_dropout
    return ids.masked_fill(drop[:, None], 0)


def _sigmas(cfg: TrainConfig, b: int, frames: int, gen: torch.Generator, device) -> torch.Tensor:
    chunks = frames // cfg.chunk_frames
    u = torch.rand(b, chunks, generator=gen)
    sigma = cfg.shift * u / (1 + (cfg.shift - 1) * u)
    return sigma.repeat_interleave(cfg.chunk_frames, dim=1).to(device)


@torch.no_grad()
def context_probe(model: MiniModel, cfg: TrainConfig, sigma: float = 1.0, batches: int = 2, seed: int = 1234) -> dict:
    """x0 mean-squared error at noise level ``sigma`` with context, without context, and for copy-last-frame.

    Chunk 0 has no context and is excluded. A model that uses its context must beat both baselines clearly.
    """
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    errs = {"with_context": 0.0, "without_context": 0.0, "copy_last_frame": 0.0}
    model.eval()
    for _ in range(batches):
        clean, ids, _, layout = _batch(cfg, rng, "cpu", batch=cfg.batch or 8, codec=_codec(model))
        b, _, t, h, w = clean.shape
        noise = torch.randn(clean.shape, generator=gen)
        noisy = (1 - sigma) * clean + sigma * noise
        sig = torch.full((b, t), sigma)
        ch = cfg.chunk_frames
        tail = slice(ch, t)
        for key, ctx in (("with_context", True), ("without_context", False)):
            flow = teacher_forcing_forward(model, clean, noisy, sig, ids, ch, context=ctx, layout=layout)
            x0 = noisy - sigma * flow
            errs[key] += F.mse_loss(x0[:, :, tail], clean[:, :, tail]).item() / batches
        starts = torch.arange(ch, t) // ch * ch - 1  # last clean frame before each frame's chunk
        errs["copy_last_frame"] += F.mse_loss(clean[:, :, starts], clean[:, :, tail]).item() / batches
    _train_mode(model)
    return errs


def _codec(model: MiniModel):
    return model.codec if model.config.codec == "autoencoder" else None


def _chunk_weights(cfg: TrainConfig, frames: int) -> torch.Tensor:
    w = torch.ones(frames)
    w[: cfg.chunk_frames] = cfg.first_chunk_weight
    return w / w.mean()


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _rollout_probe(model: MiniModel, cfg: TrainConfig) -> dict:
    """Free rollouts from the prompt alone, one window long (the quality bar's protocol, few pairs)."""
    from .bundle import bundle_from_model

    model.eval()
    bundle = bundle_from_model(model, _probe_sampling(cfg))
    out = {}
    for cls in ((None,) if cfg.world == "original" else ("1-object", "2-object")):
        bar = free_rollout_bar(bundle, pairs=cfg.rollout_probe_pairs, frames=cfg.clip_frames,
                               policies=("self-forcing",), scene_class=cls)
        row = bar["self-forcing"]["inside"]
        prefix = "free_" if cls is None else f"free{cls[0]}_"
        out.update({f"{prefix}{k}": round(row[k]["mean"], 4) for k in ("object_persistence", "count_accuracy",
                                                                       "object_colour_error", "speed_preservation")})
    return out


def train(cfg: TrainConfig, log=print) -> MiniModel:
    """Train (or resume) the mini model; writes ``cfg.output`` when done (and at every checkpoint)."""
    torch.set_num_threads(cfg.threads)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    ckpt_path = run / "checkpoint.pt"
    torch.manual_seed(cfg.seed)
    model = MiniModel(cfg.model)
    if cfg.init == "wan":
        model.init_wan_style()
    if cfg.init_from and not ckpt_path.exists():
        _load_matching(model, cfg.init_from, log)
    if cfg.model.codec == "autoencoder":
        if not cfg.codec_weights:
            raise ValueError("codec='autoencoder' needs codec_weights: train one with deepforcing.mini.train_codec")
        model.codec.load_state_dict(torch.load(cfg.codec_weights, weights_only=True))
        model.codec.eval().requires_grad_(False)
    # no decay on norms, biases, modulation tables and embeddings: qk-norm gains set how sharp attention can get
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.dim() >= 2 and "embedding" not in n and "words" not in n]
    keep = [p for n, p in trainable if not (p.dim() >= 2 and "embedding" not in n and "words" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.99))
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    state = {"step": 0, "seconds": 0.0, "clips": 0, "log": []}
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        if ck["model_config"] != asdict(cfg.model):
            raise ValueError(f"{ckpt_path} was trained with a different model config; use another --run-dir")
        model.load_state_dict(ck["model"])
        model.codec.eval() if isinstance(model.codec, torch.nn.Module) else None
        opt.load_state_dict(ck["optimizer"])
        state = ck["state"]
        rng.bit_generator.state = ck["numpy_rng"]
        gen.set_state(ck["torch_rng"])
        if ema is not None and ck.get("ema"):
            ema.load_state_dict(ck["ema"])
        log(f"resumed from {ckpt_path} at step {state['step']}")
    params = sum(p.numel() for p in model.parameters())
    log(f"mini model: {params / 1e6:.2f}M parameters, {cfg.model.tokens_per_frame} tokens/frame")

    def save_checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state,
                    "numpy_rng": rng.bit_generator.state, "torch_rng": gen.get_state(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "model_config": asdict(cfg.model), "train_config": asdict(cfg)}, tmp)
        tmp.replace(ckpt_path)
        meta = {"training": {k: v for k, v in state.items() if k != "log"},
                "recipe": {k: v for k, v in asdict(cfg).items() if k != "model"}}
        if cfg.probe_sampling:
            meta["sampling"] = cfg.probe_sampling  # the sampler the model is trained and measured for
        with averaged():
            model.save(cfg.output, metadata=meta)

    @contextlib.contextmanager
    def averaged():  # the averaged weights in the model for the duration of a block (no-op without EMA)
        if ema is not None:
            ema.swap(model)
        try:
            yield
        finally:
            if ema is not None:
                ema.swap(model)

    _train_mode(model)
    started = time.perf_counter()
    window_loss = []
    resim = [0, 0]  # objects continued from the rollout / put back from the truth since the last log line
    if cfg.rollout_target not in ROLLOUT_TARGETS:
        named = f"{', '.join(map(repr, ROLLOUT_TARGETS[:-1]))} or {ROLLOUT_TARGETS[-1]!r}"
        raise ValueError(f"rollout_target must be {named}, got {cfg.rollout_target!r}")
    if cfg.rollout_target != "truth" and _codec(model) is None:
        raise ValueError("rollout_target='resimulated' needs the autoencoder codec (it decodes the rollout to track it)")
    if not 0.0 <= cfg.rollout_truth_share <= 1.0:
        raise ValueError(f"rollout_truth_share must be in [0, 1], got {cfg.rollout_truth_share}")
    try:
        while state["step"] < cfg.steps:
            if cfg.max_minutes is not None and time.perf_counter() - started > cfg.max_minutes * 60:
                log(f"time budget of {cfg.max_minutes} min reached at step {state['step']}")
                break
            t0 = time.perf_counter()
            frames = cfg.frames_at(state["step"])
            # same tokens per step whatever the clip length: shorter clips come in larger batches
            batch = cfg.batch * cfg.clip_frames // frames if cfg.batch else 0
            loss = torch.zeros(())
            clips_seen = 0
            if batch:
                clean, ids, cells, layout, specs, states = _batch(cfg, rng, "cpu", frames=frames, batch=batch,
                                                                  codec=_codec(model), with_world=True)
                ids = _drop_text(cfg, ids, gen)
                layout = _drop_layout(cfg, layout, gen)
                sigma = _sigmas(cfg, clean.shape[0], frames, gen, "cpu")
                noise = torch.randn(clean.shape, generator=gen)
                s = sigma[:, None, :, None, None]
                context = self_generated_context(model, cfg, clean, ids, gen, layout)
                context, rows, true_chunks = _rollout(model, cfg, context, ids, gen, layout)
                resimulated = _resimulated_rows(cfg, rows, gen) if cfg.rollout_target != "truth" and rows else []
                if resimulated:
                    target = resimulated_targets(_codec(model), clean, context, cells, specs, states, resimulated,
                                                 true_chunks, cfg.chunk_frames, cfg.model.frame_size,
                                                 cfg.object_weight, restore=cfg.rollout_target == "resimulated")
                    clean, cells = target.clean, target.cells
                    resim[0] += target.tracked
                    resim[1] += target.restored
                noisy = (1 - s) * clean + s * noise
                flow = teacher_forcing_forward(model, context, noisy, sigma, ids, cfg.chunk_frames, layout=layout)
                error = (flow - (noise - clean)).pow(2).mean(dim=1) * cells  # [B, T, h, w]
                per_frame = error.mean(dim=(0, 2, 3)) / cells.mean(dim=(0, 2, 3))
                loss = loss + (per_frame * _chunk_weights(cfg, frames)).mean()
                clips_seen += batch
            if cfg.first_chunk_batch:
                first, ids, cells, layout = _batch(cfg, rng, "cpu", frames=cfg.chunk_frames,
                                                   batch=cfg.first_chunk_batch, codec=_codec(model))
                ids = _drop_text(cfg, ids, gen)
                layout = _drop_layout(cfg, layout, gen)
                sigma = _sigmas(cfg, first.shape[0], cfg.chunk_frames, gen, "cpu")[:, 0]
                noise = torch.randn(first.shape, generator=gen)
                s = sigma[:, None, None, None, None]
                flow = first_chunk_forward(model, (1 - s) * first + s * noise, sigma, ids, layout=layout)
                error = (flow - (noise - first)).pow(2).mean(dim=1) * cells
                loss = loss + cfg.first_chunk_weight * error.mean() / cells.mean()
                clips_seen += cfg.first_chunk_batch
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, state["step"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if ema is not None:
                ema.update(model)
            state["step"] += 1
            state["clips"] += clips_seen
            state["seconds"] += time.perf_counter() - t0
            window_loss.append(loss.item())
            if state["step"] % cfg.probe_every == 0:
                with averaged():
                    probe = context_probe(model, cfg)
                entry = {"step": state["step"], "loss": float(np.mean(window_loss)), "clips": state["clips"],
                         "seconds": round(state["seconds"], 1), **{f"x0_mse_{k}": round(v, 5) for k, v in probe.items()}}
                window_loss.clear()
                if sum(resim):
                    entry["resim_tracked"] = round(resim[0] / sum(resim), 3)
                    resim[:] = [0, 0]
                if cfg.rollout_probe_every and state["step"] % cfg.rollout_probe_every == 0:
                    with averaged():
                        entry.update(_rollout_probe(model, cfg))
                    _train_mode(model)
                state["log"].append(entry)
                log(json.dumps(entry))
            if state["step"] % cfg.checkpoint_every == 0:
                save_checkpoint()
    except KeyboardInterrupt:
        log("interrupted: saving a checkpoint")
        save_checkpoint()
        raise
    save_checkpoint()
    return model
