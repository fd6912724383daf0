"""The live parts of the benchmark (bench.py runs them): real VNC servers, real agents, real
receivers, wall-clock time on this machine.

compare  One Xvnc desktop (TigerVNC, 1024x768), one workload at a time, each system in turn on
         the same running workload:
           loco/aiortc    loco-agent + an aiortc WHEP viewer decoding every frame
           loco-cbr/aiortc the same with `--rate-control cbr` (the H.264 encoder before CRF)
           loco/chromium  loco-agent + headless Chromium (the e2e WHEP page)
           novnc/chromium noVNC in headless Chromium through websockify
           gstreamer      rfbsrc ! videoconvert ! x264enc (CPU per frame; motion only)
           x264           the x264 CLI with the agent's settings on grabbed frames (motion only)
         Workloads: idle, typing, scroll (xdotool in an xterm, as the codec matrix's recordings),
         pattern (the latency pattern alone, 60 Hz, on a still desktop), motion (the pattern
         over a full-screen texture panned 8 px per frame at 30 fps).
scale    N = 1, 3, 9 desktops at once, one agent and one aiortc viewer each:
           xvnc     Xvnc desktops with host-side X clients: idle, then motion (with the latency
                    pattern: glass-to-glass and input-to-photon at scale)
           standin  the IceWM stand-in VM (QEMU, TCG when KVM is unusable) with the workload run
                    inside the guest from its serial console: idle (the desktop as booted), then
                    flood (a 168x56 xterm printing `od` of /dev/urandom: most of the screen
                    changes at the rate the guest can render); no latency pattern (the guest has
                    no client for it)

Every measurement returns rows {part, system, receiver, backend, instances, instance, workload,
metric, value, unit}.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import latency_pattern as lp
import live
import peers
import recorder
import text_quality
from loco_testkit.xvnc import HEIGHT as XVNC_H, WIDTH as XVNC_W

COMPARE_WORKLOADS = ["idle", "typing", "scroll", "pattern", "motion"]
COMPARE_SYSTEMS = ["loco/aiortc", "loco-cbr/aiortc", "loco/chromium", "novnc/chromium", "gstreamer", "x264"]
# The agent's flags per loco system: its defaults, and the constant-bitrate H.264 encoder it had before.
AGENT_FLAGS = {"loco/aiortc": [], "loco-cbr/aiortc": ["--rate-control", "cbr"]}
SCALE_BACKENDS = ["xvnc", "standin"]
# The stand-in's `flood` workload: a 168x56 xterm printing `od` of /dev/urandom.
FLOOD = "xterm -geometry 168x56+0+0 -e od -An -tx1 -w32 /dev/urandom"
CLICK_XY = (lp.ORIGIN[0] + lp.WIDTH // 2, lp.ORIGIN[1] + lp.HEIGHT // 2)

UNITS = {
    "duration_s": "s", "frames": "frames", "fps": "fps", "bytes": "bytes", "bitrate_kbps": "kbit/s",
    "wire_kbps": "kbit/s", "packets": "packets", "freezes": "count", "frozen_s": "s",
    "g2g_samples": "count", "g2g_ms_p50": "ms", "g2g_ms_p95": "ms", "g2g_ms_max": "ms",
    "pattern_unreadable": "frames", "clicks": "count", "input_to_photon_ms_p50": "ms",
    "input_to_photon_ms_max": "ms", "encoded_frames": "frames", "encoded_fps": "fps",
    "agent_cpu_s": "s", "agent_cpu_ms_per_frame": "ms", "agent_cpu_cores": "cores",
    "agent_encoder_cpu_ms_per_frame": "ms", "agent_convert_cpu_ms_per_frame": "ms",
    "agent_rss_mib": "MiB", "agent_peak_rss_mib": "MiB", "server_cpu_cores": "cores",
    "client_cpu_cores": "cores", "receiver_cpu_cores": "cores", "proxy_cpu_cores": "cores",
    "host_cpu_cores": "cores", "other_cpu_cores": "cores", "host_busy_percent": "%", "cpu_s": "s", "cpu_ms_per_frame": "ms",
    "jitter_buffer_ms": "ms", "fps_min": "fps", "fps_mean": "fps", "fps_first": "fps", "fps_min_others": "fps", "bitrate_kbps_per_instance": "kbit/s", "boot_s": "s",
    "ratio": "x", "viewers_lost": "count", "udp_rcvbuf_errors": "datagrams",
    "text_psnr_db": "dB", "text_ssim": "", "text_samples": "count", "text_identical": "count",
}


def row(part, system, receiver, backend, instances, instance, workload, metric, value) -> dict:
    return {"part": part, "system": system, "receiver": receiver, "backend": backend, "instances": instances,
            "instance": instance, "workload": workload, "metric": metric, "value": value,
            "unit": UNITS.get(metric, "")}


# ---- workloads on an Xvnc desktop ----------------------------------------------------------

class XWorkload:
    """One workload on an XvncInstance, kept running until stop()."""

    def __init__(self, inst: live.XvncInstance, name: str):
        self.inst, self.name = inst, name
        self.stop_ev = threading.Event()
        self.thread: threading.Thread | None = None
        self.procs: list = []
        self.text_rect: tuple[int, int, int, int] | None = None  # the xterm of typing and scroll
        self._go = threading.Event()    # cleared: the driving thread pauses between its steps
        self._go.set()
        self._idle = threading.Event()  # set by the driving thread while it pauses

    def _loop(self, step) -> None:
        """Runs step() until stop(), holding off between steps while paused()."""
        while not self.stop_ev.is_set():
            if not self._go.is_set():
                self._idle.set()
                self._go.wait(0.05)
                continue
            self._idle.clear()
            step()

    @contextlib.contextmanager
    def paused(self):
        """The typing or scrolling holds off (once its current xdotool call is done) inside."""
        self._go.clear()
        self._idle.clear()
        try:
            if self.thread and not self._idle.wait(30):
                raise TimeoutError(f"the {self.name} workload did not pause")
            yield
        finally:
            self._go.set()

    def _window_rect(self, wid: str) -> tuple[int, int, int, int]:
        geo = dict(line.split("=", 1) for line in
                   self.inst.x.run("xdotool", "getwindowgeometry", "--shell", wid, timeout=10).split())
        x, y, w, h = (int(geo[k]) for k in ("X", "Y", "WIDTH", "HEIGHT"))
        x, y = max(0, x), max(0, y)
        return x, y, min(w, XVNC_W - x), min(h, XVNC_H - y)

    def start(self) -> "XWorkload":
        x, work = self.inst.x, self.inst.work
        self.procs += recorder.desktop(x, work)
        if self.name == "typing":
            client = x.xterm_cat(work / "typed.txt", work, geometry="100x30+40+40")
            self.procs.append(client.proc)
            self.text_rect = self._window_rect(client.wid)
            text = recorder.LOREM * 4
            lines = [text[i:i + 70] for i in range(0, len(text), 70)]

            count = itertools.count()

            def line():
                x.run("xdotool", "type", "--delay", "60", lines[next(count) % len(lines)] + "\n", timeout=60, check=False)
            self.thread = threading.Thread(target=self._loop, args=(line,), daemon=True)
        elif self.name == "scroll":
            page = work / "page.txt"
            page.write_text("".join(f"{i:6d}  {recorder.LOREM[(i * 13) % 100:(i * 13) % 100 + 90]}\n"
                                    for i in range(40000)))
            cls = f"LocoScroll{os.getpid()}"
            self.procs.append(x.spawn("xterm", "-class", cls, "-geometry", "120x48+0+0", "-e", "less", "-S",
                                      str(page), log_path=work / "scroll.log"))
            wid = x.run("xdotool", "search", "--sync", "--onlyvisible", "--class", cls, timeout=20).split()[0]
            x.focus(wid)
            self.text_rect = self._window_rect(wid)

            def page_down():
                x.run("xdotool", "key", "--delay", "40", "--repeat", "25", "Down", timeout=30, check=False)
            self.thread = threading.Thread(target=self._loop, args=(page_down,), daemon=True)
        elif self.name in ("pattern", "motion"):
            self.inst.start_pattern(motion=self.name == "motion")
        elif self.name != "idle":
            raise ValueError(f"unknown workload {self.name!r}")
        if self.thread:
            self.thread.start()
        time.sleep(0.5)
        return self

    def stop(self) -> None:
        self.stop_ev.set()
        if self.thread:
            self.thread.join(40)
        for p in reversed(self.procs):
            live.kill_group(p, grace=2)
        for p in self.inst.clients:
            live.kill_group(p, grace=2)
        self.inst.clients.clear()


# ---- measuring one receiver -----------------------------------------------------------------

# The motion workload again, with attention messages: viewer 1 says its panel is focused, the others
# say theirs are only visible (the agent's --visible-fps applies to them).
ATTENTION_WORKLOAD = "motion-attention"
CONTINUOUS = ("pattern", "motion", "flood", ATTENTION_WORKLOAD)  # workloads that change the screen all the time


def summarize_receiver(times: list[float], readings: list, unreadable: int, duration: float,
                       nbytes: int | None, packets: int | None, pattern: bool, continuous: bool) -> dict:
    m: dict = {"duration_s": duration, "frames": len(times), "fps": len(times) / duration}
    if nbytes is not None:
        m["bytes"] = nbytes
        m["bitrate_kbps"] = nbytes * 8 / duration / 1000
    if packets is not None:
        m["packets"] = packets
        m["wire_kbps"] = (nbytes + packets * live.UDP_IP_HEADER) * 8 / duration / 1000
    if continuous:  # a pause in typing is no freeze
        m["freezes"], m["frozen_s"] = live.freezes(times)
    if pattern:
        g = live.glass_to_glass(readings)
        m["g2g_samples"] = len(g)
        m["g2g_ms_p50"] = live.pct(g, 50)
        m["g2g_ms_p95"] = live.pct(g, 95)
        m["g2g_ms_max"] = float(max(g)) if g else math.nan
        m["pattern_unreadable"] = unreadable
    return m


def input_to_photon(click, readings_since, n: int, timeout: float = 3.0) -> list[float]:
    """Clicks the pattern window n times (click() -> send time, time.time() clock) and, for each,
    waits for the first frame whose pattern shows the new click count. Returns latencies (ms)."""
    out = []
    for _ in range(n):
        start_idx, last = readings_since(None)
        if last is None:
            break
        want = (last.clicks + 1) % (1 << lp.CLICK_BITS)
        try:
            t0 = click()
        except (RuntimeError, TimeoutError):  # the input channel closed (the viewer lost its peer)
            break
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline and got is None:
            time.sleep(0.005)
            for t, r in readings_since(start_idx)[0]:
                if r.clicks == want and t >= t0:
                    got = (t - t0) * 1000
                    break
        if got is not None:
            out.append(got)
        time.sleep(0.25)
    return out


def _readings_since(v):
    """For input_to_photon: (count, newest Reading) when idx is None, else the readings from idx."""
    def since(idx):
        readings = v.readings
        if idx is None:
            return len(readings), (readings[-1][1] if readings else None)
        return readings[idx:], None
    return since


class Meter:
    """CPU and host snapshots around a measurement window."""

    def __init__(self, pids: dict[str, list[int]], extra: dict | None = None):
        self.pids = pids
        self.extra = extra or {}  # name -> callable returning CPU seconds

    def snap(self) -> dict:
        s = {k: sum(live.proc_cpu_seconds(p) for p in v) for k, v in self.pids.items()}
        for k, f in self.extra.items():
            s[k] = f()
        s["_host"] = live.host_cpu_ticks()
        s["_rcvbuf"] = live.udp_rcvbuf_errors()
        s["_t"] = time.monotonic()
        return s

    @staticmethod
    def diff(a: dict, b: dict) -> dict:
        wall = b["_t"] - a["_t"]
        out = {k + "_cores": (b[k] - a[k]) / wall for k in a if not k.startswith("_")}
        busy, total = b["_host"][0] - a["_host"][0], b["_host"][1] - a["_host"][1]
        ncpu = os.cpu_count() or 1
        # Host-wide: datagrams dropped at full UDP receive buffers (the viewers', or anyone's).
        out["udp_rcvbuf_errors"] = b["_rcvbuf"] - a["_rcvbuf"]
        out["host_busy_percent"] = 100 * busy / total if total else math.nan
        out["host_cpu_cores"] = ncpu * busy / total if total else math.nan
        # What the rest of the machine used meanwhile (other jobs on a shared host, the kernel).
        out["other_cpu_cores"] = max(0.0, out["host_cpu_cores"] - sum(v for k, v in out.items()
                                                                       if k.endswith("_cpu_cores") and k != "host_cpu_cores"))
        return out


# ---- compare: one desktop, each system in turn ---------------------------------------------

def run_compare(workloads: list[str], systems: list[str], seconds: float, clicks: int, work: Path,
                step, text_samples: int = text_quality.SAMPLES) -> list[dict]:
    rows: list[dict] = []
    web = browser = None
    need_browser = any(s.endswith("/chromium") for s in systems)
    try:
        if need_browser:
            web, browser = peers.WebServer(), peers.Browser()
        for w in workloads:
            inst = live.XvncInstance(f"compare-{w}", _mkdir(work / f"compare-{w}")).start()
            wl = None
            try:
                wl = XWorkload(inst, w).start()
                for system in systems:
                    if system in ("gstreamer", "x264") and w != "motion":
                        continue
                    step(f"compare {w}: {system}")
                    rows += _compare_one(system, w, inst, seconds, clicks, web, browser, wl, text_samples)
            finally:
                if wl:
                    wl.stop()
                inst.stop()
    finally:
        if browser:
            browser.close()
        if web:
            web.close()
    rows += ratios(rows)
    return rows


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _warmup(w: str) -> float:
    # Idle: let the first keyframe and the refinement frames pass before counting.
    return 3.0 if w == "idle" else 1.5


def _compare_one(system: str, w: str, inst: live.XvncInstance, seconds: float, clicks: int, web, browser,
                 wl: XWorkload, text_samples: int = text_quality.SAMPLES) -> list[dict]:
    text_rect = wl.text_rect
    pattern = w in ("pattern", "motion")
    out: dict = {}
    receiver = system.split("/")[1] if "/" in system else ""
    name = system.split("/")[0]
    if system in AGENT_FLAGS:
        inst.start_agent(extra=AGENT_FLAGS[system])
        inst.wait_agent(30)
        viewers = live.Viewers(inst.work)
        try:
            v = viewers.connect(inst.url, read_pattern=pattern)
            viewers.wait_frames(v, 1, 30)
            time.sleep(_warmup(w))
            meter = Meter({"agent_cpu": [inst.agent.pid], "server_cpu": [inst.server.pid],
                           "client_cpu": [c.pid for c in inst.clients]}, {"receiver_cpu": viewers.cpu_seconds})
            a, m0 = meter.snap(), live.metrics_of(inst.url)
            f0, n0, u0, (b0, p0) = v.snap()
            time.sleep(seconds)
            b = meter.snap()
            f1, n1, u1, (b1, p1) = v.snap()
            m1 = live.metrics_of(inst.url)
            dur = b["_t"] - a["_t"]
            out = summarize_receiver(v._times[f0:f1], v._readings[n0:n1], u1 - u0, dur, b1 - b0, p1 - p0,
                                     pattern, w in CONTINUOUS)
            out.update(Meter.diff(a, b))
            out.update(_agent_figures(inst, m0, m1, b["agent_cpu"] - a["agent_cpu"]))
            if pattern and clicks:
                lat = input_to_photon(lambda: v.click(*CLICK_XY), _readings_since(v), clicks)
                out.update(_click_figures(lat))
            if text_rect:  # after the window: its captures cost the viewer and the server CPU
                out.update(text_quality.measure(
                    inst.vnc_port, text_rect, wl.paused, lambda sec: v.capture(sec, text_rect, inst.work / "capture.npz"),
                    text_samples))
        finally:
            viewers.close()
            inst.stop_agent()
    elif receiver == "chromium":
        extra_pids = {}
        proxy = ws = None
        if name == "loco":
            inst.start_agent()
            inst.wait_agent(30)
            target = inst.url
            extra_pids["agent_cpu"] = [inst.agent.pid]
        else:
            ws, wport = peers.start_websockify(inst.vnc_port, inst.work / "websockify.log")
            proxy = peers.CountingProxy(wport)
            target = f"ws://127.0.0.1:{proxy.port}"
            extra_pids["proxy_cpu"] = [ws.pid]
        s = None
        try:
            s = peers.BrowserSession(browser, web, name, target, pattern)
            browser.renice()  # the page's renderer and any new Chromium process
            time.sleep(_warmup(w))
            s.drain()
            meter = Meter({**extra_pids, "server_cpu": [inst.server.pid], "client_cpu": [c.pid for c in inst.clients]},
                          {"receiver_cpu": browser.cpu_seconds})
            a = meter.snap()
            ta = time.time()
            m0 = live.metrics_of(inst.url) if name == "loco" else None
            jb0 = s.inbound() if name == "loco" else None
            d0 = proxy.down if proxy else None
            u0 = s.unreadable
            time.sleep(seconds)
            b = meter.snap()
            tb = time.time()
            d1 = proxy.down if proxy else None
            m1 = live.metrics_of(inst.url) if name == "loco" else None
            jb1 = s.inbound() if name == "loco" else None
            s.drain()
            dur = b["_t"] - a["_t"]
            # The page stamps frames with Date.now(): count those inside the window.
            times = [t for t in s.times if ta <= t < tb]
            readings = [(t, r) for t, r in s.readings if ta <= t < tb]
            nbytes = (d1 - d0) if proxy else None
            out = summarize_receiver(times, readings, s.unreadable - u0, dur, nbytes, None, pattern,
                                     w in CONTINUOUS)
            if name == "loco":
                # The browser's own byte count would need getStats; the agent's encoded bytes are
                # in agent figures. Bytes on the wire come from the aiortc run.
                out.update(_agent_figures(inst, m0, m1, b["agent_cpu"] - a["agent_cpu"]))
                # Chromium's jitter buffer: the mean time a frame waited in it over the window
                # (getStats jitterBufferDelay / jitterBufferEmittedCount).
                if jb0 and jb1 and jb1["jitterBufferEmittedCount"] > jb0["jitterBufferEmittedCount"]:
                    out["jitter_buffer_ms"] = 1000 * (jb1["jitterBufferDelay"] - jb0["jitterBufferDelay"]) / (
                        jb1["jitterBufferEmittedCount"] - jb0["jitterBufferEmittedCount"])
            out.update(Meter.diff(a, b))
            if pattern and clicks:
                def readings_since(idx):
                    s.drain()
                    if idx is None:
                        return len(s.readings), (s.readings[-1][1] if s.readings else None)
                    return s.readings[idx:], None
                lat = input_to_photon(lambda: s.click(*CLICK_XY), readings_since, clicks)
                out.update(_click_figures(lat))
            if text_rect and name == "novnc":
                out.update(text_quality.measure_page(inst.vnc_port, text_rect, wl.paused, s, text_samples))
        finally:
            if s:
                s.close()
            if proxy:
                proxy.close()
            if ws:
                live.kill_group(ws, grace=2)
            inst.stop_agent()
    elif system == "gstreamer":
        g = peers.gstreamer_run(inst.vnc_port, seconds, inst.work)
        out = {"duration_s": g["wall_s"], "frames": g["frames"], "fps": g["frames"] / g["wall_s"],
               "bytes": g["bytes"], "bitrate_kbps": g["bytes"] * 8 / g["wall_s"] / 1000, "cpu_s": g["cpu_s"],
               "cpu_ms_per_frame": 1000 * g["cpu_s"] / g["frames"] if g["frames"] else math.nan}
    elif system == "x264":
        n = max(30, int(seconds * 30))
        r = peers.bare_x264(inst.display, inst.env, n, inst.work)
        out = {"frames": r["frames"], "cpu_s": r["cpu_s"], "cpu_ms_per_frame": 1000 * r["cpu_s"] / r["frames"]}
    else:
        raise ValueError(system)
    return [row("compare", name, receiver, "xvnc", 1, "", w, k, float(v)) for k, v in out.items()
            if k in UNITS and v is not None]


def _agent_figures(inst, m0, m1, agent_cpu_s: float) -> dict:
    frames = m1.get("loco_frames_encoded_total") - m0.get("loco_frames_encoded_total")
    rss, hwm = live.proc_rss_kib(inst.agent.pid)
    out = {"encoded_frames": frames, "agent_cpu_s": agent_cpu_s,
           "agent_cpu_ms_per_frame": 1000 * agent_cpu_s / frames if frames else math.nan,
           "agent_rss_mib": rss / 1024, "agent_peak_rss_mib": hwm / 1024}
    # The encoder thread's own CPU clock, by stage: the encoder library and the colour conversion.
    for stage, key in (("encode", "agent_encoder_cpu_ms_per_frame"), ("convert", "agent_convert_cpu_ms_per_frame")):
        spent = (m1.get("loco_encoder_cpu_seconds_total", stage=stage)
                 - m0.get("loco_encoder_cpu_seconds_total", stage=stage))
        out[key] = 1000 * spent / frames if frames else math.nan
    return out


def _click_figures(lat: list[float]) -> dict:
    return {"clicks": len(lat), "input_to_photon_ms_p50": live.pct(lat, 50),
            "input_to_photon_ms_max": float(max(lat)) if lat else math.nan}


def ratios(rows: list[dict]) -> list[dict]:
    """loco / peer for the figures the issue's targets name."""
    val = {(r["system"], r["receiver"], r["workload"], r["metric"]): r["value"] for r in rows if r["part"] == "compare"}
    out = []

    def add(workload, metric, num, den):
        a, b = val.get(num), val.get(den)
        if a is None or b is None or not b or any(isinstance(x, float) and math.isnan(x) for x in (a, b)):
            return
        out.append(row("compare", "ratio", "", "xvnc", 1, "", workload, metric, a / b))

    for w in {r["workload"] for r in rows}:
        # UDP payload bytes the aiortc viewer received / WebSocket stream bytes Chromium received.
        add(w, "bitrate_loco_over_novnc", ("loco", "aiortc", w, "bitrate_kbps"), ("novnc", "chromium", w, "bitrate_kbps"))
        for recv in ("aiortc", "chromium"):
            add(w, f"g2g_p50_loco_{recv}_over_novnc", ("loco", recv, w, "g2g_ms_p50"),
                ("novnc", "chromium", w, "g2g_ms_p50"))
            add(w, f"input_to_photon_p50_loco_{recv}_over_novnc", ("loco", recv, w, "input_to_photon_ms_p50"),
                ("novnc", "chromium", w, "input_to_photon_ms_p50"))
        add(w, "cpu_per_frame_loco_over_x264", ("loco", "aiortc", w, "agent_cpu_ms_per_frame"),
            ("x264", "", w, "cpu_ms_per_frame"))
        # The same, against the x264 inside the agent in the same window (same load, same frames).
        add(w, "cpu_per_frame_loco_over_own_encoder", ("loco", "aiortc", w, "agent_cpu_ms_per_frame"),
            ("loco", "aiortc", w, "agent_encoder_cpu_ms_per_frame"))
        add(w, "cpu_per_frame_loco_over_gstreamer", ("loco", "aiortc", w, "agent_cpu_ms_per_frame"),
            ("gstreamer", "", w, "cpu_ms_per_frame"))
    for r in out:
        r["unit"] = "x"
    return out


