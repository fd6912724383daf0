#!/usr/bin/env python3
"""Record desktop workloads from a real VNC session, for the codec benchmark.

    python3 benchmark/recorder.py [--seconds 8] [--out DIR] [WORKLOAD ...]

Starts TigerVNC's Xvnc at 1024x768x24 (no window manager), draws a desktop (a grid-patterned
root window and a terminal full of text), connects as an RFB client the way loco-agent does
(raw encoding, 32-bit BGRX pixels, an incremental FramebufferUpdateRequest at most every
1/30 s, each answered when the screen changed) and, while a scripted X client drives one of
the workloads below, writes every update it gets, with its arrival time, to a `.rec` file.

Workloads:
  idle     nothing moves
  typing   xdotool types into an xterm running `cat`, ~16 characters per second
  scroll   `less` on a long text in a 120x48 xterm, scrolled one line per Down key, ~25 lines/s
  drag     an 80x30 xterm (full of text) moved across the desktop in 6-pixel steps at 60 Hz
           (xdotool windowmove, as a window manager does while you drag a title bar)
  video    ffplay playing a 1024x768 testsrc2 pattern at 30 fps, full screen

Recording format (read by loco-codec-bench, agent/src/bin/codec_bench.rs), little-endian:
  header  b"LOCOREC1", u32 width, u32 height, u64 duration_us
  update  u64 t_us, u32 rect count, then per rect u16 x, u16 y, u16 w, u16 h, w*h*4 BGRA bytes
The first update (t = 0) is the whole screen (a non-incremental request).
"""
from __future__ import annotations

import argparse
import math
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from loco_testkit.procs import kill_group  # noqa: E402
from loco_testkit.xvnc import Xvnc, require_tools  # noqa: E402

WORKLOADS = ["idle", "typing", "scroll", "drag", "video"]
MAGIC = b"LOCOREC1"
FORMAT_VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("LOCO_CACHE", Path.home() / ".cache" / "loco")) / "bench"


def rec_path(workload: str, seconds: float, out: Path | None = None) -> Path:
    return (out or cache_dir()) / f"{workload}-{seconds:g}s-v{FORMAT_VERSION}.rec"


