"""The IceWM stand-in desktop, for real: boot it in QEMU (KVM when usable, else TCG), stream it
through loco-agent, and drive its pointer.

    ~/.cache/loco/venv/bin/python -m pytest -q packer/standin/test_standin.py

Needs the built image (packer/standin/build.sh; the tests FAIL, with that command, when it is
missing), the loco-agent binary (./loco build), QEMU, and the venv's aiortc/numpy (the e2e
viewer agent/tests/e2e/whep_aiortc.py). The VM runs on a throw-away overlay in a temp dir.

What is checked:
- the guest says its desktop is up (serial marker) within the boot timeout, at 1024x768;
- a frame streamed by the agent over WebRTC shows the IceWM desktop, not a console: the
  teal background covers much of the screen and the bottom 26 rows are IceWM's grey win95
  taskbar (checked on the lossless VNC frame too);
- pointer messages on the agent's data channel put the guest's X pointer there (within
  1 px: QEMU's tablet scaling rounds down)
  (`xdotool getmouselocation`, asked over the serial console), and a click on the start
  button opens IceWM's start menu (the window manager reacts, seen in the streamed frame).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))  # qemuargs
sys.path.insert(0, str(ROOT / "agent" / "tests" / "guest"))  # testguest, rfbgrab
sys.path.insert(0, str(ROOT / "agent" / "tests" / "e2e"))  # whep_aiortc

import qemuargs  # noqa: E402
import rfbgrab  # noqa: E402
import testguest  # noqa: E402

CACHE = Path(os.environ.get("LOCO_CACHE") or Path.home() / ".cache" / "loco")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


IMAGE_DIR = Path(os.environ.get("LOCO_STANDIN_DIR") or CACHE / "standin")
PROFILE = qemuargs.profile("standin")
BOOT_TIMEOUT = float(os.environ.get("LOCO_STANDIN_BOOT_TIMEOUT", "240"))
W, H = PROFILE["screen"]
TEAL = (0, 128, 128)  # the desktop background (rootfs/etc/X11/icewm/preferences)
GREY = (192, 192, 192)  # IceWM's win95 theme: taskbar face
TASKBAR_H = 26
START_BUTTON = (20, H - 13)  # IceWM's start button, bottom-left


def agent_binary() -> Path:
    env = os.environ.get("LOCO_AGENT_BIN")
    if env:
        return Path(env)
    target = os.environ.get("CARGO_TARGET_DIR") or CACHE / "target"
    return Path(target) / "release" / "loco-agent"


def near(rgb: np.ndarray, colour, tol=28) -> np.ndarray:
    """Per-pixel mask: every channel within tol of colour."""
    return np.all(np.abs(rgb.astype(np.int16) - np.array(colour, np.int16)) <= tol, axis=-1)


def desktop_stats(rgb: np.ndarray) -> dict:
    h = rgb.shape[0]
    bar = rgb[h - TASKBAR_H + 3:h - 3, 300:900]  # the task pane: grey, away from buttons and clock
    return {
        "size": (rgb.shape[1], rgb.shape[0]),
        "teal": float(near(rgb[:h - TASKBAR_H], TEAL).mean()),
        "taskbar_grey": float(near(bar, GREY).mean()),
        "mean": float(rgb.mean()),
        "dark": float((rgb.max(axis=-1) < 40).mean()),
    }


def looks_like_icewm(rgb: np.ndarray) -> bool:
    s = desktop_stats(rgb)
    return s["size"] == (W, H) and s["teal"] > 0.5 and s["taskbar_grey"] > 0.6 and s["dark"] < 0.3


def start_menu_open(rgb: np.ndarray) -> bool:
    """IceWM's start menu: a grey panel just above the start button, where the desktop is teal."""
    panel = rgb[H - TASKBAR_H - 150:H - TASKBAR_H - 10, 5:120]
    return float(near(panel, GREY).mean()) > 0.4 and float(near(panel, TEAL).mean()) < 0.2


