#!/usr/bin/env python3
"""A VM's saved running state: boot one VM cold once, save it, start many from it in seconds.

Under TCG (no usable KVM) nine stand-in desktops booting cold at once take many minutes on a
two-core machine; restoring nine from one saved state takes seconds. A saved state is a folder:

    disk.qcow2   the copy-on-write overlay (of the image) the VM ran on when it was saved;
                 read-only from then on: every restored VM runs on an overlay of it
    state.mig    QEMU's migration stream (RAM and device state), written by QMP `migrate` to a
                 `file:` URI while the VM is stopped
    meta.json    the key and what went into it, when and how fast it was saved, the stream's size

A VM is restored with the same QEMU command line (only its disk, VNC, serial, QMP and -name
differ) plus `-incoming file:state.mig`; QEMU starts running once the stream is loaded, and
exits with an error when it cannot load it. The key covers what must match for that to work:
QEMU's version, the command line with its per-VM parts left out, and the image's identity
(the stand-in's recipe hash, else the image's path, size and modification time, and those of a
kernel_boot profile's kernel and initrd). `lookup()` says why a state does not fit, in words.

Standard library only; used by scripts/up.py (`./loco up`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "state.mig"
DISK_FILE = "disk.qcow2"
META_FILE = "meta.json"
FORMAT = 1  # bump when the folder's layout or the key's make-up changes


class QMPError(Exception):
    """QEMU answered a QMP command with an error, or the socket failed."""


class QMP:
    """A minimal QMP client on a Unix socket: greeting, qmp_capabilities, one command at a time
    (asynchronous events in between are skipped)."""

    def __init__(self, path: str | os.PathLike, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
            self.file = self.sock.makefile("rwb")
            self._read()  # {"QMP": {...}}
            self.execute("qmp_capabilities")
        except OSError as e:
            self.sock.close()
            raise QMPError(f"QMP on {path}: {e.strerror or e}") from None

    def _read(self) -> dict:
        while True:
            line = self.file.readline()
            if not line:
                raise QMPError("QEMU closed the QMP connection")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def execute(self, cmd: str, **args):
        req = {"execute": cmd}
        if args:
            req["arguments"] = args
        try:
            self.file.write(json.dumps(req).encode() + b"\n")
            self.file.flush()
            reply = self._read()
        except OSError as e:
            raise QMPError(f"QMP {cmd}: {e.strerror or e}") from None
        if "error" in reply:
            raise QMPError(f"QMP {cmd}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def qmp_status(path: str | os.PathLike, timeout: float = 2.0, resume: bool = False) -> str | None:
    """QEMU's run state ("running", "inmigrate", "paused", ...), or None when QMP does not answer.
    resume: a restored VM is "paused" once its state is loaded (the VM was stopped when it was
    saved, and migration carries that over): continue it, and say "running" when QEMU took that."""
    try:
        with QMP(path, timeout=timeout) as q:
            status = q.execute("query-status").get("status")
            if resume and status == "paused":
                q.execute("cont")
                status = q.execute("query-status").get("status")
            return status
    except (QMPError, ValueError, OSError):
        return None


# ----------------------------------------------------------------------------- the key

_PER_VM = {"-name", "-vnc", "-serial", "-qmp", "-drive", "-incoming"}


def qemu_version(qemu: str) -> str:
    try:
        r = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({e})"
    return (r.stdout.strip().splitlines() or ["unknown"])[0]


def shape_of(argv: list[str]) -> list[str]:
    """The command line with what differs from VM to VM left out (disk path, VNC, serial, QMP,
    name) and the kernel/initrd reduced to their file names (their contents are in the identity)."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in _PER_VM and i + 1 < len(argv):
            out.append(a)
            nxt = argv[i + 1]
            if a == "-drive":  # keep the interface and format, not the file
                out.append(",".join(p for p in nxt.split(",") if not p.startswith("file=")))
            skip = True
        elif a in ("-kernel", "-initrd") and i + 1 < len(argv):
            out += [a, os.path.basename(argv[i + 1])]
            skip = True
        else:
            out.append(a)
    return out


def file_identity(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)} {st.st_size} {st.st_mtime_ns}"


def image_identity(image: str, extra_files: list[str | os.PathLike] = ()) -> str:
    """The stand-in's recipe hash when the image sits beside one (its build writes .recipe-hash and
    replaces image, kernel and initrd together); otherwise path, size and mtime of each file."""
    recipe = Path(image).parent / ".recipe-hash"
    if recipe.is_file() and Path(image).name == "standin.qcow2":
        return "standin recipe " + recipe.read_text().strip()
    return " | ".join(file_identity(f) for f in [image, *extra_files])


