"""Tests for `./loco up` (scripts/up.py) and its page (scripts/wall/), for real: QEMU running
the test-pattern guest, loco-agent, and headless Chromium playing every panel over WHEP.

    "$VENV/bin/python" -m pytest scripts/test_up.py

Needs the built agent (LOCO_AGENT_BIN or ~/.cache/loco/target/release/loco-agent),
qemu-system-x86_64, the guest's build inputs, and /usr/bin/chromium; fails with the reason when one is missing
(`./loco test` installs them all).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
UP = HERE / "up.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
]
# QEMU runs under TCG on hosts without KVM and the machine may be busy: be generous.
READY_TIMEOUT = 420
LIVE_TIMEOUT = 180


def agent_bin() -> Path:
    env = os.environ.get("LOCO_AGENT_BIN")
    if env:
        return Path(env)
    base = os.environ.get("LOCO_CACHE") or os.path.expanduser("~/.cache/loco")
    return Path(os.environ.get("CARGO_TARGET_DIR") or os.path.join(base, "target")) / "release" / "loco-agent"


def _require(missing: bool, reason: str):
    """Marks a test that cannot run without a tool: it fails (never skips) when the tool is missing."""
    def wrap(fn):
        if not missing:
            return fn
        def failing(*args, **kwargs):
            pytest.fail(f"cannot run: {reason}")
        failing.__name__ = fn.__name__
        failing.__doc__ = fn.__doc__
        return failing
    return wrap


needs_agent = _require(not os.access(agent_bin(), os.X_OK), reason=f"loco-agent not built ({agent_bin()})")
needs_qemu = _require(not shutil.which("qemu-system-x86_64"), reason="qemu-system-x86_64 not installed")
needs_chromium = _require(not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} not installed")


# --------------------------------------------------------------------------- helpers


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port_block(n: int) -> int:
    """A base port with base..base+n-1 all free on 127.0.0.1."""
    for _ in range(500):
        base = random.randint(20000, 59000)
        if all(port_free(base + i) for i in range(n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports")


def procs_mentioning(text: str) -> dict[int, str]:
    """Live (non-zombie) processes whose command line contains `text`."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            found[int(d.name)] = cmd.strip()
    return found


