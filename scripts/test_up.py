"""Tests for `./loco up` (scripts/up.py) and its pages, for real: QEMU running
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
from loco_testkit.paths import agent_binary as agent_bin
from loco_testkit.waits import wait_until

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
UP = HERE / "up.py"


def up_env() -> dict:
    """The environment `./loco up` gives up.py: tools/, packer/ and packer/testpattern/ on PYTHONPATH."""
    paths = [str(ROOT / "tools"), str(ROOT / "packer"), str(ROOT / "packer" / "testpattern")]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return dict(os.environ, PYTHONPATH=":".join(paths))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
]
# QEMU runs under TCG on hosts without KVM and the machine may be busy: be generous.
READY_TIMEOUT = 420
LIVE_TIMEOUT = 180
STANDIN = Path(os.environ.get("LOCO_CACHE") or os.path.expanduser("~/.cache/loco")) / "standin"


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
                                     stderr=subprocess.STDOUT, text=True, bufsize=1, process_group=0,
                                     env=up_env())
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
    r = subprocess.run([sys.executable, str(UP), *args], capture_output=True, text=True, timeout=60, env=up_env())
    assert r.returncode == 2, r.stderr
    assert message in r.stderr


def test_bad_arguments_without_packer_on_the_path():
    """up.py started by hand without the PYTHONPATH `./loco up` sets: a sentence saying how, exit 2."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, str(UP), "--vms", "1"], capture_output=True, text=True, timeout=60,
                       env=env, cwd="/")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "packer, packer/testpattern and tools must be on PYTHONPATH: start it as `./loco up ...`" in r.stderr


def test_default_is_nine_vms():
    """`loco up` starts N VMs, default 9."""
    from loco_up.args import parse_args

    assert parse_args([]).vms == 9
    r = subprocess.run([sys.executable, str(UP), "--help"], capture_output=True, text=True, timeout=60, env=up_env())
    assert r.returncode == 0 and "default 9" in r.stdout, r.stdout


def test_audio_is_on_unless_no_audio():
    from loco_up.args import parse_args

    assert parse_args([]).no_audio is False
    assert parse_args(["--no-audio"]).no_audio is True
    r = subprocess.run([sys.executable, str(UP), "--help"], capture_output=True, text=True, timeout=60, env=up_env())
    assert r.returncode == 0 and "--no-audio" in r.stdout, r.stdout


@needs_agent
@needs_qemu
def test_missing_image():
    r = subprocess.run([sys.executable, str(UP), "--image", "/nonexistent/win98.qcow2", "--vms", "1", "--port",
                        str(free_port_block(2))], capture_output=True, text=True, timeout=60, env=up_env())
    assert r.returncode == 2, r.stderr
    assert "--image /nonexistent/win98.qcow2: no such file" in r.stderr


@needs_agent
@needs_qemu
def test_bad_key_files(tmp_path):
    """A key file that is missing, empty, too short or has characters a URL would mangle: one
    sentence, exit 2, and nothing started."""
    cases = {"missing": (None, "no such file"), "empty": ("\n", "the first line is empty"),
             "short": ("abc\n", "the key is too short to be a key"),
             "spaces": ("a key with spaces in it\n", "the key may use letters, digits")}
    for name, (content, message) in cases.items():
        f = tmp_path / name
        if content is not None:
            f.write_text(content)
        r = subprocess.run([sys.executable, str(UP), "--test-pattern", "--vms", "1", "--port", str(free_port_block(2)),
                            "--key-file", str(f)], capture_output=True, text=True, timeout=60, env=up_env())
        assert r.returncode == 2, (name, r.stdout + r.stderr)
        assert f"--key-file {f}: {message}" in r.stderr, (name, r.stderr)


