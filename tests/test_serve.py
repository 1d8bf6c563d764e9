"""`deepforcing serve`: the live session, the WebSocket protocol, limits, bad input, disconnects, the MP4."""

import io
import json
import time

import av
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from deepforcing.mini.bundle import mini_generator  # noqa: E402
from deepforcing.serve.app import ServeConfig, create_app, frames_from_message  # noqa: E402
from deepforcing.serve.live import LiveOptions, LiveSession  # noqa: E402


@pytest.fixture(scope="module")
def generator(tiny_mini):
    return mini_generator(tiny_mini)


def _client(generator, **config):
    """A test client; generation unpaced (far ahead of playback) unless ``lead_seconds`` is given."""
    return TestClient(create_app(lambda: generator, ServeConfig(**{"lead_seconds": 60.0, **config})))


def _next(ws, kind):
    """Messages until one of ``kind`` (errors fail the test unless asked for)."""
    for _ in range(200):
        m = json.loads(ws.receive_text())
        if m["type"] == kind:
            return m
        assert m["type"] != "error", m
    raise AssertionError(f"no {kind} message")


def test_live_session_is_the_generate_rollout_and_switches_at_the_next_chunk(generator):
    live = LiveSession(generator, LiveOptions(prompt="a red circle", policy="deep-forcing", seed=3, sink=3,
                                              budget=9, recent=3, window=12))
    chunks = [live.next_chunk() for _ in range(4)]
    reference = list(generator.stream("a red circle", latent_frames=12, policy="deep-forcing", seed=3, sink=3,
                                      budget=9, recent=3, window=12))
    for mine, ref in zip(chunks, reference):  # same rollout, same decoder: same frames as `generate`
        assert np.array_equal(mine.frames, (ref.frames[0].permute(0, 2, 3, 1).add(1).mul(127.5).round()
                                            .clamp(0, 255).byte().numpy()))
    live.request_prompt("a blue square")
    switched = live.next_chunk()
    assert switched.switched and switched.prompt == "a blue square" and switched.switch_seconds > 0
    assert not live.next_chunk().switched
    makeup = switched.cache_frames
    assert makeup["sink"] == 3 and makeup["recent"] == 3 and sum(makeup.values()) <= 12 + 3
    assert sum(switched.attention.values()) == pytest.approx(1.0, abs=1e-4)
    assert switched.attention["sink"] > 0 and switched.attention["current"] > 0
    with pytest.raises(ValueError, match="unknown word 'purple'"):
        live.request_prompt("a purple dragon")
    with pytest.raises(ValueError, match="budget"):
        LiveSession(generator, LiveOptions(policy="deep-forcing", budget=2))


def _uint8(frames):
    return frames[0].permute(0, 2, 3, 1).add(1).mul(127.5).round().clamp(0, 255).byte().numpy()


def test_live_scene_cut_is_the_timeline_cut_of_generate(generator):
    """A cut asked for live (even to the same prompt) is the timeline's ``cut:`` entry: ∞-RoPE's RoPE Cut moves
    positions, so the frames after it differ from a switch without it and equal ``generate`` with the same timeline."""
    from deepforcing.pipeline.timeline import TimelineEntry
    options = LiveOptions(prompt="a red circle", policy="infinity-rope", seed=5)
    live = LiveSession(generator, options)
    chunks = [live.next_chunk() for _ in range(3)]
    live.request_prompt("a red circle", cut=True)
    chunks += [live.next_chunk() for _ in range(2)]
    assert [c.cut for c in chunks] == [False, False, False, True, False] and chunks[3].switched
    timeline = [TimelineEntry("a red circle", frames=9), TimelineEntry("a red circle", cut=True)]
    reference = list(generator.stream(timeline, latent_frames=15, policy="infinity-rope", seed=5))
    for mine, ref in zip(chunks, reference, strict=True):
        assert np.array_equal(mine.frames, _uint8(ref.frames))
    switch_only = list(generator.stream([timeline[0], TimelineEntry("a red circle")], latent_frames=15,
                                        policy="infinity-rope", seed=5))
    assert not np.array_equal(_uint8(switch_only[3].frames), chunks[3].frames)  # the cut did something


