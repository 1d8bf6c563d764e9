"""Machine resources a run must respect: free memory, CPU threads.

* :func:`available_memory_bytes` — what a new allocation can use now (``MemAvailable`` on Linux, free CUDA memory on
  a GPU), so impossible sizes are refused with an estimate instead of exhausting the machine.
* :func:`choose_threads` — intra-op CPU threads for a model of a given size. Tiny models are bound by per-operator
  overhead: extra threads only spin against each other and against any other job (measured on the 2-core CI
  machine with another CPU-bound job running: the mini model made 2.0 frames/s with torch's default threads and
  32 frames/s with one), so they get one or two threads; large models get every core.
"""

from __future__ import annotations

import os

import torch

__all__ = ["available_memory_bytes", "choose_threads", "format_bytes", "TINY_MODEL_PARAMETERS"]

TINY_MODEL_PARAMETERS = 50_000_000
"""Below this many parameters a model is 'tiny': one thread per video (per-op overhead dominates)."""


def available_memory_bytes(device: torch.device | str = "cpu") -> int | None:
    """Bytes free for new allocations on ``device`` (None when unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        except Exception:  # noqa: BLE001 - a driver without the query: no estimate
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def choose_threads(parameters: int, cpus: int | None = None) -> int:
    """Intra-op threads for a model of ``parameters`` parameters on a machine with ``cpus`` usable cores."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if parameters < TINY_MODEL_PARAMETERS:
        return 1
    return max(1, cpus)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"
