#!/usr/bin/env python3
"""Minimal RFB (VNC) 3.8 client that grabs the framebuffer of e.g. QEMU's VNC server.

Security type None, SetPixelFormat 32bpp true colour (little-endian BGRX),
Raw encoding (+ DesktopSize pseudo-encoding so mode switches are followed),
non-incremental FramebufferUpdateRequest. Frames come back as numpy uint8
arrays of shape (height, width, 3), RGB.

    from rfbgrab import RFBClient, grab, write_png
    with RFBClient(port=5901) as c:          # or RFBClient(unix="/tmp/vnc.sock")
        rgb = c.framebuffer()
    rgb = grab(unix="/tmp/vnc.sock")         # connect, grab one frame, close

CLI:  rfbgrab.py (--port N | --display N | --unix PATH) [--host H] -o out.png
"""

import argparse
import socket
import struct
import sys
import time
import zlib

import numpy as np

ENC_RAW = 0
ENC_DESKTOP_SIZE = -223


class RFBError(Exception):
    pass


class RFBClient:
    def __init__(self, host="127.0.0.1", port=None, unix=None, timeout=10.0, shared=True, connect_timeout=None):
        """Connect to a VNC server at host:port (TCP) or the unix socket path `unix`.

        connect_timeout: keep retrying the connection for this many seconds
        (handy right after starting QEMU); default: try once.
        """
        if (port is None) == (unix is None):
            raise ValueError("give exactly one of port= or unix=")
        deadline = time.monotonic() + (connect_timeout or 0)
        while True:
            try:
                if unix is not None:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.settimeout(timeout)
                    s.connect(unix)
                else:
                    s = socket.create_connection((host, port), timeout=timeout)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
        self.sock = s
        self.sock.settimeout(timeout)
        self._handshake(shared)

    # -- plumbing -------------------------------------------------------
    def _recv(self, n):
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise RFBError(f"connection closed (wanted {n} bytes, got {got})")
            got += k
        return bytes(buf)

    def _unpack(self, fmt):
        return struct.unpack(fmt, self._recv(struct.calcsize(fmt)))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- protocol -------------------------------------------------------
    def _handshake(self, shared):
        ver = self._recv(12)
        if not ver.startswith(b"RFB "):
            raise RFBError(f"not an RFB server: {ver!r}")
        major, minor = int(ver[4:7]), int(ver[8:11])
        if (major, minor) >= (3, 8):
            self.version = (3, 8)
        elif (major, minor) >= (3, 7):
            self.version = (3, 7)
        else:
            self.version = (3, 3)
        self.sock.sendall(b"RFB %03d.%03d\n" % self.version)

        if self.version == (3, 3):
            (sec,) = self._unpack(">I")
            if sec == 0:
                raise RFBError(self._reason())
            if sec != 1:
                raise RFBError(f"server requires security type {sec}, only None (1) is supported")
        else:
            (n,) = self._unpack(">B")
            if n == 0:
                raise RFBError(self._reason())
            types = self._recv(n)
            if 1 not in types:
                raise RFBError(f"server offers security types {list(types)}, only None (1) is supported")
            self.sock.sendall(b"\x01")
            if self.version == (3, 8):
                (res,) = self._unpack(">I")
                if res != 0:
                    raise RFBError("security handshake failed: " + self._reason())

        self.sock.sendall(b"\x01" if shared else b"\x00")  # ClientInit
        self.width, self.height = self._unpack(">HH")
        self._recv(16)  # server's pixel format; we set our own below
        (nlen,) = self._unpack(">I")
        self.name = self._recv(nlen).decode("utf-8", "replace")

        # SetPixelFormat: 32 bpp, depth 24, little-endian, true colour, R<<16 G<<8 B
        self.sock.sendall(struct.pack(">BxxxBBBBHHHBBBxxx", 0, 32, 24, 0, 1, 255, 255, 255, 16, 8, 0))
        encs = [ENC_RAW, ENC_DESKTOP_SIZE]
        self.sock.sendall(struct.pack(">BxH", 2, len(encs)) + struct.pack(">%di" % len(encs), *encs))
        self._fb = np.zeros((self.height, self.width, 4), np.uint8)

    def _reason(self):
        (n,) = self._unpack(">I")
        return self._recv(n).decode("utf-8", "replace")

    def request(self, incremental=False):
        self.sock.sendall(struct.pack(">BBHHHH", 3, 1 if incremental else 0, 0, 0, self.width, self.height))

    def _read_update(self):
        """Read server messages until one FramebufferUpdate has been applied.

        Returns (resized, mask of the pixels it updated)."""
        while True:
            (mtype,) = self._unpack(">B")
            if mtype == 0:
                (nrects,) = self._unpack(">xH")
                resized = False
                covered = np.zeros((self.height, self.width), bool)
                for _ in range(nrects):
                    x, y, w, h, enc = self._unpack(">HHHHi")
                    if enc == ENC_RAW:
                        data = self._recv(w * h * 4)
                        if x + w > self.width or y + h > self.height:
                            raise RFBError(f"rectangle {w}x{h}+{x}+{y} outside {self.width}x{self.height}")
                        self._fb[y : y + h, x : x + w] = np.frombuffer(data, np.uint8).reshape(h, w, 4)
                        covered[y : y + h, x : x + w] = True
                    elif enc == ENC_DESKTOP_SIZE:
                        self.width, self.height = w, h
                        self._fb = np.zeros((h, w, 4), np.uint8)
                        covered = np.zeros((h, w), bool)
                        resized = True
                    else:
                        raise RFBError(f"unexpected encoding {enc}")
                return resized, covered
            elif mtype == 1:  # SetColourMapEntries
                _, n = self._unpack(">xHH")
                self._recv(6 * n)
            elif mtype == 2:  # Bell
                pass
            elif mtype == 3:  # ServerCutText
                (n,) = self._unpack(">xxxI")
                self._recv(n)
            else:
                raise RFBError(f"unexpected server message type {mtype}")

    def framebuffer(self):
        """Request and return the complete current screen as (H, W, 3) uint8 RGB."""
        covered = None
        for _ in range(20):
            self.request(incremental=False)
            resized, c = self._read_update()
            covered = c if resized or covered is None or covered.shape != c.shape else (covered | c)
            if covered.all():
                return self._fb[:, :, 2::-1].copy()  # BGRX -> RGB
        raise RFBError("server never sent a complete frame")


