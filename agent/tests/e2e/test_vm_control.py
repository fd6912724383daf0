"""VM control over QMP (`--qmp unix:PATH`, `/control`): real QEMU, real guests.

- The test-pattern guest (boots in seconds, prints READY on its serial console each boot, powers
  off on an ACPI power-button press) with -no-shutdown and two QMP sockets, the agent's and the
  test's own: reset really reboots it and the stream carries on; a view-only key gets 403 and
  nothing happens; ACPI power-off leaves QEMU in status "shutdown", power-on boots it again;
  without a disk a snapshot is refused with QEMU's reason, and revert without one with 409.
- The IceWM stand-in on its qcow2 overlay: snapshot, create a file, revert, the file is gone; a
  reset brings its desktop back by itself (the time is printed). (Its ACPI power-off and power-on
  are in packer/standin/test_standin.py, which runs after the image is rebuilt.)
- A QMP socket that speaks garbage, or never answers: /control says so, actions get 503, the
  agent goes on streaming.
"""
from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from loco_testkit.agent import Agent
from loco_testkit.paths import agent_binary
from loco_testkit.waits import wait_until

pytestmark = [pytest.mark.qemu]

CTL, VIEW = "ctl-secret", "view-secret"


@pytest.fixture
def sockdir():
    """A short folder for Unix sockets (sun_path is 108 bytes; pytest's tmp_path can be long)."""
    d = Path(tempfile.mkdtemp(prefix="loco-qmp-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def auth(key: str | None, session: str | None = None) -> dict:
    h = {}
    if key:
        h["Authorization"] = f"Bearer {key}"
    if session:
        h["X-Loco-Session"] = session
    return h


def control(a, action: str, key: str | None = CTL, session: str | None = None, timeout: float = 150.0):
    r = a.request("POST", f"/control/{action}", b"", auth(key, session), timeout=timeout)
    return r.status, (r.json() if r.status == 200 else r.text)


def state(a, key: str | None = CTL) -> dict:
    r = a.request("GET", "/control", None, auth(key))
    assert r.status in (200, 503), (r.status, r.text)
    return r.json()


def wait_state(a, pred, timeout: float, what: str) -> dict:
    last = {}

    def ok():
        nonlocal last
        last = state(a)
        return last if pred(last) else None
    try:
        return wait_until(ok, timeout, 0.1, what)
    except TimeoutError as e:
        raise AssertionError(f"{e}; last /control: {last}") from None


def ready_count(g) -> int:
    return g.serial_path.read_text(errors="replace").count(g.module.READY_MARKER)


def wait_ready_count(g, n: int, timeout: float) -> float:
    t0 = time.monotonic()
    wait_until(lambda: ready_count(g) >= n, timeout, 0.05, f"{n} READY lines on the guest's serial console")
    return time.monotonic() - t0


def vm_control_metric(a, action: str, result: str) -> float:
    return a.metric("loco_vm_control_total", 0.0, action=action, result=result)


@pytest.mark.timeout(240)
def test_reset_power_and_view_only_on_the_test_guest(qemu_guests, agent, aiortc_viewer, sockdir):
    agent_qmp, own_qmp = sockdir / "agent-qmp", sockdir / "qmp"
    g = qemu_guests(qmp=[f"unix:{agent_qmp},server=on,wait=off", f"unix:{own_qmp},server=on,wait=off"],
                    no_shutdown=True)
    a = agent(g.port, token=CTL, extra_args=["--view-token", VIEW, "--qmp", f"unix:{agent_qmp}"])
    a.wait_vnc(True, 30)
    st = wait_state(a, lambda s: s["qmp"] == "connected", 20, "QMP connected")
    assert st["status"] == "running" and st["snapshot"] is False and st["error"] is None and st["last"] is None, st
    assert a.metric("loco_qmp_connected") == 1
    _, hz = a.healthz()
    assert hz["vm"] == "running", hz
    # The key is needed to look, as for WHEP; a view-only key may look.
    assert a.request("GET", "/control").status == 401
    assert state(a, VIEW)["status"] == "running"

    v = aiortc_viewer(a, token=CTL)
    v.wait_frames(3, timeout=30)
    session = v.location.rstrip("/").rsplit("/", 1)[-1]

    # A view-only key: 403, and the guest does not reboot.
    n0 = ready_count(g)
    code, body = control(a, "reset", key=VIEW)
    assert code == 403, (code, body)
    assert control(a, "reset", key=None)[0] == 401
    assert control(a, "reset", key="wrong")[0] == 401
    time.sleep(4)
    assert ready_count(g) == n0, "a view-only reset rebooted the guest"
    assert vm_control_metric(a, "reset", "forbidden") == 1

    # Nonsense: an unknown action, power-on while running, revert without a revert point,
    # a snapshot of a VM without a disk (QEMU's reason comes back).
    assert control(a, "format")[0] == 404
    code, body = control(a, "poweron")
    assert code == 409 and "already running" in body, (code, body)
    code, body = control(a, "revert")
    assert code == 409 and "no revert point" in body, (code, body)
    code, body = control(a, "snapshot")
    assert code == 409 and "snapshot" in body and "block device" in body, (code, body)
    print(f"[control] snapshot without a disk: {body.strip()}")

    # Reset: the guest really reboots (READY again; the screen leaves the test patterns and comes
    # back), the agent's VNC is connected again (QEMU's VNC server outlives a guest reset, so it
    # normally never dropped) and the viewer gets the new boot's frames without reconnecting.
    t0 = time.monotonic()
    code, body = control(a, "reset", session=session)
    t_answer = time.monotonic() - t0
    assert code == 200 and body == {"action": "reset", "status": "running"}, (code, body)
    gone = v.wait_frame(lambda f: g.match_pattern(f.rgb)[1] < 20, timeout=30, what="a frame of the reboot")
    t_gone = time.monotonic() - t0
    wait_ready_count(g, n0 + 1, 60)
    t_ready = time.monotonic() - t0
    hz = a.wait_vnc(True, 30)
    t_vnc = time.monotonic() - t0
    v.wait_frame(lambda f: g.match_pattern(f.rgb)[1] > 25, after=gone.index, timeout=30,
                 what="a test pattern again after the reset")
    t_back = time.monotonic() - t0
    assert (hz["width"], hz["height"]) == (1024, 768) and hz["vm"] == "running", hz
    st = state(a)
    assert st["last"]["action"] == "reset" and st["last"]["result"] == "ok", st
    assert vm_control_metric(a, "reset", "ok") == 1
    assert f"session {session}" in a.log(), "the reset is not logged with the viewer's session"
    print(f"[control] reset (test-pattern guest, TCG): answered {t_answer:.2f}s; screen left the pattern "
          f"{t_gone:.1f}s; guest READY {t_ready:.1f}s; agent VNC connected {t_vnc:.1f}s; viewer sees the pattern "
          f"again {t_back:.1f}s after the request (VNC reconnects: {a.metric('loco_vnc_reconnects_total'):.0f})")

    # ACPI power-off: the guest powers off; -no-shutdown keeps QEMU in status "shutdown".
    t0 = time.monotonic()
    code, body = control(a, "powerdown")
    assert code == 200, (code, body)
    st = wait_state(a, lambda s: s["status"] == "shutdown", 30, "status shutdown after powerdown")
    t_off = time.monotonic() - t0
    assert g.proc.poll() is None, "QEMU exited on the guest's power-off (no -no-shutdown?)"
    # A second QMP client (the test's own socket) sees the same while the agent holds its own.
    import vmstate
    assert vmstate.qmp_status(own_qmp) == "shutdown"
    _, hz = a.healthz()
    assert hz["vm"] == "shutdown", hz
    code, body = control(a, "powerdown")
    assert code == 409, (code, body)
    code, body = control(a, "reset")
    assert code == 409 and "power it on" in body, (code, body)
    # Power-on: a cold start, READY again.
    n1 = ready_count(g)
    t0 = time.monotonic()
    code, body = control(a, "poweron")
    assert code == 200 and body["status"] == "running", (code, body)
    wait_ready_count(g, n1 + 1, 60)
    t_on = time.monotonic() - t0
    a.wait_vnc(True, 30)
    f0 = v.frame_count
    v.wait_frame(lambda f: f.index > f0 + 2, timeout=30, what="frames after power-on")
    print(f"[control] powerdown → status shutdown in {t_off:.1f}s; poweron → READY in {t_on:.1f}s")
    assert a.alive()


@pytest.mark.timeout(420)
def test_revert_and_reset_on_the_standin(tmp_path):
    from loco_testkit import standin
    if standin.missing_files():
        pytest.fail(f"the stand-in image is not built ({standin.image_dir()}); build it with: "
                    f"sudo packer/standin/build.sh", pytrace=False)
    vm = standin.StandinVM("loco-control-test", work=tmp_path, agent_qmp=True).start()
    try:
        t_boot = vm.wait_ready(standin.BOOT_TIMEOUT)
        print(f"[control] stand-in ready after {t_boot:.1f}s")
        a = Agent.start(vm.vnc, tmp_path / "agent.log", token=CTL, binary=agent_binary(),
                        extra_args=["--qmp", f"unix:{vm.agent_qmp_path}"])
        try:
            a.wait_http(30)
            a.wait_vnc(True, 30)
            wait_state(a, lambda s: s["qmp"] == "connected", 20, "QMP connected")
            code, body = control(a, "revert")
            assert code == 409, (code, body)
            t0 = time.monotonic()
            code, body = control(a, "snapshot")
            t_snap = time.monotonic() - t0
            assert code == 200 and body["status"] == "running", (code, body)
            assert state(a)["snapshot"] is True
            # A file made after the snapshot...
            out = vm.console.run("echo made-after > /home/loco/after.txt; sync; cat /home/loco/after.txt", 60)
            assert "made-after" in out, out
            t0 = time.monotonic()
            code, body = control(a, "revert")
            t_revert = time.monotonic() - t0
            assert code == 200 and body["status"] == "running", (code, body)
            # ... is gone: the guest's RAM and disk are the snapshot's. (The console's shell is the
            # one from before; a fresh command shows the reverted file system.)
            deadline = time.monotonic() + 60
            while True:
                try:
                    out = vm.console.run("ls /home/loco/after.txt 2>&1; echo rc=$?", 20)
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
                    vm.console.sock.sendall(b"\n")
            assert "rc=0" not in out and "No such file" in out, out
            a.wait_vnc(True, 30)
            print(f"[control] stand-in snapshot {t_snap:.1f}s, revert {t_revert:.1f}s (TCG)")
            assert vm_control_metric(a, "snapshot", "ok") == 1 and vm_control_metric(a, "revert", "ok") == 1

            # Reset: the desktop comes back by itself (the figure for the note: request -> the
            # guest's ready line, and -> the agent serving the 1024x768 desktop mode again).
            since = vm.console.mark()
            sizes = set()
            t0 = time.monotonic()
            code, body = control(a, "reset")
            assert code == 200, (code, body)

            def left_desktop_mode():
                _, hz = a.healthz()
                sizes.add((hz["width"], hz["height"]))
                return (hz["width"], hz["height"]) != (1024, 768)
            wait_until(left_desktop_mode, 30, 0.05, "the boot's screen mode after the reset")
            t_boot_mode = time.monotonic() - t0
            _, t_marker = vm.console.wait_for_at(standin.PROFILE["ready_marker"], 240, since=since, alive=vm.alive)
            hz = a.wait_screen((1024, 768), 60)
            t_desktop = time.monotonic() - t0
            assert hz["vnc_connected"] and hz["vm"] == "running", hz
            print(f"[control] stand-in reset (TCG): boot screen mode after {t_boot_mode:.1f}s, guest ready line "
                  f"{t_marker - t0:.1f}s, agent at 1024x768 again {t_desktop:.1f}s after the request (modes seen "
                  f"{sorted(sizes)}; VNC reconnects {a.metric('loco_vnc_reconnects_total'):.0f})")
        finally:
            a.stop()
    finally:
        vm.stop()


class FakeQmp:
    """A Unix socket that is not a working QMP: `garbage` sends a line that is not JSON after a
    greeting; `silent` accepts and never says anything."""

    def __init__(self, path: Path, mode: str):
        self.path, self.mode = path, mode
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.conns: list[socket.socket] = []
        self.accepted = 0
        self.stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(c)
            if self.mode == "garbage":
                try:
                    c.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
                    c.recv(4096)
                    c.sendall(b"\x00\xffHTTP/1.1 400 Bad Request\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.stop = True
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["garbage", "silent"])
def test_broken_qmp_is_reported_and_the_stream_goes_on(mode, qemu_guest, agent, aiortc_viewer, sockdir):
    fake = FakeQmp(sockdir / "qmp", mode)
    try:
        a = agent(qemu_guest.port, extra_args=["--qmp", f"unix:{sockdir / 'qmp'}"])
        a.wait_vnc(True, 30)
        want = "not JSON" if mode == "garbage" else "did not send its QMP greeting"
        st = wait_state(a, lambda s: want in (s.get("error") or ""), 20, f"/control error with {want!r}")
        assert st["qmp"] == "unavailable" and st["status"] is None, st
        print(f"[control] {mode} QMP: /control error: {st['error']}")
        code, body = control(a, "reset", key=None, timeout=30)
        assert code == 503 and want in body, (code, body)
        assert vm_control_metric(a, "reset", "unavailable") == 1
        assert a.metric("loco_qmp_connected") == 0
        st_h, hz = a.healthz()
        assert st_h == 200 and hz["vnc_connected"] is True and hz["vm"] == "unavailable", hz
        v = aiortc_viewer(a)
        v.wait_frames(5, timeout=30)
        # The failure is logged once, not once per retry.
        time.sleep(3 if mode == "garbage" else 11)
        assert fake.accepted >= 2, "the agent did not retry"
        said = [l for l in a.log().splitlines() if want in l and "retrying" in l]
        assert len(said) == 1, a.log()[-3000:]
        assert a.alive()
    finally:
        fake.close()


def test_without_qmp_control_is_unavailable(qemu_guest, agent):
    a = agent(qemu_guest.port)
    a.wait_vnc(True, 30)
    r = a.request("GET", "/control")
    assert r.status == 503 and r.json()["error"] == "no QMP socket (--qmp)", (r.status, r.text)
    code, body = control(a, "reset", key=None)
    assert code == 503 and "no QMP socket (--qmp)" in body, (code, body)
    _, hz = a.healthz()
    assert hz["vm"] == "unavailable", hz


def test_qmp_flag_takes_only_unix_sockets(agent_bin):
    import subprocess
    r = subprocess.run([str(agent_bin), "--vnc", "127.0.0.1:5900", "--qmp", "127.0.0.1:4444"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "Unix socket" in r.stderr, (r.returncode, r.stderr)
