import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Tiny models are dominated by per-op overhead: one thread is faster and deterministic on the 2-core CI machine.
torch.set_num_threads(1)


def golden_dir() -> Path | None:
    """The golden traces: $DEEPFORCING_GOLDEN, else ../shared/golden next to the repository."""
    env = os.environ.get("DEEPFORCING_GOLDEN")
    path = Path(env) if env else REPO.parent / "shared" / "golden"
    return path if (path / "traces").is_dir() else None


@pytest.fixture(scope="session")
def golden() -> Path:
    path = golden_dir()
    if path is None:
        pytest.skip("golden traces not found: set DEEPFORCING_GOLDEN or place shared/golden next to the repo")
    return path


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
