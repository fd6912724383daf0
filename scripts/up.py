#!/usr/bin/env python3
"""`./loco up`: start N VMs, one loco-agent beside each, and a page that shows them all.

    ./loco up [--vms N] [--codec h264|vp8] [--port P] [--host ADDR] [--image DISK | --test-pattern]
              [--cold | --save-state | --from-state] [--state-dir DIR] [--boot-timeout S]

N VMs (default 9, the most; --vms 1 for one).

Each VM is a QEMU process with its VNC server (and QMP) on Unix sockets in a private runtime
directory; each agent reads that socket and serves WHEP on --port+1, --port+2, ... The WebXR
page (the client built into www/dist/ by scripts/build-web.sh; `./loco up` builds it) and
`desktops.json` are served on --port, and the plain-JS flat page (scripts/wall/) on /wall/.
Every child runs in its own process group with its log in the runtime directory. Ctrl-C (or
SIGTERM) stops them all: SIGTERM, then SIGKILL after a grace period. A VM whose QEMU or agent
dies on its own is reported and left out; the others go on being served (up.py exits 1 when
none is left). Bad arguments exit 2.

By default (or with --standin) the VMs run the free IceWM stand-in desktop (packer/standin/,
built on first use and cached); with --image, that disk (e.g. the Windows 98 SoftGPU image from
packer/win98/); with --test-pattern, the tiny test-pattern guest (agent/tests/guest). The
stand-in and --image VMs each run on their own copy-on-write overlay (the image itself is never
written; the overlays are deleted at exit), with the QEMU options of the image's profile in
packer/qemu-args.json (shared with the VM runner).

Saved state (packer/vmstate.py): the stand-in's first run boots one VM cold, saves its running
state once its desktop is up, and starts every VM from that state; later runs restore all N in
seconds, even under TCG. The state is kept under $LOCO_CACHE/vm-state (or --state-dir) and made
anew when the image, QEMU or the VM's QEMU options change; a state QEMU cannot load is discarded
and made again (and if that fails too, the VMs boot cold). --image DISK --save-state does the same
for your own image (it saves when the profile's ready line appears on the serial port, or when you
press Enter); later runs of --image DISK start from it (--from-state insists on it). --cold boots
every VM cold.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import http.server
import ipaddress
import json
import os
import re
import select
import shlex
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
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
WALL_DIR = ROOT / "scripts" / "wall"
WEB_DIR = Path(os.environ.get("LOCO_WEB_DIR") or ROOT / "www" / "dist")
GUEST_DIR = ROOT / "agent" / "tests" / "guest"
PACKER_DIR = ROOT / "packer"
STANDIN_BUILD = PACKER_DIR / "standin" / "build.sh"
MAX_VMS = 9
GRACE_S = 5.0  # SIGTERM -> SIGKILL
QEMU = "qemu-system-x86_64"
SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes; stay clear of it
RESTORE_S = 120.0  # a VM not running this long after starting from a saved state: the state is bad


class UsageError(Exception):
    """Bad input: one readable sentence, exit status 2."""


class Failure(Exception):
    """Something went wrong at run time: exit status 1."""


def say(msg: str = "") -> None:
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(f"loco up: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- arguments


def _vms(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_VMS}, not {s!r}") from None
    if not 1 <= n <= MAX_VMS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_VMS}, not {n}")
    return n


def _port(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a TCP port number, not {s!r}") from None
    if not 1 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 1 to 65535, not {n}")
    return n


def _seconds(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {s!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {s}")
    return v


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="loco up",
        description="Start N VMs with a loco-agent each, and serve a page that shows them all.",
    )
    ap.add_argument("--vms", type=_vms, default=MAX_VMS, metavar="N",
                    help=f"how many VMs (1-{MAX_VMS}, default {MAX_VMS})")
    ap.add_argument("--codec", choices=["h264", "vp8"], default="h264", help="agents' default codec (default h264)")
    ap.add_argument("--port", type=_port, default=8000, metavar="P",
                    help="the page's port (default 8000); agent i listens on P+i")
    ap.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                    help="address the page and agents listen on (default 127.0.0.1; 0.0.0.0 for the LAN)")
    guest = ap.add_mutually_exclusive_group()
    guest.add_argument("--standin", action="store_true",
                       help="boot the free IceWM stand-in desktop (the default; packer/standin/, built on "
                            "first use, which needs root and the Debian mirror)")
    guest.add_argument("--image", metavar="DISK",
                       help="boot this disk image (qcow2) in every VM, each through its own overlay, "
                            "instead of the stand-in desktop")
    guest.add_argument("--test-pattern", action="store_true",
                       help="boot the tiny test-pattern guest (agent/tests/guest) instead of the stand-in")
    ap.add_argument("--profile", metavar="NAME",
                    help="with --image: its QEMU options from packer/qemu-args.json (default win98)")
    ap.add_argument("--runtime-dir", metavar="DIR",
                    help="where sockets, logs and overlays go (default: a new private temp dir, "
                         "removed at a clean exit)")
    state = ap.add_mutually_exclusive_group()
    state.add_argument("--cold", action="store_true",
                       help="boot every VM cold: neither use nor make a saved state")
    state.add_argument("--save-state", action="store_true",
                       help="make the saved state anew: boot vm1 cold, save it once its desktop is up (the "
                            "profile's ready line, or Enter on the terminal), then start every VM from it")
    state.add_argument("--from-state", action="store_true",
                       help="start from the saved state made earlier with --save-state; stop when there is "
                            "none that fits")
    ap.add_argument("--state-dir", metavar="DIR",
                    help="where the image's saved state is kept (default: under $LOCO_CACHE/vm-state)")
    ap.add_argument("--boot-timeout", type=_seconds, default=None, metavar="S",
                    help="after S seconds, serve the VMs that are up and say which are still booting "
                         "(default: from the number of VMs and the accelerator)")
    a = ap.parse_args(argv)
    if a.port + a.vms > 65535:
        ap.error(f"--port {a.port} leaves no room for {a.vms} agent port(s) above it")
    if a.profile and not a.image:
        ap.error("--profile goes with --image")
    if not a.image and not a.test_pattern:
        a.standin = True
    if a.test_pattern and (a.save_state or a.from_state):
        ap.error("the test-pattern guest boots in seconds: it has no saved state")
    if a.state_dir and a.test_pattern:
        ap.error("--state-dir goes with the stand-in or --image")
    return a


# ----------------------------------------------------------------------------- checks


def agent_binary() -> Path:
    env = os.environ.get("LOCO_AGENT_BIN")
    if env:
        p = Path(env)
    else:
        base = os.environ.get("LOCO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "loco")
        target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(base, "target")
        p = Path(target) / "release" / "loco-agent"
    if not (p.is_file() and os.access(p, os.X_OK)):
        raise UsageError(f"loco-agent is not built at {p} (run ./loco build, or set LOCO_AGENT_BIN)")
    return p


def check_image(path: str) -> tuple[str, str]:
    """(absolute path, format) of a readable disk image; UsageError otherwise."""
    p = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(p):
        raise UsageError(f"--image {path}: no such file")
    if not os.path.isfile(p):
        raise UsageError(f"--image {path}: not a regular file")
    if not os.access(p, os.R_OK):
        raise UsageError(f"--image {path}: not readable")
    if not shutil.which("qemu-img"):
        raise UsageError("qemu-img is not installed (it comes with qemu-utils)")
    r = subprocess.run(["qemu-img", "info", "--output=json", p], capture_output=True, text=True)
    if r.returncode != 0:
        err = (r.stderr.strip().splitlines() or ["qemu-img info failed"])[-1]
        raise UsageError(f"--image {path}: not a disk image QEMU can open ({err})")
    try:
        fmt = json.loads(r.stdout)["format"]
    except (ValueError, KeyError):
        raise UsageError(f"--image {path}: qemu-img could not tell its format") from None
    # qemu-img calls any file "raw"; a raw disk is at least a few sectors, in whole sectors.
    size = os.path.getsize(p)
    if fmt == "raw" and (size < 1 << 20 or size % 512):
        raise UsageError(f"--image {path}: does not look like a disk image (not qcow2, and {size} bytes "
                         f"is no whole number of sectors of a disk)")
    return p, fmt


def qemu_profiles():
    """packer/qemuargs.py, the reader of packer/qemu-args.json (shared with the VM runner)."""
    if str(PACKER_DIR) not in sys.path:
        sys.path.insert(0, str(PACKER_DIR))
    import qemuargs  # noqa: E402

    return qemuargs


def build_standin() -> Path:
    """The stand-in's directory (standin.qcow2, vmlinuz, initrd.img), built first when missing or
    when its recipe changed; the build's progress goes to the terminal."""
    say("loco up: checking the stand-in desktop image (packer/standin/build.sh; the first build takes "
        "a few minutes)")
    try:
        r = subprocess.run(["bash", str(STANDIN_BUILD)], stdout=subprocess.PIPE, text=True)
    except OSError as e:
        raise Failure(f"cannot run {STANDIN_BUILD}: {e.strerror}") from None
    if r.returncode != 0:
        raise Failure(f"building the stand-in desktop failed (exit status {r.returncode}); "
                      f"see the messages above, or run {STANDIN_BUILD} by hand")
    out = Path((r.stdout.strip().splitlines() or [""])[-1])
    if not (out / "standin.qcow2").is_file():
        raise Failure(f"{STANDIN_BUILD} did not leave standin.qcow2 in {out}")
    return out


