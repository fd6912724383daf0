"""Headless Chromium (the system /usr/bin/chromium, driven by playwright) as a WHEP viewer.

The page web/viewer.html is served by a Python http.server on its own port, so the page and
the agent are different origins and the agent's CORS headers are exercised for real.
"""
from __future__ import annotations

import base64
import functools
import http.server
import json
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from loco_testkit.waits import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu-sandbox", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]
WEB_DIR = Path(__file__).resolve().parent / "web"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):  # keep pytest output clean
        pass


class StaticServer:
    """Serves a temp copy of a folder (default web/), plus `extra` files {name: text}, on
    127.0.0.1:<free port> from a daemon thread; `url` is `page` on it."""

    def __init__(self, src: Path = WEB_DIR, extra: dict[str, str] | None = None, page: str = "viewer.html"):
        self.dir = Path(tempfile.mkdtemp(prefix="loco-e2e-web-"))
        shutil.copytree(src, self.dir, dirs_exist_ok=True)
        for name, text in (extra or {}).items():
            (self.dir / name).write_text(text)
        self.page = page
        self.port = free_port()
        handler = functools.partial(_QuietHandler, directory=str(self.dir))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.httpd.daemon_threads = True
        self._t = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="static-http")
        self._t.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.page}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)


class ChromiumViewer:
    """One page of the browser playing one WHEP session."""

    def __init__(self, page, page_url: str, name: str = "chromium"):
        self.page, self.name = page, name
        self.page_errors: list[str] = []
        self.console: list[str] = []
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("console", lambda m: self.console.append(f"[{m.type}] {m.text}"))
        page.goto(page_url)
        page.wait_for_function("window.__t && window.__t.pageReady === true", timeout=10000)

    def start(self, agent_url: str, codec: str | None = None, token: str | None = None,
              ice_servers: list[dict] | None = None, ice_transport_policy: str | None = None) -> None:
        """WHEP-connect the page to the agent. ice_servers ([{"urls": ..., "username": ...,
        "credential": ...}]) and ice_transport_policy ("all" | "relay") go into the page's
        RTCPeerConnection configuration; by default it has no ICE servers (loopback only)."""
        opts = {}
        if codec:
            opts["codec"] = codec
        if token:
            opts["token"] = token
        if ice_servers:
            opts["iceServers"] = ice_servers
        if ice_transport_policy:
            opts["iceTransportPolicy"] = ice_transport_policy
        state = self.page.evaluate("([u, o]) => window.__t.start(u, o)", [agent_url, opts])
        if state != "negotiated":
            raise AssertionError(f"{self.name}: WHEP negotiation failed: {self.state()}")

    def state(self) -> dict:
        return self.page.evaluate(
            "() => Object.fromEntries(Object.entries(window.__t)"
            ".filter(([k, v]) => typeof v !== 'function' && k !== 'frameTimes'))")

    def frame_times(self) -> tuple[list[float], float]:
        """The page's recent frame presentation times and its clock now (performance.now(), ms)."""
        r = self.page.evaluate("() => [window.__t.frameTimes.slice(), performance.now()]")
        return r[0], r[1]

    def get(self, key: str):
        return self.page.evaluate("(k) => window.__t[k]", key)

    def wait(self, js_pred: str, timeout: float = 20.0, what: str | None = None) -> None:
        """Poll a JS expression over `t` (window.__t) until truthy."""
        try:
            self.page.wait_for_function(f"(() => {{ const t = window.__t; return {js_pred}; }})()",
                                        timeout=timeout * 1000, polling=100)
        except Exception as e:  # playwright TimeoutError
            raise AssertionError(f"{self.name}: timed out after {timeout}s waiting for "
                                 f"{what or js_pred}; state={self.state()} "
                                 f"console={self.console[-10:]} page_errors={self.page_errors}") from e

    def wait_playing(self, w: int = 1024, h: int = 768, timeout: float = 30.0) -> None:
        self.wait(f"t.videoWidth === {w} && t.videoHeight === {h} && t.framesDecoded > 0",
                  timeout, f"video {w}x{h} decoding")

    def frames_decoded(self) -> int:
        self.page.evaluate("() => undefined")  # let the stats poller run
        return int(self.get("framesDecoded") or 0)

    def wait_more_frames(self, n: int = 1, timeout: float = 20.0) -> int:
        start = self.frames_decoded()
        self.wait(f"t.framesDecoded >= {start + n}", timeout, f"framesDecoded to grow from {start} by {n}")
        return self.frames_decoded()

    def send(self, obj) -> None:
        self.page.evaluate("(o) => window.__t.send(o)", obj)

    def send_raw(self, s: str) -> None:
        self.page.evaluate("(s) => window.__t.sendRaw(s)", s)

    def grab(self, w: int | None = None, h: int | None = None) -> np.ndarray:
        r = self.page.evaluate("([w, h]) => window.__t.grab(w, h)", [w, h])
        buf = base64.b64decode(r["b64"])
        return np.frombuffer(buf, dtype=np.uint8).reshape(r["h"], r["w"], 3).copy()

    def selected_pair(self) -> dict | None:
        """The ICE candidate pair in use (from getStats): {state, nominated, bytesSent,
        bytesReceived, local: {candidateType, protocol, address, port, relayProtocol, url},
        remote: {...}}, or None before ICE selected one."""
        self.page.evaluate("() => undefined")  # let the stats poller run
        return self.get("selectedPair")

    def stop(self) -> int | None:
        return self.page.evaluate("() => window.__t.stop()")


