"""A guest's serial port through QEMU's Unix-socket chardev (`-serial unix:PATH,server=on,wait=off`):
collects what the guest prints, waits for a pattern, and runs shell commands where the guest keeps
a shell on it (the stand-in does: user loco, DISPLAY=:0; packer/standin/rootfs/usr/sbin/loco-init)."""
from __future__ import annotations

import re
import socket
import threading
import time

KEEP = 200_000  # characters of output kept


class ConsoleTimeout(AssertionError, TimeoutError):
    """The pattern did not show on the console in time (an assertion in tests, a TimeoutError
    elsewhere)."""


class SerialConsole:
    def __init__(self, path: str, connect_timeout: float = 10.0):
        self.buf, self.lock, self.n = "", threading.Lock(), 0
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                d = self.sock.recv(65536)
            except OSError:
                return
            if not d:
                return
            with self.lock:
                self.buf = (self.buf + d.decode(errors="replace"))[-KEEP:]

    def text(self) -> str:
        with self.lock:
            return self.buf

    def wait_for(self, pattern: str, timeout: float, alive=lambda: True) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text(), re.S)
            if m:
                return m
            if not alive():
                break
            time.sleep(0.1)
        raise ConsoleTimeout(f"no {pattern!r} on the serial console within {timeout:.0f}s; it ends:\n"
                             + self.text()[-3000:])

    def run(self, cmd: str, timeout: float = 30.0) -> str:
        """Runs a shell command on the guest's console; its output, stripped."""
        self.n += 1
        n = self.n
        # The quotes keep the echoed command line from matching the markers.
        self.sock.sendall(f'echo @@"B"{n}; {cmd}; echo @@"E"{n}\n'.encode())
        return self.wait_for(rf"@@B{n}\r?\n(.*?)@@E{n}", timeout).group(1).strip()

    def background(self, cmd: str) -> None:
        """Starts a shell command in the guest and returns at once."""
        self.run(f"{{ {cmd} ; }} >/dev/null 2>&1 </dev/null & true")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