@needs_agent
@needs_qemu
@pytest.mark.parametrize("busy", [0, 2])  # the page's port, then vm2's agent's port
def test_port_in_use(busy):
    base = free_port_block(3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + busy))
        s.listen(1)
        r = subprocess.run([sys.executable, str(UP), "--vms", "2", "--port", str(base)],
                           capture_output=True, text=True, timeout=120, env=up_env())
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
    """`loco up` with 3 VMs comes up, every agent's /healthz is healthy, and Ctrl-C
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
            # VM control: every agent has its own QMP socket to its QEMU (-no-shutdown).
            assert h["vm"] == "running", (name, h)
            status, body = http_get(whep.replace("/whep", "/control"))
            assert status == 200 and json.loads(body)["qmp"] == "connected", (name, body)

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
@needs_chromium
@pytest.mark.timeout(900)
def test_up_on_the_lan_wants_the_key(runtime_dir, tmp_path):
    """`loco up --host 0.0.0.0` (reached here over loopback): every agent wants the run's key;
    the printed URL carries it in its fragment and the real page goes live with it (then takes
    it out of the address bar); a page without it shows the key form, and the key typed there
    works; the view-only key watches but its input is refused; desktops.json, the process list
    and every log of the run are free of both keys."""
    from playwright.sync_api import sync_playwright

    n = 2
    base = free_port_block(n + 1)
    up = UpRun("--vms", str(n), "--port", str(base), "--host", "0.0.0.0", "--view-key", runtime_dir=runtime_dir)
    try:
        up.wait_for(rf"^\s+vm{n}\s+http://\S+/whep", READY_TIMEOUT)
        out = up.output()
        keys = set(re.findall(r"^\s+page\s+http://\S+/#key=([A-Za-z0-9._~-]+)\s", out, re.M))
        assert len(keys) == 1, out
        key = keys.pop()
        view = re.search(r"^\s+watch\s+http://\S+/#key=([A-Za-z0-9._~-]+)\s", out, re.M).group(1)
        assert len(key) >= 32 and len(view) >= 32 and key != view
        assert re.search(rf"^\s+plain\s+http://\S+/wall/#key={key}\s", out, re.M), out
        page = f"http://127.0.0.1:{base}/"
        agents = [f"http://127.0.0.1:{base + i}" for i in range(1, n + 1)]

        # No secret where anyone who can load the page can read it, nor in any process's argv.
        status, body = http_get(page + "desktops.json")
        assert status == 200 and key.encode() not in body and view.encode() not in body
        assert all(d["token"] is None for d in json.loads(body)["desktops"])
        for pid, cmd in procs_mentioning(runtime_dir).items():
            assert key not in cmd and view not in cmd, cmd
        keys_dir = Path(runtime_dir) / "keys"
        assert sorted(p.name for p in keys_dir.iterdir()) == ["key", "view-key"]
        assert (keys_dir.stat().st_mode & 0o777) == 0o700
        assert all((p.stat().st_mode & 0o777) == 0o600 for p in keys_dir.iterdir())

        # Without the key, or with a wrong one: 401 (the key is checked before the offer is read).
        for url in agents:
            for hdrs in ({}, {"Authorization": "Bearer wrong-key-0123456789"}):
                req = urllib.request.Request(url + "/whep", data=b"v=0\r\n", method="POST",
                                             headers={"Content-Type": "application/sdp", **hdrs})
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        pytest.fail(f"{url}/whep answered {r.status} without the key")
                except urllib.error.HTTPError as e:
                    assert e.code == 401, (url, hdrs, e.code)

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                def open_page(url: str, name: str):
                    ctx = browser.new_context(viewport={"width": 1280, "height": 720})  # its own localStorage
                    pg = ctx.new_page()
                    console: list[str] = []
                    pg.on("console", lambda m: console.append(f"[{m.type}] {m.text}"))
                    pg.goto(url)
                    pg.console = console
                    return pg

                def wait_live(pg, what: str):
                    try:
                        pg.wait_for_function(
                            f"window.__loco && window.__loco.panels.length === {n} && "
                            "window.__loco.panels.every(p => p.state === 'live' && p.framesDecoded > 0)",
                            timeout=LIVE_TIMEOUT * 1000, polling=250)
                    except Exception as e:  # playwright TimeoutError
                        panels = pg.evaluate("JSON.stringify(window.__loco && window.__loco.panels)")
                        pytest.fail(f"{what}: panels not live: {panels}\nconsole: {pg.console[-20:]}\n{e}")

                # The printed URL: live, and the key leaves the address bar.
                pg = open_page(f"{page}#key={key}", "with the key")
                wait_live(pg, "the printed URL")
                assert pg.evaluate("location.hash") == "" and key not in pg.url
                # Reloaded without the fragment, the page remembers the key for the origin.
                pg.reload()
                wait_live(pg, "reloaded")
                pg.context.close()

                # No key: every panel locked, the form asks; the key typed into it works.
                pg = open_page(page, "no key")
                pg.wait_for_function(
                    f"window.__loco && window.__loco.panels.length === {n} && "
                    "window.__loco.panels.every(p => p.state === 'locked')", timeout=60000, polling=250)
                pg.wait_for_selector("#loco-key", state="visible", timeout=5000)
                assert "needs its key" in pg.inner_text("#loco-key-msg")
                attempts = pg.evaluate("window.__loco.panels.map(p => p.attempts)")
                time.sleep(3)
                assert pg.evaluate("window.__loco.panels.map(p => p.attempts)") == attempts, "a locked panel retried"
                pg.fill("#loco-key-input", "wrong-key-0123456789")
                pg.click("#loco-key button")
                pg.wait_for_function("window.__loco.panels.every(p => p.state === 'locked')", timeout=30000)
                pg.wait_for_function("document.getElementById('loco-key-msg').textContent.includes('refused')",
                                     timeout=30000)
                pg.fill("#loco-key-input", key)
                pg.click("#loco-key button")
                wait_live(pg, "the key typed into the form")
                pg.wait_for_selector("#loco-key", state="hidden", timeout=5000)
                pg.context.close()

                # The view-only key: live, but clicks and keys are refused by the agent.
                pg = open_page(f"{page}#key={view}", "view key")
                wait_live(pg, "the view-only key")
                metrics = agents[0] + "/metrics"
                acc0 = metric(metrics, 'loco_input_events_total{result="accepted"}')
                rej0 = metric(metrics, 'loco_input_events_total{result="rejected"}')
                pt = pg.evaluate("window.__loco.screenPoint(0, 0.5, 0.5)")
                pg.mouse.click(pt["x"], pt["y"])
                pg.keyboard.press("a")
                deadline = time.monotonic() + 20
                while metric(metrics, 'loco_input_events_total{result="rejected"}') < rej0 + 2:
                    assert time.monotonic() < deadline, "the view key's input was not refused"
                    time.sleep(0.2)
                assert metric(metrics, 'loco_input_events_total{result="accepted"}') == acc0
                pg.context.close()

                # The plain-JS page takes the same key.
                pg = open_page(f"{page}wall/#key={key}", "wall")
                pg.wait_for_function(f"window.__wall && window.__wall.ready && window.__wall.panels.length === {n} "
                                     "&& window.__wall.panels.every(p => p.state === 'live')", timeout=LIVE_TIMEOUT * 1000)
                assert pg.evaluate("location.hash") == ""
                pg.context.close()
            finally:
                browser.close()

        up.proc.send_signal(signal.SIGINT)
        assert up.wait(60) == 0, up.output()
        # Every log the run wrote is free of both keys.
        for f in Path(runtime_dir).rglob("*"):
            if f.is_file() and not f.is_socket():
                data = f.read_bytes()
                assert key.encode() not in data and view.encode() not in data, f
        assert not (Path(runtime_dir) / "keys").exists(), "the run's key files outlived it"
    finally:
        up.kill()


@needs_agent
@needs_qemu
@pytest.mark.timeout(600)
def test_last_vm_dying_ends_the_run(runtime_dir):
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
        assert "no VM is left running" in up.output()
        assert not procs_mentioning(runtime_dir)
    finally:
        up.kill()


@needs_agent
@needs_qemu
@pytest.mark.timeout(600)
def test_a_vm_that_cannot_boot_does_not_stop_the_others(runtime_dir):
    """vm2's QEMU dies while the VMs boot; vm1 and vm3 are still served, vm2 is
    reported, and Ctrl-C stops the rest (exit 1: a VM failed during the run)."""
    base = free_port_block(4)
    up = UpRun("--vms", "3", "--port", str(base), runtime_dir=runtime_dir)
    try:
        deadline = time.monotonic() + 60
        while True:
            vm2 = [pid for pid, c in procs_mentioning(runtime_dir).items() if "qemu-system" in c and "loco-vm2" in c]
            if vm2:
                break
            assert time.monotonic() < deadline, up.output()
            time.sleep(0.05)
        os.kill(vm2[0], signal.SIGKILL)
        up.wait_for(r"^\s+vm3\s+http://\S+/whep", READY_TIMEOUT)
        out = up.output()
        assert f"vm2 QEMU (pid {vm2[0]}) was killed by SIGKILL" in out, out
        assert "vm2 is left out; the other VMs go on" in out, out
        assert re.search(r"^\s+vm2\s+http://\S+/whep\s+\(failed", out, re.M), out
        for i in (1, 3):
            status, body = http_get(f"http://127.0.0.1:{base + i}/healthz")
            assert status == 200 and json.loads(body)["vnc_connected"], (i, body)
        assert up.proc.poll() is None
        up.proc.send_signal(signal.SIGINT)
        assert up.wait(60) == 1, up.output()
        assert "vm2 failed during the run" in up.output()
        assert not procs_mentioning(runtime_dir)
    finally:
        up.kill()


@needs_agent
@needs_qemu
@pytest.mark.timeout(600)
def test_boot_timeout_serves_what_is_up_and_keeps_waiting(runtime_dir):
    """past --boot-timeout, up.py serves the VMs (none ready yet here), says which it is
    still waiting for and at what stage, and announces each VM when it becomes ready: no teardown."""
    base = free_port_block(3)
    up = UpRun("--vms", "2", "--port", str(base), "--boot-timeout", "0.5", runtime_dir=runtime_dir)
    try:
        up.wait_for(r"not every VM is ready; serving those that are and still waiting for: vm1 \(", 60)
        up.wait_for(r"^\s+page\s+http://", 10)
        up.wait_for(r"vm1 is ready too", READY_TIMEOUT)
        up.wait_for(r"vm2 is ready too", READY_TIMEOUT)
        up.proc.send_signal(signal.SIGINT)
        assert up.wait(60) == 0, up.output()
        assert not procs_mentioning(runtime_dir)
    finally:
        up.kill()


# --------------------------------------------------------------------------- saved state (stand-in)

needs_standin = _require(not (STANDIN / "standin.qcow2").is_file(),
                         reason=f"the stand-in image is not built ({STANDIN}; packer/standin/build.sh)")


def nine_live(page_url: str, n: int, t0: float) -> float:
    """Opens the WebXR page in headless Chromium and waits for n live panels showing the stand-in's
    1024x768 desktop; returns the seconds from t0 to that moment."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 720})
            pg.goto(page_url)
            try:
                pg.wait_for_function(
                    f"""window.__loco && window.__loco.panels.length === {n} &&
                       window.__loco.panels.every(p => p.state === 'live' && p.framesDecoded > 0 &&
                                                       p.videoWidth === 1024 && p.videoHeight === 768)""",
                    timeout=LIVE_TIMEOUT * 1000, polling=250)
            except Exception as e:  # playwright TimeoutError
                pytest.fail(f"panels not live: {pg.evaluate('JSON.stringify(window.__loco && window.__loco.panels)')}"
                            f"\n{e}")
            return time.monotonic() - t0
        finally:
            browser.close()


