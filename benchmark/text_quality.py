"""Decoded-text quality in the live comparison: how close the picture a viewer shows is to the
desktop on the text region (the workload's xterm), as typing or scrolling goes on.

A sample: the workload holds off after its current keystrokes (XWorkload.paused), SETTLE_S
later the source's luma is read straight from the VNC server (one full RFB update, raw), and
every picture the viewer shows in the next CAPTURE_S seconds (and the one it shows at that
moment) is compared with it on the text region; the closest one counts. With the screen still,
one of them is the viewer's picture of exactly that state (unless it lags by more than
CAPTURE_S): the frame that coded the last keystroke's change, as it was coded while the text
changed, before the agent's top-off (0.5 s into stillness; CBR's refinement frames at 150 and
300 ms do fall inside). The figures are the means over the samples of its PSNR-Y and SSIM
(quality.py); identical pictures have no finite PSNR, so they are counted apart (summarize).

Luma on both sides is BT.601 limited range (what the agent's colour conversion and H.264/VP8
decoders use), rounded to 8 bits: Y = 16 + (65.738 R + 129.057 G + 25.064 B) / 256. The two
roundings put the ceiling for a lossless path near 59 dB unless the pictures are identical.
"""
from __future__ import annotations

import math
import time

import numpy as np

import quality
from recorder import RfbRecorder

SETTLE_S = 0.05   # from the last keystroke to the source read (X draws it)
CAPTURE_S = 0.4   # how long after the source read the viewer's pictures are compared with it
SAMPLES = 6       # samples per system and workload
INTERVAL_S = 1.0  # of workload between samples


def luma_from_bgrx(px: np.ndarray) -> np.ndarray:
    """H x W x 4 bytes B, G, R, X -> H x W uint8 BT.601 limited-range luma."""
    b, g, r = (px[..., i].astype(np.float32) for i in range(3))
    return np.clip(np.rint(16.0 + (65.738 * r + 129.057 * g + 25.064 * b) / 256.0), 0, 255).astype(np.uint8)


def grab_luma(vnc_port: int) -> np.ndarray:
    """The whole screen of the VNC server on vnc_port now, as luma (one non-incremental update)."""
    c = RfbRecorder(vnc_port)
    try:
        screen = np.zeros((c.height, c.width, 4), np.uint8)
        c.request(incremental=False)
        for x, y, w, h, px in c.read_update():
            screen[y:y + h, x:x + w] = np.frombuffer(px, np.uint8).reshape(h, w, 4)
    finally:
        c.close()
    return luma_from_bgrx(screen)


def crop(y: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, w, h = rect
    return y[y0:y0 + h, x0:x0 + w]


def best_match(source: np.ndarray, shown: list[np.ndarray]) -> tuple[float, float]:
    """(PSNR-Y dB, SSIM) of the shown picture closest to source (all of one shape)."""
    if not shown:
        return math.nan, math.nan
    errors = [quality.mse(source, s) for s in shown]
    k = int(np.argmin(errors))
    return quality.psnr_from_mse(errors[k]), quality.ssim(source, shown[k])


def summarize(samples: list[tuple[float, float]]) -> dict:
    """text_psnr_db: the mean PSNR-Y over the samples whose best picture was not identical to the
    source (absent when all were: results.csv holds finite numbers only); text_identical: how many
    were identical; text_ssim: the mean SSIM over all; text_samples: samples with a picture."""
    ok = [(p, s) for p, s in samples if not math.isnan(p)]
    if not ok:
        return {}
    finite = [p for p, _ in ok if not math.isinf(p)]
    out = {"text_ssim": sum(s for _, s in ok) / len(ok), "text_samples": len(ok), "text_identical": len(ok) - len(finite)}
    if finite:
        out["text_psnr_db"] = sum(finite) / len(finite)
    return out


def _samples(vnc_port: int, rect, paused, compare, samples: int) -> dict:
    out = []
    for _ in range(samples):
        with paused():
            time.sleep(SETTLE_S)
            source = crop(grab_luma(vnc_port), rect)
            out.append(best_match(source, compare(source)))
        time.sleep(INTERVAL_S)
    return summarize(out)


def measure(vnc_port: int, rect: tuple[int, int, int, int], paused, capture, samples: int = SAMPLES) -> dict:
    """paused(): a context in which the workload holds off; capture(seconds) -> the viewer's
    pictures over the next `seconds` (and the current one) as luma arrays cropped to rect."""
    return _samples(vnc_port, rect, paused, lambda source: capture(CAPTURE_S), samples)


def measure_page(vnc_port: int, rect: tuple[int, int, int, int], paused, session, samples: int = SAMPLES) -> dict:
    """The same for noVNC in Chromium (peers.BrowserSession): the page compares its canvas with
    the source after every flip and hands back the closest picture (novnc-bench.html)."""
    import base64
    x, y, w, h = rect

    def compare(source: np.ndarray) -> list[np.ndarray]:
        session.page.evaluate("([r, b]) => window.captureStart(r, b)",
                              [list(rect), base64.b64encode(source.tobytes()).decode()])
        time.sleep(CAPTURE_S)
        got = session.page.evaluate("() => window.captureEnd()")
        return [np.frombuffer(base64.b64decode(got["y"]), np.uint8).reshape(h, w)]
    return _samples(vnc_port, rect, paused, compare, samples)
