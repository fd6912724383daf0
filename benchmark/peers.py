"""The peers loco is compared with, on the same VNC server and workload:

- noVNC (Debian's `novnc`, its own RFB client in JavaScript) in headless Chromium, through
  Debian's `websockify`, with a counting TCP proxy between the browser and websockify (every
  byte of the WebSocket stream the browser receives);
- loco in the same headless Chromium (the e2e WHEP page, agent/tests/e2e/web/viewer.html, with
  a requestVideoFrameCallback pattern reader injected), so the latency ratio compares two
  browsers' views;
- GStreamer: `rfbsrc ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast` (CPU
  per frame of the whole pipeline, from /proc);
- bare x264: the x264 command-line encoder with the agent's settings on frames grabbed from the
  same display (CPU per frame of encoding alone).
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import latency_pattern as lp
from live import ROOT, proc_cpu_seconds
from loco_testkit.procs import kill_group, spawn
from loco_testkit.waits import free_port, wait_port

HERE = Path(__file__).resolve().parent
NOVNC_DIR = Path(os.environ.get("LOCO_NOVNC_DIR", "/usr/share/novnc"))
E2E_WEB = ROOT / "agent" / "tests" / "e2e" / "web"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--autoplay-policy=no-user-gesture-required", "--disable-features=WebRtcHideLocalIpsWithMdns"]
PATTERN_JS = {"x": lp.ORIGIN[0], "y": lp.ORIGIN[1], "cell": lp.CELL, "cols": lp.COLS, "rows": lp.ROWS,
              "sample": lp.SAMPLE, "read": True}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


class WebServer:
    """Serves the benchmark pages, noVNC's core/ and vendor/, and the e2e WHEP page."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="loco-bench-web-"))
        for name in ("core", "vendor"):
            (self.dir / name).symlink_to(NOVNC_DIR / name)
        shutil.copy(HERE / "web" / "novnc-bench.html", self.dir)
        shutil.copy(E2E_WEB / "viewer.html", self.dir)
        self.port = free_port()
        handler = functools.partial(_Quiet, directory=str(self.dir))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, page: str) -> str:
        return f"http://127.0.0.1:{self.port}/{page}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)