def up_until_live(state_dir: str, runtime_dir: str, n: int, *extra: str) -> tuple[UpRun, float]:
    base = free_port_block(n + 1)
    t0 = time.monotonic()
    up = UpRun("--standin", "--vms", str(n), "--port", str(base), "--state-dir", state_dir, *extra,
               runtime_dir=runtime_dir)
    up.wait_for(rf"^\s+vm{n}\s+http://\S+/whep\s+\(1024x768\)", READY_TIMEOUT)
    return up, nine_live(f"http://127.0.0.1:{base}/", n, t0)


def stop_cleanly(up: UpRun, runtime_dir: str):
    up.proc.send_signal(signal.SIGINT)
    rc = up.wait(60)
    assert rc == 0, up.output()
    assert "no VM or agent is left running" in up.output()
    assert not procs_mentioning(runtime_dir)


@pytest.fixture(scope="module")
def state_dir():
    d = tempfile.mkdtemp(prefix="loco-test-state-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@needs_agent
@needs_qemu
@needs_chromium
@needs_standin
@pytest.mark.timeout(1500)
def test_up_nine_standin_vms_live_from_a_saved_state(runtime_dir, state_dir):
    """`./loco up`'s default, nine stand-in VMs, reaches nine live panels in headless
    Chromium under TCG: the first run boots one VM cold, saves its state and starts all nine from
    it; the next run starts all nine from the saved state, each VM with its own NIC hot-plugged
    into the guest LAN and its own DHCP lease. Ctrl-C leaves nothing behind."""
    sd = os.path.join(state_dir, "standin")
    up, first = up_until_live(sd, runtime_dir, 9)
    try:
        out = up.output()
        assert "no saved state to start from (there is no saved state yet): vm1 boots cold" in out, out
        assert re.search(r"booting: (udev|X server|IceWM desktop), to be saved \(vm1\)", out), out  # stages
        assert "saving its state to" in out and "starting 9 VMs from it" in out, out
        memory = re.search(r"QEMU memory (\d+) MiB", out).group(1)
        stop_cleanly(up, runtime_dir)
    finally:
        up.kill()
    meta = json.loads(Path(sd, "meta.json").read_text())
    assert meta["bytes"] == Path(sd, "state.mig").stat().st_size > 10 << 20

    up, later = up_until_live(sd, runtime_dir, 9)
    try:
        out = up.output()
        assert f"starting from the saved state in {sd}" in out, out
        assert "vm1 boots cold" not in out and "saving its state" not in out, out
        qemus = [c for c in procs_mentioning(runtime_dir).values() if "qemu-system" in c]
        assert len(qemus) == 9 and all("-incoming file:" in c for c in qemus), qemus
        # Sound on by default: each VM has its sound card, QEMU's VNC server carries it, the agent asks for it.
        assert all("-audiodev none,id=snd0 -device ES1370,audiodev=snd0" in c and "/vnc.sock,audiodev=snd0" in c
                   for c in qemus), qemus
        agents = [c for c in procs_mentioning(runtime_dir).values() if "loco-agent" in c and "--vnc" in c]
        assert len(agents) == 9 and all("--audio on" in c for c in agents), agents
        # The guest LAN: every restored VM got its own NIC hot-plugged and its own lease (the
        # state was saved without a NIC), and none has one on its command line.
        assert "lan    one isolated Ethernet segment: vm1 10.98.0.101 ... vm9 10.98.0.109" in out, out
        assert not any("-netdev" in c for c in qemus), qemus

        def leases():
            return all(re.search(rf"loco-standin: lan up \S+ 10\.98\.0\.10{i}/24 vm{i}\b",
                                 Path(runtime_dir, f"vm{i}", "serial.log").read_text(errors="replace"))
                       for i in range(1, 10))
        wait_until(leases, 120, what="every VM's DHCP lease on the guest LAN")
        memory_later = re.search(r"QEMU memory (\d+) MiB", out).group(1)
        stop_cleanly(up, runtime_dir)
    finally:
        up.kill()
    print(f"\nloco up, nine stand-in VMs to nine live panels in Chromium (TCG, {os.cpu_count()} cores): "
          f"first run (cold boot + save) {first:.1f} s, later run {later:.1f} s; QEMU RSS of the nine "
          f"{memory} MiB / {memory_later} MiB; state {meta['bytes'] / 2**20:.0f} MiB saved in {meta['save_s']} s")


@needs_agent
@needs_qemu
@needs_chromium
@needs_standin
@pytest.mark.timeout(1200)
def test_corrupt_or_mismatched_saved_state_falls_back(runtime_dir, state_dir):
    """a saved state QEMU cannot load is discarded and made anew (one VM boots cold, the
    others start from its new state); a state saved for another QEMU is not even tried."""
    sd = os.path.join(state_dir, "standin")
    if not Path(sd, "meta.json").is_file():  # run alone: make one first
        up, _ = up_until_live(sd, runtime_dir, 1)
        stop_cleanly(up, runtime_dir)
    stream = Path(sd, "state.mig")
    size = stream.stat().st_size
    with open(stream, "r+b") as f:  # same size, garbage from the first MiB on
        f.seek(1 << 20)
        f.write(os.urandom(min(4 << 20, size - (1 << 20))))
    saved_at = json.loads(Path(sd, "meta.json").read_text())["saved_at"]
    time.sleep(1.1)
    up, _ = up_until_live(sd, runtime_dir, 2)
    try:
        out = up.output()
        assert "QEMU could not start from the saved state" in out and "discarded it. Making it anew" in out, out
        assert "starting 2 VMs from it" in out, out
        stop_cleanly(up, runtime_dir)
    finally:
        up.kill()
    meta = json.loads(Path(sd, "meta.json").read_text())
    assert meta["saved_at"] != saved_at and meta["bytes"] == stream.stat().st_size

    # Saved by "another QEMU": the key no longer fits, so it is made anew before any VM tries it.
    meta["key"] = "0" * 20
    meta["what"]["qemu"] = "QEMU emulator version 1.0"
    Path(sd, "meta.json").write_text(json.dumps(meta))
    up, _ = up_until_live(sd, runtime_dir, 1)
    try:
        out = up.output()
        assert "it does not fit: QEMU changed (QEMU emulator version 1.0 → " in out, out
        assert "QEMU could not start" not in out, out
        stop_cleanly(up, runtime_dir)
    finally:
        up.kill()

    # --cold uses no state at all.
    base = free_port_block(2)
    up = UpRun("--standin", "--vms", "1", "--port", str(base), "--state-dir", sd, "--cold", runtime_dir=runtime_dir)
    try:
        up.wait_for(r"^\s+vm1\s+http://\S+/whep\s+\(1024x768\)", READY_TIMEOUT)
        assert "saved state" not in up.output() and "-incoming" not in str(procs_mentioning(runtime_dir))
        stop_cleanly(up, runtime_dir)
    finally:
        up.kill()


@needs_agent
@needs_qemu
def test_from_state_without_one_is_a_clear_error(tmp_path):
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    r = subprocess.run([sys.executable, str(UP), "--image", str(image), "--vms", "1", "--from-state",
                        "--state-dir", str(tmp_path / "state"), "--port", str(free_port_block(2))],
                       capture_output=True, text=True, timeout=60, env=up_env())
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"--from-state: no saved state of {image} to start from (there is no saved state yet); make one " \
           "with --save-state" in r.stderr
    assert not procs_mentioning(str(tmp_path))


@needs_agent
@needs_qemu
@pytest.mark.timeout(600)
def test_save_state_of_your_own_image_on_enter(tmp_path, runtime_dir):
    """--image DISK --save-state with a profile that prints no ready line (win98): vm1 boots, the page
    is served, and Enter on the terminal saves its state; the VMs then start from it, and so does a
    later run. (The disk here is blank, so the saved "desktop" is the BIOS saying there is nothing
    to boot: what is saved and restored is the same whatever the guest shows.)"""
    import pty

    image = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    sd = str(tmp_path / "state")
    base = free_port_block(3)
    master, slave = pty.openpty()
    argv = [sys.executable, str(UP), "--image", str(image), "--vms", "2", "--port", str(base), "--save-state",
            "--state-dir", sd, "--runtime-dir", runtime_dir]
    proc = subprocess.Popen(argv, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            process_group=0, env=up_env())
    os.close(slave)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()

    def wait_for(text: str, timeout: float):
        deadline = time.monotonic() + timeout
        while text not in "".join(lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)

    try:
        wait_for("press Enter here once its desktop is up", 60)
        assert re.search(r"^\s+page\s+http://", "".join(lines), re.M)
        deadline = time.monotonic() + 30  # vm1 is on the page meanwhile
        while http_get(f"http://127.0.0.1:{base + 1}/healthz")[0] != 200:
            assert time.monotonic() < deadline, "vm1's agent never saw its screen"
            time.sleep(0.2)
        os.write(master, b"\n")
        wait_for("starting 2 VMs from it", 60)
        wait_for("vm2 is ready too", 120)
        qemus = [c for c in procs_mentioning(runtime_dir).values() if "qemu-system" in c]
        assert len(qemus) == 2 and all("-incoming file:" in c for c in qemus), qemus
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert not procs_mentioning(runtime_dir)

    # A later run of the same image starts from that state by itself.
    up = UpRun("--image", str(image), "--vms", "1", "--port", str(base), "--state-dir", sd, "--from-state",
               runtime_dir=runtime_dir)
    try:
        up.wait_for(r"^\s+vm1\s+http://\S+/whep", 120)
        assert f"starting from the saved state in {sd}" in up.output()
        stop_cleanly(up, runtime_dir)
    finally:
        up.kill()
