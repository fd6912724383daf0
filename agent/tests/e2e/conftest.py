"""Fixtures for the loco-agent end-to-end suite: real Xvnc, real QEMU guest, real WebRTC peers
(aiortc and headless Chromium), real HTTP. Every process a fixture starts runs in its own
process group and is killed (group-wide) at teardown; nothing is mocked."""
from __future__ import annotations

import importlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
GUEST_DIR = HERE.parents[2] / "packer" / "testpattern"

from loco_testkit.agent import Agent  # noqa: E402
from loco_testkit.procs import kill_all_groups, kill_group, spawn, tail  # noqa: E402
from loco_testkit.waits import ProcessExited, free_port, wait_port, wait_until  # noqa: E402
from loco_testkit.paths import agent_binary as agent_binary_path  # noqa: E402
from loco_testkit.xvnc import Xvnc  # noqa: E402

# ------------------------------------------------------------------ report log sections


def _attach(request, title: str, path) -> None:
    request.node.__dict__.setdefault("_loco_logs", []).append((title, Path(path)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for title, path in item.__dict__.get("_loco_logs", []):
            rep.sections.append((f"{title} ({path})", tail(path, 12000)))


def pytest_sessionfinish(session, exitstatus):
    kill_all_groups()


# ------------------------------------------------------------------ --soak


def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true", default=False,
                     help="also run the soak test (test_soak.py, marker soak); deselected otherwise")
    parser.addoption("--soak-minutes", type=float, default=30.0, help="soak duration (default 30)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--soak"):
        # Its own time limit: the soak, plus start-up and teardown.
        limit = int(config.getoption("--soak-minutes") * 60 + 300)
        for item in items:
            if item.get_closest_marker("soak"):
                item.add_marker(pytest.mark.timeout(limit))
        return
    keep = [i for i in items if not i.get_closest_marker("soak")]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("soak")])
        items[:] = keep


@pytest.fixture
def port():
    """A free TCP port on 127.0.0.1."""
    return free_port()


# ------------------------------------------------------------------ agent binary


@pytest.fixture(scope="session")
def agent_bin() -> Path:
    p = agent_binary_path()
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"loco-agent binary not found or not executable at {p}. Build it with "
                    f"`cargo build --release -p loco-agent` (CARGO_TARGET_DIR="
                    f"{os.environ.get('CARGO_TARGET_DIR', '~/.cache/loco/target')}) or set LOCO_AGENT_BIN.",
                    pytrace=False)
    return p


@pytest.fixture
def agent(agent_bin, tmp_path, request):
    """Factory: agent(vnc_port, codec=None, token=None, extra_args=(), listen_port=None,
    wait=True, vnc_host="127.0.0.1") starts loco-agent (loco_testkit.agent.Agent) on a free port
    and waits until its HTTP answers. Teardown fails the test if an agent died on its own."""
    started: list[Agent] = []

    def start(vnc_port: int, codec: str | None = None, token: str | None = None,
              extra_args: tuple | list = (), listen_port: int | None = None,
              wait: bool = True, vnc_host: str = "127.0.0.1") -> Agent:
        lp = listen_port or free_port()
        log = tmp_path / f"agent-{len(started)}-{lp}.log"
        a = Agent.start(f"{vnc_host}:{vnc_port}", log, codec=codec, token=token, extra_args=extra_args,
                        listen_port=lp, binary=agent_bin)
        _attach(request, f"agent #{len(started)} log", log)
        started.append(a)
        if wait:
            try:
                a.wait_http(30)
            except (ProcessExited, TimeoutError) as e:
                pytest.fail(f"{e}\n--- agent log ---\n{a.log()}", pytrace=False)
        return a

    yield start

    died = [why for a in started if (why := a.died_unexpectedly())]
    for a in started:
        a.stop()
    if died:
        pytest.fail("\n".join(died), pytrace=False)


# ------------------------------------------------------------------ X / VNC


