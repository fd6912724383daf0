"""The RTP playout-delay header extension (http://www.webrtc.org/experiments/rtp-hdrext/playout-delay).

It is a send-side extension: the answer may list it only when the offer did. Chromium offers it
(checked here with a real Chromium offer); aiortc does not, so the aiortc viewer adds the
extmap line to the offer it POSTs and reads the decrypted RTP packets before aiortc parses them
(aiortc drops extensions it does not know). With `--playout-delay on` (the default) every video
packet carries min = max = 0 (three zero bytes); with `off`, or when the offer lacks it, neither
the answer nor the packets have it.
"""
from __future__ import annotations

import re
import time

import pytest

from checks import make_offer
from loco_testkit.waits import wait_until
from loco_testkit.xvnc import Animator
from rtpcapture import PLAYOUT_DELAY_URI as URI, capture, rtp_extensions

EXT_ID = 5   # the id Chromium 156 gives it; any free 1..14 works


def extmaps(sdp: str, media: str = "video") -> dict[int, str]:
    """{id: uri} of the extmap lines in the first `media` m-section."""
    out, inside = {}, False
    for line in sdp.splitlines():
        if line.startswith("m="):
            inside = line.startswith(f"m={media} ")
            if not inside and out:
                break
        elif inside and (m := re.match(r"a=extmap:(\d+)(?:/\w+)? (\S+)", line)):
            out[int(m.group(1))] = m.group(2)
    return out


def _frames_with_motion(xvnc, sv: SyncViewer, n: int = 8) -> None:
    with Animator(xvnc, 0.1):
        sv.wait_frames(n, 20)


@pytest.mark.timeout(90)
def test_answer_and_every_video_packet_carry_zero_playout_delay(xvnc, agent, aio_loop):
    a = agent(xvnc.port)
    a.wait_vnc(True, 30)
    sv, v = capture(aio_loop, a, playout_delay_id=EXT_ID)
    try:
        assert extmaps(v.answer_sdp).get(EXT_ID) == URI, f"answer extmaps: {extmaps(v.answer_sdp)}"
        _frames_with_motion(xvnc, sv)
        pkts = [p for _, p in v.rtp]
        assert len(pkts) >= 8, f"only {len(pkts)} RTP packets captured"
        # Only video is negotiated: every packet is a video packet.
        without = [p[:16].hex() for p in pkts if rtp_extensions(p).get(EXT_ID) is None]
        assert not without, f"{len(without)} of {len(pkts)} video packets lack playout-delay: {without[:3]}"
        values = {rtp_extensions(p)[EXT_ID] for p in pkts}
        assert values == {b"\x00\x00\x00"}, f"playout-delay payloads {values} (want min = max = 0)"
    finally:
        sv.close()


@pytest.mark.timeout(90)
def test_flag_off_leaves_it_out(xvnc, agent, aio_loop):
    a = agent(xvnc.port, extra_args=["--playout-delay", "off"])
    a.wait_vnc(True, 30)
    sv, v = capture(aio_loop, a, playout_delay_id=EXT_ID)
    try:
        assert URI in v.offer_for_agent(v.offer_sdp)
        assert URI not in v.answer_sdp, v.answer_sdp
        _frames_with_motion(xvnc, sv)
        pkts = [p for _, p in v.rtp]
        assert len(pkts) >= 8
        assert not [p for p in pkts if EXT_ID in rtp_extensions(p)], "--playout-delay off still sends it"
    finally:
        sv.close()


@pytest.mark.timeout(90)
def test_not_answered_when_not_offered(xvnc, agent, aio_loop):
    a = agent(xvnc.port)
    a.wait_vnc(True, 30)
    plain = make_offer(aio_loop, "h264")
    assert URI not in plain
    r = a.request("POST", "/whep", plain.encode(), {"Content-Type": "application/sdp"})
    assert r.status == 201, r.text
    assert URI not in r.text, "the answer lists an extension the offer did not have"
    a.request("DELETE", r.headers["location"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flag", ["on", "off"])
def test_chromium_offers_it_and_the_agent_answers_it(xvnc, agent, chromium, flag):
    """A real Chromium offer lists playout-delay; the agent's answer keeps Chromium's id (with
    `--playout-delay off`: leaves it out), and the session plays. Chromium's jitter-buffer
    figures are printed (not asserted)."""
    a = agent(xvnc.port, extra_args=["--playout-delay", flag])
    a.wait_vnc(True, 30)
    c = chromium()
    c.start(a.url)
    offer = c.page.evaluate("() => pc.localDescription.sdp")
    answer = c.page.evaluate("() => pc.remoteDescription.sdp")
    offered = {uri: i for i, uri in extmaps(offer).items()}
    assert URI in offered, f"Chromium ({c.page.evaluate('navigator.userAgent')}) did not offer it: {extmaps(offer)}"
    if flag == "on":
        assert extmaps(answer).get(offered[URI]) == URI, f"answer extmaps: {extmaps(answer)}"
    else:
        assert URI not in answer, f"answer extmaps: {extmaps(answer)}"
    with Animator(xvnc, 0.1):
        c.wait_playing()
        c.wait_more_frames(10, 30)
        time.sleep(3.0)
    stats = c.page.evaluate("""async () => { let o = null; (await pc.getStats()).forEach(s => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') o = {jitterBufferDelay: s.jitterBufferDelay,
        jitterBufferTargetDelay: s.jitterBufferTargetDelay, emitted: s.jitterBufferEmittedCount}; }); return o; }""")
    if stats and stats.get("emitted"):
        print(f"--playout-delay {flag}: chromium jitter buffer: mean delay {1000 * stats['jitterBufferDelay'] / stats['emitted']:.1f} ms, "
              f"mean target {1000 * stats['jitterBufferTargetDelay'] / stats['emitted']:.1f} ms "
              f"over {stats['emitted']} frames")
    wait_until(lambda: a.healthz()[1].get("viewers") == 1, 5, 0.1, "one viewer")