def http_get(url: str, timeout=5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metric(url: str, name: str) -> float:
    _, body = http_get(url)
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


class UpRun:
    """scripts/up.py as a subprocess with its output collected line by line."""

    def __init__(self, *args: str, runtime_dir: str | None = None):
        self.runtime_dir = runtime_dir
        argv = [sys.executable, str(UP), *args]
        if not {"--image", "--standin", "--test-pattern"} & set(args):
            argv.append("--test-pattern")  # the small guest these tests were written for
        if runtime_dir:
            argv += ["--runtime-dir", runtime_dir]
        self.lines: list[str] = []
        # Its own process group, like a shell job: the test's signals reach it only when sent.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1, process_group=0)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(self.output())
            if m:
                return m
            if self.proc.poll() is not None:
                self._t.join(5)
                m = rx.search(self.output())
                if m:
                    return m
                pytest.fail(f"up.py exited ({self.proc.returncode}) before printing {pattern!r}:\n{self.output()}")
            time.sleep(0.2)
        pytest.fail(f"up.py did not print {pattern!r} in {timeout}s:\n{self.output()}")

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"up.py still running {timeout}s later:\n{self.output()}")
        self._t.join(5)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def runtime_dir():
    d = tempfile.mkdtemp(prefix="loco-test-up-")  # short: the VNC Unix sockets live here
    yield d
    # Safety net: nothing up.py started may outlive the test (killed by pid, only ours).
    for pid in procs_mentioning(d):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, message", [
    (["--vms", "0"], "--vms: must be from 1 to 9, not 0"),
    (["--vms", "10"], "--vms: must be from 1 to 9, not 10"),
    (["--vms", "three"], "--vms: must be a whole number"),
    (["--codec", "av1"], "--codec: invalid choice"),
    (["--port", "0"], "--port: must be from 1 to 65535"),
])
def test_bad_arguments(args, message):
    r = subprocess.run([sys.executable, str(UP), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr


def test_default_is_nine_vms():
    """Issue 4: `loco up` starts N VMs, default 9."""
    sys.path.insert(0, str(HERE))
    try:
        import up as up_py
    finally:
        sys.path.remove(str(HERE))
    assert up_py.parse_args([]).vms == 9
    r = subprocess.run([sys.executable, str(UP), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "default 9" in r.stdout, r.stdout


@needs_agent
@needs_qemu
def test_missing_image():
    r = subprocess.run([sys.executable, str(UP), "--image", "/nonexistent/win98.qcow2", "--vms", "1", "--port",
                        str(free_port_block(2))], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "--image /nonexistent/win98.qcow2: no such file" in r.stderr


@needs_agent
@needs_qemu
@pytest.mark.parametrize("busy", [0, 2])  # the page's port, then vm2's agent's port
def test_port_in_use(busy):
    base = free_port_block(3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + busy))
        s.listen(1)
        r = subprocess.run([sys.executable, str(UP), "--vms", "2", "--port", str(base)],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"port {base + busy} on 127.0.0.1" in r.stderr and "already in use" in r.stderr
    if busy:
        assert "vm2's agent" in r.stderr
    assert "starting" not in r.stdout  # it failed before starting anything


# --------------------------------------------------------------------------- the real thing


@needs_agent
@needs_qemu
@needs_chromium
@pytest.mark.timeout(900)
def test_up_three_vms_page_live_and_clean_stop(runtime_dir, tmp_path):
    """Issue 4: `loco up` with 3 VMs comes up, every agent's /healthz is healthy, and Ctrl-C
    leaves no process behind (on the small test-pattern guest, so it fits a 2-core CI machine)."""
    from playwright.sync_api import sync_playwright

    n = 3
    names = [f"vm{i}" for i in range(1, n + 1)]
    base = free_port_block(n + 1)
    up = UpRun("--vms", str(n), "--port", str(base), runtime_dir=runtime_dir)
    children: dict[int, str] = {}
    try:
        up.wait_for(rf"^\s+vm{n}\s+http://\S+/whep", READY_TIMEOUT)
        out = up.output()
        page = re.search(r"^\s+page\s+(http://\S+)", out, re.M).group(1)
        assert page == f"http://127.0.0.1:{base}/"
        wheps = dict(re.findall(r"^\s+(vm\d)\s+(http://\S+/whep)", out, re.M))
        assert wheps == {name: f"http://127.0.0.1:{base + i}/whep" for i, name in enumerate(names, 1)}
        assert "Quest" in out and "--host 0.0.0.0" in out and "HTTPS" in out

        # Every agent is healthy and sees the guest's 1024x768 screen.
        for name, whep in wheps.items():
            status, body = http_get(whep.replace("/whep", "/healthz"))
            assert status == 200, (name, body)
            h = json.loads(body)
            assert h["vnc_connected"] is True and (h["width"], h["height"]) == (1024, 768), (name, h)

        # desktops.json: the format the WebXR client reads.
        status, body = http_get(page + "desktops.json")
        assert status == 200
        assert json.loads(body) == {"desktops": [{"name": name, "whep": wheps[name], "token": None}
                                                 for name in names]}

        # Three QEMUs and three agents, each the leader of its own process group.
        children = {pid: c for pid, c in procs_mentioning(runtime_dir).items() if pid != up.proc.pid}
        kinds = sorted("qemu" if "qemu-system" in c else "agent" if "loco-agent" in c else c
                       for c in children.values())
        assert kinds == ["agent"] * n + ["qemu"] * n, children
        for pid in children:
            assert os.getpgid(pid) == pid, (pid, children[pid])

        # The page in Chromium: every panel live and decoding.
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                pg = browser.new_page(viewport={"width": 1280, "height": 720})
                console: list[str] = []
                pg.on("console", lambda m: console.append(f"[{m.type}] {m.text}"))
                pg.on("pageerror", lambda e: console.append(f"[pageerror] {e}"))
                pg.goto(page)

                def state():
                    return pg.evaluate("JSON.stringify(window.__loco && window.__loco.panels)")

                # The WebXR page (client/ built into www/dist), in its flat view.
                try:
                    pg.wait_for_function(
                        f"""window.__loco && window.__loco.panels.length === {n} &&
                           window.__loco.panels.every(p => p.state === 'live' && p.framesDecoded > 0 &&
                                                           p.videoWidth === 1024 && p.videoHeight === 768)""",
                        timeout=LIVE_TIMEOUT * 1000, polling=250)
                except Exception as e:  # playwright TimeoutError
                    pytest.fail(f"panels not live: {state()}\nconsole: {console[-20:]}\n{e}")
                panels = json.loads(state())
                assert [p["name"] for p in panels] == names
                assert all(p["inputOpen"] for p in panels), panels
                # Still decoding: the guest changes its pattern every 0.5 s.
                before = [p["framesDecoded"] for p in panels]
                pg.wait_for_function(
                    f"window.__loco.panels.every((p, i) => p.framesDecoded >= {before}[i] + 3)",
                    timeout=60000, polling=250)

                # Input: a click in the middle of vm1's picture focuses it, and the click and a key
                # press reach vm1's agent as accepted input events.
                metrics = wheps["vm1"].replace("/whep", "/metrics")
                accepted0 = metric(metrics, 'loco_input_events_total{result="accepted"}')
                pt = pg.evaluate("window.__loco.screenPoint(0, 0.5, 0.5)")
                assert pt, "vm1's panel is not on the screen"
                pg.mouse.click(pt["x"], pt["y"])
                assert pg.evaluate("window.__loco.focus") == 0
                pg.keyboard.press("a")
                deadline = time.monotonic() + 20
                while metric(metrics, 'loco_input_events_total{result="accepted"}') < accepted0 + 4:
                    assert time.monotonic() < deadline, "input events did not reach the agent"
                    time.sleep(0.2)
                # The plain-JS page is still served on /wall/.
                pg.goto(page.rstrip("/") + "/wall/")
                pg.wait_for_function(f"window.__wall && window.__wall.ready && window.__wall.panels.length === {n}",
                                     timeout=30000)
                pg.screenshot(path=str(tmp_path / "wall.png"))
            finally:
                browser.close()

        # Ctrl-C: everything stops, exit status 0, no process left.
        up.proc.send_signal(signal.SIGINT)
        rc = up.wait(60)
        assert rc == 0, up.output()
        assert "no VM or agent is left running" in up.output()
        left = procs_mentioning(runtime_dir)
        assert not left, left
    finally:
        up.kill()


@needs_agent
@needs_qemu
@pytest.mark.timeout(600)
def test_child_death_stops_the_rest(runtime_dir):
    base = free_port_block(2)
    up = UpRun("--vms", "1", "--port", str(base), runtime_dir=runtime_dir)
    try:
        up.wait_for(r"^\s+vm1\s+http://\S+/whep", READY_TIMEOUT)
        qemus = [pid for pid, c in procs_mentioning(runtime_dir).items() if "qemu-system" in c]
        assert len(qemus) == 1
        os.kill(qemus[0], signal.SIGKILL)
        rc = up.wait(60)
        assert rc == 1, up.output()
        assert f"vm1 QEMU (pid {qemus[0]}) was killed by SIGKILL" in up.output()
        assert not procs_mentioning(runtime_dir)
    finally:
        up.kill()
