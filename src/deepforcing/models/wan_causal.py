"""Causal (chunk-autoregressive) Wan2.1 transformer on diffusers' ``WanTransformer3DModel``.

The module tree, parameter names and weight layout are diffusers' own (so ``from_pretrained``, PEFT LoRA, quantizers
and ``state_dict`` work as for any diffusers Wan model); only the forward loop is ours. It adds what the stock model
lacks for Self Forcing–style streaming (Self Forcing's ``CausalWanModel``, ``wan/modules/causal_model.py``):

* **per-frame timesteps** ``[B, f]``: the time embedding and the 6 block modulation chunks (and the head's 2) are
  computed per latent frame and broadcast over that frame's tokens (as ``CausalWanAttentionBlock`` does);
* **absolute temporal RoPE** at any frame index (no 1024-frame table), see :mod:`deepforcing.models.rope3d`;
* **cached self-attention**: q/k RMSNorm across heads, 3D RoPE, then the layer's
  :meth:`deepforcing.cache.LayerCache.update`, whose policy decides what the chunk attends to;
* **cross-attention K/V computed once per prompt** (:meth:`CausalWanTransformer.encode_context` → :class:`CrossKV`),
  over the text context zero-padded to ``text_len`` rows with no mask (the padding rows are attended, as in Wan).

Numerics follow the reference where diffusers differs: the sinusoidal time embedding is built in float64 with the
``[cos, sin]`` layout, RMSNorm is computed in float32 then cast *before* the weight multiply (Wan's ``WanRMSNorm``),
LayerNorms run in float32 and RoPE in float64. Modulation arithmetic runs in float32 (as diffusers does); in float32
this is identical to the reference.

Layout: latents are ``[B, C, f, h, w]`` (diffusers' video layout, channels first); the returned flow has the same
shape and the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models import attention_dispatch
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

from deepforcing.cache import CacheGeometry, CachePolicy, KVCache

from .rope3d import WanRope3D

__all__ = ["CrossKV", "CausalWanTransformer", "sinusoidal_time_embedding"]

Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class CrossKV:
    """Cross-attention keys/values of one prompt, per layer ``[B, H, text_len, D]`` (as Self Forcing caches them)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]


def sinusoidal_time_embedding(dim: int, timesteps: torch.Tensor) -> torch.Tensor:
    """Wan's ``sinusoidal_embedding_1d`` in float64: ``[cos(t f_k), sin(t f_k)]``, ``f_k = 10000^(-k / (dim/2))``.

    ``timesteps``: any shape ``[N]``; returns float64 ``[N, dim]``. (diffusers' ``Timesteps`` uses float32 and a
    different exponent arithmetic; the reference's float64 version is kept for parity.)
    """
    if dim % 2:
        raise ValueError(f"time embedding size must be even, got {dim}")
    half = dim // 2
    t = timesteps.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    angles = torch.outer(t, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def _rms_norm(x: torch.Tensor, norm: torch.nn.RMSNorm) -> torch.Tensor:
    """Wan's RMSNorm: normalise in float32, cast back, then multiply by the weight."""
    xf = x.float()
    out = (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + norm.eps)).type_as(x)
    return out * norm.weight if norm.weight is not None else out


def _layer_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """LayerNorm in float32 (diffusers ``FP32LayerNorm`` / Wan ``WanLayerNorm``), result in float32."""
    return norm(x.float()).float()


