"""One set of request limits for the CLI, the Python API and the server: types, ranges and lengths.

Every front door (``deepforcing generate``, :meth:`VideoGenerator.generate` / :meth:`~VideoGenerator.stream`, the
live page) checks a request with these functions before anything is allocated, so the API is exactly as strict as
the command line: at most :data:`MAX_SECONDS` of video (a day), whole numbers where the model counts frames or seeds
(``bool`` is not an int, ``4.5`` frames is not a length), a prompt of at most :data:`MAX_PROMPT_CHARS` characters.
A refusal is a :class:`RequestError` — a ``ValueError`` (the CLI prints it as one line, exit code 2) and a
``TypeError`` (what Python code expects for a wrong type) at once.

:func:`shorten` and :func:`error_line` keep messages to one readable line: a 10 MB prompt is quoted by its head and
its length, and operating-system errors (``[Errno 28]``, ``[Errno 30]`` ...) say what to do.
"""

from __future__ import annotations

import errno
import math
import os
import re
import tempfile
from numbers import Integral, Real
from pathlib import Path
from typing import Any

__all__ = ["RequestError", "MAX_SECONDS", "MAX_LATENT_FRAMES", "MAX_PROMPT_CHARS", "MAX_SEED", "check_length",
           "check_whole", "check_seed", "check_prompt_text", "check_output_path", "check_callback", "shorten",
           "error_line", "os_advice", "check_writable_folder"]

MAX_SECONDS = 24 * 3600.0
"""Longest video one request may ask for (a day); longer lengths are refused before anything is allocated."""
MAX_LATENT_FRAMES = 10_000_000
"""Most latent frames one request may ask for (more than a day at any preset's frame rate)."""
MAX_PROMPT_CHARS = 10_000
"""Longest prompt accepted (text encoders read 512 tokens at most; a longer text is a mistake, e.g. a wrong file)."""
MAX_SEED = 2**63 - 1
"""Seeds are torch generator seeds (64-bit)."""


class RequestError(ValueError, TypeError):
    """A request the engine refuses before any work: a wrong type or a value out of range (one line, what to do)."""