def test_live_scene_cut_the_policy_cannot_take_is_refused_when_asked(generator, monkeypatch):
    from deepforcing.cache.infinity_rope import InfinityRope
    live = LiveSession(generator, LiveOptions(prompt="a red circle", policy="infinity-rope"))
    monkeypatch.setattr(InfinityRope, "cut_frames", 1)  # as on a model with another chunk size
    with pytest.raises(ValueError, match="a scene cut needs 1-frame chunks"):
        live.request_prompt("a blue square", cut=True)
    live.request_prompt("a blue square")  # a plain switch is fine
    assert live.next_chunk().switched


def test_page_and_facts(generator):
    with _client(generator) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'id="prompt"' in page.text and "/ws" in page.text
        info = client.get("/api/info").json()
        assert info["fps"] == 16 and "deep-forcing" in info["policies"] and info["active_sessions"] == 0


def test_stream_switch_prompt_and_download(generator):
    with _client(generator, lead_seconds=0.0) as client:  # paced at real time, as a browser watches
        with client.websocket_connect("/ws") as ws:
            hello = _next(ws, "hello")
            ws.send_text(json.dumps({"type": "start", "prompt": "a red circle", "policy": "self-forcing", "seed": 1}))
            started = _next(ws, "started")
            first = _next(ws, "chunk")
            frames = frames_from_message(first)
            assert len(frames) == 3 and frames[0].shape == (16, 16, 3) and first["prompt"] == "a red circle"
            assert first["cache_frames"]["recent"] == 3 and first["generation_fps"] > 0
            ws.send_text(json.dumps({"type": "prompt", "prompt": "a green triangle"}))
            chunks = []
            for _ in range(4):
                m = _next(ws, "chunk")
                chunks.append(m)
                if m["switched"]:
                    break
            assert chunks[-1]["switched"] and chunks[-1]["prompt"] == "a green triangle"
            assert len(chunks) <= 2  # the chunk in flight when the message came, then the new prompt
            assert chunks[-1]["switch_ms"] > 0
            video = client.get(started["video_url"])
            assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
            with av.open(io.BytesIO(video.content)) as container:
                decoded = sum(1 for _ in container.decode(video=0))
            assert decoded >= 3 * (1 + len(chunks))
            assert client.get("/api/sessions/..%2F..%2Fetc/video.mp4").status_code == 404
            assert client.get("/api/sessions/nope/video.mp4").status_code == 404
            ws.send_text(json.dumps({"type": "stop"}))
            assert _next(ws, "stopped")["reason"] == "stopped by the user"
            assert hello["session"] in client.app.state.sessions
        # the socket closed: the session, its rollout and its video are gone
        assert client.app.state.sessions == {}
        assert not any(client.app.state.workdir.iterdir())
    assert not client.app.state.workdir.exists()  # server shutdown removes its folder


def test_stream_scene_cut_message(generator):
    with _client(generator) as client, client.websocket_connect("/ws") as ws:
        _next(ws, "hello")
        ws.send_text(json.dumps({"type": "start", "prompt": "a red circle", "policy": "infinity-rope"}))
        _next(ws, "started")
        assert not _next(ws, "chunk")["cut"]
        ws.send_text(json.dumps({"type": "prompt", "prompt": "a red circle", "cut": "yes"}))
        assert "cut must be true or false, got 'yes'" in _next(ws, "error")["message"]
        ws.send_text(json.dumps({"type": "prompt", "prompt": "a red circle", "cut": True}))
        queued = _next(ws, "prompt_queued")
        assert queued["cut"] is True and queued["prompt"] == "a red circle"
        for _ in range(40):
            if (m := _next(ws, "chunk"))["cut"]:
                break
        assert m["cut"] and m["switched"] and m["prompt"] == "a red circle"


