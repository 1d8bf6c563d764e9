"""Where the leaderboard (:mod:`deepforcing.eval.leaderboard`) keeps its arms: one JSON per arm (entry x scene class x
start mode, and each class's ground truth) plus its strip frames in a ``.npz``, under ``<out>/arms``; written
atomically (a temporary name, then renamed) and read back by the report (:mod:`deepforcing.eval.leaderboard_report`)
without the runner."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from ..atomic_write import write_atomically

__all__ = ["WORLD", "arm_key", "stored_arm", "save_arm", "load_arms"]

WORLD = "world (ground truth)"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def arm_key(scene_class: str, start: str | None, label: str) -> str:
    """File stem of an arm: ``<class>__<start>__<entry>`` (the world's ground truth has no start mode)."""
    return "__".join(_slug(x) for x in (scene_class, start or "world", label))


def stored_arm(path: Path, settings: dict) -> dict | None:
    """The arm stored at ``path`` when it was made with exactly ``settings``, else ``None`` (missing, unreadable or
    made otherwise: the run makes it again)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("settings") == settings else None


def save_arm(arms_dir: Path, key: str, record: dict, strips: dict[str, np.ndarray]) -> None:
    """Strips first, then the JSON: an arm counts as done only once its JSON is in place."""
    write_atomically(arms_dir / f"{key}.npz", lambda p: _savez(p, strips))
    write_atomically(arms_dir / f"{key}.json", lambda p: p.write_text(json.dumps(record, default=_json_default)))
    failed = arms_dir / f"{key}.failed.json"
    if failed.exists():
        failed.unlink()


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: numpy adds no ".npz" to the temporary name
        np.savez_compressed(f, **arrays)


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return None


def load_arms(out: Path) -> tuple[dict, list[dict], list[dict]]:
    """(the run's ``board.json``, the stored arms that match its settings, the failures) of a board folder."""
    board = json.loads((out / "board.json").read_text())
    shared = board["settings"]
    arms, failures = [], []
    for path in sorted((out / "arms").glob("*.json")):
        record = json.loads(path.read_text())
        if path.name.endswith(".failed.json"):
            failures.append(record)
            continue
        own = record.get("settings", {})
        same = all(own.get(k) == v for k, v in shared.items() if k != "horizons")
        if same and set(own.get("horizons", ())) <= set(shared["horizons"]):  # full runs to the shortest only
            npz = path.with_suffix(".npz")
            if npz.is_file():
                with np.load(npz) as data:
                    record["strips"] = {k: data[k] for k in data.files}
            arms.append(record)
    return board, arms, failures
