"""Picture quality of decoded frames against their source: PSNR and SSIM on 8-bit planes,
and decoding of loco-codec-bench's packet files with PyAV (FFmpeg's decoders).

PSNR: 10 log10(255^2 / MSE); identical pictures give +inf.
SSIM: Wang et al. (2004) with the usual constants C1 = (0.01*255)^2, C2 = (0.03*255)^2, over
every 8x8 window (stride 1, uniform weights, as FFmpeg's `ssim` filter and libvpx's
`vpx_ssim` use 8x8 windows rather than the paper's 11x11 Gaussian), averaged; identical
pictures give 1.0.
"""
from __future__ import annotations

import math
import struct
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2
WINDOW = 8


def mse(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(d * d))


def psnr_from_mse(m: float, peak: float = 255.0) -> float:
    return math.inf if m == 0 else 10.0 * math.log10(peak * peak / m)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    return psnr_from_mse(mse(a, b), peak)


def _window_sums(x: np.ndarray, n: int) -> np.ndarray:
    """Sum of every n x n window of a 2-D array (valid positions only), via an integral image."""
    s = np.zeros((x.shape[0] + 1, x.shape[1] + 1), np.float64)
    np.cumsum(np.cumsum(x, axis=0, dtype=np.float64), axis=1, out=s[1:, 1:])
    return s[n:, n:] - s[:-n, n:] - s[n:, :-n] + s[:-n, :-n]


def ssim(a: np.ndarray, b: np.ndarray, window: int = WINDOW) -> float:
    """Mean SSIM of two 2-D 8-bit pictures over all window x window windows."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two 2-D pictures of one shape, got {a.shape} and {b.shape}")
    if min(a.shape) < window:
        raise ValueError(f"picture {a.shape} smaller than the {window}x{window} window")
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    n = float(window * window)
    mx = _window_sums(x, window) / n
    my = _window_sums(y, window) / n
    vx = _window_sums(x * x, window) / n - mx * mx
    vy = _window_sums(y * y, window) / n - my * my
    cxy = _window_sums(x * y, window) / n - mx * my
    num = (2 * mx * my + C1) * (2 * cxy + C2)
    den = (mx * mx + my * my + C1) * (vx + vy + C2)
    return float(np.mean(num / den))


def read_packets(path: Path) -> Iterator[bytes]:
    """The frames of a loco-codec-bench `<codec>.pkt` file (u32 LE length + bytes each)."""
    with open(path, "rb") as f:
        while True:
            head = f.read(4)
            if not head:
                return
            if len(head) != 4:
                raise ValueError(f"{path}: truncated length")
            (n,) = struct.unpack("<I", head)
            data = f.read(n)
            if len(data) != n:
                raise ValueError(f"{path}: truncated packet")
            yield data


def read_ref(path: Path, width: int, height: int) -> np.ndarray:
    """ref.yuv as a (frames, width*height*3/2) uint8 memory map."""
    size = width * height * 3 // 2
    mm = np.memmap(path, np.uint8, mode="r")
    if mm.size % size:
        raise ValueError(f"{path}: {mm.size} bytes is not a whole number of {width}x{height} I420 pictures")
    return mm.reshape(-1, size)


def split_i420(buf: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ys = width * height
    cs = ys // 4
    return (buf[:ys].reshape(height, width), buf[ys:ys + cs].reshape(height // 2, width // 2),
            buf[ys + cs:ys + 2 * cs].reshape(height // 2, width // 2))


DECODERS = {"h264": "h264", "vp8": "vp8", "mjpeg": "mjpeg"}


def _planes(frame, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three 8-bit planes of a decoded 4:2:0 frame, as coded (no range or colour change)."""
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        raise ValueError(f"decoder gave {frame.format.name}, expected 4:2:0 planar")
    out = []
    for i, (w, h) in enumerate([(width, height), (width // 2, height // 2), (width // 2, height // 2)]):
        p = frame.planes[i]
        arr = np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:h, :w]
        out.append(arr)
    return out[0], out[1], out[2]


def evaluate(codec: str, pkt_path: Path, ref_path: Path, width: int, height: int,
             every: int = 1, ssim_every: int = 1) -> dict:
    """Decodes `pkt_path` and compares every `every`-th picture with ref.yuv.

    Returns frames decoded and compared, PSNR-Y over all compared frames (from their mean
    MSE) and its worst frame, PSNR over Y+U+V, mean and worst SSIM-Y.
    """
    import av  # PyAV, in the venv (agent/tests/e2e/requirements.txt)

    ref = read_ref(ref_path, width, height)
    ctx = av.CodecContext.create(DECODERS[codec], "r")
    ctx.thread_count = 1
    pending: deque[int] = deque()
    mse_y: list[float] = []
    mse_all: list[float] = []
    ssims: list[float] = []
    decoded = 0

    def compare(frame, idx: int) -> None:
        nonlocal decoded
        decoded += 1
        if idx % every:
            return
        y, u, v = _planes(frame, width, height)
        ry, ru, rv = split_i420(ref[idx], width, height)
        my = mse(y, ry)
        mse_y.append(my)
        mse_all.append((my * 4 + mse(u, ru) + mse(v, rv)) / 6)
        if idx % (every * ssim_every) == 0:
            ssims.append(ssim(y, ry))

    packets = 0
    for idx, data in enumerate(read_packets(pkt_path)):
        if not data:
            continue
        packets += 1
        pending.append(idx)
        for frame in ctx.decode(av.Packet(data)):
            compare(frame, pending.popleft())
    for frame in ctx.decode(None):
        compare(frame, pending.popleft())
    if idx + 1 != ref.shape[0]:
        raise ValueError(f"{pkt_path}: {idx + 1} pictures, ref.yuv has {ref.shape[0]}")
    if decoded != packets:
        raise ValueError(f"{codec}: decoded {decoded} frames from {packets} packets")
    return {
        "decoded_frames": decoded,
        "compared_frames": len(mse_y),
        "psnr_y_db": psnr_from_mse(float(np.mean(mse_y))) if mse_y else math.nan,
        "psnr_y_min_db": min(psnr_from_mse(m) for m in mse_y) if mse_y else math.nan,
        "psnr_yuv_db": psnr_from_mse(float(np.mean(mse_all))) if mse_all else math.nan,
        "ssim_y": float(np.mean(ssims)) if ssims else math.nan,
        "ssim_y_min": float(np.min(ssims)) if ssims else math.nan,
    }
