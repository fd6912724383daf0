"""Waiting for things: free ports, a port that accepts, a condition that comes true in time."""
from __future__ import annotations

import socket
import subprocess
import threading
import time
from typing import Callable


class ProcessExited(RuntimeError):
    """A process the harness waits on died; polling stops at once."""


_handed_out: set[int] = set()
_port_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (never the same twice per run)."""
    with _port_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _handed_out and port < 60000:
                _handed_out.add(port)
                return port
    raise RuntimeError("no free port found")


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(pred: Callable[[], object], timeout: float, interval: float = 0.05,
               what: str = "condition") -> object:
    """Poll pred() until it returns something truthy; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except ProcessExited:
            raise
        except Exception as e:  # noqa: BLE001 - keep polling, report the last one
            last_exc = e
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout:.1f}s waiting for {what}"
            if last_exc is not None:
                msg += f" (last error: {last_exc!r})"
            raise TimeoutError(msg)
        time.sleep(interval)


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None,
              what: str | None = None) -> None:
    def ok():
        if proc is not None and proc.poll() is not None:
            raise ProcessExited(f"{what or 'process'} exited with rc={proc.returncode} "
                                f"before port {port} accepted connections")
        return port_accepts(port)
    wait_until(ok, timeout, 0.05, what or f"port {port}")
