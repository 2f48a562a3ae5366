"""The review document in a real headless Chromium, offline, driven over the DevTools protocol.

Each test writes a review with the real command, opens it from a file:// URL in a fresh
Chromium profile whose network is cut (offline emulation, no proxy reachable, no host
resolvable), and checks what a reviewer would see: the diagram drawn with every state, the
sections, a non-blank screenshot, and that no request left the page.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from sopagent import load_policy

ROOT = Path(__file__).resolve().parents[2]
REFUND = ROOT / "policies" / "refund.yaml"
MERCHANT = ROOT / "policies" / "merchant_npc.yaml"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)"
)


def sopagent(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sopagent ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "sopagent", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        timeout=300,
        check=False,
    )


class Browser:
    """A headless Chromium and one DevTools connection to its page."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                "--proxy-server=http://127.0.0.1:9",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--window-size=1280,1600",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            targets = json.load(answer)
        page = next(t for t in targets if t["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result; events seen meanwhile are kept."""
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60) -> dict[str, Any]:
        """Wait for an event (or return it if it came already)."""
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv())
            self.events.append(message)
            if message.get("method") == method:
                return message
        raise TimeoutError(method)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"]["value"]

    def close(self) -> None:
        """Close the connection and stop the browser this test started."""
        socket = getattr(self, "socket", None)
        if socket is not None:
            socket.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """A fresh headless Chromium with its network cut."""
    profile = tmp_path / "profile"
    profile.mkdir()
    opened = Browser(profile)
    try:
        yield opened
    finally:
        opened.close()


_MEASURE = """(() => {
  const svg = document.querySelector('.diagram svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  const texts = svg ? Array.from(svg.querySelectorAll('text')).map(t => t.textContent) : [];
  const shapes = svg ? Array.from(svg.querySelectorAll('rect, polygon, ellipse, circle, path'))
      .filter(e => { const b = e.getBBox(); return b.width > 0 && b.height > 0; }).length : 0;
  return {width: box.width, height: box.height, texts: texts, shapes: shapes,
          scripts: document.scripts.length,
          headings: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
          links: Array.from(document.querySelectorAll('link, img, iframe, object')).length,
          body: document.body.innerText};
})()"""


def open_review(browser: Browser, page: Path) -> dict[str, Any]:
    """Load ``page`` offline and return what the page measures of itself."""
    browser.send("Network.enable")
    browser.send("Page.enable")
    browser.send(
        "Network.emulateNetworkConditions",
        offline=True,
        latency=0,
        downloadThroughput=-1,
        uploadThroughput=-1,
    )
    browser.send("Page.navigate", url=page.as_uri())
    browser.wait_for("Page.loadEventFired")
    measured: dict[str, Any] = browser.evaluate(_MEASURE)
    return measured


def requests(browser: Browser) -> list[str]:
    """Every URL the page asked for."""
    return [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]


_PIXELS = """(async () => {
  const image = new Image();
  image.src = 'data:image/png;base64,' + %s;
  await image.decode();
  const canvas = document.createElement('canvas');
  canvas.width = image.width; canvas.height = image.height;
  const context = canvas.getContext('2d');
  context.drawImage(image, 0, 0);
  const data = context.getImageData(0, 0, image.width, image.height).data;
  const colours = new Set();
  let dark = 0;
  for (let i = 0; i < data.length; i += 4 * 7) {
    colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    if (data[i] + data[i + 1] + data[i + 2] < 300) dark += 1;
  }
  return {width: image.width, height: image.height, colours: colours.size, dark: dark};
})()"""


def screenshot(browser: Browser, target: Path) -> dict[str, int]:
    """Save a full-page screenshot; the browser decodes it and counts what it shows."""
    shot = browser.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    target.write_bytes(base64.b64decode(shot["data"]))
    result = browser.send(
        "Runtime.evaluate",
        expression=_PIXELS % json.dumps(shot["data"]),
        awaitPromise=True,
        returnByValue=True,
    )
    pixels: dict[str, int] = result["result"]["value"]
    return pixels


@pytest.mark.parametrize(("policy", "layout"), [(REFUND, "builtin"), (MERCHANT, "auto")])
def test_review_renders_offline_in_chromium(
    browser: Browser, tmp_path: Path, policy: Path, layout: str
) -> None:
    """The diagram is drawn with every state, the sections show, nothing is fetched."""
    page = tmp_path / "review.html"
    written = sopagent("review", policy, "-o", page, "--layout", layout, "--examples", "30")
    assert written.returncode == 0, written.stderr
    measured = open_review(browser, page)
    assert measured["width"] > 300
    assert measured["height"] > 300
    assert measured["shapes"] > 20
    states = list(load_policy(policy).states)
    drawn = " ".join(measured["texts"])
    for state in states:
        assert state in drawn, state
    assert measured["headings"] == [
        "State diagram",
        "States and routes",
        "Catalog",
        "Check findings",
        "Verification",
        "Conversation tests",
        "Sign-off",
    ]
    assert measured["scripts"] == 0
    assert measured["links"] == 0
    assert "Hash being approved" in measured["body"]
    assert requests(browser) == [page.as_uri()]
    shown = screenshot(browser, tmp_path / "review.png")
    assert (tmp_path / "review.png").stat().st_size > 50_000
    assert shown["width"] >= 1000
    assert shown["height"] > 1600  # the full page, beyond the window
    assert shown["colours"] > 20  # text, boxes and tables: not a blank page
    assert shown["dark"] > 1000


def test_a_thirty_state_diagram_in_chromium(browser: Browser, tmp_path: Path) -> None:
    """A generated 30-state policy: every state drawn, inside the drawing, none overlapping."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from generate_policy import generate  # noqa: PLC0415 (bench is no package)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    policy = generate(tmp_path / "policy", states=30, intents=8)
    page = tmp_path / "review.html"
    written = sopagent("review", policy, "-o", page, "--layout", "builtin", "--examples", "10")
    assert written.returncode == 0, written.stderr
    open_review(browser, page)
    boxes = browser.evaluate(
        """Array.from(document.querySelectorAll('.diagram svg g.state')).map(g => {
             const b = g.getBoundingClientRect();
             return [g.dataset.state, b.left, b.top, b.right, b.bottom]; })"""
    )
    names = {b[0] for b in boxes}
    assert {f"s{i}" for i in range(30)} <= names
    frame = browser.evaluate(
        "(() => { const b = document.querySelector('.diagram svg').getBoundingClientRect();"
        " return [b.left, b.top, b.right, b.bottom]; })()"
    )
    for _, left, top, right, bottom in boxes:
        assert frame[0] <= left < right <= frame[2] + 0.5
        assert frame[1] <= top < bottom <= frame[3] + 0.5
    for i, first in enumerate(boxes):
        for second in boxes[i + 1 :]:
            apart = (
                first[3] <= second[1] or second[3] <= first[1]
                or first[4] <= second[2] or second[4] <= first[2]
            )  # fmt: skip
            assert apart, (first[0], second[0])
    assert requests(browser) == [page.as_uri()]
    assert screenshot(browser, tmp_path / "thirty.png")["colours"] > 10
