"""Assertion helpers shared by the test modules."""
from __future__ import annotations

import time

import numpy as np

W, H = 1024, 768

# X11 keysyms
XK_h, XK_i, XK_Return = 0x68, 0x69, 0xFF0D


def hex_rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def region_mean(rgb: np.ndarray, cx: float = 0.5, cy: float = 0.5, half: int = 40) -> np.ndarray:
    h, w = rgb.shape[:2]
    x, y = int(w * cx), int(h * cy)
    return rgb[max(0, y - half):y + half, max(0, x - half):x + half].reshape(-1, 3).mean(axis=0)


def color_near(rgb: np.ndarray, color: str, tol: float = 40, **kw) -> bool:
    m = region_mean(rgb, **kw)
    return bool(np.all(np.abs(m - np.array(hex_rgb(color))) <= tol))


def frame_is(color: str, tol: float = 40, size=(W, H)):
    """Predicate for SyncViewer.wait_frame: frame of `size` whose centre is `color`."""
    def pred(f):
        return (f.width, f.height) == size and color_near(f.rgb, color, tol)
    pred.__name__ = f"frame_is_{color}"
    return pred


def make_offer(aio_loop, codec: str | None = None, with_channel: bool = True) -> str:
    """A real WebRTC offer SDP from aiortc (recvonly video + `input` channel), not used further."""
    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    async def _mk():
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tr = pc.addTransceiver("video", direction="recvonly")
        if codec:
            caps = RTCRtpReceiver.getCapabilities("video").codecs
            tr.setCodecPreferences([c for c in caps if c.mimeType.lower() == "video/" + codec])
        if with_channel:
            pc.createDataChannel("input")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp
    return aio_loop.run(_mk(), 30)


def wait_metric(agent, name: str, pred, timeout: float = 10.0, **labels) -> float:
    """Poll agent metric `name` (summed over matching label sets) until pred(value)."""
    deadline = time.monotonic() + timeout
    while True:
        v = agent.metric(name, 0.0, **labels)
        if pred(v):
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"metric {name}{labels or ''} = {v} did not reach the expected "
                                 f"value within {timeout}s")
        time.sleep(0.1)
