"""What `./loco up` checks on this host before it starts anything: the agent, the image, the
stand-in's build, addresses and ports; and the agents' /healthz."""
from __future__ import annotations

import errno
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from .common import STANDIN_BUILD, Failure, UsageError, say


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
