"""Processes in their own process group: started with their output in a log file, stopped as a
group (SIGTERM, then SIGKILL for whatever is left of the group), and killed at interpreter exit
if nobody stopped them."""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import threading

_live_groups: dict[int, str] = {}
_groups_lock = threading.Lock()


# util-linux's setpriv sets the parent-death signal and execs: no Python runs between fork and
# exec, so this is safe while other threads run (preexec_fn would not be).
_SETPRIV = shutil.which("setpriv")


def spawn(argv: list[str], *, log_path: str | os.PathLike | None = None,
          env: dict | None = None, stdout=None, stderr=None, name: str | None = None,
          stdin=subprocess.DEVNULL, header: str | None = None, parent_death_signal: bool = False,
          track: bool = True, **kw) -> subprocess.Popen:
    """Start argv in its own process group; remember the group so it is killed at exit.

    log_path: stdout and stderr appended there (after `header`, when given, on its own line).
    parent_death_signal: the child gets SIGTERM when this process dies, even by SIGKILL (needs
    setpriv; without it, only the exit-time sweep remains).
    track: remember the group for kill_all_groups() at exit (a supervisor that reaps and stops
    its children itself, like `./loco up`, passes False: a reaped group's id may be reused)."""
    logf = None
    if log_path is not None:
        logf = open(log_path, "ab", buffering=0)
        if header is not None:
            logf.write(header.rstrip("\n").encode() + b"\n")
        stdout = logf if stdout is None else stdout
        stderr = subprocess.STDOUT if stderr is None else stderr
    if parent_death_signal and _SETPRIV:
        argv = [_SETPRIV, "--pdeathsig", "TERM", "--", *argv]
    try:
        p = subprocess.Popen(argv, env=env, stdout=stdout if stdout is not None else subprocess.DEVNULL,
                             stderr=stderr if stderr is not None else subprocess.DEVNULL,
                             stdin=stdin, start_new_session=True, close_fds=True, **kw)
    finally:
        if logf is not None:
            logf.close()
    if track:
        with _groups_lock:
            _live_groups[p.pid] = name or os.path.basename(argv[0])
    return p


def kill_group(p: subprocess.Popen, sig_first: int = signal.SIGTERM, grace: float = 5.0) -> int | None:
    """Signal the whole process group, escalate to SIGKILL, reap. Returns the leader's rc."""
    pgid = p.pid
    if p.poll() is None:
        try:
            os.killpg(pgid, sig_first)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # Children may outlive the leader: always sweep the group with SIGKILL.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    with _groups_lock:
        _live_groups.pop(pgid, None)
    return p.returncode


def kill_all_groups() -> None:
    with _groups_lock:
        pgids = list(_live_groups)
        _live_groups.clear()
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


atexit.register(kill_all_groups)


def live_groups() -> dict[int, str]:
    with _groups_lock:
        return dict(_live_groups)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def tail(path: str | os.PathLike, limit: int = 20000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    prefix = f"... ({size - limit} bytes cut)\n" if size > limit else ""
    return prefix + data.decode("utf-8", "replace")