class CountingProxy:
    """TCP proxy 127.0.0.1:port -> 127.0.0.1:target counting the bytes in each direction."""

    def __init__(self, target: int):
        self.target = target
        self.down = 0  # server -> client
        self.up = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target))
            for x in (c, s):
                x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns += [c, s]
            threading.Thread(target=self._pump, args=(s, c, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(c, s, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        while True:
            try:
                d = src.recv(1 << 16)
            except OSError:
                d = b""
            if not d:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with self.lock:
                if down:
                    self.down += len(d)
                else:
                    self.up += len(d)
            try:
                dst.sendall(d)
            except OSError:
                return

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


class Browser:
    """Headless Chromium (the system one) through playwright."""

    def __init__(self):
        from playwright.sync_api import sync_playwright
        if not os.path.exists(CHROMIUM):
            raise RuntimeError(f"{CHROMIUM} is missing (apt-get install chromium)")
        self.pw = sync_playwright().start()
        self.b = self.pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        self.renice()

    def page(self):
        ctx = self.b.new_context(viewport={"width": 1024, "height": 768})
        return ctx, ctx.new_page()

    def renice(self) -> None:
        """Chromium (all its processes and threads) at the receivers' priority (live.RECEIVER_NICE)."""
        from live import renice_tasks
        for p in descendants(os.getpid()):
            if _comm(p).startswith("chrom"):
                renice_tasks(p)

    def cpu_seconds(self) -> float:
        """CPU of every Chromium process (browser, renderers, GPU, utility) started from here."""
        return sum(proc_cpu_seconds(p) for p in descendants(os.getpid()) if _comm(p).startswith("chrom"))

    def close(self) -> None:
        try:
            self.b.close()
        finally:
            self.pw.stop()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


class BrowserSession:
    """One page: noVNC on a websockify URL, or the loco WHEP page on an agent."""

    def __init__(self, browser: Browser, web: WebServer, kind: str, target: str, read_pattern: bool):
        self.kind = kind
        self.ctx, self.page = browser.page()
        self.errors: list[str] = []
        self.times: list[float] = []
        self.readings: list = []
        self.unreadable = 0
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        pattern = dict(PATTERN_JS, read=read_pattern)
        self.page.add_init_script(f"window.__pattern = {__import__('json').dumps(pattern)};")
        if kind == "novnc":
            self.page.goto(web.url("novnc-bench.html"))
            self.page.wait_for_function("window.__ready === true", timeout=15000)
            self.page.evaluate("(u) => window.startVnc(u)", target)
            self.page.wait_for_function("window.__b.state === 'connected' && window.__b.flips > 0", timeout=20000)
        else:
            self.page.goto(web.url("viewer.html"))
            self.page.wait_for_function("window.__t && window.__t.pageReady === true", timeout=15000)
            state = self.page.evaluate("([u, o]) => window.__t.start(u, o)", [target, {"codec": "h264"}])
            if state != "negotiated":
                raise RuntimeError(f"Chromium WHEP negotiation failed: {self.page.evaluate('() => window.__t.error')}")
            self.page.wait_for_function("window.__t.framesDecoded > 0 && window.__t.dcState === 'open'",
                                        timeout=30000)
            self.page.evaluate((HERE / "web" / "loco-bench.js").read_text())

    def frames(self) -> int:
        js = "() => window.__b.flips" if self.kind == "novnc" else "() => window.__b.frames"
        return int(self.page.evaluate(js))

    def drain(self) -> None:
        """Collects the page's frame times and pattern readings since the last call into
        self.times (time.time() of each frame) and self.readings [(time, Reading)]."""
        d = self.page.evaluate("() => window.drain()")
        self.times += [t / 1000.0 for t in d["times"]]
        for t, means in d["reads"]:
            r = lp.decode_means(means)
            if r is None:
                self.unreadable += 1
            else:
                self.readings.append((t / 1000.0, r))

    def inbound(self) -> dict | None:
        """The loco page's last video inbound-rtp stats (viewer.html polls getStats)."""
        return self.page.evaluate("() => window.__t.inbound") if self.kind == "loco" else None

    def click(self, x: int, y: int) -> float:
        return self.page.evaluate("([x, y]) => window.click(x, y)", [x, y]) / 1000.0

    def close(self) -> None:
        try:
            if self.kind == "loco":
                self.page.evaluate("() => window.__t.stop()")
        except Exception:  # noqa: BLE001
            pass
        try:
            self.ctx.close()
        except Exception:  # noqa: BLE001
            pass


def start_websockify(vnc_port: int, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    p = spawn(["websockify", f"127.0.0.1:{port}", f"127.0.0.1:{vnc_port}"], log_path=log, name="websockify")
    wait_port(port, 15, p)
    return p, port


# ---- GStreamer and bare x264 ---------------------------------------------------------------

GST_PIPELINE = "rfbsrc ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast bitrate={kbps}"


def gstreamer_run(vnc_port: int, seconds: float, work: Path, kbps: int = 6000) -> dict:
    """Runs the GStreamer pipeline on the VNC server for `seconds` (after 2 s of warm-up);
    returns its CPU seconds, frames out of x264enc and the pipeline text."""
    out = work / "gst.h264"
    pipeline = (f"rfbsrc host=127.0.0.1 port={vnc_port} shared=true ! videoconvert ! "
                f"x264enc tune=zerolatency speed-preset=ultrafast bitrate={kbps} ! "
                f"video/x-h264,stream-format=byte-stream ! filesink location={out}")
    p = spawn(["gst-launch-1.0", "-q", "-e", *pipeline.split()], log_path=work / "gst.log", name="gst-launch")
    try:
        time.sleep(2.0)
        if p.poll() is not None:
            raise RuntimeError(f"gst-launch-1.0 exited: {(work / 'gst.log').read_text()[-2000:]}")
        size0 = out.stat().st_size if out.exists() else 0
        c0, t0 = proc_cpu_seconds(p.pid), time.monotonic()
        n0 = _count_h264_frames(out)
        time.sleep(seconds)
        c1, t1 = proc_cpu_seconds(p.pid), time.monotonic()
        n1 = _count_h264_frames(out)
        size1 = out.stat().st_size if out.exists() else 0
    finally:
        kill_group(p, grace=3)
    frames = n1 - n0
    return {"cpu_s": c1 - c0, "wall_s": t1 - t0, "frames": frames, "bytes": size1 - size0,
            "pipeline": GST_PIPELINE.format(kbps=kbps)}


def _count_h264_frames(path: Path) -> int:
    """Access units in an Annex B H.264 file (written so far), parsed with FFmpeg's parser."""
    import av
    if not path.exists():
        return 0
    ctx = av.CodecContext.create("h264", "r")
    n = 0
    with open(path, "rb") as f:
        data = f.read()
    for _ in ctx.parse(data):
        n += 1
    return n


def x264_agent_args(kbps: int) -> list[str]:
    """x264 CLI options for the agent's default H.264 settings (agent/src/encode/h264.rs):
    ultrafast + zerolatency, constrained baseline, one thread, CRF 23 with a QP floor of 20 under
    a VBV cap at kbps with a quarter second's buffer, UMH motion search over ±64, endless GOP."""
    return ["--preset", "ultrafast", "--tune", "zerolatency", "--profile", "baseline", "--threads", "1",
            "--crf", "23", "--qpmin", "20", "--vbv-maxrate", str(kbps), "--vbv-bufsize", str(kbps // 4),
            "--me", "umh", "--merange", "64", "--keyint", "infinite"]


def drop_repeated_frames(raw: Path, frame_bytes: int) -> tuple[int, int]:
    """Rewrites the raw video `raw` without the frames equal to the one before them; returns
    (frames kept, frames dropped). A trailing partial frame is dropped too."""
    kept = dropped = 0
    tmp = raw.with_suffix(".distinct")
    with open(raw, "rb") as src, open(tmp, "wb") as dst:
        last = None
        while len(frame := src.read(frame_bytes)) == frame_bytes:
            if frame == last:
                dropped += 1
                continue
            dst.write(frame)
            last = frame
            kept += 1
    tmp.replace(raw)
    return kept, dropped


def bare_x264(display: int, env: dict, frames: int, work: Path, kbps: int = 6000) -> dict:
    """Grabs `frames` frames of the X display at 30 fps (ffmpeg x11grab, to raw I420), then times
    the x264 CLI with the agent's settings on them (CPU of the encoder process only).

    A grab at 30 fps of a 30 fps picture sometimes takes the same picture twice (8 of 300 in
    one run of `testsrc2`); x264 codes such a repeat for next to nothing, while the agent
    codes no frame when nothing changed. Repeats are dropped first, so the CPU per frame is
    per picture that changed, as the agent's is."""
    raw = work / "frames.yuv"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "x11grab", "-framerate", "30", "-video_size",
                    "1024x768", "-i", f":{display}", "-frames:v", str(frames), "-pix_fmt", "yuv420p", "-f",
                    "rawvideo", str(raw)], env=env, check=True, timeout=120)
    return time_x264(raw, work, kbps)


def time_x264(raw: Path, work: Path, kbps: int = 6000) -> dict:
    """Times the x264 CLI with the agent's settings on `raw` (1024x768 I420 frames, deleted
    afterwards) once repeated frames are dropped; CPU of the encoder process only."""
    n, repeats = drop_repeated_frames(raw, 1024 * 768 * 3 // 2)
    cmd = ["x264", "--quiet", "--no-progress", *x264_agent_args(kbps), "--input-res", "1024x768", "--fps", "30",
           "-o", "/dev/null", str(raw)]
    raw.read_bytes()  # in the page cache: the timed run measures encoding, not the disk
    with open(work / "x264.log", "wb") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    raw.unlink()
    if status != 0:
        raise RuntimeError(f"x264 failed (status {status}): {(work / 'x264.log').read_text()[-1000:]}")
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "frames": n, "repeats_dropped": repeats,
            "command": " ".join(cmd[:-1]) + " frames.yuv"}
