"""`deepforcing serve`: the live session, the WebSocket protocol, limits, bad input, disconnects, the MP4."""

import io
import json

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
])
def test_bad_messages_are_reported_and_the_session_goes_on(generator, message, expected):
    with _client(generator) as client, client.websocket_connect("/ws") as ws:
        _next(ws, "hello")
        ws.send_text(message)
        error = json.loads(ws.receive_text())
        assert error["type"] == "error" and expected in error["message"]
        ws.send_text(json.dumps({"type": "start", "prompt": "a red circle"}))
        _next(ws, "started")
        assert len(frames_from_message(_next(ws, "chunk"))) == 3


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
