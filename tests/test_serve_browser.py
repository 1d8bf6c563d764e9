"""`deepforcing serve` in a real headless browser (Debian's chromium + chromedriver, driven by selenium): the page
loads, a stream starts, frames arrive, the prompt switches and the switch shows on screen.

Skips with the reason when the browser is not installed (`.ci/run` installs it: `apt-get install chromium
chromium-driver`). Set DEEPFORCING_SCREENSHOT=path.png to save the page (the README's screenshot).
"""

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


@pytest.fixture(scope="module")
def server():
    from deepforcing.mini.bundle import mini_generator
    from deepforcing.serve.app import ServeConfig, create_app

    generator = mini_generator()  # the shipped model: what a new user watches
    port = _free_port()
    config = uvicorn.Config(create_app(lambda: generator, ServeConfig()), host="127.0.0.1", port=port,
                            log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(timeout=10)


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


def test_page_streams_and_switches_prompt(server, browser):
    from selenium.webdriver.common.by import By

    text = lambda i: browser.find_element(By.ID, i).text  # noqa: E731
    browser.get(server)
    _wait(lambda: text("status") == "ready", what="the page to connect")
    prompt = browser.find_element(By.ID, "prompt")
    assert prompt.get_attribute("value").startswith("a red circle")  # the model's default prompt
    browser.find_element(By.ID, "start").click()
    _wait(lambda: int(text("frames-shown")) >= 24, what="frames on screen")
    assert text("current-prompt") == prompt.get_attribute("value").strip()
    assert "frames/s" in text("gen-fps") and "sink" in text("cache-total")
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
    assert int(text("frames-shown")) > shown_before
    # the canvas shows a frame (not blank): some pixels differ from black
    lit = browser.execute_script(
        "const c = document.getElementById('video'); const d = c.getContext('2d').getImageData(0, 0, c.width, "
        "c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] + d[i+1] + d[i+2] > 30) n++; "
        "return n;")
    assert lit > 100
    _wait(lambda: int(text("frames-shown")) >= shown_before + 32, what="more frames after the switch")
    if os.environ.get("DEEPFORCING_SCREENSHOT"):
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(os.environ["DEEPFORCING_SCREENSHOT"])
    print(f"prompt switch: {latency_ms:.0f} ms from the click to the first new frame on screen")
    browser.find_element(By.ID, "stop").click()
    _wait(lambda: text("status").startswith("stopped"), what="stopped")
