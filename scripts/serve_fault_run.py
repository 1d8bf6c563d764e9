"""Fault run of `deepforcing serve` (issue 23 class 4, issue 22 item 3): a real uvicorn on 127.0.0.1 with the shipped
mini model, raw sockets and HTTP; each case: what was sent, what came back, whether the server still serves and how
many sessions are left. Prints the markdown rows of docs/serve_fault_list.md: `python scripts/serve_fault_run.py`."""
import json, socket, threading, time, urllib.request, urllib.error, io
import numpy as np, uvicorn
from websockets.sync.client import connect
from websockets.exceptions import ConnectionClosed
from deepforcing.mini.bundle import mini_generator
from deepforcing.serve.app import ServeConfig, create_app, MAX_FRAME_BYTES
g = mini_generator()
app = create_app(lambda: g, ServeConfig(max_sessions=2, idle_timeout=3.0, lead_seconds=0.5))
srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=8793, log_level="warning", ws_max_size=MAX_FRAME_BYTES))
threading.Thread(target=srv.run, daemon=True).start()
while not srv.started: time.sleep(0.05)
URL = "ws://127.0.0.1:8793/ws"
rows = []
def case(name, fn):
    try: out = fn()
    except Exception as e: out = f"EXC {type(e).__name__}: {e}"
    alive = urllib.request.urlopen("http://127.0.0.1:8793/api/info", timeout=10).status == 200
    rows.append((name, str(out)[:150], alive, len(app.state.sessions)))
def one(payload, binary=False, start_first=False):
    with connect(URL, max_size=None) as ws:
        json.loads(ws.recv())
        if start_first:
            ws.send(json.dumps({"type": "start"})); 
            while json.loads(ws.recv())["type"] != "chunk": pass
        ws.send(payload)
        for _ in range(50):
            m = json.loads(ws.recv(timeout=20))
            if m["type"] in ("error", "started", "stopped", "prompt_queued"):
                return f'{m["type"]}: {m.get("message") or m.get("reason") or m.get("prompt") or ""}'
def closing(payload):
    with connect(URL, max_size=None) as ws:
        json.loads(ws.recv()); ws.send(payload)
        try: ws.recv(timeout=10); return "no close"
        except ConnectionClosed as e: return f"closed {e.rcvd.code if e.rcvd else None}"
S = lambda **k: json.dumps({"type": "start", **k})
cases = [
 ("binary frame 3 bytes", lambda: one(b"\x00\x01\x02")),
 ("binary frame 60 KB", lambda: one(b"\x00" * 60000)),
 ("binary JSON start", lambda: one(S().encode())),
 ("text 5 KB", lambda: one("x" * 5000)),
 ("text 65 KB (over uvicorn's limit)", lambda: closing("x" * 70000)),
 ("binary 1 MB", lambda: closing(b"\x00" * (1 << 20))),
 ("nested [[[ 3000", lambda: one("[" * 3000)),
 ("nested 1500 deep, balanced", lambda: one("[" * 1500 + "]" * 1500)),
 ("JSON null", lambda: one("null")),
 ("JSON string", lambda: one('"start"')),
 ("type 42", lambda: one(json.dumps({"type": 42}))),
 ("no type", lambda: one("{}")),
 ("window 1e9", lambda: one(S(window=10**9))),
 ("window 1e9 as float", lambda: one(S(window=1e9))),
 ("window -5", lambda: one(S(window=-5))),
 ("window '12' text", lambda: one(S(window="12"))),
 ("window 'abc'", lambda: one(S(window="abc"))),
 ("window [1]", lambda: one(S(window=[1]))),
 ("window {} ", lambda: one(S(window={}))),
 ("window true", lambda: one(S(window=True))),
 ("window NaN", lambda: one('{"type": "start", "window": NaN}')),
 ("window Infinity", lambda: one('{"type": "start", "window": Infinity}')),
 ("sink 85", lambda: one(S(sink=85))),
 ("budget 2 (too small)", lambda: one(S(policy="deep-forcing", budget=2))),
 ("recent 84, window 84", lambda: one(S(window=84, recent=84))),
 ("seed -1", lambda: one(S(seed=-1))),
 ("seed 2**63", lambda: one(S(seed=2**63))),
 ("seed 1.5", lambda: one(S(seed=1.5))),
 ("seed [] ", lambda: one(S(seed=[]))),
 ("policy 42", lambda: one(S(policy=42))),
 ("policy 'magic'", lambda: one(S(policy="magic"))),
 ("policy alias rolling-sink", lambda: one(S(policy="rolling-sink"))),
 ("policy full", lambda: one(S(policy="full"))),
 ("prompt 4000 chars of unknown words", lambda: one(S(prompt="zz " * 1300))),
 ("prompt list", lambda: one(S(prompt=["a"]))),
 ("prompt NUL bytes", lambda: one(S(prompt="a red\x00 circle"))),
 ("prompt switch before start", lambda: one(json.dumps({"type": "prompt", "prompt": "a red circle"}))),
 ("prompt switch to unknown word", lambda: one(json.dumps({"type": "prompt", "prompt": "a purple dragon"}), start_first=True)),
 ("prompt switch empty", lambda: one(json.dumps({"type": "prompt", "prompt": "  "}), start_first=True)),
 ("prompt switch 42", lambda: one(json.dumps({"type": "prompt", "prompt": 42}), start_first=True)),
 ("stop without start", lambda: one(json.dumps({"type": "stop"}))),
 ("image:true without upload", lambda: one(S(image=True))),
]
for name, fn in cases: case(name, fn)
def rapid():
    with connect(URL, max_size=None) as ws:
        json.loads(ws.recv())
        for i in range(20): ws.send(S(seed=i))
        kinds = []
        while len(kinds) < 20:
            m = json.loads(ws.recv(timeout=20))
            if m["type"] in ("started", "error"): kinds.append(m["type"])
        return f"{kinds.count('started')} started, {kinds.count('error')} refused"
