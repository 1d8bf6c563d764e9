"""Few-step flow-matching schedule of Self Forcing (``FlowMatchScheduler`` as ``pipeline/causal_inference.py`` uses it).

The training table (float32, ``num_train_timesteps`` entries, ``extra_one_step``):

* ``s_k = linspace(sigma_max, sigma_min, T + 1)[k]`` for ``k = 0 .. T-1``
* ``sigma_k = shift * s_k / (1 + (shift - 1) * s_k)``
* ``t_k = T * sigma_k``

Nominal steps ``[1000, 750, 500, 250]`` are *warped* to the table entries ``T - step`` (``[0, 250, 500, 750]``), giving
``t ≈ [1000, 937.5, 833.33, 625]`` at shift 5. The sigma of a timestep is the table sigma at the nearest table
timestep. Re-noising is ``(1 - sigma) * x0 + sigma * noise`` in float32; the model's flow ``v`` converts to
``x0 = x_t - sigma * v`` in float64, cast back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

__all__ = ["FlowMatchSchedule"]


@dataclass
class FlowMatchSchedule:
    """Self Forcing's ``FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True)`` with its training table.

    Fields:
        shift: timestep shift (5.0 for Self Forcing / Deep Forcing).
        num_train_timesteps: table size and timestep scale (1000).
        sigma_min, sigma_max: ends of the linear sigma ramp before the shift (0, 1).
    """

    shift: float = 5.0
    num_train_timesteps: int = 1000
    sigma_min: float = 0.0
    sigma_max: float = 1.0
    sigmas: torch.Tensor = field(init=False, repr=False)
    timesteps: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, got {self.shift}")
        if self.num_train_timesteps <= 0:
            raise ValueError(f"num_train_timesteps must be positive, got {self.num_train_timesteps}")
        s = torch.linspace(self.sigma_max, self.sigma_min, self.num_train_timesteps + 1, dtype=torch.float32)[:-1]
        self.sigmas = self.shift * s / (1 + (self.shift - 1) * s)
        self.timesteps = self.sigmas * self.num_train_timesteps

    # ------------------------------------------------------------------ steps
    def warp(self, nominal_steps: Sequence[int]) -> torch.Tensor:
        """Warped timesteps (float32 ``[len(steps)]``): table entry ``T - step`` for each nominal step.

        A nominal step of 0 maps past the table to timestep 0 (the reference appends a 0 to the table).
        """
        table = torch.cat([self.timesteps, torch.zeros(1, dtype=torch.float32)])
        idx = []
        for step in nominal_steps:
            if not 0 <= int(step) <= self.num_train_timesteps:
                raise ValueError(f"denoising step {step} outside [0, {self.num_train_timesteps}]")
            idx.append(self.num_train_timesteps - int(step))
        return table[torch.tensor(idx, dtype=torch.long)]

    def sigma(self, timestep: torch.Tensor | float) -> torch.Tensor:
        """Table sigma at the nearest table timestep (float32, same shape as ``timestep``)."""
        t = torch.as_tensor(timestep, dtype=torch.float32)
        table = self.timesteps.to(t.device)
        idx = (table[None, :] - t.reshape(-1, 1)).abs().argmin(dim=1)
        return self.sigmas.to(t.device)[idx].reshape(t.shape)

    # ------------------------------------------------------------- conversions
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """``(1 - sigma) * x0 + sigma * noise`` with float32 sigma (each product rounded before the sum)."""
        sigma = self.sigma(torch.as_tensor(timestep, dtype=torch.float32).reshape(())).to(x0.device)
        out = (1 - sigma) * x0.to(torch.float32) + sigma * noise.to(torch.float32)
        return out.to(noise.dtype)

    def x0_from_flow(self, x_t: torch.Tensor, flow: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """``x0 = x_t - sigma * v`` computed in float64 and cast to ``flow.dtype`` (as Self Forcing's
        ``WanDiffusionWrapper`` in ``utils/wan_wrapper.py`` does)."""
        sigma = self.sigma(torch.as_tensor(timestep, dtype=torch.float32).reshape(())).to(torch.float64)
        out = x_t.to(torch.float64) - sigma.to(x_t.device) * flow.to(torch.float64)
        return out.to(flow.dtype)