@pytest.mark.parametrize("message, expected", [
    ("not json", "must be JSON objects"),
    ("[1, 2]", "must be JSON objects"),
    (json.dumps({"type": "dance"}), "unknown message type 'dance'"),
    (json.dumps({"type": "prompt", "prompt": "a red circle"}), "start a stream before"),
    (json.dumps({"type": "start", "prompt": "a purple dragon"}), "unknown word 'purple'"),
    (json.dumps({"type": "start", "policy": "deep-forcing", "budget": 2}), "budget (2) must exceed"),
    (json.dumps({"type": "start", "policy": "magic"}), "unknown policy 'magic'"),
    (json.dumps({"type": "start", "seed": "x"}), "seed must be a whole number"),
    (json.dumps({"type": "start", "window": 1.5}), "window must be a whole number"),
    (json.dumps({"type": "start", "prompt": "a red circle " * 400}), "over the limit"),
    ("x" * (1 << 20), "1048576 bytes is over the limit of 4096"),
    ("[" * 3000 + "]" * 3000, "over the limit"),
    ("[" * 2000 + "]" * 2000, "must be JSON objects"),  # nested past Python's recursion limit
    (json.dumps({"type": "start", "window": 10**9}), "window must be between 1 and 84 latent frames on this server"),
    (json.dumps({"type": "start", "window": 0}), "window must be between 1 and 84"),
    (json.dumps({"type": "start", "sink": -1}), "sink must be between 0 and 84"),
    (json.dumps({"type": "start", "budget": 1e300}), "budget must be between 1 and 84"),
    (json.dumps({"type": "start", "recent": "9" * 5000}), "over the limit"),
    (json.dumps({"type": "start", "recent": "9" * 50}), "recent must be between 1 and 84"),
    (json.dumps({"type": "start", "seed": 2**64}), "seed must be between 0 and 9223372036854775807"),
    (json.dumps({"type": "start", "seed": True}), "seed must be a whole number, got True"),
    (json.dumps({"type": "start", "prompt": 42}), "prompt must be text, got int"),
    (json.dumps({"type": "prompt", "prompt": None}), "start a stream before"),
    (json.dumps({"type": "start", "prompt": "zz " * 1300}), "unknown word 'zz'"),
])
def test_bad_messages_are_reported_and_the_session_goes_on(generator, message, expected):
    with _client(generator) as client, client.websocket_connect("/ws") as ws:
        _next(ws, "hello")
        ws.send_text(message)
        error = json.loads(ws.receive_text())
        assert error["type"] == "error" and expected in error["message"]
        assert len(error["message"]) <= 400 and "\n" not in error["message"]  # one short line on the page
        ws.send_text(json.dumps({"type": "start", "prompt": "a red circle"}))
        _next(ws, "started")
        assert len(frames_from_message(_next(ws, "chunk"))) == 3


def test_binary_frames_are_an_error_and_the_session_goes_on(generator):
    with _client(generator) as client, client.websocket_connect("/ws") as ws:
        _next(ws, "hello")
        for payload in (b"\x00\xff" * 10, json.dumps({"type": "start"}).encode(), b"\x00" * (1 << 20)):
            ws.send_bytes(payload)
            error = json.loads(ws.receive_text())
            assert error == {"type": "error", "message": "binary frames are not accepted; send JSON text messages"}
        ws.send_text(json.dumps({"type": "start", "prompt": "a red circle"}))
        assert len(frames_from_message(_next(ws, "chunk"))) == 3


def test_a_window_at_the_bound_runs_and_the_full_cache_stops_at_it(generator):
    with _client(generator, max_cache_factor=1) as client, client.websocket_connect("/ws") as ws:
        hello = _next(ws, "hello")
        assert hello["max_cache_frames"] == 21 and "arXiv 2512.05081" in hello["policy_descriptions"]["deep-forcing"]
        assert hello["policy_descriptions"]["memrope"].endswith("[arXiv 2603.12513; YoungRaeKimm/MemRoPE@b89bf5b "
                                                               "wan/modules/causal_model.py]")
        ws.send_text(json.dumps({"type": "start", "policy": "deep-forcing", "window": 21.0}))  # JS numbers
        assert _next(ws, "started")["policy"]["window"] == 21
        time.sleep(1.0)
        ws.send_text(json.dumps({"type": "start", "policy": "full"}))  # keeps every frame: capped at 21
        _next(ws, "started")
        chunks, m = 0, None
        while (m := json.loads(ws.receive_text()))["type"] == "chunk":
            chunks += 1
        assert m["type"] == "stopped" and m["reason"].startswith("cache limit of 21 latent frames reached (full")
        assert chunks == 7  # 21 latent frames in chunks of 3