# ---- the real page ----------------------------------------------------------------------------
# The WebXR client (client/ built into www/dist by scripts/build-web.sh), in its flat view, as a
# viewer: what a person opens. The tests above that need a browser's WebRTC stack under finer
# control (raw input strings, decoded frames as pixels, relay-only ICE, frame timing) keep the
# instrument page web/viewer.html; the ones that only need "a browser watching and clicking" use
# this.

ROOT = Path(__file__).resolve().parents[3]
DIST = ROOT / "www" / "dist"


class LocoPageServer(StaticServer):
    """www/dist with a desktops.json naming the given agents, on another origin than theirs (so
    CORS is exercised)."""

    def __init__(self, desktops: list[dict]):
        if not (DIST / "index.html").is_file():
            raise FileNotFoundError(f"the WebXR page is not built ({DIST}): bash scripts/build-web.sh")
        super().__init__(DIST, {"desktops.json": json.dumps({"desktops": desktops})}, page="")


class LocoPage:
    """The real page in one browser tab, read through its test hook `window.__loco`."""

    def __init__(self, page, url: str, name: str = "loco-page"):
        self.page, self.name = page, name
        self.page_errors: list[str] = []
        self.console: list[str] = []
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("console", lambda m: self.console.append(f"[{m.type}] {m.text}"))
        page.set_viewport_size({"width": 1280, "height": 720})
        page.goto(url)

    def panels(self) -> list[dict]:
        return self.page.evaluate("() => window.__loco ? window.__loco.panels : []")

    def wait(self, js_pred: str, timeout: float = 30.0, what: str | None = None) -> None:
        """Poll a JS expression over `p` (window.__loco.panels) until truthy."""
        try:
            self.page.wait_for_function(
                f"(() => {{ const p = window.__loco && window.__loco.panels; return !!p && ({js_pred}); }})()",
                timeout=timeout * 1000, polling=100)
        except Exception as e:  # playwright TimeoutError
            raise AssertionError(f"{self.name}: timed out after {timeout}s waiting for {what or js_pred}; "
                                 f"panels={self.panels()} console={self.console[-10:]} "
                                 f"page_errors={self.page_errors}") from e

    def wait_live(self, i: int = 0, w: int = 1024, h: int = 768, timeout: float = 30.0) -> None:
        self.wait(f"p[{i}] && p[{i}].state === 'live' && p[{i}].inputOpen && p[{i}].framesDecoded > 0 && "
                  f"p[{i}].videoWidth === {w} && p[{i}].videoHeight === {h}", timeout, f"panel {i} live")

    def screen_point(self, i: int, u: float, v: float) -> dict:
        """Where (u, v) of panel i's desktop is on the screen (CSS pixels)."""
        pt = self.page.evaluate("([i, u, v]) => window.__loco.screenPoint(i, u, v)", [i, u, v])
        assert pt, f"panel {i} is not on the screen"
        return pt