def bind_family(host: str):
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: not an address ({e.strerror})") from None
    return infos[0][0], infos[0][4][0]


def port_problem(family, addr: str, port: int) -> str | None:
    """Why (addr, port) cannot be listened on, or None. SO_REUSEADDR like the agent and http.server."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
            s.listen(1)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return "is already in use"
            if e.errno == errno.EADDRNOTAVAIL:
                return "is on an address this machine does not have"
            if e.errno == errno.EACCES:
                return "needs privileges (ports below 1024 are reserved)"
            return f"cannot be listened on ({e.strerror})"
    return None


def lan_addresses() -> list[str]:
    """This host's non-loopback IPv4 addresses, the default route's first."""
    addrs: list[str] = []
    try:  # the source address of the default route (connect() on UDP sends nothing)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            addrs.append(s.getsockname()[0])
    except OSError:
        pass
    try:
        r = subprocess.run(["ip", "-j", "-4", "addr", "show", "up"], capture_output=True, text=True, timeout=5)
        for link in json.loads(r.stdout or "[]"):
            for a in link.get("addr_info", []):
                if a.get("scope") == "global" and a.get("local"):
                    addrs.append(a["local"])
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    out = []
    for a in addrs:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        if not ip.is_loopback and not ip.is_unspecified and a not in out:
            out.append(a)
    return out


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def url_host(host: str) -> str:
    """An address as it goes into a URL (IPv6 in brackets)."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def probe_host(host: str) -> str:
    """Where this machine reaches a server listening on `host`."""
    if is_wildcard(host):
        return "::1" if ":" in host else "127.0.0.1"
    return host


