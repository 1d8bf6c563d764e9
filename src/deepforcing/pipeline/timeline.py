"""Prompt timelines: several prompts with durations, switched mid-stream.

Two equivalent forms:

* compact (CLI): ``"10s: a red circle on a dark background; 20s: a blue square"`` — entries separated by ``;``,
  each ``<duration>: <prompt>``; durations in seconds (``10s``, ``2.5s``) or latent frames (``30f``); the last entry
  may omit its duration (``"10s: a cat; a dog"``) and then runs to the end of the video;
* file: one entry per line in the same ``<duration>: <prompt>`` form (``#`` starts a comment), or a JSON list of
  ``{"prompt": ..., "seconds": ...}`` / ``{"prompt": ..., "frames": ...}`` objects.

An entry written ``cut <duration>: <prompt>`` (or ``cut: <prompt>``; JSON ``"cut": true``) starts with a **scene
cut**: the cache policy hears of it before the prompt switch (∞-RoPE's RoPE Cut; other policies ignore it). A
policy that cannot take a timeline's events on a model (∞-RoPE's cut on 1-frame chunks) refuses it before any
weights load (:func:`check_timeline_events`).

Durations become whole chunks: a switch happens at the first chunk boundary at or after the requested time.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TimelineEntry", "parse_timeline", "load_timeline", "schedule_chunks", "check_timeline_events",
           "check_switch_events"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|seconds|f|frames)\s*$", re.IGNORECASE)
_UNITS = r"(s|sec|seconds|f|frames)?"
# a head meant as a duration that is not one ("1e9s", "-5s", "inf s", "10 min"): refused, not read as prompt words
_DURATION_LIKE = re.compile(rf"^\s*([-+.\d][^\s:]*|inf\S*|nan\S*)\s*{_UNITS}\s*$|^\s*\d+(\.\d+)?\s*(ms|m|mins?|minutes?|h|hrs?|hours?|secs?|second|frame)\s*$",
                            re.IGNORECASE)


@dataclass(frozen=True)
class TimelineEntry:
    """One prompt and how long it lasts: ``seconds`` of video or ``frames`` latent frames (None = until the end)."""

    prompt: str
    seconds: float | None = None
    frames: int | None = None
    cut: bool = False  # a scene cut at the entry's start (a policy event, see CachePolicy.react)

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("a timeline entry has an empty prompt")
        if self.seconds is not None and self.frames is not None:
            raise ValueError(f"timeline entry {self.prompt!r}: give seconds or frames, not both")
        if (self.seconds is not None and self.seconds <= 0) or (self.frames is not None and self.frames <= 0):
            raise ValueError(f"timeline entry {self.prompt!r}: the duration must be positive")


def _entry(text: str, where: str) -> TimelineEntry:
    head, sep, prompt = text.partition(":")
    if sep:
        words = head.split()
        cut = bool(words) and words[0].lower() == "cut" and (len(words) == 1 or bool(_DURATION.match(head.strip()[3:])))
        if cut:
            head = head.strip()[3:]
            if not head.strip():
                return TimelineEntry(prompt.strip(), cut=True)
        m = _DURATION.match(head)
        if m:
            value, unit = float(m.group(1)), m.group(2).lower()
            if unit.startswith("f"):
                if value != int(value):
                    raise ValueError(f"{where}: a frame count must be a whole number, got {head.strip()!r}")
                return TimelineEntry(prompt.strip(), frames=int(value), cut=cut)
            return TimelineEntry(prompt.strip(), seconds=value, cut=cut)
        if _DURATION_LIKE.match(head):
            raise ValueError(f"{where}: {head.strip()!r} is not a duration; write seconds like '10s' or '2.5s', or "
                             f"latent frames like '30f'")
    return TimelineEntry(text.strip())


def parse_timeline(text: str) -> list[TimelineEntry]:
    """Parse the compact form ``"10s: prompt one; 30f: prompt two; prompt three"``."""
    parts = [p for p in text.split(";") if p.strip()]
    if not parts:
        raise ValueError("the timeline is empty; write e.g. '10s: a red circle; 10s: a blue square'")
    entries = [_entry(p, f"timeline entry {i + 1}") for i, p in enumerate(parts)]
    _check_open_ended(entries)
    return entries


def load_timeline(path: str | Path) -> list[TimelineEntry]:
    """Read a timeline file (lines or JSON)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"timeline file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
            entries = [TimelineEntry(str(it["prompt"]), it.get("seconds"), it.get("frames"), bool(it.get("cut", False)))
                       for it in items]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a JSON list of {{'prompt', 'seconds'|'frames'}} objects ({err})") from None
    else:
        lines = [ln.split("#", 1)[0] for ln in text.splitlines()]
        entries = [_entry(ln, f"{path} line {i + 1}") for i, ln in enumerate(lines) if ln.strip()]
    if not entries:
        raise ValueError(f"{path}: no prompts found")
    _check_open_ended(entries)
    return entries


def _check_open_ended(entries: list[TimelineEntry]) -> None:
    for e in entries[:-1]:
        if e.seconds is None and e.frames is None:
            raise ValueError(f"only the last timeline entry may omit its duration (got {e.prompt!r} without one)")


def schedule_chunks(
    entries: list[TimelineEntry], total_chunks: int, chunk_frames: int, latent_frames_for_seconds
) -> list[int]:
    """Index of the timeline entry active in each chunk (``total_chunks`` values).

    ``latent_frames_for_seconds(s)`` converts a duration in seconds to latent frames for the model at hand.
    """
    starts, frame = [], 0
    for e in entries:
        starts.append(math.ceil(frame / chunk_frames))
        if e.frames is not None:
            frame += e.frames
        elif e.seconds is not None:
            frame += latent_frames_for_seconds(e.seconds)
        else:
            frame = math.inf
    out, k = [], 0
    for c in range(total_chunks):
        while k + 1 < len(starts) and c >= starts[k + 1]:
            k += 1
        out.append(k)
    return out


def check_timeline_events(entries: list[TimelineEntry], policy, chunk_frames: int) -> None:
    """Every event the timeline brings (a prompt switch into each later entry, a scene cut where marked) against
    the policy (:meth:`~deepforcing.cache.CachePolicy.validate_event`), for a model making ``chunk_frames``-frame
    chunks: ``ValueError`` saying what to change, before anything is generated."""
    for e in entries[1:]:
        check_switch_events(policy, chunk_frames, cut=e.cut)


def check_switch_events(policy, chunk_frames: int, *, cut: bool) -> None:
    """The events of one prompt switch (a ``"scene-cut"`` first when ``cut``, then the ``"prompt-switch"``) against
    the policy: what :func:`check_timeline_events` checks per entry and a live session per request."""
    if cut:
        policy.validate_event("scene-cut", chunk_frames)
    policy.validate_event("prompt-switch", chunk_frames)