@pytest.fixture
def xvnc(tmp_path, request):
    """A TigerVNC Xvnc :N 1024x768x24 on a free port (SecurityTypes None, shared, localhost)."""
    x = Xvnc(tmp_path)
    _attach(request, "Xvnc log", x.log_path)
    x.start()
    yield x
    x.kill()


@pytest.fixture
def vnc_proxy():
    """Factory: vnc_proxy(upstream_port) -> VncProxy (see vncproxy.py)."""
    from vncproxy import VncProxy
    made = []

    def make(upstream_port: int) -> VncProxy:
        p = VncProxy(upstream_port)
        made.append(p)
        return p
    yield make
    for p in made:
        p.close()


# ------------------------------------------------------------------ QEMU test guest


@pytest.fixture(scope="session")
def guest_build():
    """Builds (once per run) the test-pattern guest of packer/testpattern and returns
    (testguest module, build paths)."""
    if not (GUEST_DIR / "testguest.py").is_file():
        pytest.fail(f"{GUEST_DIR}/testguest.py is missing: the QEMU test guest is needed "
                    f"for the pattern tests", pytrace=False)
    tg = importlib.import_module("testguest")  # packer/testpattern is on pytest.ini's pythonpath
    t0 = time.monotonic()
    paths = tg.build()
    print(f"[guest] built in {time.monotonic() - t0:.1f}s: {paths}")
    return tg, paths


@dataclass
class QemuGuest:
    port: int
    proc: subprocess.Popen
    log_path: Path
    module: object = field(repr=False)
    serial_path: Path | None = None

    def match_pattern(self, rgb):
        return self.module.match_pattern(rgb)


def _start_guest(guest_build, tmp_path, request, name: str = "qemu", **guest_kw) -> QemuGuest:
    """Boots the test-pattern guest (qemu_command's keyword arguments, e.g. audio=True,
    tone=440) with VNC on a free port and waits for its READY marker."""
    tg, paths = guest_build
    vnc_port = free_port()
    while vnc_port < 5900:
        vnc_port = free_port()
    serial = tmp_path / f"{name}-serial.log"
    argv = [str(a) for a in tg.qemu_command(paths, vnc_port=vnc_port, serial_log=str(serial), **guest_kw)]
    log = tmp_path / f"{name}.log"
    log.write_text("$ " + " ".join(argv) + "\n")
    _attach(request, f"{name} log", log)
    _attach(request, f"{name} serial console", serial)
    proc = spawn(argv, log_path=log, name=name)
    t0 = time.monotonic()
    try:
        wait_port(vnc_port, 60, proc, what=f"QEMU VNC port {vnc_port}")
        marker = getattr(tg, "READY_MARKER", None)
        if marker:   # the guest prints it on ttyS0 once its patterns are on screen
            def ready():
                if proc.poll() is not None:
                    raise ProcessExited(f"QEMU exited rc={proc.returncode}")
                return serial.exists() and marker in serial.read_text(errors="replace")
            wait_until(ready, 150, 0.1, f"guest {marker!r} on the serial console")
    except (ProcessExited, TimeoutError) as e:
        kill_group(proc)
        pytest.fail(f"{e}\n--- QEMU log ---\n{tail(log)}\n--- serial ---\n{tail(serial)}", pytrace=False)
    print(f"[guest] {name} ready after {time.monotonic() - t0:.1f}s")
    return QemuGuest(vnc_port, proc, log, tg, serial)


@pytest.fixture
def qemu_guest(guest_build, tmp_path, request):
    """The QEMU test-pattern guest with its VNC server on a free port."""
    g = _start_guest(guest_build, tmp_path, request)
    yield g
    kill_group(g.proc, grace=3)


@pytest.fixture
def qemu_guests(guest_build, tmp_path, request):
    """Factory: qemu_guests(**qemu_command keywords) boots another test-pattern guest, e.g.
    qemu_guests(audio=True, tone=(440, 1000, 1000)); all are stopped at teardown."""
    made: list[QemuGuest] = []

    def start(**kw) -> QemuGuest:
        g = _start_guest(guest_build, tmp_path, request, name=f"qemu{len(made)}", **kw)
        made.append(g)
        return g
    yield start
    for g in made:
        kill_group(g.proc, grace=3)


