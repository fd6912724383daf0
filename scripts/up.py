#!/usr/bin/env python3
"""`./loco up`: start N VMs, one loco-agent beside each, and a page that shows them all.

    ./loco up [--vms N] [--codec h264|vp8] [--port P] [--host ADDR] [--image DISK | --test-pattern]

N VMs (default 9, the most; --vms 1 for one).

Each VM is a QEMU process with its VNC server on a Unix socket in a private runtime
directory; each agent reads that socket and serves WHEP on --port+1, --port+2, ... The WebXR
page (the client built into www/dist/ by scripts/build-web.sh; `./loco up` builds it) and
`desktops.json` are served on --port, and the plain-JS flat page (scripts/wall/) on /wall/. Every child runs in its own process
group with its log in the runtime directory. Ctrl-C (or SIGTERM) stops them all: SIGTERM,
then SIGKILL after a grace period. If a child dies on its own, up.py says which, stops the
rest and exits 1. Bad arguments exit 2.

By default (or with --standin) the VMs run the free IceWM stand-in desktop (packer/standin/,
built on first use and cached; it reaches its desktop in about 25 s even under TCG); with
--image, that disk (e.g. the Windows 98 SoftGPU image from packer/win98/); with
--test-pattern, the tiny test-pattern guest (agent/tests/guest). The stand-in and --image VMs
each boot through their own copy-on-write overlay of the one image (the image itself is never
written; the overlays are deleted at exit), with the QEMU options of the image's profile in
packer/qemu-args.json (shared with the VM runner).
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import http.server
import ipaddress
import json
import os
import re
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
    ap.add_argument("--boot-timeout", type=_seconds, default=300.0, metavar="S",
                    help="give up when the VMs and agents are not all ready after S seconds (default 300)")
    a = ap.parse_args(argv)
    if a.port + a.vms > 65535:
        ap.error(f"--port {a.port} leaves no room for {a.vms} agent port(s) above it")
    if a.profile and not a.image:
        ap.error("--profile goes with --image")
    if not a.image and not a.test_pattern:
        a.standin = True
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

_libc = None


def _die_with_parent(parent_pid: int):
    """preexec_fn: own process group, and SIGTERM when up.py goes away (even by SIGKILL)."""
    def fn():
        try:
            if _libc is not None:
                _libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - best effort
            pass
        if os.getppid() != parent_pid:
            os._exit(1)
    return fn


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
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                         process_group=0, preexec_fn=_die_with_parent(os.getpid()), close_fds=True)
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


@dataclass
class VM:
    index: int
    dir: Path
    agent_port: int
    vnc: str  # "unix:PATH" or "127.0.0.1:PORT"
    qemu: Child
    agent: Child
    serial_log: Path | None = None  # test guest only: READY marker
    ready_marker: str | None = None
    guest_ready: bool = False
    want_size: tuple[int, int] | None = None  # test guest: the agent must see its mode, not the boot one
    health: dict | None = None
    t_ready: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def name(self):
        return f"vm{self.index}"

    def check_guest(self) -> bool:
        if self.ready_marker is None:  # a disk image: nothing to wait for but the agent
            self.guest_ready = True
            return True
        if not self.guest_ready:
            try:
                self.guest_ready = self.ready_marker in self.serial_log.read_text(errors="replace")
            except OSError:
                pass
        return self.guest_ready


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
        self.t0 = time.monotonic()

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
        serial = d / "serial.log"
        serial.write_text("")
        if self.image is None:
            cmd = self.testguest.qemu_command(self.guest_paths, vnc_port=vnc_port, vnc_unix=vnc_unix,
                                              serial_log=str(serial), accel=self.accel)
            cmd[cmd.index("-name") + 1] = f"loco-vm{i}"
            marker = self.testguest.READY_MARKER
        else:
            image, fmt = self.image
            overlay = d / "overlay.qcow2"
            r = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", fmt, str(overlay)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise Failure(f"vm{i}: qemu-img create failed: {r.stderr.strip()}")
            vnc_arg = f"unix:{vnc_unix}" if vnc_unix else f"127.0.0.1:{vnc_port - 5900}"
            cmd = qemu_profiles().qemu_argv(self.profile, disk=str(overlay), image_dir=self.image_dir,
                                            accel=self.accel, vnc=vnc_arg, serial=f"file:{serial}",
                                            qemu_name=f"loco-vm{i}", qemu=QEMU)
            marker = self.profile_spec.get("ready_marker")
        qemu = Child(f"vm{i} QEMU", cmd, d / "qemu.log")
        port = a.port + i
        agent = Child(f"vm{i} agent", [str(self.agent), "--vnc", vnc,
                                       "--listen", f"{url_host(self.bind_addr)}:{port}", "--codec", a.codec],
                      d / "agent.log")
        if self.image is None:
            want = (self.guest_paths.width, self.guest_paths.height)
        elif marker and self.profile_spec.get("screen"):  # a guest that says when its desktop is up
            want = tuple(self.profile_spec["screen"])
        else:
            want = None
        return VM(i, d, port, vnc, qemu, agent, serial_log=serial, ready_marker=marker, want_size=want)

    def start(self):
        global _libc
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = None
        for i in range(1, self.args.vms + 1):
            self.vms.append(self.plan_vm(i))
        # QEMUs first (their VNC sockets exist as soon as they start), then the agents. No thread
        # runs yet: preexec_fn is only safe before any.
        for vm in self.vms:
            self.children.append(vm.qemu.start())
        for vm in self.vms:
            self.children.append(vm.agent.start())
        threading.Thread(target=self.httpd.serve_forever, name="wall-http", daemon=True).start()
        self.serving = True

    # --- watching
    def check_children(self):
        for c in self.children:
            if c.proc.poll() is not None and not c.expected_exit:
                raise Failure(f"{c.name} (pid {c.pid}) {c.how_it_ended()}; its log ({c.log}) ends:\n{c.tail()}")

    def wait_ready(self):
        a = self.args
        if self.image is None:
            what = "test-pattern guest"
        elif self.args.standin:
            what = "IceWM stand-in desktop"
        else:
            what = f"{os.path.basename(self.image[0])}, QEMU profile {self.profile}"
        say(f"loco up: starting {a.vms} VM{'s' if a.vms > 1 else ''} ({what}, {self.accel.upper()}"
            f"{', slow: no usable KVM here' if self.accel == 'tcg' else ''}) with "
            f"{'their agents' if a.vms > 1 else 'its agent'}; "
            f"logs in {self.runtime_dir}")
        tty = sys.stderr.isatty()
        last_line, last_print = None, 0.0
        deadline = time.monotonic() + a.boot_timeout
        while True:
            if self.stop_signal is not None:
                return False
            self.check_children()
            for vm in self.vms:
                if vm.t_ready is None:
                    vm.check_guest()
                    status, body = healthz(a.host, vm.agent_port, timeout=1.0)
                    vm.health = body if status == 200 and isinstance(body, dict) else None
                    if vm.guest_ready and vm.health and self.size_ok(vm):
                        vm.t_ready = time.monotonic() - self.t0
            elapsed = time.monotonic() - self.t0
            parts = []
            for vm in self.vms:
                if vm.t_ready is not None:
                    s = "ready"
                elif not vm.guest_ready:
                    s = "booting"
                elif vm.health is None:
                    s = "agent connecting"
                else:
                    s = "agent waiting for the screen mode"
                parts.append(f"{vm.name} {s}")
            n_ready = sum(vm.t_ready is not None for vm in self.vms)
            line = f"  [{elapsed:5.1f}s] {n_ready}/{len(self.vms)} ready: " + ", ".join(parts)
            if tty:
                sys.stderr.write("\r\033[K" + line)
                sys.stderr.flush()
            elif line.split("] ", 1)[1] != last_line or time.monotonic() - last_print > 15:
                print(line, file=sys.stderr, flush=True)
                last_line, last_print = line.split("] ", 1)[1], time.monotonic()
            if n_ready == len(self.vms):
                if tty:
                    sys.stderr.write("\n")
                return True
            if time.monotonic() > deadline:
                if tty:
                    sys.stderr.write("\n")
                lines = []
                for vm in self.vms:
                    if vm.t_ready is None:
                        if not vm.guest_ready:
                            why = ("the guest never reported READY" if self.image is None else
                                   "the guest never said its desktop is up")
                        elif vm.health is None:
                            why = f"its agent's /healthz on port {vm.agent_port} is not 200"
                        else:
                            why = (f"its agent sees a {vm.health.get('width')}x{vm.health.get('height')} screen, "
                                   f"not {vm.want_size[0]}x{vm.want_size[1]}")
                        lines.append(f"  {vm.name}: {why} (logs: {vm.dir})")
                raise Failure(f"not ready after {a.boot_timeout:.0f}s:\n" + "\n".join(lines))
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

    def announce(self):
        a = self.args
        say("")
        if is_wildcard(a.host):
            hosts = lan_addresses() + ["127.0.0.1"]
        else:
            hosts = [url_host(a.host)]
        h0 = hosts[0]
        say(f"loco is up: {len(self.vms)} desktop{'s' if len(self.vms) > 1 else ''}, codec {a.codec}")
        for h in hosts:
            say(f"  page   http://{h}:{a.port}/        (WebXR scene; flat view in any desktop browser)")
        say(f"  plain  http://{h0}:{a.port}/wall/   (the plain-JS flat page, no WebAssembly)")
        for vm in self.vms:
            size = ""
            if vm.health and vm.health.get("width"):
                size = f"   ({vm.health['width']}x{vm.health['height']})"
            say(f"  {vm.name:<6} http://{h0}:{vm.agent_port}/whep{size}")
        say(f"  logs   {self.runtime_dir}")
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

    def watch(self):
        while self.stop_signal is None:
            self.check_children()
            self.sleep(0.2)

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
            up.start()
            if up.wait_ready():
                up.announce()
                up.watch()
        if up.stop_signal is not None:
            say(f"\nloco up: {signal.Signals(up.stop_signal).name}: stopping {len(up.children)} processes ...")
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
    left = [c for c in up.children if c.alive()]
    if left:
        warn("still running: " + ", ".join(f"{c.name} (pid {c.pid})" for c in left))
        rc = rc or 1
    if up.runtime_dir is not None:
        for vm in up.vms:  # the VMs' writes go with them (the image itself is untouched)
            for f in ("overlay.qcow2", "vnc.sock"):
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
