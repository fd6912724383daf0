"""The IceWM stand-in desktop, for real: boot it in QEMU (KVM when usable, else TCG), stream it
through loco-agent, and drive its pointer.

    ~/.cache/loco/venv/bin/python -m pytest -q packer/standin/test_standin.py

Needs the built image (packer/standin/build.sh; the tests FAIL, with that command, when it is
missing), the loco-agent binary (./loco build), QEMU, and the venv's aiortc/numpy (the e2e
viewer tools/loco_testkit/whep_aiortc.py). The VM runs on a throw-away overlay in a temp dir.

What is checked:
- the guest says its desktop is up (serial marker) within the boot timeout, at 1024x768;
- a frame streamed by the agent over WebRTC shows the IceWM desktop, not a console: the
  teal background covers much of the screen and the bottom 26 rows are IceWM's grey win95
  taskbar (checked on the lossless VNC frame too);
- a 440 Hz tone the guest plays (`loco-tone`) reaches an aiortc viewer as Opus, found by FFT
  (±5 Hz), and its onset latency (guest's start line → first loud decoded frame) is printed;
- pointer messages on the agent's data channel put the guest's X pointer there (within
  1 px: QEMU's tablet scaling rounds down)
  (`xdotool getmouselocation`, asked over the serial console), and a click on the start
  button opens IceWM's start menu (the window manager reacts, seen in the streamed frame);
- last, VM control through the agent (`--qmp`, QEMU with -no-shutdown): an ACPI power-off
  (`POST /control/powerdown`) powers the guest off (its init watches the power button) and QEMU
  stays, in status "shutdown"; `POST /control/poweron` boots it back to its desktop.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# On PYTHONPATH (./loco test sets it): tools/ (the harness), packer/, packer/testpattern/.
import rfbgrab  # noqa: E402
from loco_testkit.desktop import (START_BUTTON, close, desktop_stats, guest_pointer, looks_like_icewm,  # noqa: E402
                                  start_menu_open)
from loco_testkit.standin import BOOT_TIMEOUT, PROFILE, StandinVM, image_dir, missing_files  # noqa: E402
from loco_testkit.agent import Agent  # noqa: E402
from loco_testkit.paths import agent_binary  # noqa: E402

IMAGE_DIR = image_dir()
W, H = PROFILE["screen"]


@pytest.fixture(scope="module")
def image() -> Path:
    missing = missing_files()
    if missing:
        pytest.fail(f"the stand-in image is not built ({', '.join(map(str, missing))} missing); build it with:\n"
                    f"    sudo {HERE / 'build.sh'}\n(LOCO_STANDIN_DIR points the tests at another build)",
                    pytrace=False)
    return IMAGE_DIR / PROFILE["image"]


@pytest.fixture(scope="module")
def vm(image):
    if not shutil.which("qemu-system-x86_64"):
        pytest.fail("qemu-system-x86_64 is not installed (apt-get install -y qemu-system-x86)", pytrace=False)
    sv = StandinVM("loco-standin-test", agent_qmp=True)
    try:
        sv.start()
        m = sv.console.wait_for(re.escape(PROFILE["ready_marker"]) + r" (\d+)x(\d+)", BOOT_TIMEOUT, alive=sv.alive)
        boot_s = time.monotonic() - sv.t_start
        print(f"\nstand-in desktop up after {boot_s:.1f}s ({sv.accel.upper()})")
        assert (int(m.group(1)), int(m.group(2))) == (W, H), f"X runs at {m.group(0)}"
        yield {"dir": sv.work, "vnc": str(sv.vnc_path), "console": sv.console, "proc": sv.proc, "accel": sv.accel,
               "boot_s": boot_s, "vm": sv}
    finally:
        sv.stop()


@pytest.fixture(scope="module")
def agent(vm):
    binary = agent_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"loco-agent is not built at {binary} (run ./loco build)", pytrace=False)
    a = Agent.start(f"unix:{vm['vnc']}", vm["dir"] / "agent.log",
                    extra_args=["--qmp", f"unix:{vm['vm'].agent_qmp_path}"])
    try:
        a.wait_screen((W, H), 30)
        yield {"port": a.port, "url": a.url, "agent": a}
    finally:
        a.stop()


@pytest.fixture(scope="module")
def viewer(agent):
    from loco_testkit.whep_aiortc import LoopThread, SyncViewer

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


def test_guest_tone_reaches_a_viewer(vm, agent):
    from loco_testkit.audio import dominant_hz, rms
    from loco_testkit.whep_aiortc import LoopThread, SyncViewer

    lt = LoopThread()
    v = SyncViewer.connect(lt, agent["url"], name="standin-listener", codec="h264", audio=True)
    try:
        v.wait_frame(timeout=30)
        onsets, heard = [], []
        for _ in range(3):
            t_on = vm["vm"].tone(440, 1.0)
            vm["vm"].wait_tone_end(30)
            time.sleep(0.3)
            frames = [(t, p) for t, p in list(v.v.audio_frames) if t >= t_on - 0.05]
            loud = [(t, p) for t, p in frames if rms(p) > 1000]
            assert loud, f"no loud audio after the tone started ({len(frames)} frames; {v.describe()})"
            onsets.append(loud[0][0] - t_on)
            heard.append(np.concatenate([p for _, p in loud]))
        pcm, rate = heard[-1], v.v.audio_rate
        hz = dominant_hz(pcm[len(pcm) // 4: 3 * len(pcm) // 4], rate)
        print(f"\nstand-in tone: {hz:.1f} Hz (want 440), onset latency "
              f"{', '.join(f'{1000 * o:.0f}' for o in onsets)} ms ({vm['accel'].upper()})")
        assert abs(hz - 440) <= 5, f"dominant frequency {hz:.1f} Hz"
    finally:
        try:
            v.close()
        finally:
            lt.stop()


def test_acpi_power_off_and_on_through_the_agent(vm, agent):
    """Last in this module: it powers the shared VM off and on again."""
    import json
    a = agent["agent"]

    def control_state():
        return json.loads(a.request("GET", "/control").text)

    deadline = time.monotonic() + 20
    while control_state()["qmp"] != "connected":
        assert time.monotonic() < deadline, control_state()
        time.sleep(0.1)
    t0 = time.monotonic()
    r = a.request("POST", "/control/powerdown", b"")
    assert r.status == 200, (r.status, r.text)
    deadline = time.monotonic() + 60
    while (st := control_state())["status"] != "shutdown":
        assert time.monotonic() < deadline, f"not powered off 60 s after the ACPI power button: {st}"
        time.sleep(0.2)
    t_off = time.monotonic() - t0
    assert vm["vm"].alive(), "QEMU exited on the guest's power-off (no -no-shutdown?)"
    assert "power button pressed" in vm["console"].text()
    since = vm["console"].mark()
    t0 = time.monotonic()
    r = a.request("POST", "/control/poweron", b"", timeout=30)
    assert r.status == 200 and r.json()["status"] == "running", (r.status, r.text)
    _, t_ready = vm["console"].wait_for_at(re.escape(PROFILE["ready_marker"]), BOOT_TIMEOUT, since=since,
                                           alive=vm["vm"].alive)
    a.wait_screen((W, H), 60)
    print(f"\nstand-in: ACPI power-off -> status shutdown {t_off:.1f}s; power-on -> desktop {t_ready - t0:.1f}s")