def test_rapid_starts_are_refused_not_queued(generator):
    with _client(generator, start_interval=30.0) as client, client.websocket_connect("/ws") as ws:
        _next(ws, "hello")
        for seed in range(20):
            ws.send_text(json.dumps({"type": "start", "prompt": "a red circle", "seed": seed}))
        started, refused = [], 0
        while len(started) + refused < 20:
            m = json.loads(ws.receive_text())
            if m["type"] == "started":
                started.append(m)
            elif m["type"] == "error":
                assert m["message"].startswith("too many starts: wait ")
                refused += 1
        assert len(started) == 1 and started[0]["seed"] == 0 and refused == 19
        assert _next(ws, "chunk")["index"] >= 0  # the first stream plays on


def test_an_idle_or_stopped_tab_is_closed_and_frees_its_slot(generator):
    from starlette.websockets import WebSocketDisconnect

    with _client(generator, max_sessions=1, idle_timeout=0.6, lead_seconds=0.0) as client:
        with client.websocket_connect("/ws") as ws:  # never sends a message
            t0 = time.monotonic()
            _next(ws, "hello")
            closed = json.loads(ws.receive_text())
            assert closed["type"] == "closed" and closed["reason"].startswith("idle for 0.6 s")
            assert 0.5 < time.monotonic() - t0 < 3.0
            with pytest.raises(WebSocketDisconnect) as info:
                ws.receive_text()
            assert info.value.code == 4000
        assert client.app.state.sessions == {}
        with client.websocket_connect("/ws") as ws:  # streaming (paced at real time) is not idle; stopping is
            _next(ws, "hello")
            ws.send_text(json.dumps({"type": "start", "prompt": "a red circle"}))
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.5:
                assert json.loads(ws.receive_text())["type"] in ("started", "chunk")
            ws.send_text(json.dumps({"type": "stop"}))
            while (m := json.loads(ws.receive_text()))["type"] != "closed":
                assert m["type"] in ("chunk", "stopped")
        assert client.app.state.sessions == {}


def test_a_token_guards_the_page_the_api_and_the_socket(generator):
    from starlette.websockets import WebSocketDisconnect

    token = "s3cret-token-for-the-test"
    with _client(generator, token=token) as client:
        assert client.get("/").status_code == 401 and "token" in client.get("/").text
        assert client.get("/?token=wrong").status_code == 401
        assert client.get("/api/info").status_code == 401
        with client.websocket_connect("/ws") as ws:
            m = json.loads(ws.receive_text())
            assert m["type"] == "error" and "access token" in m["message"]
            with pytest.raises(WebSocketDisconnect) as info:
                ws.receive_text()
            assert info.value.code == 4401
        assert client.app.state.sessions == {}
        page = client.get(f"/?token={token}")  # sets the cookie the page's own requests carry
        assert page.status_code == 200 and page.cookies.get("deepforcing_token") == token
        assert client.get("/api/info").status_code == 200
        with client.websocket_connect("/ws") as ws:
            assert _next(ws, "hello")["model"]


def test_a_socket_from_another_site_is_refused(generator):
    from starlette.websockets import WebSocketDisconnect

    with _client(generator) as client:
        with client.websocket_connect("/ws", headers={"origin": "http://evil.example"}) as ws:
            assert "server's own page" in json.loads(ws.receive_text())["message"]
            with pytest.raises(WebSocketDisconnect):
                ws.receive_text()
        with client.websocket_connect("/ws", headers={"origin": "http://testserver"}) as ws:
            assert _next(ws, "hello")