# ---- scale: N desktops at once -------------------------------------------------------------

def run_scale(backend: str, counts: list[int], seconds: float, clicks: int, work: Path, step,
              boot_timeout: float = 900.0) -> list[dict]:
    rows: list[dict] = []
    for n in counts:
        insts: list = []
        viewers = None
        try:
            step(f"scale {backend} x{n}: starting")
            t0 = time.monotonic()
            if backend == "xvnc":
                for i in range(n):
                    insts.append(live.XvncInstance(f"x{n}-{i + 1}", _mkdir(work / f"scale-{backend}-{n}-{i + 1}")).start())
                    recorder.desktop(insts[-1].x, insts[-1].work)
            else:
                from testguest import kvm_usable
                accel = "kvm" if kvm_usable() else "tcg"
                for i in range(n):
                    insts.append(live.StandinInstance(f"vm{n}-{i + 1}", _mkdir(work / f"scale-{backend}-{n}-{i + 1}"))
                                 .start(accel))
                deadline = time.monotonic() + boot_timeout
                for inst in insts:
                    inst.wait_desktop(max(1.0, deadline - time.monotonic()))
            boot_s = time.monotonic() - t0
            for inst in insts:
                inst.start_agent()
            for inst in insts:
                inst.wait_agent(60)
            viewers = live.Viewers(work)
            vs = [viewers.connect(inst.url, read_pattern=backend == "xvnc") for inst in insts]
            for v in vs:
                viewers.wait_frames(v, 1, 60)
            workloads = ["idle", "motion"] if backend == "xvnc" else ["idle", "flood"]
            if backend == "xvnc" and n > 1:
                workloads.append(ATTENTION_WORKLOAD)
            for w in workloads:
                step(f"scale {backend} x{n}: {w}")
                if w == ATTENTION_WORKLOAD:
                    # As in the headset: the first panel is focused, the others are in view.
                    for k, v in enumerate(vs):
                        v.send({"type": "attention", "state": "focused" if k == 0 else "visible"})
                elif w == "motion":
                    for inst in insts:
                        inst.start_pattern(motion=True)
                elif w == "flood":
                    for inst in insts:
                        inst.console.background(FLOOD)
                time.sleep(3.0 if w == "idle" else 2.0)
                rows += _scale_window(backend, n, w, insts, vs, viewers, seconds, clicks if w == "motion" else 0)
            rows.append(row("scale", "loco", "aiortc", backend, n, "all", "", "boot_s", boot_s))
        finally:
            if viewers:
                viewers.close()
            for inst in insts:
                inst.stop()
    return rows


