"""Training of the mini autoencoder (:class:`~deepforcing.mini.codec.MiniAutoencoder`) on world frames.

Objective: L1 + MSE reconstruction of world frames rendered on the fly; the decoder sees latents with Gaussian
noise of ``latent_noise`` times the batch's latent std added (so sampled latents that are slightly off decode
cleanly), and a small L2 penalty keeps the latents near unit scale. After training, the per-channel latent mean
and std over fresh frames are stored in the model (latent normalisation, as for the Wan VAE).

Resumable like the transformer recipe: one checkpoint file in ``run_dir``, continued when present.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .codec import MiniAutoencoder
from .language import sample_scene
from .world import render_batch

__all__ = ["CodecTrainConfig", "train_codec", "codec_batch"]


@dataclass
class CodecTrainConfig:
    steps: int = 3000
    scenes: int = 24
    frames_per_scene: int = 4
    frame_size: int = 32
    latent_channels: int = 8
    width: int = 64
    lr: float = 2e-3
    latent_noise: float = 0.1
    latent_penalty: float = 1e-3
    seed: int = 0
    threads: int = 1
    run_dir: str = "runs/codec"
    log_every: int = 100


def codec_batch(rng: np.random.Generator, scenes: int, frames: int, size: int) -> torch.Tensor:
    """``[scenes * frames, 3, size, size]`` world frames in [-1, 1] (random scenes, seeds and times)."""
    specs = [sample_scene(rng) for _ in range(scenes)]
    seeds = rng.integers(0, 2**31 - 1, size=scenes).tolist()
    clips = render_batch(specs, seeds, frames * 5, size)[:, ::5]  # spread over a few seconds of motion
    return clips.reshape(-1, *clips.shape[2:]).contiguous()


def _lr(cfg: CodecTrainConfig, step: int) -> float:
    warm = 100
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / cfg.steps))))


@torch.no_grad()
def fit_latent_normalisation(model: MiniAutoencoder, cfg: CodecTrainConfig, batches: int = 8, seed: int = 4321) -> None:
    rng = np.random.default_rng(seed)
    model.latent_mean.zero_()
    model.latent_std.fill_(1.0)
    zs = torch.cat([model.encoder(codec_batch(rng, cfg.scenes, cfg.frames_per_scene, cfg.frame_size))
                    for _ in range(batches)])
    model.latent_mean.copy_(zs.mean(dim=(0, 2, 3)))
    model.latent_std.copy_(zs.std(dim=(0, 2, 3)).clamp_min(1e-4))


def train_codec(cfg: CodecTrainConfig, log=print) -> MiniAutoencoder:
    torch.set_num_threads(cfg.threads)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    ckpt_path = run / "codec_checkpoint.pt"
    torch.manual_seed(cfg.seed)
    model = MiniAutoencoder(cfg.latent_channels, cfg.width)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    state = {"step": 0, "seconds": 0.0, "log": []}
    rng = np.random.default_rng(cfg.seed)
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["state"]
        rng.bit_generator.state = ck["numpy_rng"]
        log(f"resumed from {ckpt_path} at step {state['step']}")

    def save() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state,
                    "numpy_rng": rng.bit_generator.state, "config": asdict(cfg)}, tmp)
        tmp.replace(ckpt_path)

    model.train()
    window: list[float] = []
    while state["step"] < cfg.steps:
        t0 = time.perf_counter()
        x = codec_batch(rng, cfg.scenes, cfg.frames_per_scene, cfg.frame_size)
        z = model.encoder(x)
        noisy = z + cfg.latent_noise * z.detach().std() * torch.randn_like(z)
        y = model.decoder(noisy)
        loss = F.l1_loss(y, x) + F.mse_loss(y, x) + cfg.latent_penalty * z.pow(2).mean()
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, state["step"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        state["seconds"] += time.perf_counter() - t0
        window.append(F.mse_loss(y.detach(), x).item())
        if state["step"] % cfg.log_every == 0:
            entry = {"step": state["step"], "pixel_mse": round(float(np.mean(window)), 5),
                     "seconds": round(state["seconds"], 1)}
            window.clear()
            state["log"].append(entry)
            log(json.dumps(entry))
            save()
    save()
    model.eval()
    fit_latent_normalisation(model, cfg)
    return model
