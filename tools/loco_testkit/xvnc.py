"""TigerVNC Xvnc server control and X clients (xsetroot, xterm, xdotool, xev) for the tests."""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from .procs import kill_group, spawn
from .waits import free_port, port_accepts, wait_port, wait_until

WIDTH, HEIGHT = 1024, 768
_used_displays: set[int] = set()


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise RuntimeError(
            f"missing tools {missing}: apt-get install -y tigervnc-standalone-server xdotool "
            f"xterm x11-utils x11-xserver-utils")


def _pick_display() -> int:
    for _ in range(500):
        n = random.randint(20, 499)
        if n in _used_displays:
            continue
        if os.path.exists(f"/tmp/.X{n}-lock") or os.path.exists(f"/tmp/.X11-unix/X{n}"):
            continue
        if port_accepts(6000 + n):
            continue
        _used_displays.add(n)
        return n
    raise RuntimeError("no free X display number")


class Xvnc:
    """One TigerVNC Xvnc server: 1024x768x24, no auth, shared, localhost only."""

    def __init__(self, workdir: Path, geometry: str = f"{WIDTH}x{HEIGHT}", unix_socket: bool = False):
        require_tools("Xvnc", "xdpyinfo")
        self.workdir = Path(workdir)
        self.display = _pick_display()
        self.port = free_port()
        # Also serve RFB on a Unix socket (`unix:<path>` for the agent's --vnc), as QEMU does in
        # a loco pod (the chart's /run/loco/vnc.sock).
        self.unix_path = self.workdir / f"vnc-{self.display}.sock" if unix_socket else None
        self.geometry = geometry
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"xvnc-{self.display}.log"
        self.starts = 0

    @property
    def env(self) -> dict:
        e = dict(os.environ)
        e["DISPLAY"] = f":{self.display}"
        e.pop("XAUTHORITY", None)
        return e

    def argv(self) -> list[str]:
        return ["Xvnc", f":{self.display}", "-geometry", self.geometry, "-depth", "24",
                "-rfbport", str(self.port), "-SecurityTypes", "None", "-AlwaysShared",
                "-localhost", "-nolisten", "tcp", "-desktop", f"loco-e2e-{self.display}"] + (
                    ["-rfbunixpath", str(self.unix_path)] if self.unix_path else [])

    def start(self, timeout: float = 20.0) -> "Xvnc":
        assert self.proc is None or self.proc.poll() is not None, "Xvnc already running"
        self._clear_stale()
        with open(self.log_path, "ab") as f:
            f.write(f"\n===== start #{self.starts + 1} {time.strftime('%T')}: {' '.join(self.argv())}\n".encode())
        self.proc = spawn(self.argv(), log_path=self.log_path, name=f"Xvnc:{self.display}")
        self.starts += 1
        wait_port(self.port, timeout, self.proc, what=f"Xvnc :{self.display} rfbport {self.port}")

        def x_ready():
            return subprocess.run(["xdpyinfo"], env=self.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=5).returncode == 0
        wait_until(x_ready, timeout, 0.1, f"X display :{self.display}")
        if self.unix_path:
            wait_until(self.unix_path.exists, timeout, 0.05, f"Xvnc's Unix socket {self.unix_path}")
        return self

    @property
    def vnc(self) -> str:
        """The agent's --vnc value for this server: the Unix socket when there is one."""
        return f"unix:{self.unix_path}" if self.unix_path else f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc, signal.SIGTERM, grace=5)
        self._clear_stale()
        wait_until(lambda: not port_accepts(self.port), 5, 0.05, f"port {self.port} closed")

    def restart(self) -> "Xvnc":
        self.kill()
        return self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _clear_stale(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        for p in (f"/tmp/.X{self.display}-lock", f"/tmp/.X11-unix/X{self.display}", self.unix_path):
            if p is None:
                continue
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    # ---- X clients on this display -------------------------------------------------

    def run(self, *argv: str, timeout: float = 10.0, check: bool = True) -> str:
        r = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{argv} failed rc={r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def spawn(self, *argv: str, log_path: Path | None = None, **kw) -> subprocess.Popen:
        return spawn(list(argv), env=self.env, log_path=log_path, name=f"{argv[0]}@:{self.display}", **kw)

    def solid(self, color: str) -> None:
        """Fill the root window with one colour (a full-screen update)."""
        self.run("xsetroot", "-solid", color)

    def bitmap(self, xbm_path: Path, fg: str = "#ffffff", bg: str = "#000000") -> None:
        """Tile the root window with an XBM bitmap (e.g. noise: a large, incompressible update)."""
        self.run("xsetroot", "-bitmap", str(xbm_path), "-fg", fg, "-bg", bg)

    def pointer(self) -> tuple[int, int]:
        out = self.run("xdotool", "getmouselocation", "--shell")
        vals = dict(l.split("=", 1) for l in out.split() if "=" in l)
        return int(vals["X"]), int(vals["Y"])

    def move_pointer(self, x: int, y: int) -> None:
        self.run("xdotool", "mousemove", "--sync", str(x), str(y))

    def wait_pointer(self, x: int, y: int, timeout: float = 5.0) -> None:
        last = [None]

        def at():
            last[0] = self.pointer()
            return last[0] == (x, y)
        try:
            wait_until(at, timeout, 0.05, f"X pointer at ({x},{y})")
        except TimeoutError as e:
            raise AssertionError(f"X pointer is at {last[0]}, expected ({x},{y}) after {timeout}s") from e

    def xterm_cat(self, out_file: Path, workdir: Path, bg: str | None = None,
                  geometry: str = "80x24+0+0") -> "XClient":
        """An xterm running `sh -c 'cat > FILE'`, mapped and holding the input focus."""
        require_tools("xterm", "xdotool")
        cls = f"LocoXterm{random.randint(0, 10**9)}"
        argv = ["xterm", "-class", cls, "-geometry", geometry]
        if bg:
            argv += ["-bg", bg, "-fg", "#ffffff"]
        argv += ["-e", "sh", "-c", f"cat > '{out_file}'"]
        p = self.spawn(*argv, log_path=workdir / f"{cls}.log")
        wid = self.run("xdotool", "search", "--sync", "--onlyvisible", "--class", cls, timeout=20).split()[0]
        self.focus(wid)
        return XClient(p, wid, self)

    def fullscreen_xterm(self, bg: str, workdir: Path) -> "XClient":
        """A full-screen xterm with a solid background colour, running `cat` (input sink)."""
        require_tools("xterm", "xdotool")
        cls = f"LocoXtermBg{random.randint(0, 10**9)}"
        p = self.spawn("xterm", "-class", cls, "-geometry", f"{WIDTH}x{HEIGHT}+0+0", "-bg", bg,
                       "-fg", bg, "-cr", bg, "-b", "0", "-e", "cat", log_path=workdir / f"{cls}.log")
        wid = self.run("xdotool", "search", "--sync", "--onlyvisible", "--class", cls, timeout=20).split()[0]
        return XClient(p, wid, self)

    def focus(self, wid: str) -> None:
        # No window manager runs on the Xvnc display, so windowactivate (EWMH) is not
        # available: set the X input focus directly and check it took.
        def focused():
            self.run("xdotool", "windowfocus", "--sync", wid, check=False)
            return self.run("xdotool", "getwindowfocus").strip() == wid
        wait_until(focused, 10, 0.1, f"focus on window {wid}")

    def xev_buttons(self, workdir: Path) -> "XevLog":
        """A full-screen xev window that logs button events to a file."""
        require_tools("xev", "xdotool")
        name = f"locoxev{random.randint(0, 10**9)}"
        log = workdir / f"{name}.log"
        p = self.spawn("xev", "-geometry", f"{WIDTH}x{HEIGHT}+0+0", "-name", name, "-event", "button",
                       log_path=log)
        self.run("xdotool", "search", "--sync", "--onlyvisible", "--name", name, timeout=20)
        return XevLog(p, log, self)


class XClient:
    def __init__(self, proc: subprocess.Popen, wid: str, xvnc: Xvnc):
        self.proc, self.wid, self.xvnc = proc, wid, xvnc

    def close(self) -> None:
        kill_group(self.proc, grace=2)


_XEV_RE = re.compile(
    r"(ButtonPress|ButtonRelease) event,.*?root:\((-?\d+),(-?\d+)\),\s*state 0x[0-9a-fA-F]+, button (\d+)",
    re.S)


class XevLog:
    def __init__(self, proc: subprocess.Popen, path: Path, xvnc: Xvnc):
        self.proc, self.path, self.xvnc = proc, path, xvnc

    def events(self) -> list[tuple[str, int, int, int]]:
        """[(ButtonPress|ButtonRelease, root_x, root_y, button), ...] seen so far."""
        txt = self.path.read_text(errors="replace")
        return [(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)))
                for m in _XEV_RE.finditer(txt)]

    def close(self) -> None:
        kill_group(self.proc, grace=2)


