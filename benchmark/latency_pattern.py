#!/usr/bin/env python3
"""The latency pattern: a binary-coded timestamp drawn on a real X display and read back from
decoded frames.

    python3 benchmark/latency_pattern.py --display :N [--hz 60] [--motion] [--seconds S]

The pattern is a 16x4 grid of 32x32 black or white cells (512x128 pixels, its top-left corner at
ORIGIN, on the 16-pixel macroblock grid) holding 64 bits:

    cell 0 white, cell 1 black     references: the reader thresholds halfway between them
    32 bits  ts_ms                 CLOCK_REALTIME in milliseconds mod 2**32, taken just before
                                   the cells are drawn
    8 bits   counter               drawings so far mod 256
    6 bits   clicks                button presses the window has seen mod 64 (input-to-photon)
    16 bits  CRC-16/CCITT          of the 46 bits above: misreads are rejected

Bits are row-major after the two references, most significant bit first. The reader takes the
mean luma of each cell's central 16x16 pixels (H.264 blur and ringing stay at the cell edges),
needs the references to differ by at least MIN_CONTRAST, rejects a frame when any cell is
within AMBIGUOUS of the threshold (a frame caught between two drawings) and when the CRC does
not match. Glass-to-glass latency = receive time (time.time(), same host, same clock) - ts_ms.

As a program (python-xlib), it is the X client that draws the pattern at --hz on --display in an
override-redirect window, redrawing at once (with clicks + 1) when the window is clicked; with
--motion it also pans a 1024x768 texture across the whole screen at 30 fps under the pattern
(full-motion content: every pixel changes every frame).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

CELL = 32
COLS, ROWS = 16, 4
WIDTH, HEIGHT = COLS * CELL, ROWS * CELL
ORIGIN = (0, 768 - HEIGHT)  # bottom-left corner of a 1024x768 screen
N_CELLS = COLS * ROWS
TS_BITS, COUNTER_BITS, CLICK_BITS, CRC_BITS = 32, 8, 6, 16
PAYLOAD_BITS = TS_BITS + COUNTER_BITS + CLICK_BITS
assert 2 + PAYLOAD_BITS + CRC_BITS == N_CELLS
MIN_CONTRAST = 64.0
AMBIGUOUS = 0.2  # of the contrast, around the threshold
SAMPLE = CELL // 4  # margin: the central CELL/2 x CELL/2 pixels are averaged


@dataclass(frozen=True)
class Reading:
    ts_ms: int
    counter: int
    clicks: int

    def age_ms(self, now_s: float) -> float:
        """now - drawing time in ms, modulo 2**32 ms, signed (a clock step shows as a negative
        age). ts_ms was truncated to whole ms, so the drawing was 0.5 ms after it on average."""
        d = (now_s * 1000 - self.ts_ms) % float(1 << 32)
        if d >= 1 << 31:
            d -= 1 << 32
        return d - 0.5


def crc16(bits: list[int]) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over a bit sequence, MSB first."""
    crc = 0xFFFF
    for b in bits:
        top = (crc >> 15) & 1
        crc = (crc << 1) & 0xFFFF
        if top ^ b:
            crc ^= 0x1021
    return crc


def _bits(value: int, n: int) -> list[int]:
    return [(value >> (n - 1 - i)) & 1 for i in range(n)]


def _value(bits) -> int:
    v = 0
    for b in bits:
        v = (v << 1) | int(b)
    return v


def encode(ts_ms: int, counter: int, clicks: int) -> list[int]:
    """The 64 cell values (1 white, 0 black), references included."""
    payload = (_bits(ts_ms % (1 << TS_BITS), TS_BITS) + _bits(counter % (1 << COUNTER_BITS), COUNTER_BITS)
               + _bits(clicks % (1 << CLICK_BITS), CLICK_BITS))
    return [1, 0] + payload + _bits(crc16(payload), CRC_BITS)