def test_a_frame_over_uvicorns_limit_closes_only_that_socket(generator, capfd):
    """On a real uvicorn (as `deepforcing serve` runs it): a 1 MiB frame closes that socket with 1009 (message too
    big), no traceback, its slot is freed, and the next client streams."""
    import threading

    uvicorn = pytest.importorskip("uvicorn")
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from deepforcing.serve.app import MAX_FRAME_BYTES

    app = create_app(lambda: generator, ServeConfig(max_sessions=1, lead_seconds=60.0))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           ws_max_size=MAX_FRAME_BYTES))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            assert json.loads(ws.recv())["type"] == "hello"
            ws.send("x" * (1 << 20))
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=10)
            assert info.value.rcvd.code == 1009
        for _ in range(100):
            if not app.state.sessions:
                break
            time.sleep(0.05)
        assert app.state.sessions == {}
        with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            assert json.loads(ws.recv())["type"] == "hello"
            ws.send(json.dumps({"type": "start", "prompt": "a red circle"}))
            kinds = [json.loads(ws.recv(timeout=30))["type"] for _ in range(2)]
            assert kinds == ["started", "chunk"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert "Traceback" not in capfd.readouterr().err


def _png(array: np.ndarray, **save) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save)
    return buf.getvalue()


def test_a_stream_starts_from_an_uploaded_image_and_switches_its_prompt(generator):
    """Issue 22 item 3: the uploaded image is the first chunk (as given, resized to the model) and is in the cache
    the first sampled chunk attends to; the prompt switch works as before."""
    from deepforcing.pipeline.start import load_start
    from deepforcing.pipeline.writer import to_uint8_frames

    image = np.zeros((24, 32, 3), np.uint8)
    image[:, :, 1] = 160  # green, with a yellow block in the top left
    image[2:10, 2:12] = (250, 220, 20)
    with _client(generator) as client, client.websocket_connect("/ws") as ws:
        sid = _next(ws, "hello")["session"]
        ws.send_text(json.dumps({"type": "start", "image": True}))
        assert "upload the start image first" in json.loads(ws.receive_text())["message"]
        uploaded = client.post(f"/api/sessions/{sid}/image", content=_png(image))
        assert uploaded.status_code == 200 and uploaded.json() == {"width": 32, "height": 24}
        ws.send_text(json.dumps({"type": "start", "prompt": "a red circle", "image": True, "seed": 2}))
        started = _next(ws, "started")
        assert started["image"] and "aspect" in started["note"] and "start-image" not in started["note"]
        first = _next(ws, "chunk")
        assert first["given"] and first["index"] == -1 and len(first["frames"]) == 1
        policy = generator.resolve_policy(None)
        expected = to_uint8_frames(load_start(image, "image", generator.start_geometry(policy)).frames)[0]
        shown = frames_from_message(first)[0].astype(int)  # JPEG on the wire: close, not exact
        assert shown.shape == expected.shape and np.abs(shown - expected).mean() < 6
        assert first["cache_frames"]["sink"] + first["cache_frames"]["recent"] == 1  # the image's latent frame
        second = _next(ws, "chunk")
        assert not second["given"] and second["start_frame"] == 1  # positions count from the given frame
        assert sum(second["cache_frames"].values()) == 1 + 3 and second["attention"]["sink"] > 0
        ws.send_text(json.dumps({"type": "prompt", "prompt": "a green triangle"}))
        for _ in range(4):
            if (m := _next(ws, "chunk"))["switched"]:
                break
        assert m["switched"] and m["prompt"] == "a green triangle"


