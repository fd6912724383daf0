"""The display path of the Sunshine sidecar (runner/sunshine.sh, Dockerfile.sunshine), for real:
boot the IceWM stand-in guest in QEMU (TCG here; KVM when usable), run runner/sunshine.sh with
SUNSHINE=none (everything but Sunshine, which is not in Debian and cannot be fetched here) on
the VM's VNC Unix socket, and check, through the X server Sunshine would capture and inject into:

- an X screenshot of the Xvfb display (ffmpeg x11grab, what Sunshine's `capture = x11` reads)
  shows the guest: the IceWM desktop (teal background, grey taskbar), and it is the VM's own
  framebuffer (compared pixel by pixel with a frame grabbed from QEMU's VNC socket);
- XTest pointer motion on that display (xdotool, the calls Sunshine v0.23's XTest fallback makes)
  moves the *guest's* X pointer there (asked over the serial console), from the very first move
  (the viewer nudge in sunshine.sh);
- an XTest click and typed keys reach the guest: a line typed into its xterm runs there;
- the viewer is restarted when it dies, and input works again afterwards;
- SIGTERM stops Xvfb and the viewer and exits 0, leaving no process behind;
- bad settings are refused with a message.

    ~/.cache/loco/venv/bin/python -m pytest -p no:cacheprovider -q runner/test_sunshine_display.py

Needs the stand-in image (sudo packer/standin/build.sh; the tests FAIL with that command when it
is missing), QEMU, and Debian packages xvfb, xauth, x11-utils, xdotool, tigervnc-viewer, ffmpeg.
Screenshots go to $LOCO_SUNSHINE_SHOTS (default: the temp dir): sunshine-display.png.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPT = HERE / "sunshine.sh"
# On PYTHONPATH (./loco test sets it): tools/ (the harness), packer/, packer/testpattern/.
import rfbgrab  # noqa: E402
from loco_testkit import desktop as standin  # noqa: E402 (the stand-in's screen and pointer)
from loco_testkit.procs import group_alive  # noqa: E402
from loco_testkit.standin import BOOT_TIMEOUT, StandinVM, image_dir, missing_files  # noqa: E402

W, H = standin.W, standin.H
TOOLS = {"Xvfb": "xvfb", "xauth": "xauth", "xdpyinfo": "x11-utils", "xwininfo": "x11-utils",
         "xdotool": "xdotool", "xtigervncviewer": "tigervnc-viewer", "ffmpeg": "ffmpeg",
         "qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils"}


def free_display() -> int:
    for n in range(90, 200):
        if not (Path(f"/tmp/.X{n}-lock").exists() or Path(f"/tmp/.X11-unix/X{n}").exists()):
            return n
    raise AssertionError("no free X display number in 90..199")


class Display:
    """runner/sunshine.sh with SUNSHINE=none on a VNC socket; X access with its cookie."""

    def __init__(self, vnc: str, work: Path):
        self.num = free_display()
        self.xdir = work / f"x{self.num}"
        self.log_path = work / f"sunshine-{self.num}.log"
        self.log = open(self.log_path, "wb")
        self.env = dict(os.environ, SUNSHINE="none", VNC_TARGET=vnc, DISPLAY_NUM=str(self.num),
                        SCREEN_SIZE=f"{W}x{H}", LOCO_X_DIR=str(self.xdir), KILL_GRACE_S="3")
        self.proc = subprocess.Popen(["bash", str(SCRIPT)], env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, process_group=0)
        self.xenv = dict(os.environ, DISPLAY=f":{self.num}", XAUTHORITY=str(self.xdir / "Xauthority"))

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def x(self, *argv: str, check=True) -> str:
        r = subprocess.run(argv, env=self.xenv, capture_output=True, text=True, timeout=20)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
        return r.stdout

    def viewer_pids(self) -> list[int]:
        r = subprocess.run(["pgrep", "-g", str(self.proc.pid), "-x", "xtigervncviewer"],
                           capture_output=True, text=True)
        return [int(p) for p in r.stdout.split()]

    def wait_viewer(self, timeout=30.0, exclude=()) -> int:
        """Wait until a viewer (not in exclude) runs and its full-screen window is mapped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"sunshine.sh exited ({self.proc.returncode}):\n{self.text()[-3000:]}"
            pids = [p for p in self.viewer_pids() if p not in exclude]
            if pids and re.search(rf" {W}x{H}\+0\+0 ", self.x("xwininfo", "-root", "-children", check=False)):
                time.sleep(1.0)  # sunshine.sh nudges the viewer once the window is mapped (0.5 s ticks)
                return pids[0]
            time.sleep(0.2)
        raise AssertionError(f"no full-screen viewer window within {timeout:.0f}s:\n{self.text()[-3000:]}")

    def screenshot(self) -> np.ndarray:
        """The X screen as Sunshine's x11 capture sees it (without the X cursor), RGB."""
        r = subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "x11grab", "-draw_mouse", "0",
                            "-video_size", f"{W}x{H}", "-i", f":{self.num}", "-frames:v", "1",
                            "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                           env=self.xenv, capture_output=True, timeout=30)
        assert r.returncode == 0, f"ffmpeg x11grab failed: {r.stderr.decode(errors='replace')}"
        assert len(r.stdout) == W * H * 3, f"x11grab gave {len(r.stdout)} bytes, not {W}x{H} RGB"
        return np.frombuffer(r.stdout, np.uint8).reshape(H, W, 3)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def vm():
    missing = [f"{t} ({pkg})" for t, pkg in TOOLS.items() if not shutil.which(t)]
    if missing:
        pytest.fail(f"missing: {', '.join(missing)}; apt-get install -y --no-install-recommends "
                    + " ".join(sorted({TOOLS[m.split()[0]] for m in missing})), pytrace=False)
    if missing_files():
        pytest.fail(f"the stand-in image is not built in {image_dir()}; build it with:\n"
                    f"    sudo {ROOT / 'packer' / 'standin' / 'build.sh'}", pytrace=False)
    sv = StandinVM("loco-sunshine-test")
    try:
        sv.start()
        print(f"\nstand-in desktop up after {sv.wait_ready(BOOT_TIMEOUT):.1f}s ({sv.accel.upper()})")
        yield {"dir": sv.work, "vnc": str(sv.vnc_path), "console": sv.console}
    finally:
        sv.stop()