case("20 rapid starts", rapid)
def idle():
    with connect(URL, max_size=None) as ws:
        json.loads(ws.recv()); t = time.time()
        m = json.loads(ws.recv(timeout=20))
        try: ws.recv(timeout=10)
        except ConnectionClosed as e: return f'{m["type"]} after {time.time()-t:.1f}s, close {e.rcvd.code}'
case("idle tab (idle_timeout 3 s)", idle)
def stopped_idle():
    with connect(URL, max_size=None) as ws:
        json.loads(ws.recv()); ws.send(S())
        while json.loads(ws.recv())["type"] != "chunk": pass
        ws.send(json.dumps({"type": "stop"})); t = time.time()
        while (m := json.loads(ws.recv(timeout=20)))["type"] != "closed": pass
        return f"closed {time.time()-t:.1f}s after stop"
case("stopped tab goes idle", stopped_idle)
def busy():
    a = connect(URL); b = connect(URL); a.recv(); b.recv()
    with connect(URL) as c:
        m = json.loads(c.recv())
    a.close(); b.close(); time.sleep(0.5)
    return m["message"]
case("third tab with 2 slots", busy)
def dropped():
    s = socket.create_connection(("127.0.0.1", 8793))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    time.sleep(0.5); s.close(); time.sleep(0.5); return f"sessions after drop: {len(app.state.sessions)}"
case("socket dropped after handshake", dropped)
def half_frame():
    s = socket.create_connection(("127.0.0.1", 8793))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    time.sleep(0.3); s.sendall(b"\x81\xfe\x10"); time.sleep(0.3); s.close(); time.sleep(0.5)
    return f"sessions after: {len(app.state.sessions)}"
case("half a frame header then close", half_frame)
def cross_origin():
    with connect(URL, origin="http://evil.example") as ws:
        return json.loads(ws.recv())["message"]
case("Origin http://evil.example", cross_origin)
def post(path, body):
    try:
        r = urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:8793" + path, data=body, method="POST"), timeout=20)
        return f"{r.status} {r.read()[:100]}"
    except urllib.error.HTTPError as e: return f"{e.code} {e.read()[:120]}"
def upload(body):
    with connect(URL) as ws:
        sid = json.loads(ws.recv())["session"]
        return post(f"/api/sessions/{sid}/image", body)
from PIL import Image
def png(a, fmt="PNG"):
    b = io.BytesIO(); Image.fromarray(a).save(b, format=fmt); return b.getvalue()
case("upload to unknown session", lambda: post("/api/sessions/../../etc/image", b"x"))
case("upload 11 MiB", lambda: upload(b"\x89PNG" + b"\0" * (11 << 20)))
case("upload text file", lambda: upload(b"hello"))
case("upload truncated PNG", lambda: upload(png(np.zeros((64, 64, 3), np.uint8))[:60]))
case("upload 1x1 PNG", lambda: upload(png(np.zeros((1, 1, 3), np.uint8))))
case("upload grayscale JPEG", lambda: upload(png(np.zeros((20, 30), np.uint8), "JPEG")))
case("upload 8000x8000 PNG (64 MP)", lambda: upload(png(np.zeros((8000, 8000), np.uint8))))
def start_from_image(arr):
    with connect(URL) as ws:
        sid = json.loads(ws.recv())["session"]
        up = post(f"/api/sessions/{sid}/image", png(arr))
        ws.send(S(image=True))
        while (m := json.loads(ws.recv(timeout=30)))["type"] not in ("chunk", "error"): pass
        return f"{up[:3]} -> {m['type']} given={m.get('given')} {m.get('message','')}"
case("start from 1x1 image", lambda: start_from_image(np.zeros((1, 1, 3), np.uint8)))
case("start from 300x20 image", lambda: start_from_image(np.full((20, 300, 3), 200, np.uint8)))
for r in rows: print(f"| {r[0]} | {r[1]} | {'yes' if r[2] else 'NO'} | {r[3]} |")
srv.should_exit = True
