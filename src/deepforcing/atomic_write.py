"""Write a file whole or not at all: the one helper for outputs a crash must not leave half-written (calibration
files, sidecars, latents, board arms, reports, model weights).

:func:`write_atomically` hands the writer a unique temporary sibling (``<name>.<random>.tmp<suffix>`` in the same
folder: writers that infer the format from the suffix still work), renames it over ``path`` once the writer
returns (``os.replace``, atomic on one filesystem) and removes it if the writer fails; ``path`` is then left as it
was. A leaf module: it imports nothing of the package, so the cache layer may use it as well as the pipeline."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["write_atomically"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary)`` and move the finished file to ``path`` (its folder made if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    temporary = Path(name)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