def make_key(*, qemu_version: str, argv_shape: list[str], image: str) -> tuple[str, dict]:
    what = {"format": FORMAT, "qemu": qemu_version, "argv": argv_shape, "image": image}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]
    return digest, what


# ----------------------------------------------------------------------------- the folder


@dataclass
class SavedState:
    dir: Path
    meta: dict

    @property
    def disk(self) -> Path:
        return self.dir / DISK_FILE

    @property
    def stream(self) -> Path:
        return self.dir / STATE_FILE

    def incoming(self) -> list[str]:
        return ["-incoming", f"file:{self.stream}"]

    def overlay(self, path: Path) -> None:
        """A fresh copy-on-write overlay of the saved disk for one restored VM."""
        r = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.disk), "-F", "qcow2",
                            str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            raise OSError(f"qemu-img create failed: {r.stderr.strip()}")


def _why_different(old: dict, new: dict) -> str:
    if old.get("format") != new.get("format"):
        return "it was saved by an older loco"
    if old.get("qemu") != new.get("qemu"):
        return f"QEMU changed ({old.get('qemu')} → {new.get('qemu')})"
    if old.get("image") != new.get("image"):
        return "the image changed"
    if old.get("argv") != new.get("argv"):
        return "the VM's QEMU options changed"
    return "its key differs"


def lookup(state_dir: Path, key: str, what: dict) -> tuple[SavedState | None, str]:
    """The saved state in state_dir if it fits key, else (None, why not in words)."""
    meta_path = state_dir / META_FILE
    if not meta_path.is_file():
        return None, "there is no saved state yet"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        return None, f"its {META_FILE} is unreadable ({e})"
    if meta.get("key") != key:
        return None, "it does not fit: " + _why_different(meta.get("what") or {}, what)
    st = SavedState(state_dir, meta)
    for f in (st.disk, st.stream):
        if not f.is_file():
            return None, f"{f.name} is missing"
    if st.stream.stat().st_size != meta.get("bytes"):
        return None, f"{STATE_FILE} is {st.stream.stat().st_size} bytes, not the {meta.get('bytes')} saved"
    return st, "fits"


def discard(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)


class Saving:
    """One save in progress: a private folder beside state_dir holding the saver VM's disk (an
    overlay of the image), committed to state_dir by commit() once the stream is written and QEMU
    has quit, so that an interrupted save never leaves a half state behind."""

    def __init__(self, state_dir: Path, image: str, image_format: str):
        self.state_dir = state_dir
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = state_dir.parent / f".{state_dir.name}.saving.{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self.disk = self.tmp / DISK_FILE
        r = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", image_format,
                            str(self.disk)], capture_output=True, text=True)
        if r.returncode != 0:
            self.abandon()
            raise OSError(f"qemu-img create failed: {r.stderr.strip()}")
        self.meta: dict | None = None

    def save(self, qmp_path: str | os.PathLike, key: str, what: dict, timeout: float = 300.0) -> float:
        """Stop the VM behind qmp_path, write its state, and quit it. Returns the seconds it took."""
        t0 = time.monotonic()
        stream = self.tmp / STATE_FILE
        with QMP(qmp_path, timeout=30) as q:
            q.execute("stop")
            q.execute("migrate", uri=f"file:{stream}")
            while True:
                info = q.execute("query-migrate") or {}
                status = info.get("status")
                if status == "completed":
                    break
                if status in ("failed", "cancelled"):
                    raise QMPError(f"migrate {status}: {info.get('error-desc', 'no reason given')}")
                if time.monotonic() - t0 > timeout:
                    q.execute("migrate_cancel")
                    raise QMPError(f"migrate did not complete in {timeout:.0f}s")
                time.sleep(0.05)
            seconds = time.monotonic() - t0
            try:
                q.execute("quit")
            except QMPError:
                pass  # QEMU may close the socket before it answers
        self.meta = {"key": key, "what": what, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "save_s": round(seconds, 2), "bytes": stream.stat().st_size}
        return seconds

    def commit(self) -> SavedState:
        assert self.meta is not None, "save() first"
        (self.tmp / META_FILE).write_text(json.dumps(self.meta, indent=1) + "\n")
        # The saved disk is never written again: make that so on the file system too.
        os.chmod(self.disk, 0o444)
        discard(self.state_dir)
        os.rename(self.tmp, self.state_dir)
        return SavedState(self.state_dir, self.meta)

    def abandon(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