def cell_rects(origin: tuple[int, int] = ORIGIN) -> list[tuple[int, int, int, int]]:
    ox, oy = origin
    return [(ox + (i % COLS) * CELL, oy + (i // COLS) * CELL, CELL, CELL) for i in range(N_CELLS)]


def render(cells: list[int], image: np.ndarray | None = None, origin: tuple[int, int] = ORIGIN,
           white: int = 255, black: int = 0) -> np.ndarray:
    """Draws the cells into a luma image (a new 768x1024 grey one by default); for tests."""
    img = np.full((768, 1024), 128, np.uint8) if image is None else image
    for v, (x, y, w, h) in zip(cells, cell_rects(origin)):
        img[y:y + h, x:x + w] = white if v else black
    return img


def luma(frame: np.ndarray) -> np.ndarray:
    """A luma plane from an HxW luma or HxWx3 RGB array (BT.601)."""
    if frame.ndim == 2:
        return frame
    f = frame[..., :3].astype(np.float32)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def cell_means(y_plane: np.ndarray, origin: tuple[int, int] = ORIGIN) -> np.ndarray | None:
    """Mean of each cell's centre in a luma plane (or the pattern region alone, origin (0, 0)).
    None when the pattern does not fit."""
    ox, oy = origin
    if y_plane.shape[0] < oy + HEIGHT or y_plane.shape[1] < ox + WIDTH:
        return None
    region = np.asarray(y_plane[oy:oy + HEIGHT, ox:ox + WIDTH], np.float32)
    cells = region.reshape(ROWS, CELL, COLS, CELL)[:, SAMPLE:CELL - SAMPLE, :, SAMPLE:CELL - SAMPLE]
    return cells.mean(axis=(1, 3)).reshape(-1)


def decode_means(means) -> Reading | None:
    """A Reading from the 64 cell means, or None when they do not hold a valid pattern."""
    if means is None or len(means) != N_CELLS:
        return None
    m = np.asarray(means, np.float64)
    white, black = m[0], m[1]
    contrast = white - black
    if not contrast >= MIN_CONTRAST:
        return None
    threshold = (white + black) / 2
    if np.any(np.abs(m[2:] - threshold) < AMBIGUOUS * contrast):
        return None
    bits = (m[2:] > threshold).astype(int).tolist()
    payload, crc = bits[:PAYLOAD_BITS], bits[PAYLOAD_BITS:]
    if crc16(payload) != _value(crc):
        return None
    return Reading(_value(payload[:TS_BITS]), _value(payload[TS_BITS:TS_BITS + COUNTER_BITS]),
                   _value(payload[TS_BITS + COUNTER_BITS:]))


def read(frame: np.ndarray, origin: tuple[int, int] = ORIGIN) -> Reading | None:
    """The pattern in a decoded frame (luma plane or RGB), or None."""
    return decode_means(cell_means(luma(frame), origin))


def read_yuv_frame(av_frame) -> Reading | None:
    """Reads the pattern from a PyAV VideoFrame in a YUV format (the Y plane, without converting
    the whole frame to RGB)."""
    plane = av_frame.planes[0]
    ox, oy = ORIGIN
    if av_frame.height < oy + HEIGHT or av_frame.width < ox + WIDTH:
        return None
    buf = np.frombuffer(plane, np.uint8)
    rows = buf[oy * plane.line_size:(oy + HEIGHT) * plane.line_size].reshape(HEIGHT, plane.line_size)
    return decode_means(cell_means(rows[:, ox:ox + WIDTH], (0, 0)))


# ---- the X client -------------------------------------------------------------------------

def texture(w: int = 2048, h: int = 768, seed: int = 5) -> np.ndarray:
    """A BGRX texture with gradients, coloured blocks and fine stripes (hard to predict)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 4), np.uint8)
    img[..., 0] = (xx * 255 // w).astype(np.uint8)
    img[..., 1] = (yy * 255 // h).astype(np.uint8)
    img[..., 2] = ((xx + yy) % 256).astype(np.uint8)
    blocks = rng.integers(0, 256, (h // 24 + 1, w // 24 + 1, 3), dtype=np.uint8)
    mask = rng.random((h // 24 + 1, w // 24 + 1)) < 0.5
    big = np.repeat(np.repeat(blocks, 24, 0), 24, 1)[:h, :w]
    bm = np.repeat(np.repeat(mask, 24, 0), 24, 1)[:h, :w]
    img[..., :3][bm] = big[bm]
    stripes = ((xx // 3 + yy // 2) % 7 == 0)
    img[..., :3][stripes] = 255 - img[..., :3][stripes]
    # Seamless horizontally over the first 1024 columns repeated.
    img[:, w // 2:] = img[:, :w // 2]
    return img


def run_client(display: str, hz: float, motion: bool, seconds: float | None, motion_fps: float = 30.0) -> int:
    from Xlib import X, display as xdisplay

    d = xdisplay.Display(display)
    screen = d.screen()
    root = screen.root
    sw, sh = screen.width_in_pixels, screen.height_in_pixels
    black_gc = root.create_gc(foreground=screen.black_pixel)
    white_gc = root.create_gc(foreground=screen.white_pixel)
    bg = None
    if motion:
        bg = root.create_window(0, 0, sw, sh, 0, screen.root_depth, X.InputOutput, X.CopyFromParent,
                                override_redirect=True, background_pixmap=X.NONE)
        tex = texture(2 * sw, sh)
        pix = bg.create_pixmap(2 * sw, sh, screen.root_depth)
        rows = max(1, 200_000 // (2 * sw * 4))
        for y in range(0, sh, rows):
            part = tex[y:y + rows]
            pix.put_image(black_gc, 0, y, 2 * sw, part.shape[0], X.ZPixmap, screen.root_depth, 0, part.tobytes())
        bg.map()
    ox, oy = ORIGIN
    ox, oy = min(ox, sw - WIDTH), min(oy, sh - HEIGHT)
    win = root.create_window(ox, oy, WIDTH, HEIGHT, 0, screen.root_depth, X.InputOutput, X.CopyFromParent,
                             override_redirect=True, background_pixel=screen.black_pixel,
                             event_mask=X.ButtonPressMask | X.ExposureMask)
    win.map()
    win.configure(stack_mode=X.Above)
    d.sync()
    rects = [(x - ox, y - oy, w, h) for x, y, w, h in cell_rects((ox, oy))]
    counter = clicks = 0
    offset = 0

    def draw() -> None:
        nonlocal counter
        t = time.time()
        cells = encode(int(t * 1000), counter, clicks)
        win.poly_fill_rectangle(white_gc, [r for v, r in zip(cells, rects) if v])
        win.poly_fill_rectangle(black_gc, [r for v, r in zip(cells, rects) if not v])
        d.flush()
        counter += 1

    period = 1.0 / hz
    motion_period = 1.0 / motion_fps
    t0 = time.monotonic()
    next_draw = next_motion = t0
    end = t0 + seconds if seconds else None
    print("pattern: ready", flush=True)
    while end is None or time.monotonic() < end:
        while d.pending_events():
            ev = d.next_event()
            if ev.type == X.ButtonPress:
                clicks += 1
                draw()  # react at once, as an application does
            elif ev.type == X.Expose and motion and bg is not None:
                next_motion = time.monotonic()
        now = time.monotonic()
        if bg is not None and now >= next_motion:
            offset = (offset + 8) % sw
            bg.copy_area(black_gc, pix, offset, 0, sw, sh, 0, 0)
            win.configure(stack_mode=X.Above)
            next_motion += motion_period
            if next_motion < now - motion_period:
                next_motion = now + motion_period
        if now >= next_draw:
            draw()
            next_draw += period
            if next_draw < now - period:
                next_draw = now + period
        wait = min(next_draw, next_motion if bg is not None else next_draw) - time.monotonic()
        if wait > 0:
            # Wake early for a click: poll the X connection's fd.
            import select
            select.select([d.fileno()], [], [], wait)
    d.close()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--display", default=os.environ.get("DISPLAY", ":0"))
    ap.add_argument("--hz", type=float, default=60.0)
    ap.add_argument("--motion", action="store_true", help="pan a full-screen texture at 30 fps under the pattern")
    ap.add_argument("--motion-fps", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=None)
    a = ap.parse_args()
    return run_client(a.display, a.hz, a.motion, a.seconds, a.motion_fps)


if __name__ == "__main__":
    sys.exit(main())
