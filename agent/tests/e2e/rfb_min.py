"""Minimal RFB 3.8 client (security None, raw encoding) used to self-check the harness
(Xvnc and the cutting proxy) without the agent."""
from __future__ import annotations

import socket
import struct


def _recvn(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += d
    return bytes(buf)


class RfbClient:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.s = socket.create_connection((host, port), timeout=timeout)
        ver = _recvn(self.s, 12)
        if not ver.startswith(b"RFB 003."):
            raise ConnectionError(f"not RFB: {ver!r}")
        self.s.sendall(b"RFB 003.008\n")
        n = _recvn(self.s, 1)[0]
        types = _recvn(self.s, n)
        if 1 not in types:
            raise ConnectionError(f"server offers no None security: {list(types)}")
        self.s.sendall(b"\x01")
        if struct.unpack(">I", _recvn(self.s, 4))[0] != 0:
            raise ConnectionError("security handshake failed")
        self.s.sendall(b"\x01")  # shared
        self.width, self.height = struct.unpack(">HH", _recvn(self.s, 4))
        self.pixfmt = _recvn(self.s, 16)
        nl = struct.unpack(">I", _recvn(self.s, 4))[0]
        self.name = _recvn(self.s, nl).decode(errors="replace")
        # 32bpp true colour little-endian, R at 16, G at 8, B at 0; raw encoding only
        pf = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        self.s.sendall(b"\x00\x00\x00\x00" + pf)
        self.s.sendall(struct.pack(">BxHi", 2, 1, 0))

    def request(self, incremental: bool = False) -> None:
        self.s.sendall(struct.pack(">BBHHHH", 3, int(incremental), 0, 0, self.width, self.height))

    def read_update(self) -> tuple[int, int]:
        """Read messages until one FramebufferUpdate has been read; return (rects, bytes)."""
        while True:
            t = _recvn(self.s, 1)[0]
            if t == 0:
                (nrect,) = struct.unpack(">xH", _recvn(self.s, 3))
                total = 0
                for _ in range(nrect):
                    x, y, w, h, enc = struct.unpack(">HHHHi", _recvn(self.s, 12))
                    if enc != 0:
                        raise ConnectionError(f"unexpected encoding {enc}")
                    _recvn(self.s, w * h * 4)
                    total += w * h * 4
                return nrect, total
            elif t == 2:   # bell
                continue
            elif t == 3:   # cut text
                _recvn(self.s, 3)
                n = struct.unpack(">I", _recvn(self.s, 4))[0]
                _recvn(self.s, n)
            else:
                raise ConnectionError(f"unexpected server message {t}")

    def close(self) -> None:
        self.s.close()