class RfbRecorder:
    """RFB 3.8 client, security None, raw encoding only, 32 bpp BGRX (what the agent asks for)."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.s = socket.create_connection((host, port), timeout=10)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        ver = self._recv(12)
        if not ver.startswith(b"RFB 003."):
            raise ConnectionError(f"not RFB: {ver!r}")
        self.s.sendall(b"RFB 003.008\n")
        types = self._recv(self._recv(1)[0])
        if 1 not in types:
            raise ConnectionError(f"server offers no None security: {list(types)}")
        self.s.sendall(b"\x01")
        if struct.unpack(">I", self._recv(4))[0] != 0:
            raise ConnectionError("security handshake failed")
        self.s.sendall(b"\x01")  # shared
        self.width, self.height = struct.unpack(">HH", self._recv(4))
        self._recv(16)
        self._recv(struct.unpack(">I", self._recv(4))[0])
        # 32 bpp, depth 24, little-endian true colour, R<<16 G<<8 B: bytes B, G, R, X in memory.
        self.s.sendall(b"\x00\x00\x00\x00" + struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0))
        self.s.sendall(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: raw

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.s.recv_into(view[got:], n - got)
            if k == 0:
                raise ConnectionError(f"EOF after {got} of {n} bytes")
            got += k
        return bytes(buf)

    def request(self, incremental: bool) -> None:
        self.s.sendall(struct.pack(">BBHHHH", 3, int(incremental), 0, 0, self.width, self.height))

    def read_update(self) -> list[tuple[int, int, int, int, bytes]]:
        while True:
            t = self._recv(1)[0]
            if t == 0:
                (n,) = struct.unpack(">xH", self._recv(3))
                rects = []
                for _ in range(n):
                    x, y, w, h, enc = struct.unpack(">HHHHi", self._recv(12))
                    if enc != 0:
                        raise ConnectionError(f"unexpected encoding {enc}")
                    px = bytearray(self._recv(w * h * 4))
                    px[3::4] = b"\xff" * (w * h)  # X byte -> opaque alpha
                    rects.append((x, y, w, h, bytes(px)))
                return rects
            if t == 2:  # bell
                continue
            if t == 3:  # cut text
                self._recv(3)
                self._recv(struct.unpack(">I", self._recv(4))[0])
                continue
            raise ConnectionError(f"unexpected server message {t}")

    def close(self) -> None:
        self.s.close()


def record(port: int, path: Path, seconds: float, interval: float = 1 / 30,
           started: threading.Event | None = None) -> dict:
    """Records `seconds` of updates from the VNC server on `port` into `path`."""
    c = RfbRecorder(port)
    tmp = path.with_suffix(".part")
    n_updates = n_bytes = 0
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<IIQ", c.width, c.height, 0))
        c.request(incremental=False)
        rects = c.read_update()
        t0 = time.monotonic()
        if started is not None:
            started.set()

        def write(t_us: int, rects) -> None:
            nonlocal n_updates, n_bytes
            f.write(struct.pack("<QI", t_us, len(rects)))
            for x, y, w, h, px in rects:
                f.write(struct.pack("<HHHH", x, y, w, h))
                f.write(px)
                n_bytes += len(px)
            n_updates += 1

        write(0, rects)
        last_request = time.monotonic()
        c.request(incremental=True)
        end = t0 + seconds
        c.s.settimeout(0.05)
        while True:
            try:
                rects = c.read_update()
            except (socket.timeout, TimeoutError):
                if time.monotonic() >= end:
                    break
                continue
            now = time.monotonic()
            if now >= end:
                break
            if rects:
                write(int((now - t0) * 1e6), rects)
            # The agent's request pacing: at most one request per frame interval.
            wait = last_request + interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            last_request = time.monotonic()
            c.request(incremental=True)
        f.seek(len(MAGIC) + 8)
        f.write(struct.pack("<Q", int(seconds * 1e6)))
    c.close()
    tmp.replace(path)
    return {"updates": n_updates, "bytes": n_bytes}


LOREM = ("The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
         "Sphinx of black quartz, judge my vow. ")


def desktop(x: Xvnc, work: Path) -> list:
    """The backdrop every workload starts from: a patterned root and a terminal with text."""
    x.run("xsetroot", "-mod", "16", "16", "-fg", "#46607a", "-bg", "#2f4356")
    listing = work / "listing.txt"
    listing.write_text("\n".join(f"{i:4d}  {LOREM[(i * 7) % 60:(i * 7) % 60 + 60]}" for i in range(40)) + "\n")
    bg = x.spawn("xterm", "-geometry", "70x20+560+420", "-bg", "#f0f0e8", "-fg", "#202020",
                 "-hold", "-e", "cat", str(listing), log_path=work / "xterm-bg.log")
    return [bg]


def drive(x: Xvnc, workload: str, seconds: float, work: Path, ready: threading.Event) -> tuple[list, callable]:
    """Sets `workload` up; returns (processes, a function that runs the motion for `seconds`)."""
    procs: list = []
    if workload == "idle":
        return procs, lambda: None
    if workload == "typing":
        client = x.xterm_cat(work / "typed.txt", work, geometry="100x30+40+40")
        procs.append(client.proc)
        text = (LOREM * 20)[: int(seconds * 16) + 20]
        lines = [text[i:i + 70] for i in range(0, len(text), 70)]

        def go():
            for line in lines:
                if not ready.is_set():
                    return
                x.run("xdotool", "type", "--delay", "60", line + "\n", timeout=60, check=False)
        return procs, go
    if workload == "scroll":
        page = work / "page.txt"
        page.write_text("".join(f"{i:6d}  {LOREM[(i * 13) % 100:(i * 13) % 100 + 90]}\n" for i in range(20000)))
        cls = f"LocoScroll{os.getpid()}"
        p = x.spawn("xterm", "-class", cls, "-geometry", "120x48+0+0", "-e", "less", "-S", str(page),
                    log_path=work / "scroll.log")
        procs.append(p)
        wid = x.run("xdotool", "search", "--sync", "--onlyvisible", "--class", cls, timeout=20).split()[0]
        x.focus(wid)
        n = int(seconds * 25) + 10

        def go():
            x.run("xdotool", "key", "--delay", "40", "--repeat", str(n), "Down", timeout=seconds + 30, check=False)
        return procs, go
    if workload == "drag":
        cls = f"LocoDrag{os.getpid()}"
        listing = work / "listing.txt"
        p = x.spawn("xterm", "-class", cls, "-geometry", "80x30+40+40", "-hold", "-e", "cat", str(listing),
                    log_path=work / "drag.log")
        procs.append(p)
        wid = x.run("xdotool", "search", "--sync", "--onlyvisible", "--class", cls, timeout=20).split()[0]
        steps = int(seconds * 60) + 30
        cmd, last = ["xdotool"], None
        for i in range(steps):
            # A slow ellipse around the screen, about 6 px per step. --sync flushes each move
            # (xdotool otherwise buffers the whole chain); it would wait forever for a move to
            # where the window already is, so repeated positions are skipped.
            phase = i / 40.0
            pos = (int(260 + 220 * math.cos(phase)), int(200 + 140 * math.sin(phase)))
            if pos != last:
                cmd += ["windowmove", "--sync", wid, str(pos[0]), str(pos[1])]
                last = pos
            cmd += ["sleep", "0.0167"]

        def go():
            x.run(*cmd, timeout=seconds + 60, check=False)
        return procs, go
    if workload == "video":
        require_tools("ffplay")
        env = dict(x.env, SDL_AUDIODRIVER="dummy")
        p = subprocess.Popen(["ffplay", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=1024x768:rate=30",
                              "-an", "-noborder", "-left", "0", "-top", "0", "-x", "1024", "-y", "768"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(p)
        return procs, lambda: None
    raise ValueError(f"unknown workload {workload!r}; one of {WORKLOADS}")


def record_workload(workload: str, seconds: float, path: Path) -> dict:
    """Starts Xvnc, sets the workload up, records it into `path`. Returns recorder stats."""
    require_tools("Xvnc", "xterm", "xdotool", "xsetroot")
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"loco-rec-{workload}-"))
    x = Xvnc(work).start()
    procs: list = []
    try:
        procs += desktop(x, work)
        ready = threading.Event()
        more, go = drive(x, workload, seconds, work, ready)
        procs += more
        time.sleep(1.0 if workload != "video" else 2.0)  # windows mapped, video running
        ready.set()
        mover = threading.Thread(target=go, daemon=True)
        started = threading.Event()
        stats: dict = {}

        def rec():
            stats.update(record(x.port, path, seconds, started=started))
        rt = threading.Thread(target=rec)
        rt.start()
        started.wait(10)
        mover.start()
        rt.join()
        ready.clear()
        return stats
    finally:
        for p in reversed(procs):
            kill_group(p, grace=2)
        x.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workloads", nargs="*", default=WORKLOADS)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--out", type=Path, default=None, help=f"directory (default {cache_dir()})")
    args = ap.parse_args()
    for w in args.workloads:
        path = rec_path(w, args.seconds, args.out)
        stats = record_workload(w, args.seconds, path)
        print(f"{path}: {stats['updates']} updates, {stats['bytes'] / 1e6:.1f} MB of pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