def shorten(text: str, limit: int = 120) -> str:
    """``text`` if at most ``limit`` characters, else its head, an ellipsis and its length (for messages)."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_whole(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int: a whole number (not ``bool``, not ``4.5``) within ``[low, high]``."""
    if not _is_int(value):
        raise RequestError(f"{name} must be a whole number, got {shorten(repr(value), 60)} "
                           f"({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if low is not None and high is not None else \
            (f"at least {low}" if low is not None else f"at most {high}")
        raise RequestError(f"{name} must be {bounds}, got {value}")
    return value


def check_length(seconds: Any, latent_frames: Any) -> tuple[float | None, int | None]:
    """Exactly one of ``seconds`` (a finite number in (0, :data:`MAX_SECONDS`]) and ``latent_frames`` (a whole
    number in [1, :data:`MAX_LATENT_FRAMES`]); returns them as ``(float | None, int | None)``."""
    if (seconds is None) == (latent_frames is None):
        raise RequestError("give exactly one of seconds or latent_frames (--seconds / --frames)")
    if latent_frames is not None:
        return None, check_whole("latent_frames (--frames)", latent_frames, low=1, high=MAX_LATENT_FRAMES)
    if isinstance(seconds, bool) or not isinstance(seconds, Real):
        raise RequestError(f"seconds must be a number, got {shorten(repr(seconds), 60)} ({type(seconds).__name__})")
    seconds = float(seconds)
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
        raise RequestError(f"seconds (--seconds) must be positive and at most {MAX_SECONDS:g} (a day), got {seconds}")
    return seconds, None


def check_seed(seed: Any) -> int:
    """A seed is a whole number in [0, 2**63 - 1] (``True`` and ``1.7`` are refused, not rounded)."""
    return check_whole("seed", seed, low=0, high=MAX_SEED)


def check_prompt_text(text: Any, what: str = "prompt") -> str:
    """A prompt is text of at most :data:`MAX_PROMPT_CHARS` characters."""
    if not isinstance(text, str):
        raise RequestError(f"{what} must be text, got {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARS:
        raise RequestError(f"{what} {shorten(text, 60)!r} is longer than {MAX_PROMPT_CHARS:,} characters; "
                           f"is it the right text or file?")
    return text


def check_output_path(output: Any) -> Path:
    """An output video path: a ``str`` or ``os.PathLike`` ending in ``.mp4``, not a folder."""
    if not isinstance(output, (str, os.PathLike)):
        raise RequestError(f"output must be a file path (str or Path) ending in .mp4, got {type(output).__name__}")
    path = Path(output)
    if path.suffix.lower() != ".mp4":
        raise RequestError(f"output must be an .mp4 path, got {shorten(str(path))}")
    if path.is_dir():
        raise RequestError(f"output {shorten(str(path))} is a folder; give a file name ending in .mp4")
    return path


def check_writable_folder(folder: str | os.PathLike, flag: str) -> Path:
    """``folder`` (created later by the caller) can be written: it or its nearest existing parent is a folder we
    may write to (a read-only filesystem counts as not writable). Nothing is created here."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise RequestError(f"cannot write to {shorten(str(folder))} for {flag}: {shorten(str(existing))} is a file, "
                           f"not a folder; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RequestError(f"cannot write to {shorten(str(folder))} for {flag}: {shorten(str(existing))} is not "
                           f"writable (permissions or a read-only filesystem); choose another {flag}")
    return folder


def make_writable_folder(folder: str | os.PathLike, flag: str | None = None) -> Path:
    """Create ``folder`` (and its parents) and prove it writable with a probe file, before any work; a
    ``ValueError`` naming the folder (and the option ``flag``) and what to do otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".deepforcing-probe-"):
            pass
    except OSError as err:
        where = f" for {flag}" if flag else ""
        raise ValueError(f"cannot write to the folder {folder}{where} ({os_advice(err)})") from None
    return folder


def check_callback(name: str, value: Any) -> None:
    """``None`` or something callable."""
    if value is not None and not callable(value):
        raise RequestError(f"{name} must be callable (or None), got {type(value).__name__}")


_ERRNO_ADVICE = {
    errno.ENOSPC: "the disk is full; free space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up; free space or write elsewhere",
    errno.EROFS: "that filesystem is read-only; write elsewhere",
    errno.EACCES: "permission denied; write to a folder you own or fix its permissions",
    errno.EPERM: "operation not permitted; write to a folder you own",
    errno.EEXIST: "a file of that name is in the way; remove it or choose another name",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another path",
    errno.EISDIR: "that path is a folder; give a file name",
    errno.ENAMETOOLONG: "the path or a name in it is too long; choose a shorter one",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or run fewer jobs",
    errno.EIO: "the device reported an I/O error; check the disk",
}


def os_advice(err: OSError) -> str:
    """What to do about an operating-system error, by its errno (its own text where we have no advice)."""
    return _ERRNO_ADVICE.get(err.errno, err.strerror or str(err))


def error_line(err: BaseException, limit: int = 1000) -> str:
    """One line for an error: an OS error's errno turned into what to do (with the file it names), other
    messages as they are; newlines folded and the whole cut to ``limit`` characters."""
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.errno is not None:
        raw = err.strerror is None or err.strerror == os.strerror(err.errno)
        if raw and err.errno in _ERRNO_ADVICE:  # the bare system text: say what to do instead
            where = err.filename if err.filename is not None else None
            text = f"{shorten(str(where), 160) + ': ' if where is not None else ''}{_ERRNO_ADVICE[err.errno]}"
        elif not raw and text.startswith("[Errno"):  # our own message: drop the errno prefix
            text = text.split("] ", 1)[-1]
    text = re.sub(r"\[Errno -?\d+\] ", "", text)  # a wrapped library error's errno number says nothing
    text = " ".join(text.split())
    return shorten(text, limit)
