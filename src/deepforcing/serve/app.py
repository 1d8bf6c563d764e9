"""The web server of ``deepforcing serve``: one page, one WebSocket per browser session, one rollout per session.

Protocol (JSON text messages on ``/ws``):

* client → server: ``{"type": "start", "prompt", "policy", "seed", "window", "sink", "budget", "recent"}`` (all
  optional but the type), ``{"type": "prompt", "prompt"}`` (switch at the next chunk boundary), ``{"type": "stop"}``;
* server → client: ``{"type": "hello", ...model facts}``, ``{"type": "started", "session", "policy", ...}``, one
  ``{"type": "chunk", "frames": [base64 JPEG, ...], telemetry...}`` per chunk, ``{"type": "stopped", "reason"}`` and
  ``{"type": "error", "message"}`` (the session stays usable after an error in a client message).

The rollout of a session runs chunk by chunk in a worker thread; generation is paced to stay at most
``lead_seconds`` ahead of real-time playback, so a prompt switch shows within about one chunk. A client that does
not read for ``send_timeout`` seconds, closes its tab or drops its socket ends its session: the rollout stops and
its cache and video file are freed. No client input is ever used as a file path; the MP4 of a session (the
progressive writer's fragments so far) is served by its random session id only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse, Response

from deepforcing.cache import POLICIES
from deepforcing.pipeline.generate import VideoGenerator
from deepforcing.pipeline.writer import Mp4StreamWriter

from .live import SEGMENTS, LiveOptions, LiveSession, encode_frame

__all__ = ["ServeConfig", "create_app"]

PAGE = Path(__file__).with_name("page.html")


@dataclass
class ServeConfig:
    """Limits of the server (all per server process)."""

    max_sessions: int = 2
    lead_seconds: float = 0.5  # generation may run this far ahead of real-time playback
    send_timeout: float = 20.0  # a client that reads nothing for this long is dropped
    max_seconds: float = 600.0  # longest video of one session
    max_message_bytes: int = 4096
    workdir: str | None = None  # where session MP4s are written (a fresh temporary folder by default)


@dataclass
class _Session:
    sid: str
    video_path: Path
    live: LiveSession | None = None
    writer: Mp4StreamWriter | None = None
    producer: asyncio.Task | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # one model call at a time per session


class _ClientError(ValueError):
    """A bad client message: reported on the page, the session goes on."""


def _int_or_none(message: dict, key: str) -> int | None:
    value = message.get(key)
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _ClientError(f"{key} must be a whole number of latent frames, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise _ClientError(f"{key} must be a whole number of latent frames, got {value!r}") from None


def _options(message: dict, max_seconds: float) -> LiveOptions:
    prompt = message.get("prompt") or ""
    policy = message.get("policy") or None
    if not isinstance(prompt, str) or (policy is not None and not isinstance(policy, str)):
        raise _ClientError("prompt and policy must be text")
    if policy is not None and policy not in POLICIES:
        raise _ClientError(f"unknown policy {policy!r}; choose one of {', '.join(sorted(POLICIES))}")
    seed = _int_or_none(message, "seed") or 0
    if not 0 <= seed < 2**63:
        raise _ClientError(f"seed must be between 0 and 2^63 - 1, got {seed}")
    return LiveOptions(prompt=prompt, policy=policy, seed=seed, window=_int_or_none(message, "window"),
                       sink=_int_or_none(message, "sink"), budget=_int_or_none(message, "budget"),
                       recent=_int_or_none(message, "recent"), max_seconds=max_seconds)


def create_app(generator_factory: Callable[[], VideoGenerator], config: ServeConfig | None = None):
    """The FastAPI app. ``generator_factory`` is called once, at the first use (the model is shared by every
    session; each session has its own rollout and KV cache)."""
    cfg = config or ServeConfig()
    sessions: dict[str, _Session] = {}
    workdir = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="deepforcing-serve-"))
    workdir.mkdir(parents=True, exist_ok=True)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        for session in list(sessions.values()):  # shutdown: end every rollout, remove the session videos
            release(session)
        if not cfg.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    app = FastAPI(title="deepforcing serve", lifespan=lifespan)
    state: dict[str, VideoGenerator] = {}
    model_lock = threading.Lock()
    app.state.sessions = sessions
    app.state.config = cfg

    def generator() -> VideoGenerator:
        with model_lock:
            if "generator" not in state:
                state["generator"] = generator_factory()
            return state["generator"]

    def facts() -> dict:
        gen = generator()
        bundle = gen.bundle
        return {"model": bundle.name, "default_prompt": bundle.default_prompt, "fps": bundle.fps,
                "display_scale": bundle.display_scale, "chunk_frames": bundle.sampling.chunk_frames,
                "default_policy": bundle.default_policy, "policies": sorted(POLICIES),
                "max_sessions": cfg.max_sessions, "active_sessions": len(sessions), "segments": list(SEGMENTS)}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/info")
    def info() -> JSONResponse:
        return JSONResponse(facts())

    @app.get("/api/sessions/{sid}/video.mp4")
    def video(sid: str) -> Response:
        session = sessions.get(sid)
        if session is None or session.writer is None or session.writer.chunks_written == 0:
            return JSONResponse({"error": "no video for this session (not started, or already closed)"},
                                status_code=404)
        with session.lock:  # not while a fragment is being appended
            data = session.writer.partial_path.read_bytes()
        return Response(data, media_type="video/mp4",
                        headers={"Content-Disposition": f'attachment; filename="deepforcing_{sid[:8]}.mp4"'})

    async def send(ws: WebSocket, payload: dict) -> None:
        await asyncio.wait_for(ws.send_text(json.dumps(payload)), timeout=cfg.send_timeout)

    def stop_session(session: _Session) -> None:
        if session.producer is not None:
            session.producer.cancel()
            session.producer = None

    def release(session: _Session) -> None:
        """Free the rollout (cache) and the session's folder."""
        release_live(session)
        shutil.rmtree(session.video_path.parent, ignore_errors=True)

    def generate_one(session: _Session):
        with session.lock:
            live = session.live
            if live is None:
                return None
            chunk = live.next_chunk()
            scale = live.generator.bundle.display_scale
            frames = chunk.frames if scale == 1 else chunk.frames.repeat(scale, axis=1).repeat(scale, axis=2)
            session.writer.write(frames)
            encoded = [base64.b64encode(encode_frame(f)).decode("ascii") for f in chunk.frames]
            return chunk, encoded

    async def produce(ws: WebSocket, session: _Session) -> None:
        live = session.live
        fps = live.generator.bundle.fps
        clock = time.perf_counter()
        video_seconds = 0.0
        try:
            while session.live is live and not live.finished:
                out = await asyncio.to_thread(generate_one, session)
                if out is None:
                    return
                chunk, encoded = out
                video_seconds += len(chunk.frames) / fps
                await send(ws, {
                    "type": "chunk", "index": chunk.index, "start_frame": chunk.start_frame, "prompt": chunk.prompt,
                    "frames": encoded, "chunk_ms": round(chunk.seconds * 1000, 1),
                    "generation_fps": round(len(chunk.frames) / chunk.seconds, 1) if chunk.seconds else None,
                    "cache_frames": chunk.cache_frames, "attention": chunk.attention, "switched": chunk.switched,
                    "switch_ms": round(chunk.switch_seconds * 1000, 1) if chunk.switch_seconds is not None else None,
                    "video_seconds": round(video_seconds, 3)})
                ahead = video_seconds - (time.perf_counter() - clock)
                if ahead > cfg.lead_seconds:  # pace: stay near real time so prompt switches show quickly
                    await asyncio.sleep(ahead - cfg.lead_seconds)
            await send(ws, {"type": "stopped", "reason": f"length limit of {cfg.max_seconds:g} s reached"})
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:  # the client stopped reading: drop it
            await ws.close(code=1008)
        except Exception as err:  # noqa: BLE001 — reported to the page; the server goes on
            try:
                await send(ws, {"type": "error", "message": f"generation stopped: {err}"})
            except Exception:  # noqa: BLE001
                pass

    async def handle(ws: WebSocket, session: _Session, message: dict) -> None:
        kind = message.get("type")
        if kind == "start":
            options = _options(message, cfg.max_seconds)
            live = await asyncio.to_thread(LiveSession, generator(), options)  # a bad request keeps the old stream
            release_live(session)
            session.video_path.parent.mkdir(parents=True, exist_ok=True)
            with session.lock:
                session.live = live
                session.writer = Mp4StreamWriter(session.video_path, fps=live.generator.bundle.fps)
            await send(ws, {"type": "started", "session": session.sid, "prompt": live.prompt,
                            "policy": live.policy.describe(), "seed": options.seed,
                            "video_url": f"/api/sessions/{session.sid}/video.mp4"})
            session.producer = asyncio.create_task(produce(ws, session))
        elif kind == "prompt":
            if session.live is None:
                raise _ClientError("start a stream before switching its prompt")
            prompt = message.get("prompt")
            if not isinstance(prompt, str):
                raise _ClientError("prompt must be text")
            await asyncio.to_thread(session.live.request_prompt, prompt)
            await send(ws, {"type": "prompt_queued", "prompt": prompt.strip()})
        elif kind == "stop":
            stop_session(session)
            await send(ws, {"type": "stopped", "reason": "stopped by the user"})
        else:
            raise _ClientError(f"unknown message type {kind!r}; use start, prompt or stop")

    def release_live(session: _Session) -> None:
        """End the current stream of the session (a new start replaces it)."""
        stop_session(session)
        with session.lock:
            if session.writer is not None:
                session.writer.abort()
                session.writer.partial_path.unlink(missing_ok=True)
            session.live, session.writer = None, None

    @app.websocket("/ws")
    async def websocket(ws: WebSocket) -> None:
        await ws.accept()
        if len(sessions) >= cfg.max_sessions:
            await ws.send_text(json.dumps({"type": "error", "message": f"busy: {len(sessions)} of "
                                           f"{cfg.max_sessions} sessions are running; try again later"}))
            await ws.close(code=1013)
            return
        sid = secrets.token_urlsafe(16)
        session = _Session(sid, workdir / sid / "session.mp4")
        sessions[sid] = session
        try:
            await send(ws, {"type": "hello", "session": sid, **facts()})
            while True:
                text = await ws.receive_text()
                try:
                    if len(text) > cfg.max_message_bytes:
                        raise _ClientError(f"message of {len(text)} bytes is over the limit of "
                                           f"{cfg.max_message_bytes}")
                    try:
                        message = json.loads(text)
                    except json.JSONDecodeError:
                        raise _ClientError("messages must be JSON objects") from None
                    if not isinstance(message, dict):
                        raise _ClientError("messages must be JSON objects")
                    await handle(ws, session, message)
                except ValueError as err:  # _ClientError, unknown words, impossible policy sizes, memory
                    await send(ws, {"type": "error", "message": str(err)})
        except (WebSocketDisconnect, asyncio.TimeoutError, RuntimeError):
            pass
        finally:
            release(session)
            sessions.pop(sid, None)

    app.state.workdir = workdir
    return app


def frames_from_message(message: dict) -> list[np.ndarray]:
    """Decode the JPEG frames of a ``chunk`` message (for tests and clients in Python)."""
    import io

    from PIL import Image

    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(f))).convert("RGB")) for f in message["frames"]]
