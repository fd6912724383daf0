#!/usr/bin/env python3
"""Figures for the WebXR client, measured in headless Chromium on this machine.

    python3 benchmark/client_figures.py [--panels 9] [--seconds 20] [--xr]

- wasm size: www/dist/loco_client_bg.wasm and its JS glue, raw and gzip -9;
- time from page load (navigation start) to every panel `live`, against N real agents on N
  real Xvnc servers on loopback (each desktop an xterm scrolling text, so every stream keeps
  sending frames);
- the render loop's main-thread time per frame with N videos (window.__loco.frameMsP50/P95),
  in the flat view or, with --xr, inside an IWER-emulated Quest 3 session; plus the
  decoded fps per panel and Chromium's total CPU (all its processes) over the window.

Needs: www/dist built (scripts/build-web.sh), the agent built, Xvnc, xterm, chromium,
playwright (the loco venv) and, for --xr, playwright/node_modules/iwer. Writes
results/client-figures.json and prints a table.
"""
from __future__ import annotations

import argparse
import functools
import gzip
import http.server
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "www" / "dist"
CACHE = Path(os.environ.get("LOCO_CACHE", Path.home() / ".cache" / "loco"))
AGENT = Path(os.environ.get("LOCO_AGENT_BIN", CACHE / "target" / "release" / "loco-agent"))
IWER = ROOT / "playwright" / "node_modules" / "iwer" / "build" / "iwer.min.js"
CHROMIUM_ARGS = [
    "--no-sandbox", "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                kids = open(f"/proc/{p}/task/{t}/children").read().split()
                todo.extend(int(k) for k in kids)
        except OSError:
            pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--panels", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--xr", action="store_true", help="measure inside an IWER-emulated immersive session")
    a = ap.parse_args()
    for need in (DIST / "index.html", AGENT):
        if not need.exists():
            sys.exit(f"client_figures: {need} is missing (scripts/build-web.sh / ./loco build)")
    from playwright.sync_api import sync_playwright

    wasm = DIST / "loco_client_bg.wasm"
    js = DIST / "loco_client.js"
    sizes = {
        "wasm_bytes": wasm.stat().st_size,
        "wasm_gzip_bytes": len(gzip.compress(wasm.read_bytes(), 9)),
        "js_bytes": js.stat().st_size,
        "js_gzip_bytes": len(gzip.compress(js.read_bytes(), 9)),
    }

    work = Path(tempfile.mkdtemp(prefix="loco-client-fig-"))
    procs: list[subprocess.Popen] = []

    def spawn(args, env=None, log="x"):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(work / f"{log}.log", "w"),
                             env=env, start_new_session=True)
        procs.append(p)
        return p

    try:
        desktops = []
        for k in range(a.panels):
            disp, rfb, http_port = 70 + k, free_port(), free_port()
            spawn(["Xvnc", f":{disp}", "-geometry", "1024x768", "-depth", "24", "-SecurityTypes", "None",
                   "-rfbport", str(rfb), "-localhost", "-nolisten", "tcp"], log=f"xvnc{k}")
            desktops.append((disp, rfb, http_port))
        time.sleep(1.5)
        for k, (disp, rfb, http_port) in enumerate(desktops):
            env = dict(os.environ, DISPLAY=f":{disp}")
            spawn(["xterm", "-geometry", "110x40+20+20", "-e", "sh", "-c",
                   "while :; do date +%T.%N; sleep 0.033; done"], env=env, log=f"xterm{k}")
            spawn([str(AGENT), "--vnc", f"127.0.0.1:{rfb}", "--listen", f"127.0.0.1:{http_port}"], log=f"agent{k}")
        cfg = {"desktops": [{"name": f"vm{k + 1}", "whep": f"http://127.0.0.1:{p}/whep", "token": None}
                            for k, (_, _, p) in enumerate(desktops)]}
        (work / "desktops.json").write_text(json.dumps(cfg))

        class Handler(http.server.SimpleHTTPRequestHandler):
            extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm"}

            def translate_path(self, path):
                if path.split("?")[0] == "/desktops.json":
                    return str(work / "desktops.json")
                return super().translate_path(path)

            def log_message(self, *args):
                pass

        page_port = free_port()
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", page_port), functools.partial(Handler, directory=DIST))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        # Agents up before the page loads, so the figure is the page's, not the agents' start-up.
        for _, _, p in desktops:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", p), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"agent on {p} did not start; logs in {work}")
                    time.sleep(0.2)
        time.sleep(2)

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            if a.xr:
                page.add_init_script(path=str(IWER))
                page.add_init_script("const d = new IWER.XRDevice(IWER.metaQuest3);"
                                     "d.installRuntime({forceInstall: true}); window.__iwer = d;")
            page.goto(f"http://127.0.0.1:{page_port}/")
            page.wait_for_function(
                f"window.__loco && window.__loco.panels.length === {a.panels} && window.__loco.allLiveAtMs !== null",
                timeout=120_000, polling=100)
            live = page.evaluate("({at: __loco.allLiveAtMs, since: __loco.allLiveMs})")
            if a.xr:
                page.wait_for_function("!document.getElementById('enter-vr').disabled", timeout=10_000)
                page.click("#enter-vr")
                page.wait_for_function("__loco.xr.active", timeout=10_000)
            time.sleep(3)
            chrome_pids = descendants(browser_pid()) if browser_pid() else []
            before = page.evaluate("({f: __loco.frames, d: __loco.panels.map(p => p.framesDecoded),"
                                   " u: __loco.panels.map(p => p.framesUploaded)})")
            c0, t0 = cpu_seconds(chrome_pids), time.monotonic()
            time.sleep(a.seconds)
            c1, t1 = cpu_seconds(chrome_pids), time.monotonic()
            after = page.evaluate("""({f: __loco.frames, d: __loco.panels.map(p => p.framesDecoded),
                                      u: __loco.panels.map(p => p.framesUploaded),
                                      uploadMs: __loco.uploadMs, uploadsPerFrame: __loco.uploadsPerFrame,
                                      p50: __loco.frameMsP50, p95: __loco.frameMsP95, backend: __loco.backend,
                                      states: __loco.panels.map(p => p.state)})""")
            browser.close()
        dt = t1 - t0
        fig = {
            "machine": f"{platform.node()} {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "panels": a.panels,
            "mode": "xr (IWER)" if a.xr else "flat",
            "backend": after["backend"],
            **sizes,
            "all_live_since_navigation_ms": live["at"],
            "all_live_since_client_start_ms": live["since"],
            "render_fps": (after["f"] - before["f"]) / dt,
            "frame_ms_p50": after["p50"],
            "frame_ms_p95": after["p95"],
            "decoded_fps_per_panel": [(x - y) / dt for x, y in zip(after["d"], before["d"])],
            "texture_updates_per_s_per_panel": [(x - y) / dt for x, y in zip(after["u"], before["u"])],
            "upload_ms_learnt": after["uploadMs"],
            "uploads_allowed_per_frame": after["uploadsPerFrame"],
            "chromium_cpu_percent": 100 * (c1 - c0) / dt,
            "states_at_end": after["states"],
        }
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 15)
            except OSError:
                pass
    out = ROOT / "results" / "client-figures.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(fig, indent=1) + "\n")
    kib = lambda n: f"{n / 1024:.0f} KiB"  # noqa: E731
    fps = fig["decoded_fps_per_panel"]
    print(f"client figures ({fig['machine']}, {fig['mode']}, {fig['backend']}, {a.panels} panels)")
    print(f"  wasm                       {kib(fig['wasm_bytes'])} raw, {kib(fig['wasm_gzip_bytes'])} gzipped "
          f"(+ JS glue {kib(fig['js_gzip_bytes'])} gzipped)")
    print(f"  all panels live            {fig['all_live_since_navigation_ms']:.0f} ms after navigation start "
          f"({fig['all_live_since_client_start_ms']:.0f} ms after the client started)")
    print(f"  render loop                {fig['render_fps']:.1f} frames/s, main-thread time per frame "
          f"p50 {fig['frame_ms_p50']:.2f} ms, p95 {fig['frame_ms_p95']:.2f} ms")
    print(f"  decoded fps per panel      min {min(fps):.1f}, mean {sum(fps) / len(fps):.1f}, max {max(fps):.1f}")
    up = fig["texture_updates_per_s_per_panel"]
    print(f"  texture updates per panel  min {min(up):.1f}/s, mean {sum(up) / len(up):.1f}/s "
          f"(one upload costs {fig['upload_ms_learnt']:.1f} ms here; {fig['uploads_allowed_per_frame']} per frame "
          f"fit the 11 ms budget)")
    print(f"  Chromium CPU (all procs)   {fig['chromium_cpu_percent']:.0f} % of one core")
    print(f"  wrote {out}")
    return 0




def browser_pid() -> int | None:
    """Chromium's main process: the newest /usr/lib/chromium/chromium child of this process."""
    me = os.getpid()
    for pid in descendants(me):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if "chromium" in exe and pid != me:
            ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
            try:
                parent_exe = os.readlink(f"/proc/{ppid}/exe")
            except OSError:
                parent_exe = ""
            if "chromium" not in parent_exe:
                return pid
    return None


if __name__ == "__main__":
    sys.exit(main())
