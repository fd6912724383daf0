#!/usr/bin/env python3
"""Writes the seed inputs of the structured fuzz targets (layout_ray, bitrate_pacer,
framebuffer_ops) in the byte layout of the `arbitrary` crate (1.x) that their
`#[derive(Arbitrary)]` inputs are decoded with: integers and floats little-endian, a `Vec` as
elements each preceded by a byte whose bit 0 says "one more", an enum as a u32 `v` picking
variant `(v * count) >> 32`. Check one with
`cargo fuzz fmt --fuzz-dir fuzz TARGET fuzz/corpus/TARGET/NAME`.
Also the seeds of rfb_server: a flags byte, then what a VNC server sends (RFB 3.8, big-endian).
The seeds of input_message and desktops_config are plain JSON files, and those of whep_http
HTTP-like request texts (offers captured from aiortc 1.16 and Chromium), written by hand."""
import struct
import zlib
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"


def f32(*xs): return b"".join(struct.pack("<f", x) for x in xs)
def u8(x): return struct.pack("<B", x)
def u16(x): return struct.pack("<H", x)
def u32(x): return struct.pack("<I", x)
def vec(items): return b"".join(b"\x01" + i for i in items) + b"\x00"


def wall(radius=1.6, cw=0.92, ch=0.69, gap=0.06, cols=3, eye=(0.0, 1.5, 0.0), yaw=0.0,
         head=(0.0, 0.0, 0.0, 1.0), aspects=(1024 / 768,) * 9, ro=(0.0, 1.5, 0.0),
         rd=(0.0, 0.0, -1.0), u=0.5, v=0.5, w=1024, h=768) -> bytes:
    return (f32(radius, cw, ch, gap) + u8(cols) + f32(*eye, yaw, *head)
            + vec([f32(a) for a in aspects]) + f32(*ro, *rd, u, v) + u32(w) + u32(h))


# bitrate_pacer's Event variants, in declaration order
EVENTS = ["Damage", "KeyframeRequest", "Reset", "Poll", "Sleep", "PollWhenDue", "Report", "Input", "Rtt"]


