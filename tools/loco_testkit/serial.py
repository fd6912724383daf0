"""A guest's serial port through QEMU's Unix-socket chardev (`-serial unix:PATH,server=on,wait=off`):
collects what the guest prints (with the host time each piece arrived), waits for a pattern, and
runs shell commands where the guest keeps a shell on it (the stand-in does: user loco, DISPLAY=:0;
packer/standin/rootfs/usr/sbin/loco-init)."""
from __future__ import annotations

import bisect
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
        # Arrival times: self.total characters received so far; self.ends[i] is the total after the
        # i-th chunk, which arrived at host monotonic time self.times[i] (the chunks still in buf).
        self.total, self.ends, self.times = 0, [], []
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
            t = time.monotonic()
            text = d.decode(errors="replace")
            with self.lock:
                self.buf = (self.buf + text)[-KEEP:]
                self.total += len(text)
                self.ends.append(self.total)
                self.times.append(t)
                drop = bisect.bisect_right(self.ends, self.total - len(self.buf))
                if drop > 1000:
                    del self.ends[:drop], self.times[:drop]

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

    def mark(self) -> int:
        """A position in the output (characters received so far): wait_for_at(since=mark()) only
        looks at what comes after it."""
        with self.lock:
            return self.total

    def wait_for_at(self, pattern: str, timeout: float, since: int = 0,
                    alive=lambda: True) -> tuple[re.Match, float]:
        """Waits for pattern in the output received after position `since` (mark()); returns the
        match and the host's time.monotonic() at which the text that completed it arrived from QEMU
        (the socket read, not this poll)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                start = self.total - len(self.buf)
                text = self.buf[max(0, since - start):]
                base = max(since, start)
                m = re.search(pattern, text, re.S)
                if m:
                    i = bisect.bisect_left(self.ends, base + m.end())
                    return m, self.times[min(i, len(self.times) - 1)]
            if time.monotonic() >= deadline or not alive():
                break
            time.sleep(0.01)
        raise ConsoleTimeout(f"no {pattern!r} on the serial console within {timeout:.0f}s; it ends:\n"
                             + self.text()[-3000:])

    def run(self, cmd: str, timeout: float = 30.0) -> str:
        """Runs a shell command on the guest's console; its output, stripped."""
        self.n += 1
        n = self.n
        # The quotes keep the echoed command line from matching the markers.
        self.sock.sendall(f'echo @@"B"{n}; {cmd}; echo @@"E"{n}\n'.encode())
        out = self.wait_for(rf"@@B{n}\r?\n(.*?)@@E{n}", timeout).group(1)
        # The stand-in's own announcements (`loco-standin: ...`: its init, session and DHCP
        # scripts write whole lines to the same serial port whenever they like) can land between
        # a command's lines; they are not its output. wait_for() still sees them.
        return re.sub(r"(?m)^loco-standin: [^\r\n]*\r?\n", "", out).strip()

    def background(self, cmd: str) -> None:
        """Starts a shell command in the guest and returns at once."""
        self.run(f"{{ {cmd} ; }} >/dev/null 2>&1 </dev/null & true")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
