"""The web server of ``deepforcing serve``: one page, one WebSocket per browser session, one rollout per session.

Protocol (JSON text messages on ``/ws``):

* client → server: ``{"type": "start", "prompt", "policy", "seed", "window", "sink", "budget", "recent", "image"}``
  (all optional but the type; ``"image": true`` starts from the image the page uploaded with
  ``POST /api/sessions/{session}/image``, the raw PNG / JPEG bytes, at most ``max_image_bytes``),
  ``{"type": "prompt", "prompt", "cut"}`` (switch at the next chunk boundary; ``"cut": true`` marks a scene cut
  before it, as a timeline's ``cut:`` entry does), ``{"type": "stop"}``;
* server → client: ``{"type": "hello", ...model facts}``, ``{"type": "started", "session", "policy", ...}``, one
  ``{"type": "chunk", "frames": [base64 JPEG, ...], telemetry...}`` per chunk, ``{"type": "stopped", "reason"}`` and
  ``{"type": "error", "message"}`` (the session stays usable after an error in a client message) and, before
  the server closes an idle socket, ``{"type": "closed", "reason"}``.

The rollout of a session runs chunk by chunk in a worker thread; generation is paced to stay at most
``lead_seconds`` ahead of real-time playback, so a prompt switch shows within about one chunk. A client that does
not read for ``send_timeout`` seconds, closes its tab or drops its socket ends its session: the rollout stops and
its cache and video file are freed. No client input is ever used as a file path; the MP4 of a session (the
progressive writer's fragments so far) is served by its random session id only.

The server trusts no client (:class:`ServeConfig` holds every limit): binary or oversized frames and malformed
fields are errors on the page, never a dropped socket; the policy sizes are bounded (a window of 10^9 frames would
hold the memory of a whole video); a tab that streams nothing for ``idle_timeout`` seconds is closed and frees its
slot; starts closer than ``start_interval`` are refused instead of queued; a cross-site page cannot open the socket
(Origin check), and with a ``token`` every request must carry it (the page sets it as a cookie).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import math
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse, Response

from deepforcing.cache import POLICIES
from deepforcing.pipeline.generate import VideoGenerator
from deepforcing.pipeline.start import load_start, probe_start
from deepforcing.pipeline.validation import check_prompt_text, check_seed, error_line
from deepforcing.pipeline.writer import Mp4StreamWriter

from .live import SEGMENTS, LiveOptions, LiveSession, encode_frame

__all__ = ["ServeConfig", "create_app", "TOKEN_COOKIE", "CLOSE_IDLE", "CLOSE_UNAUTHORIZED", "MAX_FRAME_BYTES"]

PAGE = Path(__file__).with_name("page.html")
TOKEN_COOKIE = "deepforcing_token"
CLOSE_IDLE = 4000  # WebSocket close codes the page reads: idle (no automatic reconnect), refused token
CLOSE_UNAUTHORIZED = 4401
CLOSE_BUSY = 1013  # "try again later"
MAX_FRAME_BYTES = 1 << 16  # uvicorn closes the socket (code 1009) on a larger frame, before the app reads it
MAX_ERROR_CHARS = 300  # an error shown on the page is one short line (a 4 KB prompt is not echoed whole)


@dataclass
class ServeConfig:
    """Limits of the server (all per server process)."""

    max_sessions: int = 2
    lead_seconds: float = 0.5  # generation may run this far ahead of real-time playback
    send_timeout: float = 20.0  # a client that reads nothing for this long is dropped
    max_seconds: float = 600.0  # longest video of one session
    max_message_bytes: int = 4096  # a larger text frame is an error (uvicorn closes frames over 64 KiB: code 1009)
    idle_timeout: float = 120.0  # a session streaming nothing, with no message for this long, is closed
    start_interval: float = 1.0  # a start this soon after the previous one is refused (rapid starts do not queue)
    max_cache_factor: int = 4  # policy sizes (window, sink, budget, recent) up to this many times the model's
    # default window; a policy without a bound (``full``) stops when its cache reaches that many frames
    max_image_bytes: int = 10 * 1024 * 1024  # a start image upload (PNG / JPEG bytes)
    token: str | None = None  # when set, every page, API call and socket must carry it (cookie or ?token=)
    workdir: str | None = None  # where session MP4s are written (a fresh temporary folder by default)


@dataclass
class _Session:
    sid: str
    video_path: Path
    live: LiveSession | None = None
    writer: Mp4StreamWriter | None = None
    producer: asyncio.Task | None = None
    active_at: float = field(default_factory=time.monotonic)  # last client message or end of a stream
    started_at: float = -math.inf  # last accepted start
    start_image: Path | None = None  # the uploaded start image (a server-chosen name in the session's folder)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one model call at a time per session


class _ClientError(ValueError):
    """A bad client message: reported on the page, the session goes on."""


def _frames_or_none(message: dict, key: str, low: int, high: int) -> int | None:
    """A whole number of latent frames in ``[low, high]`` or ``None`` when absent (the page sends "" or null for
    "the policy's default"; digits typed as text and JavaScript's 12.0 are whole numbers too)."""
    value = message.get(key)
    of = " of latent frames"
    if value in (None, ""):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON numbers from JavaScript: 12.0 is 12
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _ClientError(f"{key} must be a whole number{of}, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise _ClientError(f"{key} must be a whole number{of}, got {value!r}") from None
    if not low <= number <= high:
        raise _ClientError(f"{key} must be between {low} and {high} latent frames on this server, got {number}")
    return number


def _options(message: dict, max_seconds: float, max_frames: int) -> LiveOptions:
    """The client's start request as :class:`LiveOptions`, every field type-checked and bounded (sizes at most
    ``max_frames`` latent frames)."""
    prompt = check_prompt_text(message.get("prompt") or "")  # the limits every front door shares
    policy = message.get("policy") or None
    if policy is not None and not isinstance(policy, str):
        raise _ClientError("policy must be text")
    if policy is not None and policy not in POLICIES:
        raise _ClientError(f"unknown policy {policy!r}; choose one of {', '.join(sorted(POLICIES))}")
    seed = check_seed(message["seed"]) if message.get("seed") not in (None, "") else 0
    sizes = {key: _frames_or_none(message, key, 0 if key == "sink" else 1, max_frames)
             for key in ("window", "sink", "budget", "recent")}
    return LiveOptions(prompt=prompt, policy=policy, seed=seed, max_seconds=max_seconds, max_cache_frames=max_frames,
                       **sizes)


def _about_upload(err: BaseException | str, path: Path) -> str:
    """A start-image message for the page, one line: the server's own file name becomes "the uploaded image"."""
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):  # PIL: "image file is truncated"
        return f"the uploaded image does not decode ({err}); choose another PNG or JPEG"
    text = str(err).replace(str(path), "the uploaded image").replace("--image file", "the uploaded image")
    return error_line(ValueError(text), MAX_ERROR_CHARS)


def _decode_fully(path: Path) -> None:
    """Decode every pixel of an image (its size is checked already): a damaged file raises ``OSError``."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()


def _policy_description(cls: type) -> str:
    """A policy's own description for the page: its docstring's first paragraph and its ``source``, if any."""
    doc = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
    return f"{doc} [{cls.source}]" if cls.source else doc


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
    state: dict = {}
    model_lock = threading.Lock()
    app.state.sessions = sessions
    app.state.config = cfg

    def generator() -> VideoGenerator:
        with model_lock:
            if "generator" not in state:
                state["generator"] = generator_factory()
            return state["generator"]

    def max_cache_frames() -> int:
        """The largest policy size a client may ask for: ``max_cache_factor`` times the model's default window."""
        if "max_cache_frames" not in state:
            state["max_cache_frames"] = cfg.max_cache_factor * generator().resolve_policy(None).window
        return state["max_cache_frames"]

    def facts() -> dict:
        gen = generator()
        bundle = gen.bundle
        names = sorted(POLICIES)  # the registry: a policy registered by a plugin shows here too
        return {"model": bundle.name, "default_prompt": bundle.default_prompt, "fps": bundle.fps,
                "display_scale": bundle.display_scale, "chunk_frames": bundle.sampling.chunk_frames,
                "default_policy": bundle.default_policy, "policies": names,
                "policy_descriptions": {name: _policy_description(POLICIES[name]) for name in names},
                "max_cache_frames": max_cache_frames(), "idle_timeout": cfg.idle_timeout,
                "max_image_bytes": cfg.max_image_bytes,
                "max_sessions": cfg.max_sessions, "active_sessions": len(sessions), "segments": list(SEGMENTS)}

    # ------------------------------------------------------------------ access
    def authorized(token: str | None) -> bool:
        return cfg.token is None or (token is not None and secrets.compare_digest(token, cfg.token))

    def request_token(conn: Request | WebSocket) -> str | None:
        return conn.query_params.get("token") or conn.cookies.get(TOKEN_COOKIE)

    def same_origin(ws: WebSocket) -> bool:
        """A browser sends the page's origin: a socket opened by another site's page is refused (cross-site
        WebSocket hijacking); clients without an Origin header (scripts) pass."""
        origin = ws.headers.get("origin")
        if origin is None:
            return True
        return origin.split("://", 1)[-1].rstrip("/") == ws.headers.get("host", "")

    def unauthorized_page() -> HTMLResponse:
        return HTMLResponse("<!doctype html><meta charset=utf-8><title>deepforcing serve</title><p>This server needs "
                            "its access token: open the address <code>deepforcing serve</code> printed "
                            "(<code>/?token=…</code>).</p>", status_code=401)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request) -> Response:
        token = request_token(request)
        if not authorized(token):
            return unauthorized_page()
        response = HTMLResponse(PAGE.read_text(encoding="utf-8"))
        if cfg.token is not None:  # the page's own requests (socket, download) carry it from now on
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.get("/api/info")
    def info(request: Request) -> JSONResponse:
        if not authorized(request_token(request)):
            return JSONResponse({"error": "this server needs its access token"}, status_code=401)
        return JSONResponse(facts())

    @app.get("/api/sessions/{sid}/video.mp4")
    def video(sid: str, request: Request) -> Response:
        if not authorized(request_token(request)):
            return JSONResponse({"error": "this server needs its access token"}, status_code=401)
        session = sessions.get(sid)
        if session is None or session.writer is None or session.writer.chunks_written == 0:
            return JSONResponse({"error": "no video for this session (not started, or already closed)"},
                                status_code=404)
        with session.lock:  # not while a fragment is being appended
            data = session.writer.partial_path.read_bytes()
        return Response(data, media_type="video/mp4",
                        headers={"Content-Disposition": f'attachment; filename="deepforcing_{sid[:8]}.mp4"'})

    @app.post("/api/sessions/{sid}/image")
    async def upload_image(sid: str, request: Request) -> JSONResponse:
        """The start image of a session's next streams: raw PNG / JPEG bytes, checked as ``generate --image``
        checks its file (readable, one still frame, 8 bits, not huge) before it is kept."""
        if not authorized(request_token(request)):
            return JSONResponse({"error": "this server needs its access token"}, status_code=401)
        session = sessions.get(sid)
        if session is None:
            return JSONResponse({"error": "no such session (reload the page)"}, status_code=404)
        too_big = JSONResponse({"error": f"the image is over the limit of {cfg.max_image_bytes // 2**20} MiB; "
                                         f"choose a smaller PNG or JPEG"}, status_code=413)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cfg.max_image_bytes:
            return too_big
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > cfg.max_image_bytes:
                return too_big
        if not body:
            return JSONResponse({"error": "the upload is empty; choose a PNG or JPEG image"}, status_code=400)
        path = session.video_path.parent / "start-image"
        path.parent.mkdir(parents=True, exist_ok=True)
        session.start_image = None
        path.write_bytes(bytes(body))
        try:
            probe = await asyncio.to_thread(probe_start, path, "image")
            await asyncio.to_thread(_decode_fully, path)  # a truncated file fails now, not at the start
        except (ValueError, OSError) as err:
            path.unlink(missing_ok=True)
            return JSONResponse({"error": _about_upload(err, path)}, status_code=400)
        session.start_image = path
        return JSONResponse({"width": probe.width, "height": probe.height})

    def open_live(options: LiveOptions, image: Path | None) -> tuple[LiveSession, str | None]:
        """A new live session (in a worker thread), from the uploaded start image when ``image`` is given; the
        note says how the image was changed to fit the model, if it was."""
        gen = generator()
        start = None
        if image is not None:
            geometry = gen.start_geometry(gen.resolve_policy(options.policy, **options.sizes()))
            try:
                start = load_start(image, "image", geometry)
            except (ValueError, OSError) as err:
                raise _ClientError(_about_upload(err, image)) from None
        note = _about_upload(start.note, image) if start is not None and start.note else None
        return LiveSession(gen, options, start=start), note

    # ------------------------------------------------------------------ sessions
    async def send(ws: WebSocket, payload: dict) -> None:
        await asyncio.wait_for(ws.send_text(json.dumps(payload)), timeout=cfg.send_timeout)

    def stop_session(session: _Session) -> None:
        if session.producer is not None:
            session.producer.cancel()
            session.producer = None

    def streaming(session: _Session) -> bool:
        return session.producer is not None and not session.producer.done()

    def release(session: _Session) -> None:
        """Free the rollout (cache) and the session's folder."""
        release_live(session)
        shutil.rmtree(session.video_path.parent, ignore_errors=True)

    def generate_one(session: _Session, live: LiveSession):
        """The next chunk of ``live`` (in a worker thread), or ``None`` once the session no longer runs it."""
        with session.lock:
            if session.live is not live:  # stopped or replaced while this call waited for the lock
                return None
            chunk = live.next_chunk()
            scale = live.generator.bundle.display_scale
            frames = chunk.frames if scale == 1 else chunk.frames.repeat(scale, axis=1).repeat(scale, axis=2)
            session.writer.write(frames)
            encoded = [base64.b64encode(encode_frame(f)).decode("ascii") for f in chunk.frames]
            return chunk, encoded

    async def produce(ws: WebSocket, session: _Session) -> None:
        """Stream the session's rollout until it finishes, is stopped or is replaced by a new start. A stopped or
        replaced producer ends silently even when its cancellation was lost: ``asyncio.wait_for`` (``send``) may
        swallow a cancel that arrives as its send completes (Python < 3.12), so the loop also checks that it is
        still the session's producer instead of trusting the cancel alone."""
        me = asyncio.current_task()
        live = session.live
        fps = live.generator.bundle.fps
        clock = time.perf_counter()
        video_seconds = 0.0
        try:
            while session.producer is me and session.live is live and not live.finished:
                out = await asyncio.to_thread(generate_one, session, live)
                if out is None:
                    return
                chunk, encoded = out
                video_seconds += len(chunk.frames) / fps
                await send(ws, {
                    "type": "chunk", "index": chunk.index, "start_frame": chunk.start_frame, "prompt": chunk.prompt,
                    "frames": encoded, "chunk_ms": round(chunk.seconds * 1000, 1),
                    "generation_fps": round(len(chunk.frames) / chunk.seconds, 1) if chunk.seconds else None,
                    "cache_frames": chunk.cache_frames, "head_groups": chunk.head_groups,
                    "attention": chunk.attention, "switched": chunk.switched, "cut": chunk.cut,
                    "switch_ms": round(chunk.switch_seconds * 1000, 1) if chunk.switch_seconds is not None else None,
                    "video_seconds": round(video_seconds, 3), "given": chunk.given})
                ahead = video_seconds - (time.perf_counter() - clock)
                if ahead > cfg.lead_seconds:  # pace: stay near real time so prompt switches show quickly
                    await asyncio.sleep(ahead - cfg.lead_seconds)
            if session.producer is me:  # it reached its limit (not stopped or replaced)
                await send(ws, {"type": "stopped", "reason": live.limit_reason})
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:  # the client stopped reading: drop it
            await ws.close(code=1008)
        except Exception as err:  # noqa: BLE001 — reported to the page; the server goes on
            try:
                await send(ws, {"type": "error", "message": f"generation stopped: {err}"})
            except Exception:  # noqa: BLE001
                pass
        finally:
            session.active_at = time.monotonic()  # the idle clock runs from the end of the stream

    async def handle(ws: WebSocket, session: _Session, message: dict) -> None:
        kind = message.get("type")
        if kind == "start":
            options = _options(message, cfg.max_seconds, max_cache_frames())  # a bad field says so first
            wait = session.started_at + cfg.start_interval - time.monotonic()
            if wait > 0:
                raise _ClientError(f"too many starts: wait {wait:.1f} s before starting again")
            image = None
            if message.get("image"):
                if session.start_image is None:
                    raise _ClientError("upload the start image first (drop it on the video or choose a file)")
                image = session.start_image
            live, note = await asyncio.to_thread(open_live, options, image)  # a bad request keeps the old stream
            session.started_at = time.monotonic()  # only a start that got a stream counts against the next one
            release_live(session)
            session.video_path.parent.mkdir(parents=True, exist_ok=True)
            with session.lock:
                session.live = live
                session.writer = Mp4StreamWriter(session.video_path, fps=live.generator.bundle.fps)
            await send(ws, {"type": "started", "session": session.sid, "prompt": live.prompt,
                            "policy": live.policy.describe(), "seed": options.seed, "image": image is not None,
                            "note": note, "video_url": f"/api/sessions/{session.sid}/video.mp4"})
            session.producer = asyncio.create_task(produce(ws, session))
        elif kind == "prompt":
            if session.live is None:
                raise _ClientError("start a stream before switching its prompt")
            prompt = check_prompt_text(message.get("prompt"))
            cut = message.get("cut", False)
            if not isinstance(cut, bool):
                raise _ClientError(f"cut must be true or false, got {cut!r}")
            await asyncio.to_thread(session.live.request_prompt, prompt, cut=cut)
            await send(ws, {"type": "prompt_queued", "prompt": prompt.strip(), "cut": cut})
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

    def parse(frame: dict) -> dict:
        """One received WebSocket frame as a message dict; anything else is a :class:`_ClientError`."""
        if frame.get("text") is None:
            raise _ClientError("binary frames are not accepted; send JSON text messages")
        text = frame["text"]
        if len(text) > cfg.max_message_bytes:
            raise _ClientError(f"message of {len(text)} bytes is over the limit of {cfg.max_message_bytes}")
        try:
            message = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise _ClientError("messages must be JSON objects") from None
        if not isinstance(message, dict):
            raise _ClientError("messages must be JSON objects")
        return message

    async def next_frame(ws: WebSocket, session: _Session) -> dict | None:
        """The next frame from the client, or ``None`` once the session has been idle for ``idle_timeout``
        (streaming nothing and sending nothing); the wait is cut into short polls so a stream that ends starts the
        idle clock."""
        while True:
            if streaming(session):
                timeout = 1.0
            else:
                timeout = cfg.idle_timeout - (time.monotonic() - session.active_at)
                if timeout <= 0:
                    return None
            try:  # cancelling a pending receive loses no message (uvicorn's and the test client's queues)
                return await asyncio.wait_for(ws.receive(), timeout=min(timeout, 1.0))
            except asyncio.TimeoutError:
                continue

    @app.websocket("/ws")
    async def websocket(ws: WebSocket) -> None:
        await ws.accept()
        if not same_origin(ws):
            await ws.send_text(json.dumps({"type": "error", "message": "this socket is for the server's own page"}))
            await ws.close(code=CLOSE_UNAUTHORIZED)
            return
        if not authorized(request_token(ws)):
            await ws.send_text(json.dumps({"type": "error", "message": "this server needs its access token: open "
                                           "the address deepforcing serve printed (/?token=…)"}))
            await ws.close(code=CLOSE_UNAUTHORIZED)
            return
        if len(sessions) >= cfg.max_sessions:
            await ws.send_text(json.dumps({"type": "error", "message": f"busy: {len(sessions)} of "
                                           f"{cfg.max_sessions} sessions are running; try again later"}))
            await ws.close(code=CLOSE_BUSY)
            return
        sid = secrets.token_urlsafe(16)
        session = _Session(sid, workdir / sid / "session.mp4")
        sessions[sid] = session
        try:
            await send(ws, {"type": "hello", "session": sid, **facts()})
            while True:
                frame = await next_frame(ws, session)
                if frame is None:
                    await send(ws, {"type": "closed", "reason": f"idle for {cfg.idle_timeout:g} s: the session was "
                                                                f"closed to free its slot; Start reconnects"})
                    await ws.close(code=CLOSE_IDLE)
                    return
                if frame["type"] == "websocket.disconnect":
                    return
                session.active_at = time.monotonic()
                try:
                    await handle(ws, session, parse(frame))
                except ValueError as err:  # _ClientError, unknown words, impossible policy sizes, memory
                    await send(ws, {"type": "error", "message": error_line(err, MAX_ERROR_CHARS)})
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