@pytest.fixture(scope="module")
def display(vm):
    disp = Display(vm["vnc"], vm["dir"])
    try:
        disp.wait_viewer()
        yield disp
    finally:
        disp.stop()


def guest_pointer(vm) -> tuple[int, int]:
    return standin.guest_pointer(vm["console"])


def move_and_check(vm, display, x: int, y: int) -> tuple[int, int]:
    display.x("xdotool", "mousemove", str(x), str(y))
    deadline = time.monotonic() + 10
    while True:
        got = guest_pointer(vm)
        if standin.close(got, (x, y)) or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def test_first_xtest_motion_moves_the_guest_pointer(vm, display):
    # Before any click: the viewer only forwards motion after a button event; sunshine.sh's
    # nudge provides that one. Without it the guest's pointer stays where the viewer put it.
    for x, y in [(333, 222), (700, 500), (100, 650)]:
        got = move_and_check(vm, display, x, y)
        assert standin.close(got, (x, y)), f"XTest moved the X pointer to {(x, y)}; the guest's pointer is at {got}"


def test_x_screen_shows_the_guest(vm, display):
    display.x("xdotool", "mousemove", str(W - 200), str(H // 2))  # off the xterm, over the teal desktop
    deadline = time.monotonic() + 30
    while True:
        shot = display.screenshot()
        if standin.looks_like_icewm(shot) or time.monotonic() > deadline:
            break
        time.sleep(1)
    out = Path(os.environ.get("LOCO_SUNSHINE_SHOTS", tempfile.gettempdir())) / "sunshine-display.png"
    rfbgrab.write_png(str(out), shot)
    stats = standin.desktop_stats(shot)
    print(f"\nX screenshot of :{display.num} saved to {out}: {stats}")
    assert stats["dark"] < 0.3, f"the X screen is mostly black: {stats} ({out})"
    assert standin.looks_like_icewm(shot), f"the X screen is not the IceWM desktop: {stats} ({out})"
    # And it is the VM's framebuffer, not just something teal: compare with QEMU's own frame.
    for _ in range(3):
        vnc = rfbgrab.grab(unix=vm["vnc"], timeout=20)
        shot = display.screenshot()
        same = float(np.all(vnc == shot, axis=-1).mean())
        if same > 0.99:
            break
        time.sleep(1)  # the clock may have ticked between the two grabs
    print(f"identical to QEMU's VNC frame: {same:.4f} of the pixels")
    assert same > 0.99, f"only {same:.4f} of the X screen's pixels equal QEMU's framebuffer"


def test_xtest_click_and_typing_reach_the_guest(vm, display):
    tag = f"loco-sunshine-{os.getpid()}"
    display.x("xdotool", "mousemove", "280", "200", "click", "1")  # into the xterm (IceWM focuses it)
    time.sleep(1)
    display.x("xdotool", "type", "--delay", "60", f"echo {tag} > /tmp/typed")
    display.x("xdotool", "key", "Return")
    deadline = time.monotonic() + 20
    while True:
        got = vm["console"].run("cat /tmp/typed 2>/dev/null || true")
        if got == tag or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == tag, f"typed `echo {tag} > /tmp/typed` through XTest; the guest's /tmp/typed holds {got!r}"


def test_viewer_is_restarted_and_input_works_again(vm, display):
    (old,) = display.viewer_pids()
    os.kill(old, signal.SIGKILL)
    new = display.wait_viewer(timeout=20, exclude=(old,))
    assert new != old
    assert "reconnecting in 1s" in display.text()
    got = move_and_check(vm, display, 512, 300)
    assert standin.close(got, (512, 300)), f"after the viewer restart the guest's pointer is at {got}"


def test_sigterm_stops_everything(vm):
    disp = Display(vm["vnc"], vm["dir"])
    disp.wait_viewer()
    pgid = disp.proc.pid
    t0 = time.monotonic()
    rc = disp.stop()
    assert rc == 0, f"exit status {rc}:\n{disp.text()[-2000:]}"
    assert time.monotonic() - t0 < 10
    deadline = time.monotonic() + 5
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(pgid), "processes of sunshine.sh's group are still running"
    assert not disp.xdir.exists(), "the X cookie directory was left behind"
    assert "loco-sunshine: stopped" in disp.text()


@pytest.mark.parametrize("env, message", [
    ({"SCREEN_SIZE": "big"}, "SCREEN_SIZE must be WIDTHxHEIGHT"),
    ({"DISPLAY_NUM": ":1"}, "DISPLAY_NUM must be a display number"),
    ({"SUNSHINE": "no-such-sunshine"}, "no-such-sunshine is not installed"),
    ({"SUNSHINE": "true", "HOME": "@file"}, "must be a writable directory"),  # a file, not a directory
    ({"SUNSHINE": "true", "SUNSHINE_USERNAME": "admin"}, "give both SUNSHINE_USERNAME and SUNSHINE_PASSWORD"),
])
def test_bad_settings_are_refused(env, message, tmp_path):
    if not all(shutil.which(t) for t in ("Xvfb", "xtigervncviewer", "xauth", "xdpyinfo", "xwininfo", "xdotool")):
        pytest.fail("missing the display tools (see the vm fixture's message)", pytrace=False)
    full = {**os.environ, "HOME": str(tmp_path), "LOCO_X_DIR": str(tmp_path / "x"),
            "DISPLAY_NUM": str(free_display()), **env}
    if full["HOME"] == "@file":
        (tmp_path / "file").write_text("")
        full["HOME"] = str(tmp_path / "file")
    r = subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert message in r.stderr, r.stderr