# ----------------------------------------------------------------------------- children

# Children get SIGTERM when up.py goes away, even by SIGKILL (util-linux's setpriv sets the parent
# death signal and execs; no Python runs between fork and exec, so starting children while the
# page's server threads run is safe).
_PDEATHSIG = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []


@dataclass
class Child:
    name: str  # "vm1 QEMU", "vm1 agent"
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    expected_exit: bool = False

    def start(self):
        with open(self.log, "ab") as f:
            f.write(f"# {shlex.join(self.argv)}\n".encode())
            f.flush()
            self.proc = subprocess.Popen(_PDEATHSIG + self.argv, stdin=subprocess.DEVNULL, stdout=f,
                                         stderr=subprocess.STDOUT, process_group=0, close_fds=True)
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            pass

    def how_it_ended(self) -> str:
        rc = self.proc.returncode
        if rc is None:
            return "is running"
        if rc < 0:
            try:
                return f"was killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"was killed by signal {-rc}"
        return f"exited with status {rc}"

    def tail(self, n=15) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        lines = [l for l in lines if not l.startswith("# ")] or lines
        return "\n".join("    " + l for l in lines[-n:])


# How a VM starts: booting cold, booting cold to have its state saved, restored from a saved
# state, or waiting for the state another VM is about to save.
COLD, SAVER, RESTORE, WAIT = "cold", "saver", "restore", "wait"


@dataclass
class VM:
    index: int
    dir: Path
    agent_port: int
    vnc: str  # "unix:PATH" or "127.0.0.1:PORT"
    qemu: Child | None
    agent: Child
    serial_log: Path | None = None
    ready_marker: str | None = None
    stages: list = field(default_factory=list)  # [[serial-log text, stage name], ...]
    mode: str = COLD
    qmp: Path | None = None
    guest_ready: bool = False
    want_size: tuple[int, int] | None = None  # the agent must see this mode, not the boot one
    health: dict | None = None
    t_started: float = 0.0
    t_ready: float | None = None
    failed: str | None = None  # why it is out of the run
    restore_status: str | None = None  # QMP run state while restoring
    t_status: float = 0.0
    extra_vnc: tuple = (None, None)  # (Unix socket path, TCP port): where QEMU serves VNC
    told_ready: bool = False  # its readiness was announced

    @property
    def name(self):
        return f"vm{self.index}"

    def serial(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace") if self.serial_log else ""
        except OSError:
            return ""

    def check_guest(self, now: float) -> bool:
        """Whether the guest is at its desktop: the ready line on the serial port (cold boots of a
        guest that prints one), QMP "running" (restored VMs), or at once (images without a line)."""
        if self.guest_ready:
            return True
        if self.mode == RESTORE:
            if now - self.t_status >= 0.5:
                self.t_status = now
                self.restore_status = vmstate().qmp_status(self.qmp, timeout=1.0, resume=True)
            self.guest_ready = self.restore_status == "running"
        elif self.ready_marker is None:
            self.guest_ready = True
        else:
            self.guest_ready = self.ready_marker in self.serial()
        return self.guest_ready

    def stage(self) -> str:
        """Where the VM is, in words, for the progress line."""
        if self.failed:
            return "failed"
        if self.t_ready is not None:
            return "ready"
        if self.mode == WAIT:
            return "waiting for the saved state"
        if self.mode == RESTORE and not self.guest_ready:
            return "restoring" if self.restore_status in (None, "inmigrate") else (self.restore_status or "restoring")
        if not self.guest_ready:
            text, where = self.serial(), "booting"
            for marker, name in self.stages:
                if marker in text:
                    where = f"booting: {name}"
            return where + (", to be saved" if self.mode == SAVER else "")
        if self.health is None:
            return "agent connecting"
        return "agent waiting for the screen mode"


def vmstate():
    """packer/vmstate.py (saved VM states), beside qemuargs.py."""
    qemu_profiles()
    import vmstate as mod  # noqa: E402

    return mod


def healthz(host: str, port: int, timeout=1.0) -> tuple[int, dict | None]:
    url = f"http://{url_host(probe_host(host))}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None
    except (OSError, ValueError):
        return 0, None


# ----------------------------------------------------------------------------- web page


class WallServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, family, up):
        self.address_family = family
        self.up = up
        super().__init__(addr, WallHandler)


_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d+)?$")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".json": "application/json", ".svg": "image/svg+xml",
          ".png": "image/png", ".ico": "image/x-icon", ".wasm": "application/wasm"}


