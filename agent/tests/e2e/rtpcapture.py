"""An aiortc WHEP viewer that keeps every RTP packet it receives, raw (decrypted, before aiortc
parses it: aiortc drops header extensions it does not know), with its arrival time; and the
bits of RTP and H.264 payload parsing the tests need to read them."""
from __future__ import annotations

import struct
import time

from loco_testkit.whep_aiortc import SyncViewer, WhepViewer

PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"


def rtp_extensions(pkt: bytes) -> dict[int, bytes]:
    """The header extension elements of an RTP packet (RFC 8285, one- and two-byte forms)."""
    if len(pkt) < 12 or not pkt[0] & 0x10:
        return {}
    off = 12 + 4 * (pkt[0] & 0x0F)
    profile, words = struct.unpack_from("!HH", pkt, off)
    data = pkt[off + 4: off + 4 + 4 * words]
    out, i = {}, 0
    if profile == 0xBEDE:
        while i < len(data):
            b = data[i]
            if b == 0:          # padding
                i += 1
                continue
            ext_id, length = b >> 4, (b & 0x0F) + 1
            if ext_id == 15:
                break
            out[ext_id] = data[i + 1: i + 1 + length]
            i += 1 + length
    elif profile & 0xFFF0 == 0x1000:
        while i + 1 < len(data):
            if data[i] == 0:
                i += 1
                continue
            ext_id, length = data[i], data[i + 1]
            out[ext_id] = data[i + 2: i + 2 + length]
            i += 2 + length
    return out


def rtp_payload(pkt: bytes) -> bytes:
    """The payload of an RTP packet (after CSRCs and extensions, without padding)."""
    off = 12 + 4 * (pkt[0] & 0x0F)
    if pkt[0] & 0x10:
        _, words = struct.unpack_from("!HH", pkt, off)
        off += 4 + 4 * words
    end = len(pkt) - (pkt[-1] if pkt[0] & 0x20 else 0)
    return pkt[off:end]


def h264_nal_types(payload: bytes) -> list[int]:
    """The NAL unit types an H.264 RTP payload (RFC 6184: single NAL, STAP-A, FU-A start) holds."""
    if not payload:
        return []
    t = payload[0] & 0x1F
    if t == 24:   # STAP-A
        out, i = [], 1
        while i + 2 < len(payload):
            size = struct.unpack_from("!H", payload, i)[0]
            if size and i + 2 < len(payload):
                out.append(payload[i + 2] & 0x1F)
            i += 2 + size
        return out
    if t == 28:   # FU-A: the fragmented unit's type, on its first fragment only
        return [payload[1] & 0x1F] if len(payload) > 1 and payload[1] & 0x80 else []
    return [t]


def is_h264_keyframe_packet(pkt: bytes) -> bool:
    """The packet carries (the start of) an IDR slice or a sequence parameter set."""
    return any(t in (5, 7) for t in h264_nal_types(rtp_payload(pkt)))


class CapturingViewer(WhepViewer):
    """aiortc viewer that keeps every RTP packet as (time.monotonic() at arrival, bytes) in
    `rtp`, and offers the playout-delay extension under `playout_delay_id` when that is set."""

    def __init__(self, *a, playout_delay_id: int | None = None, **kw):
        super().__init__(*a, **kw)
        self.rtp: list[tuple[float, bytes]] = []
        self.playout_delay_id = playout_delay_id

    def offer_for_agent(self, offer: str) -> str:
        if self.playout_delay_id is None:
            return offer
        out = []
        for line in offer.split("\r\n"):
            out.append(line)
            if line.startswith("m=video "):
                out.append(f"a=extmap:{self.playout_delay_id} {PLAYOUT_DELAY_URI}")
        return "\r\n".join(out)

    def answer_for_viewer(self, answer: str) -> str:
        # Hook the DTLS transport now, before media flows: it hands decrypted RTP to aiortc's
        # parser.
        for t in self.pc.getTransceivers():
            dtls = t.receiver.transport
            if dtls is not None and not getattr(dtls, "_loco_hooked", False):
                orig = dtls._handle_rtp_data

                async def handle(data, arrival_time_ms, _orig=orig):
                    self.rtp.append((time.monotonic(), bytes(data)))
                    await _orig(data, arrival_time_ms)
                dtls._handle_rtp_data = handle
                dtls._loco_hooked = True
        return super().answer_for_viewer(answer)


def capture(aio_loop, agent, playout_delay_id: int | None = None, codec: str = "h264",
            token: str | None = None, name: str = "capturing") -> tuple[SyncViewer, CapturingViewer]:
    """A WHEP-connected CapturingViewer, and its blocking facade."""
    async def _go():
        v = CapturingViewer(agent.url, codec, token, playout_delay_id=playout_delay_id)
        try:
            await v._start(True, 15.0)
        except BaseException:
            await v.pc.close()
            raise
        return v
    v = aio_loop.run(_go(), 30)
    return SyncViewer(aio_loop, v, name), v