def ev(name, *args) -> bytes:
    i = EVENTS.index(name)
    tag = u32(((i << 32) + len(EVENTS) - 1) // len(EVENTS))   # smallest v with (v*n)>>32 == i
    if name == "Report":
        return tag + u16(args[0]) + u8(args[1])
    return tag + b"".join(u16(a) for a in args)


def pacer(events, max_fps=30, refine=2, refine_ms=150, kf_ms=300, min_kbps=300, max_kbps=6000,
          per_sec=1000, burst=250) -> bytes:
    return (u16(max_fps) + u8(refine) + u16(refine_ms) + u16(kf_ms) + u32(min_kbps) + u32(max_kbps)
            + u16(per_sec) + u16(burst) + vec(events))


def tag(i: int, n: int) -> bytes:
    """The u32 that makes `arbitrary` pick variant i of n."""
    return u32(((i << 32) + n - 1) // n)


# ---------------------------------------------------------------- framebuffer_ops
OPS = ["Resize", "Put", "PutOwned", "Copy", "Convert", "Check", "New"]


def n_small(v): return tag(0, 2) + u8(v)
def n_any(v): return tag(1, 2) + u32(v)
def rect(x, y, w, h): return b"".join(n_small(v) if 0 <= v < 256 else n_any(v & 0xFFFFFFFF) for v in (x, y, w, h))
def op(name, *parts): return tag(OPS.index(name), len(OPS)) + b"".join(parts)
def i8(x): return struct.pack("<b", x)


def fb_ops(w, h, ops) -> bytes:
    return u8(w) + u8(h) + vec(ops)


# ---------------------------------------------------------------- rfb_server
def be16(x): return struct.pack(">H", x)
def be32(x): return struct.pack(">I", x)
def s32(x): return struct.pack(">i", x)


# The agent asks for BGRA (32 bpp, depth 24, little-endian, true colour, shifts 16/8/0).
PIXEL_FORMAT = bytes([32, 24, 0, 1]) + be16(255) + be16(255) + be16(255) + bytes([16, 8, 0, 0, 0, 0])
RAW, COPYRECT, TIGHT, ZRLE, DESKTOP_SIZE = 0, 1, 7, 16, -223


def server_init(w, h, name=b"fuzz") -> bytes:
    return be16(w) + be16(h) + PIXEL_FORMAT + be32(len(name)) + name


def handshake(w=64, h=48, auth=False) -> bytes:
    out = b"RFB 003.008\n"
    if auth:
        out += u8(1) + u8(2) + bytes(range(16)) + be32(0)   # VNC auth: challenge, then OK
    else:
        out += u8(1) + u8(1) + be32(0)                       # None, SecurityResult OK
    return out + server_init(w, h)


def update(*rects) -> bytes:
    return u8(0) + u8(0) + be16(len(rects)) + b"".join(rects)


def rect_hdr(x, y, w, h, enc) -> bytes:
    return be16(x) + be16(y) + be16(w) + be16(h) + s32(enc)


def raw(x, y, w, h, seed=1) -> bytes:
    return rect_hdr(x, y, w, h, RAW) + bytes((i * 7 + seed) & 0xFF for i in range(w * h * 4))


def copyrect(x, y, w, h, sx, sy) -> bytes:
    return rect_hdr(x, y, w, h, COPYRECT) + be16(sx) + be16(sy)


def sync_flushed(data: bytes) -> bytes:
    """RFB's zlib streams run for the whole connection: sync-flushed, never finished."""
    z = zlib.compressobj()
    return z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)


def zrle_solid(x, y, w, h, bgr=(0x20, 0x40, 0x80)) -> bytes:
    tiles = ((w + 63) // 64) * ((h + 63) // 64)
    data = sync_flushed(b"".join(u8(1) + bytes(bgr) for _ in range(tiles)))  # solid tiles, CPIXEL
    return rect_hdr(x, y, w, h, ZRLE) + be32(len(data)) + data


def tight_fill(x, y, w, h, bgr=(0x10, 0x90, 0x30)) -> bytes:
    return rect_hdr(x, y, w, h, TIGHT) + u8(0x80) + bytes(bgr)


def tight_basic(x, y, w, h) -> bytes:
    """Basic compression, no filter, zlib stream 0; under 12 bytes of TPIXELs go uncompressed."""
    pixels = bytes((i * 5) & 0xFF for i in range(w * h * 3))
    if len(pixels) < 12:
        return rect_hdr(x, y, w, h, TIGHT) + u8(0x00) + pixels
    data = sync_flushed(pixels)
    n = len(data)
    length = bytes([n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, n >> 14]) if n >= 1 << 14 else \
        bytes([n & 0x7F | 0x80, n >> 7]) if n >= 128 else bytes([n])
    return rect_hdr(x, y, w, h, TIGHT) + u8(0x00) + length + data


def bell() -> bytes:
    return u8(2)


def cut_text(text: bytes) -> bytes:
    return u8(3) + b"\0\0\0" + be32(len(text)) + text


def main() -> None:
    lr = CORPUS / "layout_ray"
    lr.mkdir(parents=True, exist_ok=True)
    (lr / "default_wall").write_bytes(wall())
    (lr / "wide_desktops_yawed").write_bytes(
        wall(aspects=(16 / 9, 4 / 3, 1.0, 0.5), yaw=0.7, rd=(0.3, 0.1, -1.0), cols=2))
    nan, inf = float("nan"), float("inf")
    (lr / "nan_and_inf").write_bytes(
        wall(radius=nan, cw=inf, aspects=(nan, 0.0, -1.0), rd=(0.0, 0.0, 0.0), u=nan, v=inf, w=0, h=0))

    bp = CORPUS / "bitrate_pacer"
    bp.mkdir(parents=True, exist_ok=True)
    # A scrolling screen: damage every 5 ms, the encoder polling when told.
    motion = []
    for _ in range(60):
        motion += [ev("Damage", 5000), ev("Poll", 0), ev("PollWhenDue")]
    (bp / "motion").write_bytes(pacer(motion + [ev("Sleep", 400), ev("PollWhenDue"), ev("PollWhenDue")]))
    # A PLI storm while the screen changes, and a VNC reset.
    storm = []
    for _ in range(20):
        storm += [ev("KeyframeRequest", 10000), ev("Damage", 1000), ev("PollWhenDue"), ev("Poll", 20000)]
    storm += [ev("Reset"), ev("Sleep", 1000)]
    (bp / "keyframe_storm").write_bytes(pacer(storm, max_fps=10, refine=1))
    # Loss reports: heavy loss, a hold, then clean reports; input at 2 kHz.
    reports = ([ev("Report", 1000, 64)] * 4 + [ev("Report", 1000, 13)] + [ev("Report", 1000, 0)] * 8
               + [ev("Report", 300, 255)] * 10 + [ev("Input", 500)] * 300)
    (bp / "loss_reports_and_input").write_bytes(pacer(reports))
    # A queue building: RTT from 20 ms to 400 ms and back, with clean loss reports between.
    queue = []
    for rtt in (20, 25, 60, 140, 250, 400, 400, 300, 120, 30, 20, 20):
        queue += [ev("Rtt", 1000, rtt), ev("Report", 10, 0)]
    (bp / "queueing_delay").write_bytes(pacer(queue))

    fo = CORPUS / "framebuffer_ops"
    fo.mkdir(parents=True, exist_ok=True)
    (fo / "puts_copies_checks").write_bytes(fb_ops(33, 17, [
        op("Put", rect(3, 2, 10, 5), u8(9), i8(0)), op("Convert", rect(0, 0, 0, 0)),
        op("Copy", rect(4, 3, 10, 5), n_small(3), n_small(2)), op("Check"),
        op("PutOwned", rect(0, 0, 33, 17), u8(3), i8(0)), op("Check"),
        op("Copy", rect(0, 0, 20, 10), n_small(1), n_small(1)), op("Convert", rect(31, 15, 5, 5)), op("Check")]))
    (fo / "resize_and_bad_rects").write_bytes(fb_ops(8, 8, [
        op("Resize", u8(7), u8(5)), op("Put", rect(6, 4, 2, 1), u8(1), i8(0)),
        op("Put", rect(0xFFFFFFFF, 0, 2, 1), u8(1), i8(0)), op("Put", rect(1, 1, 2, 2), u8(1), i8(-1)),
        op("Copy", rect(0, 0, 3, 3), n_any(0xFFFFFFFE), n_small(0)), op("Resize", u8(0), u8(9)),
        op("New", u32(4096), u32(4096)), op("New", u32(3), u32(5)), op("Check")]))

    rs = CORPUS / "rfb_server"
    rs.mkdir(parents=True, exist_ok=True)
    local, remote, password, viewer_input = 0, 1, 2, 4
    (rs / "raw_copyrect_local").write_bytes(u8(local | viewer_input) + handshake() + update(
        raw(0, 0, 64, 48)) + update(raw(10, 10, 8, 4, seed=5), copyrect(30, 20, 16, 16, 0, 0)) + bell())
    (rs / "desktop_size_then_raw").write_bytes(u8(local) + handshake(32, 24) + update(
        rect_hdr(0, 0, 81, 45, DESKTOP_SIZE)) + update(raw(79, 43, 2, 2)) + cut_text(b"hello"))
    (rs / "zrle_tight_remote").write_bytes(u8(remote) + handshake(100, 70) + update(
        zrle_solid(0, 0, 100, 70)) + update(tight_fill(5, 5, 20, 10), tight_basic(40, 30, 9, 7), tight_basic(1, 1, 1, 1)))
    (rs / "vnc_auth").write_bytes(u8(password) + handshake(16, 16, auth=True) + update(raw(0, 0, 16, 16)))
    (rs / "rect_outside_screen").write_bytes(u8(local) + handshake(16, 16) + update(raw(10, 10, 8, 8)))


if __name__ == "__main__":
    main()