class WallHandler(http.server.BaseHTTPRequestHandler):
    server_version = "loco-up"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # into the runtime dir, not the terminal
        try:
            with open(self.server.up.http_log, "a") as f:
                f.write("%s %s\n" % (self.address_string(), fmt % args))
        except OSError:
            pass

    def _send(self, status, body: bytes, ctype="text/plain; charset=utf-8", head=False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _host_for_urls(self) -> str:
        """The host name the browser used to reach this page: the agents are on the same host."""
        h = (self.headers.get("Host") or "").strip()
        m = _HOST_RE.match(h)
        if m:
            return m.group(1)
        return self.server.up.default_url_host()

    def do_GET(self, head=False):
        path = urlsplit(self.path).path
        if path == "/":
            path = "/index.html"
        if path == "/wall":
            path = "/wall/"
        if path in ("/desktops.json", "/wall/desktops.json"):
            body = json.dumps(self.server.up.desktops(self._host_for_urls()), indent=1).encode() + b"\n"
            return self._send(200, body, "application/json", head)
        base, rel = (WALL_DIR, path[len("/wall/"):]) if path.startswith("/wall/") else (WEB_DIR, path.lstrip("/"))
        rel = rel or "index.html"
        # Plain names in plain folders only (wasm-bindgen puts snippets in a subfolder).
        if all(re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", part) for part in rel.split("/")):
            f = base / rel
            if f.is_file():
                ctype = _TYPES.get(f.suffix, "application/octet-stream")
                return self._send(200, f.read_bytes(), ctype, head)
        if path == "/favicon.ico":
            return self._send(204, b"", head=head)
        return self._send(404, b"not found\n", head=head)

    def do_HEAD(self):
        self.do_GET(head=True)


# ----------------------------------------------------------------------------- the run


class Up:
    def __init__(self, args):
        self.args = args
        self.vms: list[VM] = []
        self.children: list[Child] = []
        self.httpd: WallServer | None = None
        self.stop_signal: int | None = None
        self.hurry = False
        self.own_runtime_dir = False
        self.runtime_dir: Path | None = None
        self.http_log: Path | None = None
        self.accel = "kvm"
        self.serving = False
        self.saving = None
        self.state = None
        self.t0 = time.monotonic()
        self.t_announced = self.t0

    # --- signals
    def on_signal(self, signum, _frame):
        if self.stop_signal is not None:
            self.hurry = True  # second Ctrl-C: do not wait for the grace period
        self.stop_signal = signum

    def default_url_host(self) -> str:
        h = self.args.host
        if is_wildcard(h):
            lan = lan_addresses()
            return lan[0] if lan else ("[::1]" if ":" in h else "127.0.0.1")
        return url_host(h)

    def desktops(self, host: str) -> dict:
        return {"desktops": [{"name": vm.name, "whep": f"http://{host}:{vm.agent_port}/whep", "token": None}
                             for vm in self.vms]}

    # --- setup
    def prepare(self):
        a = self.args
        self.agent = agent_binary()
        if not shutil.which(QEMU):
            raise UsageError(f"{QEMU} is not installed (./loco deps installs it)")
        self.image = check_image(a.image) if a.image else None
        self.profile = None  # the packer/qemu-args.json profile of self.image
        self.image_dir = None
        if self.image is not None:
            self.profile = a.profile or "win98"
            self.image_dir = os.path.dirname(self.image[0])
        elif a.standin:
            self.profile = "standin"
        if self.profile is not None:
            try:
                self.profile_spec = qemu_profiles().profile(self.profile)
            except (KeyError, OSError, ValueError) as e:
                raise UsageError(str(e.args[0] if isinstance(e, KeyError) else e)) from None
        if not WALL_DIR.joinpath("index.html").is_file():
            raise UsageError(f"the page is missing: {WALL_DIR}/index.html")
        if not WEB_DIR.joinpath("index.html").is_file():
            raise UsageError(f"the WebXR page is not built: {WEB_DIR}/index.html is missing "
                             "(run scripts/build-web.sh, or ./loco up, which builds it)")
        self.family, self.bind_addr = bind_family(a.host)
        # The page's port first (and keep it), then check the agents' ports are free.
        why = port_problem(self.family, self.bind_addr, a.port)
        if why and "does not have" in why:
            raise UsageError(f"--host {a.host}: not an address of this machine")
        if why:
            raise UsageError(f"port {a.port} on {a.host} {why} (pick another with --port)")
        try:
            self.httpd = WallServer((self.bind_addr, a.port), self.family, self)
        except OSError as e:
            raise UsageError(f"cannot serve the page on {a.host}:{a.port}: {e.strerror}") from None
        for i in range(1, a.vms + 1):
            why = port_problem(self.family, self.bind_addr, a.port + i)
            if why:
                raise UsageError(f"port {a.port + i} on {a.host} (vm{i}'s agent) {why}; agents use "
                                 f"--port+1 to --port+{a.vms}, so pick another --port")
        # Runtime dir.
        if a.runtime_dir:
            self.runtime_dir = Path(a.runtime_dir).resolve()
            self.runtime_dir.mkdir(parents=True, exist_ok=True)
        else:
            base = os.environ.get("XDG_RUNTIME_DIR")
            if not (base and os.path.isdir(base) and os.access(base, os.W_OK)):
                base = None
            self.runtime_dir = Path(tempfile.mkdtemp(prefix="loco-up-", dir=base))
            self.own_runtime_dir = True
        os.chmod(self.runtime_dir, 0o700)
        self.http_log = self.runtime_dir / "http.log"
        # Guest.
        sys.path.insert(0, str(GUEST_DIR))
        import testguest  # noqa: E402 (needs numpy: the venv has it)

        self.testguest = testguest
        self.accel = "kvm" if testguest.kvm_usable() else "tcg"
        if a.standin and self.stop_signal is None:
            d = build_standin()
            self.image = check_image(str(d / self.profile_spec["image"]))
            self.image_dir = str(d)
        self.guest_paths = None if self.image else testguest.build()
        self.plan_state()


    # --- saved state
    def qemu_argv(self, *, disk, vnc, serial, qmp, name) -> list[str]:
        return qemu_profiles().qemu_argv(self.profile, disk=str(disk), image_dir=self.image_dir, accel=self.accel,
                                         vnc=vnc, serial=f"file:{serial}", qemu_name=name, qemu=QEMU,
                                         qmp=f"unix:{qmp},server=on,wait=off" if qmp else None)

    def plan_state(self):
        """Whether the VMs start from a saved state (RESTORE), make one first (SAVER), or boot cold."""
        a = self.args
        self.state = None
        self.state_plan = COLD
        self.saving = None
        self.state_made = False  # a state was saved in this run (if that one fails too: cold)
        if self.image is None or a.cold:
            return
        sock = self.runtime_dir / f"vm{a.vms}" / "qmp.sock"
        if len(str(sock)) > SUN_PATH_MAX:
            if a.save_state or a.from_state:
                raise UsageError(f"a saved state needs QMP on a Unix socket, and the runtime dir {self.runtime_dir} "
                                 "is too deep for one (pick a shorter --runtime-dir)")
            say("loco up: the runtime dir is too deep for Unix sockets: the VMs boot cold (no saved state)")
            return
        vs = vmstate()
        image, _fmt = self.image
        x = Path("/per-vm")
        shape = vs.shape_of(self.qemu_argv(disk=x, vnc=f"unix:{x}", serial=x, qmp=x, name="x"))
        extra = qemu_profiles().kernel_files(self.profile, disk=image, image_dir=self.image_dir)
        self.state_key, self.state_what = vs.make_key(qemu_version=vs.qemu_version(QEMU), argv_shape=shape,
                                                      image=vs.image_identity(image, extra))
        if a.state_dir:
            self.state_dir = Path(a.state_dir).expanduser().resolve()
        else:
            base = os.environ.get("LOCO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "loco")
            tag = hashlib.sha256(os.path.realpath(image).encode()).hexdigest()[:12]
            self.state_dir = Path(base) / "vm-state" / f"{self.profile}-{tag}"
        self.save_on_enter = not self.profile_spec.get("ready_marker")
        if a.save_state:
            self.state_plan = SAVER
        else:
            st, why = vs.lookup(self.state_dir, self.state_key, self.state_what)
            if st is not None:
                self.state, self.state_plan = st, RESTORE
                say(f"loco up: starting from the saved state in {self.state_dir} (saved {st.meta.get('saved_at')}; "
                    "--cold boots cold instead)")
                return
            if a.from_state:
                raise UsageError(f"--from-state: no saved state of {image} to start from ({why}); make one with "
                                 "--save-state")
            if not a.standin:
                if (self.state_dir / vs.META_FILE).exists():
                    say(f"loco up: the saved state in {self.state_dir} is not used: {why}; --save-state makes a new one")
                return  # your own image boots cold unless you ask for a state
            say(f"loco up: no saved state to start from ({why}): vm1 boots cold and its state is saved once its "
                f"desktop is up, then every VM starts from it (later runs start in seconds)")
            self.state_plan = SAVER
        if self.save_on_enter and not sys.stdin.isatty():
            raise UsageError(f"profile {self.profile} has no ready line, so --save-state saves when you press Enter: "
                             "run it on a terminal")

    def default_timeout(self) -> float:
        n = self.args.vms
        cold_one = 120.0 if self.accel == "tcg" else 40.0
        if self.state_plan == RESTORE:
            return 60.0 + 5 * n
        if self.state_plan == SAVER:
            return cold_one + 60.0 + 5 * n
        return cold_one + (45.0 if self.accel == "tcg" else 10.0) * n

    # --- the VMs
    def plan_vm(self, i: int) -> VM:
        a = self.args
        d = self.runtime_dir / f"vm{i}"
        d.mkdir(exist_ok=True)
        sock = d / "vnc.sock"
        if len(str(sock)) <= SUN_PATH_MAX:
            vnc_unix, vnc_port = str(sock), None
            vnc = f"unix:{sock}"
        else:  # runtime dir too deep for a Unix socket: loopback TCP
            vnc_unix, vnc_port = None, self.testguest.free_vnc_port(5900 + i, 5999)
            vnc = f"127.0.0.1:{vnc_port}"
        port = a.port + i
        agent = Child(f"vm{i} agent", [str(self.agent), "--vnc", vnc,
                                       "--listen", f"{url_host(self.bind_addr)}:{port}", "--codec", a.codec],
                      d / "agent.log")
        if self.image is None:
            marker, stages = self.testguest.READY_MARKER, []
            want = (self.guest_paths.width, self.guest_paths.height)
        else:
            marker, stages = self.profile_spec.get("ready_marker"), self.profile_spec.get("boot_stages") or []
            want = tuple(self.profile_spec["screen"]) if marker and self.profile_spec.get("screen") else None
        return VM(i, d, port, vnc, None, agent, serial_log=d / "serial.log", ready_marker=marker, stages=stages,
                  want_size=want, qmp=d / "qmp.sock" if self.state_plan != COLD else None,
                  extra_vnc=(vnc_unix, vnc_port))

    def start_qemu(self, vm: VM, mode: str):
        """Start (or restart) vm's QEMU in `mode`; WAIT starts nothing yet."""
        vm.mode, vm.guest_ready, vm.restore_status, vm.health = mode, False, None, None
        vm.t_started = time.monotonic()
        vm.serial_log.write_text("")
        if mode == WAIT:
            vm.qemu = None
            return
        vnc_unix, vnc_port = vm.extra_vnc
        if self.image is None:
            cmd = self.testguest.qemu_command(self.guest_paths, vnc_port=vnc_port, vnc_unix=vnc_unix,
                                              serial_log=str(vm.serial_log), accel=self.accel)
            cmd[cmd.index("-name") + 1] = f"loco-{vm.name}"
        else:
            overlay = vm.dir / "overlay.qcow2"
            try:
                overlay.unlink()
            except FileNotFoundError:
                pass
            if mode == SAVER:
                disk = self.saving.disk
            elif mode == RESTORE:
                try:
                    self.state.overlay(overlay)
                except OSError as e:
                    raise Failure(f"{vm.name}: {e}") from None
                disk = overlay
            else:
                image, fmt = self.image
                r = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", fmt, str(overlay)],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    raise Failure(f"{vm.name}: qemu-img create failed: {r.stderr.strip()}")
                disk = overlay
            vnc_arg = f"unix:{vnc_unix}" if vnc_unix else f"127.0.0.1:{vnc_port - 5900}"
            cmd = self.qemu_argv(disk=disk, vnc=vnc_arg, serial=vm.serial_log, qmp=vm.qmp, name=f"loco-{vm.name}")
            if mode == RESTORE:
                cmd += self.state.incoming()
        vm.qemu = Child(f"{vm.name} QEMU", cmd, vm.dir / "qemu.log").start()
        self.children.append(vm.qemu)

    def stop_qemu(self, vm: VM):
        """End vm's QEMU now (it is being replaced): SIGKILL its group and reap it."""
        if vm.qemu is None:
            return
        vm.qemu.expected_exit = True
        vm.qemu.signal_group(signal.SIGKILL)
        try:
            vm.qemu.proc.wait(10)
        except subprocess.TimeoutExpired:
            warn(f"{vm.qemu.name} (pid {vm.qemu.pid}) did not exit after SIGKILL")

    def begin_save(self, saver: VM, others: list[VM]):
        self.saving = vmstate().Saving(self.state_dir, *self.image)
        self.state_made = True
        self.start_qemu(saver, SAVER)
        for vm in others:
            self.start_qemu(vm, WAIT)

    def start(self):
        for i in range(1, self.args.vms + 1):
            self.vms.append(self.plan_vm(i))
        # QEMUs first (their VNC sockets exist as soon as they start), then the agents.
        if self.state_plan == SAVER:
            try:
                self.begin_save(self.vms[0], self.vms[1:])
            except OSError as e:
                raise Failure(f"cannot prepare the saved state in {self.state_dir}: {e}") from None
        else:
            for vm in self.vms:
                self.start_qemu(vm, self.state_plan)
        for vm in self.vms:
            self.children.append(vm.agent.start())
        threading.Thread(target=self.httpd.serve_forever, name="wall-http", daemon=True).start()
        self.serving = True

    # --- events
    def fail(self, vm: VM, why: str):
        """vm is out of the run (its QEMU or agent died): say why, stop what is left of it."""
        vm.failed = why
        warn(f"{why}\n  {vm.name} is left out; the other VMs go on (logs: {vm.dir})")
        for c in (vm.qemu, vm.agent):
            if c is not None:
                c.expected_exit = True
                c.signal_group(signal.SIGTERM)
        waiting = [v for v in self.vms if v.mode == WAIT and not v.failed]
        if vm.mode == SAVER and waiting:
            warn("no saved state this time: the other VMs boot cold")
            self.saving.abandon()
            for v in waiting:
                self.start_qemu(v, COLD)

    def restore_failed(self, vm: VM):
        last = (vm.qemu.tail(3).strip().splitlines() or ["(no message)"])[-1].strip()
        pending = [v for v in self.vms if not v.failed and v.mode == RESTORE and v.t_ready is None]
        for v in pending:
            self.stop_qemu(v)
        vmstate().discard(self.state_dir)
        self.state = None
        if not self.state_made:
            warn(f"{vm.name}: QEMU could not start from the saved state ({last}); discarded it. Making it anew: "
                 f"{pending[0].name} boots cold, then the VMs still starting start from its state")
            try:
                self.begin_save(pending[0], pending[1:])
                return
            except OSError as e:
                warn(f"cannot prepare a new saved state ({e})")
        else:
            warn(f"{vm.name}: QEMU could not start from the state saved in this run either ({last})")
        warn(f"booting {', '.join(v.name for v in pending)} cold")
        for v in pending:
            self.start_qemu(v, COLD)

    def save_state(self, saver: VM):
        vs = vmstate()
        waiting = [v for v in self.vms if v.mode == WAIT and not v.failed]
        say(f"loco up: {saver.name} reached its desktop {time.monotonic() - saver.t_started:.0f}s after a cold boot: "
            f"saving its state to {self.state_dir}")
        try:
            seconds = self.saving.save(saver.qmp, self.state_key, self.state_what)
            saver.qemu.expected_exit = True
            try:
                saver.qemu.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.stop_qemu(saver)
            self.state = self.saving.commit()
        except (vs.QMPError, OSError, ValueError) as e:
            warn(f"saving the state failed ({e}); the VMs boot cold")
            self.saving.abandon()
            self.stop_qemu(saver)
            for v in [saver] + waiting:
                self.start_qemu(v, COLD)
            return
        say(f"loco up: saved in {seconds:.1f}s ({self.state.meta['bytes'] / 2**20:.0f} MiB); starting "
            f"{len(waiting) + 1} VM{'s' if waiting else ''} from it")
        for v in [saver] + waiting:
            self.start_qemu(v, RESTORE)

    def check_vms(self, now: float):
        for vm in self.vms:
            if vm.failed:
                continue
            q = vm.qemu
            if q is not None and not q.alive() and not q.expected_exit:
                if vm.mode == RESTORE and vm.t_ready is None:
                    self.restore_failed(vm)
                else:
                    self.fail(vm, f"{q.name} (pid {q.pid}) {q.how_it_ended()}; its log ({q.log}) ends:\n{q.tail()}")
                continue
            if not vm.agent.alive() and not vm.agent.expected_exit:
                a = vm.agent
                self.fail(vm, f"{a.name} (pid {a.pid}) {a.how_it_ended()}; its log ({a.log}) ends:\n{a.tail()}")
                continue
            if vm.mode == RESTORE and vm.t_ready is None and not vm.guest_ready and now - vm.t_started > RESTORE_S:
                warn(f"{vm.name}: still {vm.restore_status or 'not answering'} {RESTORE_S:.0f}s after starting "
                     "from the saved state")
                self.restore_failed(vm)
                continue
            if vm.mode == SAVER:
                if self.save_on_enter:
                    if self.enter_pressed():
                        self.save_state(vm)
                elif vm.check_guest(now):
                    self.save_state(vm)
                continue
            if vm.mode == WAIT or vm.t_ready is not None:
                continue
            vm.check_guest(now)
            status, body = healthz(self.args.host, vm.agent_port, timeout=1.0)
            vm.health = body if status == 200 and isinstance(body, dict) else None
            if vm.guest_ready and vm.health and self.size_ok(vm):
                vm.t_ready = now - self.t0

    @staticmethod
    def enter_pressed() -> bool:
        try:
            r, _, _ = select.select([sys.stdin], [], [], 0)
        except (OSError, ValueError):
            return False
        return bool(r) and sys.stdin.readline() != ""

    def progress(self) -> str:
        groups: dict[str, list[str]] = {}
        for vm in self.vms:
            groups.setdefault(vm.stage(), []).append(vm.name)
        n_ready = sum(vm.t_ready is not None for vm in self.vms)
        return f"{n_ready}/{len(self.vms)} ready: " + "; ".join(f"{s} ({', '.join(v)})" for s, v in groups.items())

    def run(self):
        """Start the VMs, say how they get on, serve them; until a signal (or no VM is left)."""
        a = self.args
        if self.image is None:
            what = "test-pattern guest"
        elif self.args.standin:
            what = "IceWM stand-in desktop"
        else:
            what = f"{os.path.basename(self.image[0])}, QEMU profile {self.profile}"
        timeout = a.boot_timeout or self.default_timeout()
        say(f"loco up: starting {a.vms} VM{'s' if a.vms > 1 else ''} ({what}, {self.accel.upper()}"
            f"{', slow: no usable KVM here' if self.accel == 'tcg' else ''}) with "
            f"{'their agents' if a.vms > 1 else 'its agent'}; logs in {self.runtime_dir}")
        self.start()
        tty = sys.stderr.isatty()
        last_line, last_print = None, 0.0
        deadline = self.t0 + timeout
        announced = False
        if self.state_plan == SAVER and self.save_on_enter:
            self.announce()
            announced = True
            say(f"loco up: {self.vms[0].name} is booting {os.path.basename(self.image[0])} to have its state saved: "
                "watch it on the page and press Enter here once its desktop is up")
        while self.stop_signal is None:
            now = time.monotonic()
            self.check_vms(now)
            live = [vm for vm in self.vms if not vm.failed]
            if not live:
                raise Failure("no VM is left running (see above)")
            all_ready = all(vm.t_ready is not None for vm in live)
            if not announced:
                line = self.progress()
                if tty:
                    sys.stderr.write(f"\r\033[K  [{now - self.t0:5.1f}s] {line}")
                    sys.stderr.flush()
                elif line != last_line or now - last_print > 15:
                    print(f"  [{now - self.t0:5.1f}s] {line}", file=sys.stderr, flush=True)
                    last_line, last_print = line, now
                if all_ready or now > deadline:
                    if tty:
                        sys.stderr.write("\n")
                    if not all_ready:
                        warn(f"after {timeout:.0f}s not every VM is ready; serving those that are and still "
                             "waiting for: " + ", ".join(f"{vm.name} ({vm.stage()})" for vm in live
                                                         if vm.t_ready is None))
                    self.announce()
                    announced = True
            else:
                for vm in live:
                    if vm.t_ready is not None and not vm.told_ready:
                        say(f"loco up: {vm.name} is ready too ({vm.t_ready:.0f}s after the start)")
                        vm.told_ready = True
            self.sleep(0.25)

    @staticmethod
    def size_ok(vm) -> bool:
        if vm.want_size is None:
            return True
        return (vm.health.get("width"), vm.health.get("height")) == vm.want_size

    def sleep(self, s):
        end = time.monotonic() + s
        while self.stop_signal is None and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    def memory_mib(self) -> float:
        """Resident memory of the VMs' QEMUs together, MiB."""
        total = 0
        for vm in self.vms:
            if vm.qemu is not None and vm.qemu.alive():
                try:
                    for line in Path(f"/proc/{vm.qemu.pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                except OSError:
                    pass
        return total / 1024

    def announce(self):
        a = self.args
        self.t_announced = time.monotonic()
        say("")
        if is_wildcard(a.host):
            hosts = lan_addresses() + ["127.0.0.1"]
        else:
            hosts = [url_host(a.host)]
        h0 = hosts[0]
        ready = [vm for vm in self.vms if vm.t_ready is not None]
        say(f"loco is up: {len(self.vms)} desktop{'s' if len(self.vms) > 1 else ''}, codec {a.codec}"
            + (f", {len(ready)} ready {self.t_announced - self.t0:.1f}s after the start" if ready else ""))
        for h in hosts:
            say(f"  page   http://{h}:{a.port}/        (WebXR scene; flat view in any desktop browser)")
        say(f"  plain  http://{h0}:{a.port}/wall/   (the plain-JS flat page, no WebAssembly)")
        for vm in self.vms:
            if vm.failed:
                note = "   (failed: see above)"
            elif vm.t_ready is None:
                note = f"   ({vm.stage()})"
            elif vm.health and vm.health.get("width"):
                note = f"   ({vm.health['width']}x{vm.health['height']})"
            else:
                note = ""
            vm.told_ready = vm.t_ready is not None
            say(f"  {vm.name:<6} http://{h0}:{vm.agent_port}/whep{note}")
        say(f"  logs   {self.runtime_dir}")
        if self.state is not None:
            say(f"  state  {self.state_dir}   (the VMs started from it; QEMU memory {self.memory_mib():.0f} MiB "
                "in all)")
        if self.image is not None and not self.profile_spec.get("ready_marker"):
            say(f"  (the VMs are booting {os.path.basename(self.image[0])}: watch them on the page)")
        say("")
        if is_wildcard(a.host):
            lan = lan_addresses()
            where = f"http://{lan[0]}:{a.port}/" if lan else f"http://<this machine's LAN address>:{a.port}/"
            say(f"Quest on the same LAN: open {where} in Quest Browser (anyone on the LAN can use these desktops).")
        else:
            say(f"Quest on the same LAN: restart with --host 0.0.0.0 and open http://<this machine's LAN address>:"
                f"{a.port}/ in Quest Browser.")
        say("Browsers allow WebXR (the Enter VR button) only on HTTPS or localhost: for a Quest over plain "
            "http://, use `adb reverse tcp:PORT tcp:PORT` for each port and open http://localhost:PORT/, or put "
            "an HTTPS proxy in front (docs in README).")
        say("Press Ctrl-C to stop everything.")

    # --- teardown
    def shutdown(self, grace=GRACE_S):
        live = [c for c in self.children if c.proc is not None]
        for c in live:
            c.expected_exit = True
        # Agents first (they hold the VNC connections), then the VMs, all without waiting between.
        for c in sorted(live, key=lambda c: "agent" not in c.name):
            if c.alive():
                c.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(c.alive() for c in live) and time.monotonic() < deadline and not self.hurry:
            time.sleep(0.05)
        for c in live:
            if c.alive():
                warn(f"{c.name} (pid {c.pid}) ignored SIGTERM for {grace:.0f}s; killing it")
            # The whole group: a leader that left children behind leaves none.
            c.signal_group(signal.SIGKILL)
        for c in live:
            try:
                c.proc.wait(10)
            except subprocess.TimeoutExpired:
                warn(f"{c.name} (pid {c.pid}) did not exit even after SIGKILL")
        if self.saving is not None:
            self.saving.abandon()  # an unfinished save leaves nothing behind (a finished one was moved away)
        if self.httpd is not None:
            if self.serving:
                self.httpd.shutdown()
            self.httpd.server_close()


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
    up = Up(args)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, up.on_signal)
    rc = 0
    try:
        up.prepare()
        if up.stop_signal is None:
            up.run()
        if up.stop_signal is not None:
            say(f"\nloco up: {signal.Signals(up.stop_signal).name}: stopping {sum(c.alive() for c in up.children)} processes ...")
    except UsageError as e:
        warn(str(e))
        rc = 2
    except Failure as e:
        warn(str(e))
        rc = 1
    except Exception as e:  # noqa: BLE001 - still stop the children
        warn(f"unexpected error: {e!r}")
        rc = 1
    finally:
        up.shutdown()
    failed = [vm.name for vm in up.vms if vm.failed]
    if failed and rc == 0:
        warn(f"{', '.join(failed)} failed during the run (see above)")
        rc = 1
    left = [c for c in up.children if c.alive()]
    if left:
        warn("still running: " + ", ".join(f"{c.name} (pid {c.pid})" for c in left))
        rc = rc or 1
    if up.runtime_dir is not None:
        for vm in up.vms:  # the VMs' writes go with them (the image itself is untouched)
            for f in ("overlay.qcow2", "vnc.sock", "qmp.sock"):
                try:
                    (vm.dir / f).unlink()
                except OSError:
                    pass
        if rc == 0 and up.own_runtime_dir:
            shutil.rmtree(up.runtime_dir, ignore_errors=True)
        elif up.children:
            warn(f"logs kept in {up.runtime_dir}")
        elif up.own_runtime_dir:
            shutil.rmtree(up.runtime_dir, ignore_errors=True)
    if rc == 0 and up.children:
        say("loco up: stopped; no VM or agent is left running.")
    return rc


if __name__ == "__main__":
    sys.exit(main())
