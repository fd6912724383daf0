"""A WHEP viewer built on aiortc (a real WebRTC stack, with PyAV/FFmpeg decoders for H.264 and VP8).

Async API:
    v = await connect("http://127.0.0.1:PORT", codec="h264"|"vp8"|None, token=None)
    v.frames            asyncio.Queue of Frame (newest kept; oldest dropped when full)
    v.latest            newest Frame or None;  v.frame_count  frames decoded so far
    await v.send({"type": "pointer", ...})   # waits until the `input` data channel is open
    await v.close()     # DELETE of the session's Location, then closes the peer connection

Frame: .rgb (numpy HxWx3 uint8, converted on first use with to_ndarray(format="rgb24")),
       .width, .height, .time (time.monotonic() at arrival), .index (1-based decode order).

SyncViewer wraps a viewer for plain (non-async) tests; its loop runs in a LoopThread.

Importing this module mends aiortc's jitter buffer to complete a video frame at its RTP marker
bit, as browsers do (see complete_frames_at_marker).
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
import urllib.parse
from typing import Callable

import aiohttp
import aioice.ice
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpreceiver import RTCRtpReceiver

from loco_testkit.sdp import host_addresses, sdp_candidates, sdp_video_codecs

log = logging.getLogger("whep_aiortc")

# aioice leaves 127.0.0.1 out of its host candidates; add it so a loopback-only agent works.
_orig_host_addresses = aioice.ice.get_host_addresses


def _host_addresses_with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addrs = _orig_host_addresses(use_ipv4, use_ipv6)
    if use_ipv4 and "127.0.0.1" not in addrs:
        addrs = ["127.0.0.1"] + addrs
    return addrs


aioice.ice.get_host_addresses = _host_addresses_with_loopback


def complete_frames_at_marker() -> None:
    """aiortc 1.16's jitter buffer hands a video frame to the decoder only when the first packet
    of the *next* frame arrives (it ignores the RTP marker bit): that adds a frame interval to
    every frame, and holds the last frame of a burst (a click's effect on a still desktop, the
    last frame before stillness) until the screen changes again. Browsers complete a frame at
    its marker bit; so do these viewers, from their import on: a video frame is complete when
    the packet with the marker bit is in and every packet before it since the last frame.
    Idempotent."""
    from aiortc import jitterbuffer
    if getattr(jitterbuffer.JitterBuffer._remove_frame, "_loco_marker", False):
        return
    orig = jitterbuffer.JitterBuffer._remove_frame

    def remove_frame(self, sequence_number):
        if not self._is_video:
            return orig(self, sequence_number)
        packets, timestamp = [], None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                return None
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:  # the next frame began (its marker was lost)
                frame = jitterbuffer.JitterFrame(data=b"".join(x._data for x in packets), timestamp=timestamp)
                self.remove(count)
                return frame
            packets.append(packet)
            if packet.marker:
                frame = jitterbuffer.JitterFrame(data=b"".join(x._data for x in packets), timestamp=timestamp)
                self.remove(count + 1)
                return frame
        return None

    remove_frame._loco_marker = True
    jitterbuffer.JitterBuffer._remove_frame = remove_frame


complete_frames_at_marker()


class WhepError(RuntimeError):
    def __init__(self, status: int, body: str, headers: dict):
        super().__init__(f"WHEP POST answered {status}: {body[:500]!r}")
        self.status, self.body, self.headers = status, body, headers


class Frame:
    __slots__ = ("av", "width", "height", "time", "index", "_rgb")

    def __init__(self, av_frame, index: int):
        self.av = av_frame
        self.width = av_frame.width
        self.height = av_frame.height
        self.time = time.monotonic()
        self.index = index
        self._rgb = None

    @property
    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = self.av.to_ndarray(format="rgb24")
        return self._rgb

    def __repr__(self) -> str:
        return f"Frame(#{self.index} {self.width}x{self.height})"


def _filter_remote_candidates(sdp: str) -> tuple[str, list[str]]:
    """Keep only candidates on this machine's own addresses: the tests must never send ICE
    checks anywhere else. Returns the filtered SDP and the dropped candidate lines."""
    local = host_addresses()
    dropped = []
    out = []
    for line in sdp.splitlines():
        s = line.strip()
        if s.startswith("a=candidate:"):
            c = sdp_candidates(s)
            if not c or c[0]["ip"] not in local or c[0]["proto"] != "udp":
                dropped.append(s)
                continue
        out.append(line)
    return "\r\n".join(out) + "\r\n", dropped


class WhepViewer:
    QUEUE_MAX = 30

    def __init__(self, base_url: str, codec: str | None, token: str | None, audio: bool = False):
        self.base_url = base_url.rstrip("/")
        self.audio = audio
        # Decoded audio: (time.monotonic() at decode, int16 array of shape (samples, channels)),
        # the newest ~60 s at 20 ms a frame; and the sample rate aiortc decoded at.
        self.audio_frames: collections.deque[tuple[float, np.ndarray]] = collections.deque(maxlen=3000)
        self.audio_rate = 48000
        self.audio_track_seen = False
        self.codec_requested = codec
        self.token = token
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: local only
        self.dc = None
        self.location: str | None = None
        self.offer_sdp = self.answer_sdp = ""
        self.dropped_candidates: list[str] = []
        self.frames: asyncio.Queue[Frame] = asyncio.Queue(maxsize=self.QUEUE_MAX)
        self.latest: Frame | None = None
        self.frame_count = 0
        self.recent: collections.deque[Frame] = collections.deque(maxlen=8)
        # time.monotonic() of every decoded frame (the newest 100 000)
        self.arrivals: collections.deque[float] = collections.deque(maxlen=100_000)
        self.connection_states: list[str] = []
        self.track_error: str | None = None
        self.track_ended = False
        self.dc_open = asyncio.Event()
        self.dc_closed = False
        self._cond = threading.Condition()   # for threads waiting on frames
        self._tasks: list[asyncio.Task] = []
        self.closed = False

    # -- properties ----------------------------------------------------------------
    @property
    def codec(self) -> str | None:
        """Codec the answer picked (first payload of the video m-line), e.g. 'H264' or 'VP8'."""
        c = sdp_video_codecs(self.answer_sdp)
        return c[0] if c else None

    @property
    def connection_state(self) -> str:
        return self.pc.connectionState

    def _headers(self) -> dict:
        h = {}
        if self.token is not None:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    # -- setup -----------------------------------------------------------------------
    async def _start(self, restrict_codecs: bool, timeout: float) -> None:
        @self.pc.on("connectionstatechange")
        def _on_state():
            self.connection_states.append(self.pc.connectionState)

        @self.pc.on("track")
        def _on_track(track):
            if track.kind == "video":
                self._tasks.append(asyncio.ensure_future(self._consume(track)))
            elif track.kind == "audio":
                self.audio_track_seen = True
                self._tasks.append(asyncio.ensure_future(self._consume_audio(track)))

        tr = self.pc.addTransceiver("video", direction="recvonly")
        if self.audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        if self.codec_requested and restrict_codecs:
            want = "video/" + self.codec_requested.lower()
            caps = RTCRtpReceiver.getCapabilities("video").codecs
            chosen = [c for c in caps if c.mimeType.lower() == want]
            if not chosen:
                raise RuntimeError(f"aiortc cannot receive {self.codec_requested}")
            rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"]
            tr.setCodecPreferences(chosen + rtx)

        self.dc = self.pc.createDataChannel("input")

        @self.dc.on("open")
        def _open():
            self.dc_open.set()

        @self.dc.on("close")
        def _close():
            self.dc_closed = True

        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)   # aiortc gathers all candidates here
        self.offer_sdp = self.pc.localDescription.sdp

        url = self.base_url + "/whep"
        if self.codec_requested:
            url += "?codec=" + urllib.parse.quote(self.codec_requested)
        headers = {"Content-Type": "application/sdp", **self._headers()}
        async with aiohttp.ClientSession() as s:
            async with s.post(url, data=self.offer_for_agent(self.offer_sdp).encode(), headers=headers,
                              timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                body = await r.text()
                if r.status != 201:
                    raise WhepError(r.status, body, dict(r.headers))
                loc = r.headers.get("Location")
                if not loc:
                    raise RuntimeError("WHEP 201 without a Location header")
                self.location = urllib.parse.urljoin(url, loc)
                ctype = r.headers.get("Content-Type", "")
                if not ctype.startswith("application/sdp"):
                    raise RuntimeError(f"WHEP answer has Content-Type {ctype!r}, want application/sdp")
        self.answer_sdp = body
        if not sdp_candidates(body):
            raise RuntimeError("WHEP answer holds no ICE candidates (must be non-trickle):\n" + body)
        filtered = self.answer_for_viewer(body)
        if not sdp_candidates(filtered):
            raise RuntimeError("WHEP answer has no candidate on this machine's addresses: "
                               f"{self.dropped_candidates}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=filtered, type="answer"))

    # -- SDP hooks (the impairment relay of test_impairment.py rewrites candidates here) ---
    def offer_for_agent(self, offer: str) -> str:
        """The offer as POSTed to the agent (the viewer's own, by default)."""
        return offer

    def answer_for_viewer(self, answer: str) -> str:
        """The answer as given to aiortc: by default, without candidates on other machines."""
        filtered, self.dropped_candidates = _filter_remote_candidates(answer)
        return filtered

    async def _consume(self, track) -> None:
        try:
            while True:
                av_frame = await track.recv()
                self.frame_count += 1
                f = Frame(av_frame, self.frame_count)
                self.arrivals.append(f.time)
                if self.frames.full():
                    try:
                        self.frames.get_nowait()
                    except asyncio.QueueEmpty:
                        pass
                self.frames.put_nowait(f)
                with self._cond:
                    self.latest = f
                    self.recent.append(f)
                    self._cond.notify_all()
        except MediaStreamError:
            self.track_ended = True
        except Exception as e:  # noqa: BLE001
            self.track_error = repr(e)
            log.exception("video track consumer failed")
        finally:
            with self._cond:
                self._cond.notify_all()

    async def _consume_audio(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray()  # packed s16: shape (1, samples * channels)
                channels = len(frame.layout.channels)
                self.audio_rate = frame.sample_rate
                self.audio_frames.append((time.monotonic(), pcm.reshape(-1, channels).copy()))
        except MediaStreamError:
            pass
        except Exception:  # noqa: BLE001
            log.exception("audio track consumer failed")

    # -- input -----------------------------------------------------------------------
    async def wait_channel_open(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.dc_open.wait(), timeout)

    async def send(self, msg, timeout: float = 10.0) -> None:
        """Send one message on the `input` channel: dicts/lists as JSON text, str/bytes raw."""
        await self.wait_channel_open(timeout)
        if self.dc.readyState != "open":
            raise RuntimeError(f"input channel is {self.dc.readyState}")
        data = msg if isinstance(msg, (str, bytes)) else json.dumps(msg)
        self.dc.send(data)

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until the data channel's send buffer is empty."""
        deadline = time.monotonic() + timeout
        while self.dc.bufferedAmount > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def remote_max_message_size(self) -> int:
        return self.pc.sctp._remote_max_message_size if self.pc.sctp else 0

    # -- teardown --------------------------------------------------------------------
    async def delete(self, timeout: float = 10.0) -> int:
        """DELETE the WHEP session resource; returns the HTTP status."""
        async with aiohttp.ClientSession() as s:
            async with s.delete(self.location, headers=self._headers(),
                                timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                await r.read()
                return r.status

    async def close(self) -> int | None:
        if self.closed:
            return None
        self.closed = True
        status = None
        if self.location:
            try:
                status = await self.delete()
            except Exception as e:  # noqa: BLE001 - the agent may already be gone
                log.warning("DELETE %s failed: %r", self.location, e)
        await self.pc.close()
        for t in self._tasks:
            t.cancel()
        return status


async def connect(url: str, codec: str | None = None, token: str | None = None,
                  restrict_codecs: bool = True, timeout: float = 15.0, audio: bool = False) -> WhepViewer:
    """WHEP-connect to the agent at base `url`; `codec` both restricts what aiortc offers and
    is passed as ?codec= (restrict_codecs=False offers every codec and only sends ?codec=).
    audio=True also offers to receive audio (decoded PCM in WhepViewer.audio_frames)."""
    v = WhepViewer(url, codec, token, audio)
    try:
        await v._start(restrict_codecs, timeout)
    except BaseException:
        await v.pc.close()
        raise
    return v


# ------------------------------------------------------------------------------ sync side

class LoopThread:
    """An asyncio event loop in a daemon thread; run(coro) from plain code."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._t = threading.Thread(target=self.loop.run_forever, daemon=True, name="aiortc-loop")
        self._t.start()

    def run(self, coro, timeout: float = 30.0):
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def call(self, fn, *args):
        """Run a plain callable on the loop thread and return its result."""
        async def _c():
            return fn(*args)
        return self.run(_c())

    def stop(self) -> None:
        async def _cancel_all():
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()
        try:
            self.run(_cancel_all(), 5)
        except Exception:  # noqa: BLE001
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._t.join(5)


class SyncViewer:
    """Blocking facade over WhepViewer for tests."""

    def __init__(self, lt: LoopThread, v: WhepViewer, name: str = "viewer"):
        self.lt, self.v, self.name = lt, v, name

    @classmethod
    def connect(cls, lt: LoopThread, url: str, name: str = "viewer", **kw) -> "SyncViewer":
        return cls(lt, lt.run(connect(url, **kw), timeout=kw.get("timeout", 15.0) + 10), name)

    # passthroughs
    @property
    def frame_count(self) -> int:
        return self.v.frame_count

    @property
    def latest(self) -> Frame | None:
        return self.v.latest

    @property
    def codec(self) -> str | None:
        return self.v.codec

    @property
    def connection_state(self) -> str:
        return self.v.connection_state

    @property
    def location(self) -> str | None:
        return self.v.location

    def send(self, msg, timeout: float = 10.0) -> None:
        self.lt.run(self.v.send(msg, timeout), timeout + 5)

    def flush(self) -> None:
        self.lt.run(self.v.flush(), 15)

    def wait_channel_open(self, timeout: float = 10.0) -> None:
        self.lt.run(self.v.wait_channel_open(timeout), timeout + 5)

    def close(self) -> int | None:
        return self.lt.run(self.v.close(), 20)

    def delete(self) -> int:
        return self.lt.run(self.v.delete(), 20)

    def describe(self) -> str:
        v = self.v
        return (f"{self.name}: state={v.pc.connectionState} states={v.connection_states} "
                f"frames={v.frame_count} codec={v.codec} track_ended={v.track_ended} "
                f"track_error={v.track_error} dc={'open' if v.dc_open.is_set() else 'not open'} "
                f"dc_closed={v.dc_closed} location={v.location}")

    def wait_frame(self, pred: Callable[[Frame], bool] | None = None, after: int = 0,
                   timeout: float = 15.0, what: str = "a frame") -> Frame:
        """Wait for a frame with index > after (and pred(frame) true if given)."""
        deadline = time.monotonic() + timeout
        checked = after
        with self.v._cond:
            while True:
                f = self.v.latest
                if f is not None and f.index > checked:
                    checked = f.index
                    self.v._cond.release()
                    try:
                        ok = pred is None or pred(f)
                    finally:
                        self.v._cond.acquire()
                    if ok:
                        return f
                left = deadline - time.monotonic()
                if left <= 0:
                    last = self.v.latest
                    extra = ""
                    if last is not None:
                        c = last.rgb[last.height // 2, last.width // 2]
                        extra = f"; last frame #{last.index} {last.width}x{last.height} centre RGB {tuple(int(x) for x in c)}"
                    raise AssertionError(f"{self.name}: no {what} within {timeout}s "
                                         f"({self.describe()}{extra})")
                self.v._cond.wait(min(left, 0.5))

    def audio_since(self, t0: float) -> tuple[np.ndarray, int]:
        """Audio decoded after time.monotonic() t0: (int16 samples x channels, sample rate)."""
        chunks = [pcm for t, pcm in list(self.v.audio_frames) if t >= t0]
        if not chunks:
            return np.zeros((0, 2), dtype=np.int16), self.v.audio_rate
        return np.concatenate(chunks), self.v.audio_rate

    def wait_frames(self, n: int, timeout: float = 15.0) -> Frame:
        """Wait until at least n more frames than now have been decoded."""
        start = self.v.frame_count
        return self.wait_frame(lambda f: f.index >= start + n, after=0, timeout=timeout,
                               what=f"{n} new frames (had {start})")