# ------------------------------------------------------------------ WebRTC viewers


@pytest.fixture(scope="session")
def aio_loop():
    from loco_testkit.whep_aiortc import LoopThread
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def aiortc_viewer(aio_loop):
    """Factory: aiortc_viewer(agent, codec=None, token=None, name=..., restrict_codecs=True)
    -> SyncViewer (WHEP-connected aiortc peer decoding frames). Closed (DELETE) at teardown."""
    from loco_testkit.whep_aiortc import SyncViewer
    made = []

    def connect(agent: Agent, codec: str | None = None, token: str | None = None,
                name: str | None = None, **kw) -> SyncViewer:
        v = SyncViewer.connect(aio_loop, agent.url, name=name or f"aiortc#{len(made)}",
                               codec=codec, token=token, **kw)
        made.append(v)
        return v
    yield connect
    for v in made:
        try:
            v.close()
        except Exception as e:  # noqa: BLE001
            print(f"closing {v.name}: {e!r}")


@pytest.fixture(scope="session")
def static_site():
    from chromium_viewer import StaticServer
    s = StaticServer()
    yield s
    s.close()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright
    from chromium_viewer import CHROMIUM, CHROMIUM_ARGS
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium", pytrace=False)
    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield b
    try:
        b.close()
    finally:
        pw.stop()


@pytest.fixture
def loco_page(browser, tmp_path, request):
    """Factory: loco_page([{"name":..., "whep":..., "token":...}, ...]) -> LocoPage, the real WebXR
    page (www/dist, flat view) serving those desktops. Fails the test on uncaught page errors."""
    from chromium_viewer import LocoPage, LocoPageServer
    made = []

    def open_page(desktops: list[dict], name: str = "loco-page") -> LocoPage:
        srv = LocoPageServer(desktops)
        ctx = browser.new_context()
        p = LocoPage(ctx.new_page(), srv.url, name=name)
        made.append((srv, ctx, p))
        return p
    yield open_page
    errors = []
    for srv, ctx, p in made:
        logp = tmp_path / f"{p.name}-console.log"
        logp.write_text("\n".join(p.console + [f"[pageerror] {e}" for e in p.page_errors]))
        _attach(request, f"{p.name} console", logp)
        if p.page_errors:
            errors.append(f"{p.name}: uncaught page errors: {p.page_errors}")
        ctx.close()  # the page's sessions end (DELETE on pagehide, or the agent's session timeout)
        srv.close()
    if errors:
        pytest.fail("; ".join(errors))


@pytest.fixture
def chromium(browser, static_site, tmp_path, request):
    """Factory: chromium(name=...) -> ChromiumViewer on a fresh page of viewer.html.
    Fails the test if any page raised an uncaught error."""
    from chromium_viewer import ChromiumViewer
    made = []

    def open_page(name: str | None = None) -> ChromiumViewer:
        ctx = browser.new_context()
        page = ctx.new_page()
        v = ChromiumViewer(page, static_site.url, name=name or f"chromium#{len(made)}")
        made.append((ctx, v))
        return v
    yield open_page
    errors = []
    for ctx, v in made:
        logp = tmp_path / f"{v.name.replace('#', '_')}-console.log"
        logp.write_text("\n".join(v.console + [f"[pageerror] {e}" for e in v.page_errors]))
        _attach(request, f"{v.name} console", logp)
        try:
            if v.get("state") == "negotiated":
                v.stop()
        except Exception as e:  # noqa: BLE001
            print(f"stopping {v.name}: {e!r}")
        if v.page_errors:
            errors.append(f"{v.name}: uncaught page errors: {v.page_errors}")
        try:
            ctx.close()
        except Exception:  # noqa: BLE001
            pass
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)
