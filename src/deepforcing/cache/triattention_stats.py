"""TriAttention's calibration statistics: per (layer, head) the mean of the pre-RoPE queries as complex pairs and
the mean of their moduli, the "query centres" its trigonometric key score is built from (arXiv 2604.04921;
for LongLive: release ``WeianMao/triattention`` @ c3744ee, ``longlive/kv_compression.py`` ``QStatsAccumulator``,
the file ``longlive/assets/calibration_stats_81f.pt``).

The file format is the release's (a ``torch.save`` dict): ``q_mean_real``, ``q_mean_imag``, ``q_abs_mean`` (float32
``[layers, heads, head_dim / 2]``), ``token_count`` (float64 ``[layers]``) and ``metadata``. Query channels pair as
``(2i, 2i + 1)`` (real, imaginary), the pairing RoPE rotates. A file is per checkpoint: its shape must match the
model, which :func:`load_query_centres` checks and :class:`QueryStatsAccumulator` produces for a user's model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic_write import write_atomically

__all__ = ["CalibrationError", "QueryCentres", "QueryStatsAccumulator", "load_query_centres", "FILE_KEYS"]

FILE_KEYS = ("q_mean_real", "q_mean_imag", "q_abs_mean", "token_count")


class CalibrationError(ValueError):
    """A calibration file that is missing, unreadable or made for another model (the message says what to do)."""


def complex_pairs(x: torch.Tensor) -> torch.Tensor:
    """``[..., D]`` real -> ``[..., D / 2]`` complex, channels ``(2i, 2i + 1)`` as (real, imaginary)."""
    if x.shape[-1] % 2:
        raise ValueError(f"head size must be even, got {x.shape[-1]}")
    return torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())


@dataclass(frozen=True)
class QueryCentres:
    """Calibrated query statistics: ``mean`` complex64 and ``abs_mean`` float32, both ``[layers, heads, pairs]``."""

    mean: torch.Tensor
    abs_mean: torch.Tensor
    token_count: torch.Tensor
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mean.shape)  # type: ignore[return-value]

    def check(self, *, layers: int, heads: int, head_dim: int | None = None,
              source: str = "the calibration file") -> None:
        """Raise :class:`CalibrationError` unless the statistics are for a model of this shape (``head_dim``
        ``None``: layers and heads only, as known before the weights load)."""
        have = self.shape[:2] if head_dim is None else self.shape
        want = (layers, heads) if head_dim is None else (layers, heads, head_dim // 2)
        if have != want:
            model = f"{layers} x {heads}" + ("" if head_dim is None else f" x {head_dim}")
            raise CalibrationError(
                f"triattention: {source} holds statistics for {self.shape[0]} layers x {self.shape[1]} heads x "
                f"{2 * self.shape[2]} channels, the model has {model}; calibrate this checkpoint (deepforcing "
                f"calibrate --policy triattention)")


def load_query_centres(path: str | Path) -> QueryCentres:
    """Read a calibration file (the release's format); :class:`CalibrationError` if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"triattention: calibration file {path} not found; make one for your checkpoint with "
                               f"deepforcing calibrate --policy triattention")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same advice
        raise CalibrationError(f"triattention: {path} is not a readable calibration file ({type(exc).__name__})")
    missing = [k for k in FILE_KEYS if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise CalibrationError(f"triattention: {path} lacks {', '.join(missing)}; it is not a TriAttention "
                               f"calibration file")
    real, imag, absm = (payload[k] for k in FILE_KEYS[:3])
    if real.dim() != 3 or real.shape != imag.shape or real.shape != absm.shape:
        raise CalibrationError(f"triattention: {path} has inconsistent shapes {tuple(real.shape)}, "
                               f"{tuple(imag.shape)}, {tuple(absm.shape)} (want [layers, heads, head_dim / 2])")
    return QueryCentres(torch.complex(real.float(), imag.float()).to(torch.complex64), absm.float(),
                        payload["token_count"].double(), dict(payload.get("metadata") or {}))


class QueryStatsAccumulator:
    """Sums of pre-RoPE queries per (layer, head) over every self-attention call of a calibration run, the
    release's ``QStatsAccumulator`` (``kv_compression.py``): per call, the float32 complex pairs summed over batch
    and tokens, and their moduli; divided by the layer's token count at :meth:`centres`."""

    def __init__(self, layers: int, heads: int, head_dim: int) -> None:
        pairs = head_dim // 2
        self.q_sum = torch.zeros(layers, heads, pairs, dtype=torch.complex64)
        self.q_abs_sum = torch.zeros(layers, heads, pairs, dtype=torch.float32)
        self.token_count = torch.zeros(layers, dtype=torch.float64)

    def add(self, layer: int, q: torch.Tensor) -> None:
        """One call's pre-RoPE queries of ``layer``, ``[B, n, heads, head_dim]`` (the release's layout)."""
        with torch.no_grad():
            z = complex_pairs(q.float())
            self.q_sum[layer] += z.sum(dim=(0, 1)).to(device="cpu", dtype=torch.complex64)
            self.q_abs_sum[layer] += z.abs().sum(dim=(0, 1)).to(device="cpu", dtype=torch.float32)
            self.token_count[layer] += float(q.shape[0] * q.shape[1])

    def centres(self, metadata: dict | None = None) -> QueryCentres:
        if (self.token_count <= 0).all():
            raise RuntimeError("no queries were collected; nothing to calibrate")
        denom = self.token_count.clamp_min(1.0).view(-1, 1, 1).to(torch.float32)
        return QueryCentres(self.q_sum / denom, self.q_abs_sum / denom, self.token_count.clone(), dict(metadata or {}))

    def save(self, path: str | Path, metadata: dict | None = None) -> Path:
        """Write the release's file format (loadable by the release's ``LongLiveKVCompressor`` and by us), to a
        temporary sibling renamed into place (:func:`~deepforcing.atomic_write.write_atomically`), so ``path`` is never a
        half-written file."""
        centres = self.centres(metadata)
        record = {"metadata": centres.metadata, "q_mean_real": centres.mean.real.to(torch.float32),
                  "q_mean_imag": centres.mean.imag.to(torch.float32), "q_abs_mean": centres.abs_mean,
                  "token_count": centres.token_count}
        return write_atomically(path, lambda temporary: torch.save(record, temporary))