@pytest.mark.parametrize("body, status, expected", [
    (b"", 400, "the upload is empty"),
    (b"not an image at all", 400, "the uploaded image is not a readable image; give a PNG or JPEG file"),
    (_png(np.zeros((8, 8), np.uint16) + 40000), 400, "the uploaded image has 16 bits per channel"),
    (b"\x89PNG" + b"\x00" * (2 << 20), 413, "over the limit of 1 MiB"),
    (_png(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))[:300], 400,
     "the uploaded image does not decode (image file is truncated"),
])
def test_bad_image_uploads_are_one_line_errors(generator, body, status, expected):
    with _client(generator, max_image_bytes=1 << 20) as client, client.websocket_connect("/ws") as ws:
        sid = _next(ws, "hello")["session"]
        answer = client.post(f"/api/sessions/{sid}/image", content=body)
        assert answer.status_code == status and expected in answer.json()["error"]
        assert "\n" not in answer.json()["error"] and "deepforcing-serve-" not in answer.json()["error"]
        assert client.post("/api/sessions/nope/image", content=b"x").status_code == 404
        ws.send_text(json.dumps({"type": "start", "image": True}))
        assert "upload the start image first" in json.loads(ws.receive_text())["message"]


def test_an_animated_image_upload_is_refused(generator):
    from PIL import Image

    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 255)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with _client(generator) as client, client.websocket_connect("/ws") as ws:
        sid = _next(ws, "hello")["session"]
        answer = client.post(f"/api/sessions/{sid}/image", content=buf.getvalue())
        assert answer.status_code == 400 and "animated image (2 frames)" in answer.json()["error"]


def test_session_limit_says_busy_and_frees_the_slot(generator):
    with _client(generator, max_sessions=1) as client:
        with client.websocket_connect("/ws") as first:
            _next(first, "hello")
            with client.websocket_connect("/ws") as second:
                busy = json.loads(second.receive_text())
                assert busy["type"] == "error" and busy["message"].startswith("busy: 1 of 1")
        with client.websocket_connect("/ws") as third:  # the first one left: room again
            assert _next(third, "hello")["active_sessions"] == 1


def test_a_dropped_socket_mid_stream_ends_its_rollout(generator):
    with _client(generator) as client:
        with client.websocket_connect("/ws") as ws:
            _next(ws, "hello")
            ws.send_text(json.dumps({"type": "start", "prompt": "a red circle"}))
            _next(ws, "chunk")
            session = next(iter(client.app.state.sessions.values()))
        assert client.app.state.sessions == {}
        assert session.live is None and session.writer is None and not session.video_path.parent.exists()


def test_serve_command_checks_before_loading(tmp_path, capsys):
    from deepforcing.cli import main

    assert main(["serve", "--port", "0"]) == 2
    assert "--port must be 1..65535" in capsys.readouterr().err
    assert main(["serve", "--max-sessions", "0"]) == 2
    assert "--max-sessions must be at least 1" in capsys.readouterr().err
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 serves the page beyond this machine: give --token SECRET"),
    (["--host", "::"], "--host :: serves the page beyond this machine"),
    (["--token", "short"], "--token must be at least 16 printable characters"),
    (["--token", "a b c d e f g h i j k"], "without spaces"),
    (["--idle-timeout", "0"], "--idle-timeout must be positive"),
])
def test_serve_refuses_the_network_without_a_token(argv, expected, capsys, monkeypatch):
    from deepforcing.cli import main

    monkeypatch.delenv("DEEPFORCING_SERVE_TOKEN", raising=False)
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


def test_serving_beyond_loopback_with_a_token_warns_and_prints_the_address(monkeypatch, capsys):
    import socket

    import uvicorn

    from deepforcing.cli import main

    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    monkeypatch.setenv("DEEPFORCING_SERVE_TOKEN", "token-from-the-environment")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["serve", "--host", "0.0.0.0", "--port", str(port), "--idle-timeout", "30"]) == 0
    out, err = capsys.readouterr()
    assert "warning: serving on 0.0.0.0: the page is reachable from the network over plain http" in err
    assert f"open http://0.0.0.0:{port}/?token=token-from-the-environment" in out
    assert ran["host"] == "0.0.0.0" and ran["ws_max_size"] == 1 << 16
    config = ran["app"].state.config
    assert config.token == "token-from-the-environment" and config.idle_timeout == 30
    assert main(["serve", "--port", str(port)]) == 0  # loopback: no token needed, no warning
    out, err = capsys.readouterr()
    assert "warning" not in err and f"open http://127.0.0.1:{port}/?token=token-from-the-environment" in out