def write_noise_xbm(path: Path, w: int = WIDTH, h: int = HEIGHT, seed: int = 1) -> Path:
    """A random 1-bit XBM image: tiled by xsetroot it makes a large update that does not compress."""
    rnd = random.Random(seed)
    nbytes = ((w + 7) // 8) * h
    data = rnd.randbytes(nbytes)
    hexes = [f"0x{b:02x}" for b in data]
    body = ",\n".join(", ".join(hexes[i:i + 12]) for i in range(0, len(hexes), 12))
    path.write_text(f"#define noise_width {w}\n#define noise_height {h}\n"
                    f"static unsigned char noise_bits[] = {{\n{body}}};\n")
    return path


class Animator:
    """Keeps the X screen changing (so the agent has something to send) by cycling the root
    window colour with xsetroot every `interval` seconds in a background thread."""

    COLORS = ["#202040", "#204020", "#402020", "#404040", "#103050", "#305010"]

    def __init__(self, xvnc: Xvnc, interval: float = 0.2):
        self.xvnc, self.interval = xvnc, interval
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="x-animator")
        self.ticks = 0
        self.errors = 0

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self.xvnc.solid(self.COLORS[i % len(self.COLORS)])
                self.ticks += 1
            except Exception:  # noqa: BLE001 - Xvnc may be restarting
                self.errors += 1
            i += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "Animator":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._t.is_alive():
            self._t.join(10)
