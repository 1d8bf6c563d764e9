import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Tiny models are dominated by per-op overhead: one thread is faster and deterministic on the 2-core CI machine.
torch.set_num_threads(1)


def _tiny_mini_config():
    from deepforcing.mini.model import MiniConfig

    return MiniConfig(frame_size=16, patch=4, dim=48, heads=2, layers=2, ffn_dim=64, text_dim=16, text_len=16,
                      freq_dim=32)


TINY_MINI = _tiny_mini_config()


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


@pytest.fixture(scope="session")
def tiny_mini(tmp_path_factory):
    """A tiny random mini-model file (same classes as the shipped one; 16x16 frames, 16 tokens per frame)."""
    from deepforcing.mini.model import MiniModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mini") / "tiny_mini.safetensors"
    MiniModel(TINY_MINI).save(path)
    return path
