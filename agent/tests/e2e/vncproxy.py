"""A TCP proxy between the agent and a VNC server that can cut a connection mid-update.

Both directions are forwarded unchanged. After arm_cut(after_bytes=N), the next N bytes that
the server sends towards the client are forwarded and then both sockets are closed at once,
in the middle of whatever the server was sending (arm it, then cause a large screen update:
the cut lands inside that FramebufferUpdate). `cut_info` tells how many bytes the server had
already sent past the cut point (withheld > 0 proves it was mid-stream). Later connections are
forwarded normally.
"""
from __future__ import annotations

import select
import socket
import threading
import time

from loco_testkit.waits import free_port


class VncProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(8)
        self._lock = threading.Lock()
        self._armed_after: int | None = None
        self._armed_count = 0
        self.cut_event = threading.Event()
        self.cut_info: dict | None = None
        self.connections = 0          # accepted client connections
        self.upstream_failures = 0    # client came but the server was not there
        self.s2c_bytes = 0
        self.c2s_bytes = 0
        self._closing = False
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._t = threading.Thread(target=self._accept_loop, daemon=True, name="vncproxy-accept")
        self._t.start()

    # ------------------------------------------------------------------ control
    def arm_cut(self, after_bytes: int = 8192) -> None:
        with self._lock:
            self.cut_event.clear()
            self.cut_info = None
            self._armed_after = after_bytes
            self._armed_count = 0

    def close(self) -> None:
        self._closing = True
        try:
            self.lsock.close()
        except OSError:
            pass
        for a, b in list(self._pairs):
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    # ------------------------------------------------------------------ internals
    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.connections += 1
            try:
                u = socket.create_connection(self.upstream, timeout=5)
                u.settimeout(None)
            except OSError:
                self.upstream_failures += 1
                c.close()
                continue
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pairs.append((c, u))
            threading.Thread(target=self._pump, args=(c, u), daemon=True, name="vncproxy-pump").start()

    def _shut(self, c: socket.socket, u: socket.socket) -> None:
        for s in (c, u):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        try:
            self._pairs.remove((c, u))
        except ValueError:
            pass

    def _pump(self, c: socket.socket, u: socket.socket) -> None:
        try:
            while True:
                r, _, _ = select.select([c, u], [], [], 1.0)
                if self._closing:
                    break
                if c in r:
                    data = c.recv(65536)
                    if not data:
                        break
                    u.sendall(data)
                    self.c2s_bytes += len(data)
                if u in r:
                    data = u.recv(65536)
                    if not data:
                        break
                    with self._lock:
                        armed = self._armed_after
                        if armed is not None and self._armed_count + len(data) >= armed:
                            keep = armed - self._armed_count
                            c.sendall(data[:keep])
                            self.s2c_bytes += keep
                            withheld = len(data) - keep
                            # How much more was the server in the middle of sending?
                            u.setblocking(False)
                            t_end = time.monotonic() + 0.2
                            while time.monotonic() < t_end:
                                try:
                                    more = u.recv(65536)
                                    if not more:
                                        break
                                    withheld += len(more)
                                except BlockingIOError:
                                    time.sleep(0.01)
                                except OSError:
                                    break
                            self.cut_info = {"forwarded_since_arm": armed, "withheld": withheld,
                                             "at": time.monotonic()}
                            self._armed_after = None
                            self._shut(c, u)
                            self.cut_event.set()
                            return
                        if armed is not None:
                            self._armed_count += len(data)
                    c.sendall(data)
                    self.s2c_bytes += len(data)
        except OSError:
            pass
        finally:
            self._shut(c, u)