class CausalWanTransformer(WanTransformer3DModel):
    """Wan2.1 DiT with a chunk-causal, KV-cached forward (Self Forcing's ``CausalWanModel`` on diffusers modules).

    Constructor arguments are diffusers' ``WanTransformer3DModel`` ones plus ``text_len`` (rows the text context is
    zero-padded to; 512 for Wan2.1). Only the T2V variant is supported (``image_dim``/``added_kv_proj_dim`` None),
    with ``qk_norm="rms_norm_across_heads"`` and temporal patch size 1 (one timestep per latent frame).
    """

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 8960,
        num_layers: int = 30,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        text_len: int = 512,
    ) -> None:
        if qk_norm != "rms_norm_across_heads":
            raise ValueError(f"causal Wan needs qk_norm='rms_norm_across_heads' (Wan2.1), got {qk_norm!r}")
        if image_dim is not None or added_kv_proj_dim is not None:
            raise ValueError("the causal Wan transformer supports text-to-video only (image_dim / added_kv_proj_dim)")
        if tuple(patch_size)[0] != 1:
            raise ValueError(f"the causal Wan transformer needs temporal patch size 1, got patch_size={patch_size}")
        if text_len <= 0:
            raise ValueError(f"text_len must be positive, got {text_len}")
        super().__init__(
            patch_size=tuple(patch_size),
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            text_dim=text_dim,
            freq_dim=freq_dim,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            cross_attn_norm=cross_attn_norm,
            qk_norm=qk_norm,
            eps=eps,
            image_dim=image_dim,
            added_kv_proj_dim=added_kv_proj_dim,
            rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len,
        )
        self.rope3d = WanRope3D(attention_head_dim)

    # ----------------------------------------------------------------- geometry
    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.config.attention_head_dim

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def tokens_per_frame(self, height: int, width: int) -> int:
        """Tokens of one latent frame of ``height x width`` (after the spatial patch)."""
        _, ph, pw = self.config.patch_size
        if height % ph or width % pw:
            raise ValueError(f"latent {height}x{width} is not divisible by the patch {ph}x{pw}")
        return (height // ph) * (width // pw)

    def make_cache(
        self,
        policy: CachePolicy,
        *,
        height: int,
        width: int,
        chunk_frames: int,
        batch: int = 1,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        record_events: bool = False,
        max_frames: int | None = None,
    ) -> KVCache:
        """A fresh :class:`KVCache` for one video of latent size ``height x width`` with this model's shape.

        The cache holds keys and values in the compute dtype (that of the patch embedding and the attention
        projections), not in the dtype of the first parameter: norms and modulation tables stay fp32 in half
        precision."""
        param = self.patch_embedding.weight
        return KVCache(
            policy,
            CacheGeometry(self.tokens_per_frame(height, width), chunk_frames),
            num_layers=self.num_layers,
            batch=batch,
            heads=self.num_heads,
            head_dim=self.head_dim,
            rope=self.rope3d.temporal,
            dtype=dtype or param.dtype,
            device=device or param.device,
            record_events=record_events,
            max_frames=max_frames,
        )

    def cache_bytes(self, policy: CachePolicy, *, height: int, width: int, chunk_frames: int, batch: int = 1,
                    max_frames: int | None = None) -> int:
        """What :meth:`make_cache` would allocate, computed without allocating (for refusing impossible sizes)."""
        return KVCache.estimate_bytes(policy, CacheGeometry(self.tokens_per_frame(height, width), chunk_frames),
                                      num_layers=self.num_layers, batch=batch, heads=self.num_heads,
                                      head_dim=self.head_dim, dtype=self.patch_embedding.weight.dtype,
                                      max_frames=max_frames)

    # --------------------------------------------------------------- text side
    @torch.no_grad()
    def encode_context(self, text_embeddings: torch.Tensor) -> CrossKV:
        """Cross-attention K/V of a prompt: text-encoder output ``[B, n, text_dim]`` (n <= ``text_len``).

        The context is zero-padded to ``text_len`` rows, embedded (Linear → GELU-tanh → Linear) and projected to each
        layer's ``norm_k(W_k c)`` and ``W_v c``. Compute once per prompt and pass to every :meth:`forward`.
        """
        if text_embeddings.dim() != 3 or text_embeddings.shape[-1] != self.config.text_dim:
            raise ValueError(
                f"text embeddings must be [B, n, {self.config.text_dim}], got {tuple(text_embeddings.shape)}"
            )
        b, n, _ = text_embeddings.shape
        text_len = self.config.text_len
        if n > text_len:
            raise ValueError(f"text context has {n} rows, more than text_len={text_len}")
        param = self.condition_embedder.text_embedder.linear_1.weight
        padded = text_embeddings.new_zeros(b, text_len, text_embeddings.shape[-1])
        padded[:, :n] = text_embeddings
        ctx = self.condition_embedder.text_embedder(padded.to(device=param.device, dtype=param.dtype))
        keys, values = [], []
        for block in self.blocks:
            attn = block.attn2
            keys.append(self._heads(_rms_norm(attn.to_k(ctx), attn.norm_k)))
            values.append(self._heads(attn.to_v(ctx)))
        return CrossKV(keys, values)

    # ------------------------------------------------------------------ forward
    def forward(  # type: ignore[override]
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        context: CrossKV,
        cache: KVCache,
        start_frame: int,
        clean: bool | None = None,
    ) -> torch.Tensor:
        """Flow prediction for one chunk, attending through ``cache``.

        Args:
            latents: ``[B, C, f, h, w]`` noisy latents of the chunk.
            timesteps: ``[B, f]`` per-frame timesteps (or ``[B]`` / scalar, broadcast to every frame).
            context: the prompt's :class:`CrossKV`.
            cache: the video's :class:`KVCache`; this call is declared to it with ``begin_call``.
            start_frame: absolute latent-frame index of the chunk's first frame (its temporal RoPE position).
            clean: whether this is the clean-context pass (defaults to "all timesteps are 0").

        Returns: the flow ``[B, C, f, h, w]`` in the model's dtype.
        """
        x, e, e0, grid, t = self._embed(latents, timesteps)
        f, hp, wp = grid
        if clean is None:
            clean = bool((t == 0).all())
        angles = self.rope3d.angles(start_frame, f, hp, wp, device=x.device)
        cache.begin_call(start_frame, f, clean=clean, rope=self.rope3d.bind(angles, wp))

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            def kernel(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
                return self.attention(q, keys.to(q.dtype), values.to(q.dtype), module=self.blocks[i].attn1)

            # pre-RoPE in; the cache's policy places them (one kernel call, or one per head group)
            return cache.layers[i].attention(q, k, v, kernel)

        return self._run(x, e, e0, grid, angles, context, attend, rotate=False)

    def forward_full(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        context: CrossKV,
        chunk_frames: int,
        start_frame: int = 0,
    ) -> torch.Tensor:
        """Block-causal full-sequence forward without a cache (Self Forcing's training-time attention).

        Tokens of frame-chunk ``i`` (``chunk_frames`` frames each) attend to every token of chunks ``<= i``; within a
        chunk attention is bidirectional. Inside the training horizon this equals the cached rollout with the
        ``full`` policy when earlier chunks are fed as their clean latents at timestep 0.
        """
        if chunk_frames <= 0:
            raise ValueError(f"chunk_frames must be positive, got {chunk_frames}")
        x, e, e0, grid, _ = self._embed(latents, timesteps)
        f, hp, wp = grid
        angles = self.rope3d.angles(start_frame, f, hp, wp, device=x.device)
        chunk = torch.arange(f, device=x.device).div(chunk_frames, rounding_mode="floor").repeat_interleave(hp * wp)
        allowed = chunk[None, :] <= chunk[:, None]  # [queries, keys]

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return self.attention(q, k, v, mask=allowed, module=self.blocks[i].attn1)

        return self._run(x, e, e0, grid, angles, context, attend)

    # ---------------------------------------------------------------- internals
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, n, H*D]`` → ``[B, H, n, D]``."""
        return x.unflatten(2, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _embed(self, latents: torch.Tensor, timesteps: torch.Tensor):
        if latents.dim() != 5 or latents.shape[1] != self.config.in_channels:
            raise ValueError(
                f"latents must be [B, {self.config.in_channels}, frames, height, width], got {tuple(latents.shape)}"
            )
        b, _, f, h, w = latents.shape
        self.tokens_per_frame(h, w)  # validates divisibility
        weight = self.patch_embedding.weight
        x = self.patch_embedding(latents.to(device=weight.device, dtype=weight.dtype))
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2).contiguous()  # [B, n, dim], tokens in (frame, row, col) order

        t = torch.as_tensor(timesteps, device=x.device)
        if t.dim() == 0:
            t = t.expand(b)
        if t.dim() == 1:
            t = t[:, None].expand(b, f)
        if tuple(t.shape) != (b, f):
            raise ValueError(f"timesteps must be [B, frames] = [{b}, {f}], got {tuple(t.shape)}")
        emb = self.condition_embedder
        sin = sinusoidal_time_embedding(self.config.freq_dim, t.reshape(-1))
        e = emb.time_embedder(sin.to(emb.time_embedder.linear_1.weight.dtype))
        e0 = emb.time_proj(emb.act_fn(e).to(emb.time_proj.weight.dtype))
        e = e.float().unflatten(0, (b, f))  # [B, f, dim]
        e0 = e0.float().unflatten(0, (b, f)).unflatten(2, (6, -1))  # [B, f, 6, dim]
        return x, e, e0, grid, t

    def _run(self, x, e, e0, grid, angles, context: CrossKV, attend: Attend, rotate: bool = True) -> torch.Tensor:
        """The blocks and the head; ``attend`` gets ``q, k`` rotated at ``angles`` (``rotate``) or pre-RoPE (the
        cached forward, whose cache rotates them)."""
        if len(context.keys) != self.num_layers:
            raise ValueError(f"context K/V has {len(context.keys)} layers, the model {self.num_layers}")
        if context.batch != x.shape[0]:
            raise ValueError(f"context K/V batch {context.batch} != latent batch {x.shape[0]}")
        for i, block in enumerate(self.blocks):
            x = self._block(i, block, x, e0, angles if rotate else None, context.keys[i], context.values[i], attend)
        return self._head(x, e, grid)

    def _block(self, i, block, x, e0, angles, ck, cv, attend: Attend) -> torch.Tensor:
        dtype = x.dtype
        f = e0.shape[1]
        mod = block.scale_shift_table.float().unsqueeze(1) + e0  # [B, f, 6, dim]
        shift, scale, gate, c_shift, c_scale, c_gate = (m[:, :, None] for m in mod.unbind(2))  # [B, f, 1, dim]

        def frames(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(1, (f, -1))

        h = (frames(_layer_norm(x, block.norm1)) * (1 + scale) + shift).flatten(1, 2).to(dtype)
        y = self._self_attention(i, block.attn1, h, angles, attend)
        x = (frames(x.float()) + frames(y.float()) * gate).flatten(1, 2).to(dtype)

        x = x + self._cross_attention(block.attn2, _layer_norm(x, block.norm2).to(dtype), ck, cv)

        h = (frames(_layer_norm(x, block.norm3)) * (1 + c_scale) + c_shift).flatten(1, 2).to(dtype)
        y = block.ffn(h)
        return (frames(x.float()) + frames(y.float()) * c_gate).flatten(1, 2).to(dtype)

    def _self_attention(self, i, attn, h, angles, attend: Attend) -> torch.Tensor:
        q = self._heads(_rms_norm(attn.to_q(h), attn.norm_q))
        k = self._heads(_rms_norm(attn.to_k(h), attn.norm_k))
        v = self._heads(attn.to_v(h))
        if angles is not None:  # None: the cache rotates them (LayerCache.attend)
            q = self.rope3d.apply(q, angles)
            k = self.rope3d.apply(k, angles)
        out = attend(i, q, k, v)
        return attn.to_out[0](out.transpose(1, 2).flatten(2))

    def _cross_attention(self, attn, x, ck, cv) -> torch.Tensor:
        q = self._heads(_rms_norm(attn.to_q(x), attn.norm_q))
        out = self.attention(q, ck.to(q.dtype), cv.to(q.dtype), module=attn)
        return attn.to_out[0](out.transpose(1, 2).flatten(2))

    # ---------------------------------------------------------------- attention
    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
                  module: torch.nn.Module | None = None) -> torch.Tensor:
        """Attention of ``[B, H, n, D]`` tensors through diffusers' ``dispatch_attention_fn`` (its layout is
        ``[B, n, H, D]``) with the backend that diffusers' own ``set_attention_backend`` put on the processor of
        ``module`` (the layer's attention; default: the first self-attention, as the switch sets every processor
        alike); ``None`` there is diffusers' active backend (native SDPA unless set). So ``model.set_attention_backend("flash")`` picks flash /
        sage / native kernels here as for any diffusers model."""
        processor = (module if module is not None else self.blocks[0].attn1).processor
        out = attention_dispatch.dispatch_attention_fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                       attn_mask=mask,
                                                       backend=getattr(processor, "_attention_backend", None))
        return out.transpose(1, 2)

    def _head(self, x: torch.Tensor, e: torch.Tensor, grid) -> torch.Tensor:
        f, hp, wp = grid
        b = x.shape[0]
        mod = self.scale_shift_table.float().unsqueeze(1) + e.unsqueeze(2)  # [B, f, 2, dim]
        shift, scale = (m[:, :, None] for m in mod.unbind(2))
        h = _layer_norm(x, self.norm_out).unflatten(1, (f, -1)) * (1 + scale) + shift
        out = self.proj_out(h.flatten(1, 2).to(x.dtype))  # [B, n, pt*ph*pw*C]
        pt, ph, pw = self.config.patch_size
        out = out.reshape(b, f, hp, wp, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, out.shape[1], f * pt, hp * ph, wp * pw)
