"""`deepforcing serve` in a real headless browser (Debian's chromium + chromedriver, driven by selenium): the page
loads, a stream starts, frames arrive, the prompt switches and the switch shows on screen; an error and a refused
restart stay in view at 1200x820; a busy tab gets its slot once one frees; the page reconnects by itself after the
server went away; on a 390x844 phone the video, the live numbers and the controls fit the screen.

Skips with the reason when the browser is not installed (`.ci/run` installs it: `apt-get install chromium
chromium-driver`). Set DEEPFORCING_SCREENSHOT=path.png to save the page (the README's screenshot) and
DEEPFORCING_SCREENSHOT_DIR=folder to save one screenshot per checked state (to look at).
"""

import contextlib
import os
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if os.environ.get("DEEPFORCING_REQUIRE_BROWSER") and not (CHROMIUM and CHROMEDRIVER):  # CI: must run, not skip
    raise RuntimeError("DEEPFORCING_REQUIRE_BROWSER is set but chromium/chromedriver are missing")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="no chromium/chromedriver on this machine: apt-get install chromium chromium-driver"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A uvicorn server in a thread that can be stopped and started again on the same port (a server restart)."""

    def __init__(self, generator, port: int) -> None:
        from deepforcing.serve.app import ServeConfig

        self.generator, self.port, self.config = generator, port, ServeConfig(max_sessions=2)
        self.url = f"http://127.0.0.1:{port}/"
        self.start()

    def start(self) -> None:
        from deepforcing.serve.app import create_app

        self.app = create_app(lambda: self.generator, self.config)
        self.srv = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.srv.run, daemon=True)
        self.thread.start()
        _wait(lambda: self.srv.started, timeout=10, what="the server to start")

    def stop(self) -> None:
        self.srv.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def server():
    from deepforcing.mini.bundle import mini_generator

    srv = _Server(mini_generator(), _free_port())  # the shipped model: what a new user watches
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium look for drivers on the network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,820", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait(predicate, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _text(browser, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def _in_view(browser, element_id: str) -> bool:
    """Whether the element is displayed and wholly inside the window (no scrolling needed to read it)."""
    return browser.execute_script(
        "const e = document.getElementById(arguments[0]); const r = e.getBoundingClientRect(); "
        "return getComputedStyle(e).display !== 'none' && r.height > 0 && r.top >= 0 && r.left >= 0 && "
        "r.bottom <= window.innerHeight && r.right <= window.innerWidth;", element_id)


def _policy_names_fit(browser) -> bool:
    """The policy list is wide enough for its longest name (plus the arrow)."""
    return browser.execute_script(
        "const s = document.getElementById('policy'); const c = document.createElement('canvas').getContext('2d'); "
        "c.font = getComputedStyle(s).font; const longest = Math.max(...[...s.options].map(o => "
        "c.measureText(o.text).width)); return s.options.length > 5 && longest + 36 <= s.clientWidth;")


def _lit_pixels(browser) -> int:
    """Pixels of the video canvas brighter than near-black."""
    return browser.execute_script(
        "const c = document.getElementById('video'); const d = c.getContext('2d').getImageData(0, 0, c.width, "
        "c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] + d[i+1] + d[i+2] > 30) n++; "
        "return n;")


def _shot(browser, name: str) -> None:
    folder = os.environ.get("DEEPFORCING_SCREENSHOT_DIR")
    if folder:
        browser.save_screenshot(os.path.join(folder, f"{name}.png"))


def _open(browser, server) -> None:
    browser.get(server.url)
    _wait(lambda: _text(browser, "status") == "ready", what="the page to connect")


def _leave(browser, server) -> None:
    browser.get("about:blank")  # the tab's socket closes: its slot frees
    _wait(lambda: not server.app.state.sessions, timeout=10, what="the slot to free")


def test_page_streams_and_switches_prompt(server, browser):
    from selenium.webdriver.common.by import By

    text = lambda i: _text(browser, i)  # noqa: E731
    _open(browser, server)
    prompt = browser.find_element(By.ID, "prompt")
    assert prompt.get_attribute("value").startswith("a red circle")  # the model's default prompt
    assert _policy_names_fit(browser), "the policy list cuts its names"
    browser.find_element(By.ID, "start").click()
    _wait(lambda: int(text("frames-shown")) >= 24, what="frames on screen")
    assert text("current-prompt") == prompt.get_attribute("value").strip()
    assert "frames/s" in text("gen-fps") and "sink" in text("cache-total")
    streaming = text("status")
    assert streaming.startswith("streaming · deep-forcing")
    # the real playback rate (frames drawn on this screen over the last 2 s) and how far it fell behind live
    rate = float(_wait(lambda: browser.find_element(By.ID, "play-rate").get_attribute("data-fps"),
                       what="the playback rate"))
    assert 0 < rate <= 16 * 1.15 and "fps" in text("play-fps")
    behind = float(browser.find_element(By.ID, "behind-live").get_attribute("data-seconds"))
    assert behind >= 0 and (text("behind-live") == "live") == (behind < 0.25)
    # switch the prompt while it runs
    new = "a yellow square moves fast on a dark background"
    prompt.clear()
    prompt.send_keys(new)
    shown_before = int(text("frames-shown"))
    browser.find_element(By.ID, "switch").click()
    _wait(lambda: text("current-prompt") == new, timeout=20, what="the new prompt on screen")
    latency_ms = float(_wait(lambda: browser.find_element(By.ID, "switch-latency").get_attribute("data-ms"),
                             what="the switch latency"))
    assert 0 < latency_ms < 5000
    _wait(lambda: text("status") == streaming, timeout=5, what="'prompt queued' to clear once the switch shows")
    assert int(text("frames-shown")) > shown_before
    # the canvas shows a frame (not blank): some pixels differ from black
    assert _lit_pixels(browser) > 100
    _wait(lambda: int(text("frames-shown")) >= shown_before + 32, what="more frames after the switch")
    assert "scene cut" not in text("switch-latency")
    browser.find_element(By.ID, "cut").click()  # a scene cut to the same prompt is a switch the page measures too
    _wait(lambda: "scene cut" in text("switch-latency"), timeout=20, what="the scene cut on screen")
    assert text("current-prompt") == new
    if os.environ.get("DEEPFORCING_SCREENSHOT"):
        browser.execute_script("window.scrollTo(0, 0)")
        _wait(lambda: _lit_pixels(browser) > 2000, what="a frame with the square in view")
        browser.save_screenshot(os.environ["DEEPFORCING_SCREENSHOT"])
    _shot(browser, "desktop_streaming")
    print(f"prompt switch: {latency_ms:.0f} ms from the click to the first new frame on screen; playback "
          f"{rate:.1f} fps, {behind:.2f} s behind live")
    browser.find_element(By.ID, "stop").click()
    _wait(lambda: text("status").startswith("stopped"), what="stopped")
    _leave(browser, server)


def test_a_refused_restart_shows_its_error_in_view_and_the_stream_plays_on(server, browser):
    from selenium.webdriver.common.by import By

    text = lambda i: _text(browser, i)  # noqa: E731
    _open(browser, server)
    browser.find_element(By.ID, "start").click()
    _wait(lambda: int(text("frames-shown")) >= 8, what="frames on screen")
    streaming = text("status")
    time.sleep(server.config.start_interval)  # (a faster restart is refused as "too many starts")
    browser.find_element(By.ID, "window").send_keys("1000000000")
    browser.find_element(By.ID, "start").click()  # "Restart" with a window the server refuses
    _wait(lambda: "window must be between 1 and" in text("error"), timeout=10, what="the error")
    assert _in_view(browser, "error"), "the error box is out of view at 1200x820"
    _wait(lambda: text("status") == streaming, timeout=5, what="the header back at the old stream's state")
    shown = int(text("frames-shown"))
    _wait(lambda: int(text("frames-shown")) >= shown + 8, what="the old stream to play on")
    _shot(browser, "desktop_refused_restart")
    _leave(browser, server)


def test_a_busy_tab_says_so_in_view_and_starts_once_a_slot_frees(server, browser):
    from selenium.webdriver.common.by import By
    from websockets.sync.client import connect

    text = lambda i: _text(browser, i)  # noqa: E731
    url = server.url.replace("http", "ws") + "ws"
    with contextlib.ExitStack() as stack:
        others = [stack.enter_context(connect(url)) for _ in range(server.config.max_sessions)]  # both slots held
        for other in others:
            assert '"hello"' in other.recv(timeout=10)
        browser.get(server.url)
        _wait(lambda: text("error").startswith("busy: 2 of 2"), what="the busy message")
        assert _in_view(browser, "error"), "the busy message is out of view at 1200x820"
        _wait(lambda: text("status").startswith("busy"), timeout=5, what="the busy state in the header")
        _shot(browser, "desktop_busy")
        others.pop().close()  # one user leaves
        _wait(lambda: len(server.app.state.sessions) < 2, timeout=10, what="a slot to free")
        browser.find_element(By.ID, "start").click()  # reconnects, then starts
        _wait(lambda: int(text("frames-shown")) >= 8, what="frames after the slot freed")
        assert text("status").startswith("streaming") and text("error") == ""
    _leave(browser, server)


def test_the_page_reconnects_after_the_server_went_away(server, browser):
    from selenium.webdriver.common.by import By

    text = lambda i: _text(browser, i)  # noqa: E731
    _open(browser, server)
    browser.find_element(By.ID, "start").click()
    _wait(lambda: int(text("frames-shown")) >= 8, what="frames on screen")
    server.stop()  # the server restarts (a deploy, a crash): the socket drops mid-stream
    _wait(lambda: text("status").startswith("disconnected — reconnecting"), timeout=15, what="the disconnect shown")
    assert browser.find_element(By.ID, "stop").get_attribute("disabled")
    _shot(browser, "desktop_disconnected")
    server.start()
    _wait(lambda: text("status") == "ready", timeout=30, what="the page to reconnect by itself")
    browser.find_element(By.ID, "start").click()
    _wait(lambda: text("status").startswith("streaming"), timeout=20, what="a new stream after the reconnect")
    _leave(browser, server)


def test_a_dropped_image_starts_the_stream_and_its_prompt_switches(server, browser, tmp_path):
    """Issue 22 item 3: an image dropped on the page (a synthetic drop with a real File) is uploaded; Start shows it
    first and continues from it; the prompt switch works as before; a bad file is a one-line error in view."""
    import base64
    import io

    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By

    text = lambda i: _text(browser, i)  # noqa: E731
    image = np.zeros((48, 64, 3), np.uint8)
    image[..., 1] = 150
    image[8:30, 10:34] = (250, 220, 20)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    drop = ("const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0)); "
            "const dt = new DataTransfer(); dt.items.add(new File([bytes], arguments[1], {type: arguments[2]})); "
            "document.getElementById('video').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));")
    _open(browser, server)
    browser.execute_script(drop, base64.b64encode(b"not an image").decode(), "notes.png", "image/png")
    _wait(lambda: "not a readable image" in text("error"), timeout=10, what="the bad file's error")
    assert _in_view(browser, "error") and "\n" not in text("error")
    big = server.config.max_image_bytes + 1  # refused by the page itself, before any upload
    browser.execute_script("const dt = new DataTransfer(); dt.items.add(new File([new Uint8Array(arguments[0])], "
                           "'huge.png', {type: 'image/png'})); document.getElementById('video').dispatchEvent("
                           "new DragEvent('drop', {dataTransfer: dt, bubbles: true}));", big)
    _wait(lambda: "huge.png is 10.0 MiB, over the limit of 10 MiB" in text("error"), timeout=10, what="size error")
    browser.execute_script(drop, base64.b64encode(buf.getvalue()).decode(), "start.png", "image/png")
    _wait(lambda: "64×48" in text("image-name"), timeout=10, what="the upload")
    browser.find_element(By.ID, "start").click()
    _wait(lambda: int(text("frames-shown")) >= 12, what="frames from the image")
    video = browser.find_element(By.ID, "video")
    assert video.get_attribute("data-given-frames") == "1" and "aspect" in text("image-name")
    assert text("error") == "" and text("status").startswith("streaming")
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("a yellow square moves fast on a dark background")
    browser.find_element(By.ID, "switch").click()
    _wait(lambda: text("current-prompt").startswith("a yellow square"), timeout=20, what="the switch on screen")
    _shot(browser, "desktop_image_start")
    _leave(browser, server)


def test_phone_layout_keeps_video_live_numbers_and_controls_on_screen(server, browser):
    from selenium.webdriver.common.by import By

    text = lambda i: _text(browser, i)  # noqa: E731
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    try:
        _open(browser, server)
        assert browser.execute_script("return window.innerWidth") == 390
        browser.find_element(By.ID, "start").click()
        _wait(lambda: browser.find_element(By.ID, "play-rate").get_attribute("data-fps"), what="the playback rate")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 390, "sideways scrolling"
        for element_id in ("status", "video", "live", "play-fps", "behind", "prompt", "policy"):
            assert _in_view(browser, element_id), f"#{element_id} is off-screen on a 390x844 phone"
        assert "fps" in text("play-fps") and ("live" in text("behind"))
        assert _policy_names_fit(browser), "the policy list cuts its names on a phone"
        browser.find_element(By.ID, "window").send_keys("0")
        browser.find_element(By.ID, "start").click()
        _wait(lambda: "window must be between 1 and" in text("error"), timeout=10, what="the error")
        assert _in_view(browser, "error"), "the error is off-screen on a phone"
        browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        assert _in_view(browser, "error"), "the error scrolls away on a phone"
        browser.execute_script("window.scrollTo(0, 0)")
        _shot(browser, "phone_streaming")
        if os.environ.get("DEEPFORCING_SCREENSHOT_DIR"):
            browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
            _shot(browser, "phone_telemetry")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    _leave(browser, server)