def _scale_window(backend, n, w, insts, vs, viewers, seconds, clicks) -> list[dict]:
    pattern = backend == "xvnc" and w in ("motion", ATTENTION_WORKLOAD)
    meter = Meter({"agent_cpu": [i.agent.pid for i in insts], "server_cpu": [i.server.pid for i in insts],
                   "client_cpu": [c.pid for i in insts for c in i.clients]}, {"receiver_cpu": viewers.cpu_seconds})
    agent_cpu0 = [live.proc_cpu_seconds(i.agent.pid) for i in insts]
    a = meter.snap()
    m0 = [live.metrics_of(i.url) for i in insts]
    s0 = [v.snap() for v in vs]
    time.sleep(seconds)
    b = meter.snap()
    s1 = [v.snap() for v in vs]
    m1 = [live.metrics_of(i.url) for i in insts]
    agent_cpu1 = [live.proc_cpu_seconds(i.agent.pid) for i in insts]
    dur = b["_t"] - a["_t"]
    rows, per = [], []
    for k, (inst, v) in enumerate(zip(insts, vs)):
        (f0, r0, u0, (b0, p0)), (f1, r1, u1, (b1, p1)) = s0[k], s1[k]
        m = summarize_receiver(v._times[f0:f1], v._readings[r0:r1], u1 - u0, dur, b1 - b0, p1 - p0, pattern,
                               w in CONTINUOUS)
        m.update(_agent_figures(inst, m0[k], m1[k], agent_cpu1[k] - agent_cpu0[k]))
        m["encoded_fps"] = m["encoded_frames"] / dur
        m["agent_cpu_cores"] = m["agent_cpu_s"] / dur
        per.append(m)
        for key in ("duration_s", "frames", "fps", "bytes", "bitrate_kbps", "wire_kbps", "freezes", "frozen_s",
                    "encoded_frames", "encoded_fps", "agent_cpu_s", "agent_cpu_ms_per_frame",
                    "agent_encoder_cpu_ms_per_frame", "agent_convert_cpu_ms_per_frame", "agent_rss_mib",
                    "g2g_ms_p50"):
            if key in m:
                rows.append(row("scale", "loco", "aiortc", backend, n, k + 1, w, key, float(m[key])))
    agg = {
        "duration_s": dur,
        "fps_mean": float(np.mean([m["fps"] for m in per])),
        "fps_min": float(np.min([m["fps"] for m in per])),
        # The first desktop (the focused one with attention): its fps, and the least of the others'.
        "fps_first": per[0]["fps"],
        "frames": sum(m["frames"] for m in per),
        "bytes": sum(m["bytes"] for m in per),
        "encoded_frames": sum(m["encoded_frames"] for m in per),
        "agent_cpu_s": sum(m["agent_cpu_s"] for m in per),
        "agent_rss_mib": float(np.mean([m["agent_rss_mib"] for m in per])),
        "agent_peak_rss_mib": float(np.max([m["agent_peak_rss_mib"] for m in per])),
    }
    if n > 1:
        agg["fps_min_others"] = float(np.min([m["fps"] for m in per[1:]]))
    if w in CONTINUOUS:
        agg["freezes"] = sum(m["freezes"] for m in per)
        agg["frozen_s"] = sum(m["frozen_s"] for m in per)
    agg["bitrate_kbps"] = agg["bytes"] * 8 / dur / 1000
    agg["bitrate_kbps_per_instance"] = agg["bitrate_kbps"] / n
    agg["agent_cpu_ms_per_frame"] = (1000 * agg["agent_cpu_s"] / agg["encoded_frames"]
                                     if agg["encoded_frames"] else math.nan)
    for key in ("agent_encoder_cpu_ms_per_frame", "agent_convert_cpu_ms_per_frame"):
        spent_ms = sum(m[key] * m["encoded_frames"] for m in per if m["encoded_frames"])
        agg[key] = spent_ms / agg["encoded_frames"] if agg["encoded_frames"] else math.nan
    agg.update(Meter.diff(a, b))
    if pattern:
        all_g = [g for v, s, e in zip(vs, s0, s1) for g in live.glass_to_glass(v._readings[s[1]:e[1]])]
        agg["g2g_samples"] = len(all_g)
        agg["g2g_ms_p50"] = live.pct(all_g, 50)
        agg["g2g_ms_p95"] = live.pct(all_g, 95)
        if clicks:
            lat = []
            for v in vs:
                lat += input_to_photon(lambda v=v: v.click(*CLICK_XY), _readings_since(v), clicks)
            agg.update(_click_figures(lat))
    # Viewers whose peer connection or input channel did not survive the window.
    agg["viewers_lost"] = sum(1 for v in vs if v.lost())
    for key, value in agg.items():
        if key in UNITS:
            rows.append(row("scale", "loco", "aiortc", backend, n, "all", w, key, float(value)))
    return rows


def tool_versions() -> dict:
    """Versions of the peers and servers, for the CSV."""
    def dpkg(pkg):
        try:
            r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True)
            return r.stdout.strip() or "none"
        except OSError:
            return "none"
    out = {"tigervnc": dpkg("tigervnc-standalone-server"), "qemu": dpkg("qemu-system-x86"),
           "chromium": dpkg("chromium"), "gstreamer": dpkg("gstreamer1.0-plugins-bad"),
           "novnc": dpkg("novnc"), "websockify": dpkg("websockify")}
    try:
        import aiortc
        out["aiortc"] = aiortc.__version__
    except Exception:  # noqa: BLE001
        out["aiortc"] = "none"
    return out


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="loco-bench-live-"))


def cleanup(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)