class SerialConsole:
    """The guest's ttyS0 via QEMU's unix-socket chardev: collects output, runs shell commands
    (the stand-in keeps a shell for user loco with DISPLAY=:0 on it)."""

    def __init__(self, path: str):
        self.buf = ""
        self.lock = threading.Lock()
        self.n = 0
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                d = self.sock.recv(65536)
            except OSError:
                return
            if not d:
                return
            with self.lock:
                self.buf += d.decode(errors="replace")

    def text(self) -> str:
        with self.lock:
            return self.buf

    def wait_for(self, pattern: str, timeout: float, alive=lambda: True) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text(), re.S)
            if m:
                return m
            if not alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} on the serial console within {timeout:.0f}s; it ends:\n"
                             + self.text()[-3000:])

    def run(self, cmd: str, timeout: float = 30.0) -> str:
        self.n += 1
        n = self.n
        # The quotes keep the echoed command line from matching the markers.
        self.sock.sendall(f'echo @@"B"{n}; {cmd}; echo @@"E"{n}\n'.encode())
        m = self.wait_for(rf"@@B{n}\r?\n(.*?)@@E{n}", timeout)
        return m.group(1).strip()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture(scope="module")
def image() -> Path:
    img = IMAGE_DIR / PROFILE["image"]
    missing = [p for p in (img, IMAGE_DIR / "vmlinuz", IMAGE_DIR / "initrd.img") if not p.is_file()]
    if missing:
        pytest.fail(f"the stand-in image is not built ({', '.join(map(str, missing))} missing); build it with:\n"
                    f"    sudo {HERE / 'build.sh'}\n(LOCO_STANDIN_DIR points the tests at another build)",
                    pytrace=False)
    return img


@pytest.fixture(scope="module")
def vm(image):
    if not shutil.which("qemu-system-x86_64"):
        pytest.fail("qemu-system-x86_64 is not installed (apt-get install -y qemu-system-x86)", pytrace=False)
    d = Path(tempfile.mkdtemp(prefix="loco-standin-", dir="/tmp"))
    overlay = d / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(overlay)],
                   check=True)
    accel = "kvm" if testguest.kvm_usable() else "tcg"
    vnc, ser = d / "vnc.sock", d / "serial.sock"
    argv = qemuargs.qemu_argv("standin", disk=str(overlay), image_dir=str(IMAGE_DIR), accel=accel,
                              vnc=f"unix:{vnc}", serial=f"unix:{ser},server=on,wait=off",
                              qemu_name="loco-standin-test")
    log = open(d / "qemu.log", "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            process_group=0)
    console = None
    try:
        deadline = time.monotonic() + 10
        while not ser.exists():
            assert proc.poll() is None, f"QEMU exited: {(d / 'qemu.log').read_text()}"
            assert time.monotonic() < deadline, "QEMU made no serial socket"
            time.sleep(0.02)
        console = SerialConsole(str(ser))
        m = console.wait_for(re.escape(PROFILE["ready_marker"]) + r" (\d+)x(\d+)", BOOT_TIMEOUT,
                             alive=lambda: proc.poll() is None)
        boot_s = time.monotonic() - t0
        print(f"\nstand-in desktop up after {boot_s:.1f}s ({accel.upper()})")
        assert (int(m.group(1)), int(m.group(2))) == (W, H), f"X runs at {m.group(0)}"
        yield {"dir": d, "vnc": str(vnc), "console": console, "proc": proc, "accel": accel, "boot_s": boot_s}
    finally:
        if console:
            console.close()
        _stop(proc)
        log.close()
        shutil.rmtree(d, ignore_errors=True)


def healthz(port: int):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="module")
def agent(vm):
    binary = agent_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"loco-agent is not built at {binary} (run ./loco build)", pytrace=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(vm["dir"] / "agent.log", "wb")
    proc = subprocess.Popen([str(binary), "--vnc", f"unix:{vm['vnc']}", "--listen", f"127.0.0.1:{port}"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, process_group=0)
    try:
        deadline = time.monotonic() + 30
        h = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"loco-agent exited: {(vm['dir'] / 'agent.log').read_text()[-2000:]}"
            h = healthz(port)
            if h and (h.get("width"), h.get("height")) == (W, H):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the agent's /healthz never showed a {W}x{H} screen: {h}")
        yield {"port": port, "url": f"http://127.0.0.1:{port}"}
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="module")
def viewer(agent):
    from whep_aiortc import LoopThread, SyncViewer

    lt = LoopThread()
    v = SyncViewer.connect(lt, agent["url"], name="standin-viewer", codec="h264")
    try:
        v.wait_channel_open(timeout=20)
        yield v
    finally:
        try:
            v.close()
        finally:
            lt.stop()