def grab(port=None, unix=None, host="127.0.0.1", timeout=10.0, connect_timeout=None):
    """Connect, grab one full frame (H, W, 3 RGB uint8), disconnect."""
    with RFBClient(host=host, port=port, unix=unix, timeout=timeout, connect_timeout=connect_timeout) as c:
        return c.framebuffer()


def write_png(path, rgb):
    """Write an (H, W, 3) uint8 array as an 8-bit RGB PNG (stdlib zlib only)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    raw = np.zeros((h, 1 + w * 3), np.uint8)
    raw[:, 1:] = rgb.reshape(h, w * 3)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)))
        f.write(chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--port", type=int, help="TCP port (e.g. 5901)")
    g.add_argument("--display", type=int, help="VNC display number (port 5900+N)")
    g.add_argument("--unix", help="unix socket path")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("-o", "--output", required=True, help="PNG file to write")
    ap.add_argument("--wait", type=float, default=0, help="retry connecting for this many seconds")
    a = ap.parse_args()
    port = a.port if a.port is not None else (5900 + a.display if a.display is not None else None)
    rgb = grab(port=port, unix=a.unix, host=a.host, connect_timeout=a.wait)
    write_png(a.output, rgb)
    print(f"{a.output}: {rgb.shape[1]}x{rgb.shape[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