def save_png(rgb: np.ndarray, name: str) -> Path:
    out = Path(os.environ.get("LOCO_STANDIN_SHOTS", tempfile.gettempdir())) / name
    rfbgrab.write_png(str(out), rgb)
    return out


def test_vnc_frame_is_the_icewm_desktop(vm):
    rgb = rfbgrab.grab(unix=vm["vnc"], timeout=20)
    path = save_png(rgb, "standin-vnc.png")
    s = desktop_stats(rgb)
    assert looks_like_icewm(rgb), f"not the IceWM desktop: {s} (frame saved to {path})"


def test_streamed_frame_is_the_icewm_desktop(viewer):
    try:
        f = viewer.wait_frame(lambda f: looks_like_icewm(f.rgb), timeout=60, what="an IceWM desktop frame")
    except AssertionError:
        last = viewer.v.latest
        if last is not None:
            path = save_png(last.rgb, "standin-streamed-fail.png")
            raise AssertionError(f"streamed frame is not the IceWM desktop: {desktop_stats(last.rgb)} "
                                 f"(saved to {path})") from None
        raise
    save_png(f.rgb, "standin-streamed.png")


def guest_pointer(console: SerialConsole) -> tuple[int, int]:
    out = console.run("xdotool getmouselocation")
    m = re.search(r"x:(\d+) y:(\d+)", out)
    assert m, f"xdotool said: {out!r}"
    return int(m.group(1)), int(m.group(2))


def close(a, b, tol=1) -> bool:
    """Within a pixel: QEMU scales VNC x to the tablet's 0..32767 with x*32767/1024 (rounding down)
    and the guest scales back rounding down too, so e.g. 600 arrives as 599."""
    return abs(a[0] - b[0]) <= tol and abs(a[1] - b[1]) <= tol


def test_pointer_message_moves_the_guest_pointer(vm, viewer):
    console = vm["console"]
    for x, y in [(600, 300), (123, 456), (1000, 50), (512, 384)]:
        viewer.send({"type": "pointer", "x": x, "y": y, "buttons": 0})
        deadline = time.monotonic() + 15
        while True:
            got = guest_pointer(console)
            if close(got, (x, y)) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert close(got, (x, y)), f"pointer sent to {(x, y)}, the guest's X pointer is at {got}"


def test_click_on_start_button_opens_the_menu(vm, viewer):
    x, y = START_BUTTON
    before = viewer.wait_frame(timeout=20)
    assert not start_menu_open(before.rgb), "the start menu is open already"
    viewer.send({"type": "pointer", "x": x, "y": y, "buttons": 0})
    viewer.send({"type": "pointer", "x": x, "y": y, "buttons": 1})
    viewer.send({"type": "pointer", "x": x, "y": y, "buttons": 0})
    f = viewer.wait_frame(lambda f: start_menu_open(f.rgb), timeout=30, what="a frame with the start menu open")
    save_png(f.rgb, "standin-start-menu.png")
    # Close it again (Escape), so a re-run starts from the plain desktop.
    viewer.send({"type": "key", "keysym": 0xFF1B, "down": True})
    viewer.send({"type": "key", "keysym": 0xFF1B, "down": False})
