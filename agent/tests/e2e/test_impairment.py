"""10 % packet loss and 0-100 ms jitter, each way, between a viewer (aiortc, and headless
Chromium) and the agent.

The kernel on the test machines has no sch_netem, so `tc netem` cannot impair the path; the
media goes through a userspace UDP relay instead (udp_impair.py: Bernoulli loss, uniform
per-packet delay, its own seeded RNG per direction). The viewer's offer and the agent's
answer are rewritten so that each peer knows only the relay's addresses: every ICE, DTLS,
SRTP and SCTP packet crosses it (the relay's counters and aioice's nominated pair prove it).

The source is a real Xvnc with motion: an xterm printing lines without pause (the screen
scrolls all the time, the agent encodes up to 30 fps). Over a 30 s window the test prints the
viewer's decoded fps, its longest freeze, the relay's measured loss and delays, and how the
agent reacted: NACKed packets (`loco_nack_packets_total`), PLI keyframe requests, keyframes,
and the bitrate target its loss-based controller settled on (`loco_bitrate_target_kbps`).
Asserted, generously (figures go to the output, not into tight timed assertions): frames keep
arriving throughout (>= 2 fps, no freeze over 6 s), the connection stays up, the relay saw
about 10 % loss each way, the agent saw NACKs or PLIs, its resends stayed within their budget
(the relay carries under 2x the encoded bytes; webrtc's own NACK responder made it 3.5x), and
once the impairment is lifted the viewer shows a new solid colour correctly.

Chromium sends TWCC feedback, so with it the agent sees the path's loss before retransmission
and must lower its bitrate target (asserted). aiortc sends no TWCC: the agent then falls back on
receiver reports' loss after retransmission, which NACKs keep near 1 % here, so no reaction is
asserted there. Chromium reaches the agent through whep_proxy.py, which rewrites the SDP the
same way the aiortc viewer does itself."""
from __future__ import annotations

import statistics
import time

import pytest

from checks import W, H, frame_is, wait_metric
from loco_testkit.procs import kill_group
from loco_testkit.sdp import sdp_candidates
from udp_impair import ImpairedPath
from loco_testkit.whep_aiortc import SyncViewer, WhepViewer
from whep_proxy import WhepProxy

# What the screen shows while the path is impaired, per codec: the agent's encoder must run at its
# bitrate cap.
# - H.264 (constant quality by default): random hex bytes, a line every 2 ms. Dated lines of text
#   cost it a few hundred kbit/s at CRF 23: too little for a 1.5 Mbit/s bottleneck, and so few
#   packets that aiortc, which asks for a keyframe only once 128 packets queue behind a lost one,
#   recovers more slowly than the agent lets it.
# - VP8 (CBR): dated lines of text, as before. With random hex, libvpx cannot fit a frame into
#   300 kbit/s even at its coarsest quantiser: the agent's bitrate budget then lets through one
#   frame every ~2 s (test_stream_xvnc checks that budget), too few for this test's frame rate.
SCROLL = {
    "h264": "od -An -tx1 -w50 /dev/urandom | while read -r l; do echo \"$l\"; sleep 0.002; done",
    "vp8": ("i=0; while :; do i=$((i+1)); echo \"line $i: $(date +%T.%N) the quick brown fox\"; "
            "sleep 0.005; done"),
}
# The bitrate floor the loss may bring the target down to (`--min-bitrate-kbps`): 1000 kbit/s,
# not the agent's default 300. The loss controller takes random 10 % loss for congestion and
# goes to the floor. aiortc asks for a keyframe only once 128 packets queue behind a lost one,
# and releases a frame only when the next one starts, so at 300 kbit/s (VP8: ~5 frames/s, as
# the pacer's bitrate budget holds it to the target; H.264: ~1 packet a frame) it recovered too
# slowly: the picture froze for over 6 s, or the new colour did not arrive within 20 s after the
# loss was lifted. H.264 at 300 failed 5 of 7 runs alone here on 2026-12-04 (and 2 of 7 with the
# agent of c393c87); at 1000, 4 of 4 passed with the longest freezes 2.6-3.6 s.
MIN_KBPS_ARGS = ["--min-bitrate-kbps", "1000"]
OUTCOMES = ("resent", "unknown", "expired", "too_soon", "too_many", "queued")

LOSS, JITTER_MS = 0.10, 100
MAX_KBPS = 6000   # the agent's default --bitrate-kbps
WINDOW_S = 30.0


def _relay(request, tmp_path, loss: float, jitter_ms: float, seed: int) -> ImpairedPath:
    """An impairment relay whose log is attached to the test's report."""
    log = tmp_path / "udp_impair.log"
    request.node.__dict__.setdefault("_loco_logs", []).append(("udp_impair log", log))
    return ImpairedPath(loss, jitter_ms, seed=seed, log_path=log)


def _scrolling_xterm(xvnc, tmp_path, codec: str):
    """An xterm printing without pause (SCROLL): the agent encodes up to its frame and bit caps."""
    return xvnc.spawn("xterm", "-geometry", "160x50+0+0", "-e", "sh", "-c", SCROLL[codec],
                      log_path=tmp_path / "scroll-xterm.log")


def _replace_candidates(sdp: str, host: str, port: int) -> str:
    """Every m-section's candidates replaced by one host candidate host:port."""
    out, done_in_section = [], False
    for line in sdp.splitlines():
        s = line.strip()
        if s.startswith("m="):
            done_in_section = False
        if s.startswith("a=candidate:"):
            if not done_in_section:
                out.append(f"a=candidate:1 1 udp 2130706431 {host} {port} typ host")
                done_in_section = True
            continue
        out.append(line)
    return "\r\n".join(out) + "\r\n"


class RelayedViewer(WhepViewer):
    """A WHEP viewer whose media path runs through an ImpairedPath."""

    def __init__(self, base_url: str, codec: str, relay: ImpairedPath):
        super().__init__(base_url, codec, None)
        self.relay = relay
        self.agent_candidate: dict | None = None

    def offer_for_agent(self, offer: str) -> str:
        return _replace_candidates(offer, "127.0.0.1", self.relay.agent_side)

    def answer_for_viewer(self, answer: str) -> str:
        local = [c for c in sdp_candidates(answer) if c["ip"] == "127.0.0.1" and c["proto"] == "udp"]
        assert local, f"the agent's answer has no 127.0.0.1 UDP candidate:\n{answer}"
        self.agent_candidate = local[0]
        self.relay.set_agent("127.0.0.1", local[0]["port"])
        self.dropped_candidates = [c["line"] for c in sdp_candidates(answer)]
        return _replace_candidates(answer, "127.0.0.1", self.relay.viewer_side)


def _freeze_and_fps(arrivals: list[float], t0: float, t1: float) -> tuple[float, float, int]:
    times = [t for t in arrivals if t0 <= t <= t1]
    edges = [t0] + times + [t1]
    gaps = [b - a for a, b in zip(edges, edges[1:])]
    return len(times) / (t1 - t0), max(gaps), len(times)


def _runs(values) -> str:
    """[6000, 6000, 5400] -> '6000x2 5400'"""
    out = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return " ".join(f"{v:.0f}x{n}" if n > 1 else f"{v:.0f}" for v, n in out)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_loss_and_jitter(codec, xvnc, agent, aio_loop, tmp_path, request):
    relay = _relay(request, tmp_path, LOSS, JITTER_MS, seed=8)
    a = agent(xvnc.port, codec=codec, extra_args=MIN_KBPS_ARGS)
    a.wait_vnc(True, 30)
    xterm = _scrolling_xterm(xvnc, tmp_path, codec)
    v = None
    try:
        async def _connect():
            w = RelayedViewer(a.url, codec, relay)
            try:
                await w._start(True, 20)
            except BaseException:
                await w.pc.close()
                raise
            return w
        v = SyncViewer(aio_loop, aio_loop.run(_connect(), 40), name="aiortc-impaired")
        # ICE and DTLS run through the impairment too: allow them time.
        v.wait_frame(lambda f: (f.width, f.height) == (W, H), timeout=40, what="a first 1024x768 frame")

        def nominated():
            conn = v.v.pc.getTransceivers()[0].receiver.transport.transport._connection
            return [(p.local_candidate.host, p.local_candidate.port, p.remote_candidate.host,
                     p.remote_candidate.port) for p in conn._nominated.values()]
        pairs = aio_loop.call(nominated)
        assert pairs and all(p[2:] == ("127.0.0.1", relay.viewer_side) for p in pairs), \
            f"the viewer's nominated pair does not go to the relay ({relay.viewer_side}): {pairs}"

        time.sleep(3.0)   # past the join keyframe and the first loss reports
        m0, s0 = a.metrics(), relay.stats()
        t0 = time.monotonic()
        bitrate, loss = [], []
        while time.monotonic() - t0 < WINDOW_S:
            time.sleep(1.0)
            bitrate.append(a.metric("loco_bitrate_target_kbps", None, codec=codec))
            loss.append(a.metric("loco_viewer_loss_ratio", None, codec=codec, source="nack"))
            assert v.connection_state == "connected", v.describe()
        t1 = time.monotonic()
        m1, s1 = a.metrics(), relay.stats()
        fps, freeze, frames = _freeze_and_fps(list(v.v.arrivals), t0, t1)

        def delta(name, **labels):
            return m1.get(name, **labels) - m0.get(name, **labels)
        sent = delta("loco_frames_sent_total", codec=codec)
        nacked = delta("loco_nack_packets_total", codec=codec)
        plis = delta("loco_keyframe_requests_total", cause="pli")
        keyframes = delta("loco_keyframes_total", codec=codec)
        video_bytes = delta("loco_bytes_sent_total", codec=codec)
        kbps = video_bytes * 8 / 1000 / (t1 - t0)
        wire_bytes = s1["to_viewer"]["bytes"] - s0["to_viewer"]["bytes"]
        dirs = {}
        for d in ("to_agent", "to_viewer"):
            rec = s1[d]["received"] - s0[d]["received"]
            drop = s1[d]["dropped"] - s0[d]["dropped"]
            dirs[d] = (rec, drop, drop / rec if rec else 0.0)
        known = [b for b in bitrate if b is not None]
        outcomes = {o: delta("loco_retransmits_total", codec=codec, outcome=o) for o in OUTCOMES}
        outcomes["queued_then_sent"] = delta("loco_retransmits_dequeued_total", codec=codec)
        unrecoverable = delta("loco_keyframe_requests_total", cause="unrecoverable")
        print(f"[impairment] share of packets NACKed (aiortc sends no TWCC) each second: "
              f"{' '.join(f'{x:.2f}' for x in loss if x is not None)}")
        print(f"[impairment] NACKed packets: {outcomes}; keyframes asked for unrecoverable NACKs: {unrecoverable:.0f}")
        print(f"\n[impairment] {LOSS:.0%} loss + U(0,{JITTER_MS}) ms jitter each way, {t1 - t0:.1f} s window, "
              f"scrolling xterm on Xvnc, {codec}")
        print(f"[impairment] viewer: {frames} frames decoded = {fps:.1f} fps, longest freeze {freeze * 1000:.0f} ms "
              f"(agent sent {sent:.0f} frames = {sent / (t1 - t0):.1f} fps, {kbps:.0f} kbit/s of video)")
        print(f"[impairment] relay: to agent {dirs['to_agent'][0]} pkts, {dirs['to_agent'][2]:.1%} dropped; "
              f"to viewer {dirs['to_viewer'][0]} pkts, {dirs['to_viewer'][2]:.1%} dropped; "
              f"delay mean/max {s1['to_viewer']['mean_delay_ms']}/{s1['to_viewer']['max_delay_ms']} ms")
        print(f"[impairment] relay carried {wire_bytes / 1e6:.1f} MB towards the viewer for {video_bytes / 1e6:.1f} MB "
              f"of encoded video (x{wire_bytes / max(1, video_bytes):.1f}: RTP/SRTP overhead and NACK resends)")
        print(f"[impairment] agent: {nacked:.0f} NACKed packets (aiortc repeats a NACK until the packet "
              f"arrives), {plis:.0f} PLI keyframe requests, {keyframes:.0f} keyframes; bitrate target kbit/s "
              f"each second: {_runs(known)} (min {min(known) if known else None}, "
              f"median {statistics.median(known) if known else None})")

        # Media really crossed the relay, impaired as asked.
        for d, (rec, drop, frac) in dirs.items():
            assert rec >= 100, f"relay {d}: only {rec} packets in {WINDOW_S:.0f} s: {s1}"
            assert 0.04 <= frac <= 0.18, f"relay {d}: {frac:.1%} dropped, expected about {LOSS:.0%}: {s1}"
        assert s1["to_viewer"]["bytes"] > 200_000, s1
        # Resends stay within their budget (half the media bytes, plus a small floor).
        assert wire_bytes <= 2.0 * video_bytes + 1_000_000, \
            f"the relay carried {wire_bytes} bytes for {video_bytes} bytes of video: {outcomes}"
        # The viewer kept decoding through it.
        assert fps >= 2.0, f"only {fps:.1f} fps decoded under impairment"
        assert freeze <= 6.0, f"the picture froze for {freeze:.1f} s"
        # The agent saw the loss and reacted (retransmissions, keyframes, or a lower rate).
        assert nacked > 0 or plis > 0 or (known and min(known) < 6000), \
            f"no NACK, PLI or bitrate reaction (nacked {nacked}, pli {plis}, bitrate {known})"
        assert a.alive()

        # Impairment lifted: the viewer recovers and shows what is on the screen now. The
        # screen keeps scrolling for a few seconds first: aiortc NACKs a packet only when it
        # sees a new gap and asks for a keyframe only when 128 packets queue behind a missing
        # one, so a packet the agent gave up on during the impairment blocks its jitter buffer
        # until enough traffic flows (Chromium asks again and recovers on a still screen; the
        # Chromium test below checks that). At 300 kbit/s an H.264 frame was about one packet
        # and 5 s (~150 packets) was not always enough; see MIN_KBPS_ARGS for the floor now.
        relay.set(loss=0.0, jitter_ms=0)
        time.sleep(8.0)
        kill_group(xterm)
        xvnc.solid("#c03060")
        v.wait_frame(frame_is("#c03060"), timeout=20, what="the new colour after the impairment was lifted")
        wait_metric(a, "loco_viewers", lambda n: n == 1)
        assert v.connection_state == "connected", v.describe()
    finally:
        kill_group(xterm)
        if v is not None:
            v.close()
        relay.close()


@pytest.mark.timeout(240)
def test_loss_and_jitter_chromium(xvnc, agent, chromium, tmp_path, request):
    """The same path impairment with headless Chromium as the viewer: its TWCC feedback shows
    the agent the loss before retransmission, and the agent must lower its bitrate target."""
    codec = "h264"
    relay = _relay(request, tmp_path, LOSS, JITTER_MS, seed=9)
    a = agent(xvnc.port, codec=codec)
    a.wait_vnc(True, 30)

    xterm = _scrolling_xterm(xvnc, tmp_path, codec)
    proxy = None
    try:
        v, proxy = _relayed_chromium(a, relay, chromium, codec)

        time.sleep(3.0)
        m0, s0 = a.metrics(), relay.stats()
        _, page_t0 = v.frame_times()
        t0 = time.monotonic()
        bitrate, loss = [], []
        while time.monotonic() - t0 < WINDOW_S:
            time.sleep(1.0)
            bitrate.append(a.metric("loco_bitrate_target_kbps", None, codec=codec))
            loss.append(a.metric("loco_viewer_loss_ratio", None, codec=codec, source="twcc"))
        t1 = time.monotonic()
        times, page_t1 = v.frame_times()
        m1, s1 = a.metrics(), relay.stats()
        inbound = v.get("inbound") or {}
        fps, freeze, frames = _freeze_and_fps([t / 1000 for t in times], page_t0 / 1000, page_t1 / 1000)

        def delta(name, **labels):
            return m1.get(name, **labels) - m0.get(name, **labels)
        video_bytes = delta("loco_bytes_sent_total", codec=codec)
        wire_bytes = s1["to_viewer"]["bytes"] - s0["to_viewer"]["bytes"]
        outcomes = {o: delta("loco_retransmits_total", codec=codec, outcome=o) for o in OUTCOMES}
        outcomes["queued_then_sent"] = delta("loco_retransmits_dequeued_total", codec=codec)
        dropped = {d: (s1[d]["dropped"] - s0[d]["dropped"]) / max(1, s1[d]["received"] - s0[d]["received"])
                   for d in ("to_agent", "to_viewer")}
        known = [b for b in bitrate if b is not None]
        twcc = [x for x in loss if x is not None]
        print(f"\n[impairment] Chromium, {LOSS:.0%} loss + U(0,{JITTER_MS}) ms jitter each way, "
              f"{t1 - t0:.1f} s window, scrolling xterm on Xvnc, {codec}")
        print(f"[impairment] viewer: {frames} frames presented = {fps:.1f} fps, longest freeze {freeze * 1000:.0f} ms; "
              f"Chromium's stats: {inbound}")
        print(f"[impairment] relay dropped {dropped['to_agent']:.1%} towards the agent, {dropped['to_viewer']:.1%} "
              f"towards the viewer; carried {wire_bytes / 1e6:.1f} MB for {video_bytes / 1e6:.1f} MB of video "
              f"(x{wire_bytes / max(1, video_bytes):.2f})")
        print(f"[impairment] NACKed packets: {outcomes}; keyframes asked for unrecoverable NACKs: "
              f"{delta('loco_keyframe_requests_total', cause='unrecoverable'):.0f}, PLIs: "
              f"{delta('loco_keyframe_requests_total', cause='pli'):.0f}")
        print(f"[impairment] loss before retransmission from TWCC each second: {' '.join(f'{x:.3f}' for x in twcc)}")
        print(f"[impairment] bitrate target kbit/s each second: {_runs(known)}")

        for d, frac in dropped.items():
            assert 0.04 <= frac <= 0.18, f"relay {d}: {frac:.1%} dropped, expected about {LOSS:.0%}"
        assert twcc, "no TWCC-based loss measurement: does Chromium send transport-cc feedback?"
        # TWCC counts a packet that arrives after the feedback covering it was sent as lost
        # (Chromium does not report it again), so with 0-100 ms of reordering it reads well above
        # the relay's 10 %; libwebrtc's own loss-based controller sees the same figure.
        assert 0.05 <= statistics.median(twcc) <= 0.6, f"TWCC loss {twcc} vs the relay's drops {dropped}"
        assert known and min(known) <= 0.9 * MAX_KBPS, \
            f"the bitrate target did not go down from {MAX_KBPS} under {LOSS:.0%} loss: {known}"
        assert fps >= 2.0, f"only {fps:.1f} fps presented under impairment"
        assert freeze <= 6.0, f"the picture froze for {freeze:.1f} s"
        assert wire_bytes <= 2.0 * video_bytes + 1_000_000, (wire_bytes, video_bytes, outcomes)
        assert a.alive()

        kill_group(xterm)
        relay.set(loss=0.0, jitter_ms=0)
        n = v.frames_decoded()
        v.wait(f"t.framesDecoded > {n}", 20, "frames after the impairment was lifted")
        xvnc.solid("#30c060")
        deadline = time.monotonic() + 20
        while True:
            img = v.grab()
            centre = img[H // 2 - 20:H // 2 + 20, W // 2 - 20:W // 2 + 20].reshape(-1, 3).mean(axis=0)
            if abs(centre - (0x30, 0xc0, 0x60)).max() <= 24:
                break
            assert time.monotonic() < deadline, f"the new colour did not arrive: centre {centre}"
            time.sleep(0.3)
    finally:
        kill_group(xterm)
        if proxy is not None:
            proxy.close()
        relay.close()


def _relayed_chromium(a, relay, chromium, codec: str):
    """A Chromium viewer whose WHEP exchange goes through a WhepProxy that routes its media
    through `relay`; returns (viewer, proxy) once it plays."""
    def answer_for_viewer(answer: str) -> str:
        local = [c for c in sdp_candidates(answer) if c["ip"] == "127.0.0.1" and c["proto"] == "udp"]
        assert local, f"the agent's answer has no 127.0.0.1 UDP candidate:\n{answer}"
        relay.set_agent("127.0.0.1", local[0]["port"])
        return _replace_candidates(answer, "127.0.0.1", relay.viewer_side)

    proxy = WhepProxy(a.url, lambda offer: _replace_candidates(offer, "127.0.0.1", relay.agent_side),
                      answer_for_viewer)
    v = chromium(name="chromium-relayed")
    v.start(proxy.url, codec=codec)
    assert proxy.exchanges == 1 and not proxy.errors, proxy.errors
    v.wait_playing(W, H, timeout=40)
    pair = v.selected_pair()
    assert pair and pair["remote"]["port"] == relay.viewer_side, \
        f"Chromium's selected pair does not go to the relay ({relay.viewer_side}): {pair}"
    return v, proxy


@pytest.mark.timeout(300)
def test_bottleneck_chromium(xvnc, agent, chromium, tmp_path, request):
    """Congestion: a 1.5 Mbit/s bottleneck with a 150 ms tail-drop queue appears between the
    agent (6 Mbit/s ceiling, a scrolling xterm to fill it) and Chromium. The queue drops what
    does not fit; Chromium's TWCC feedback shows the agent that loss, and the agent must bring
    its bitrate target down to about the bottleneck, so the queue's drops fall; once the
    bottleneck goes, the target climbs back (8 % a second). Figures per second are printed."""
    codec, rate = "h264", 1500
    relay = _relay(request, tmp_path, 0.0, 0, seed=10)
    a = agent(xvnc.port, codec=codec)
    a.wait_vnc(True, 30)
    xterm = _scrolling_xterm(xvnc, tmp_path, codec)
    proxy = None
    try:
        v, proxy = _relayed_chromium(a, relay, chromium, codec)
        time.sleep(3.0)
        before = a.metric("loco_bitrate_target_kbps", None, codec=codec)
        relay.set(rate_kbps=rate, queue_ms=150)
        rows = []
        prev = relay.stats()["to_viewer"]
        _, page_t0 = v.frame_times()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 40.0:
            time.sleep(1.0)
            st = relay.stats()["to_viewer"]
            rec = st["received"] - prev["received"]
            rows.append({
                "target": a.metric("loco_bitrate_target_kbps", None, codec=codec),
                "twcc": a.metric("loco_viewer_loss_ratio", None, codec=codec, source="twcc"),
                "delivered_kbps": (st["bytes"] - prev["bytes"]) * 8 / 1000,
                "queue_drop": (st["queue_dropped"] - prev["queue_dropped"]) / rec if rec else 0.0,
            })
            prev = st
        times, page_t1 = v.frame_times()
        fps, freeze, frames = _freeze_and_fps([t / 1000 for t in times], page_t0 / 1000, page_t1 / 1000)
        targets = [r["target"] for r in rows if r["target"] is not None]
        print(f"\n[bottleneck] Chromium, {codec}, {rate} kbit/s bottleneck with a 150 ms tail-drop queue "
              f"towards the viewer for 40 s; bitrate target before: {before}")
        print(f"[bottleneck] viewer: {frames} frames presented = {fps:.1f} fps, longest freeze {freeze * 1000:.0f} ms; "
              f"relay: {relay.stats()['to_viewer']}")
        print("[bottleneck]  s  target kbit/s  TWCC loss  delivered kbit/s  queue drops")
        for i, r in enumerate(rows, 1):
            twcc = f"{r['twcc']:.3f}" if r["twcc"] is not None else "-"
            print(f"[bottleneck] {i:2d}  {r['target'] or 0:12.0f}  {twcc:>9}  {r['delivered_kbps']:16.0f}  "
                  f"{r['queue_drop']:10.1%}")

        assert before is not None and before > 2 * rate, f"the agent was not above the bottleneck first: {before}"
        assert targets and min(targets) <= rate, f"the bitrate target never came down to {rate}: {targets}"
        late = sorted(targets[-10:])[len(targets[-10:]) // 2]
        assert late <= 1.5 * rate, f"the target went back above the bottleneck: last 10 s {targets[-10:]}"
        early_drops = max(r["queue_drop"] for r in rows[:5])
        late_drops = sum(r["queue_drop"] for r in rows[-10:]) / 10
        assert late_drops <= max(0.05, early_drops / 2), \
            f"the queue still drops {late_drops:.1%} (first 5 s: up to {early_drops:.1%})"
        assert fps >= 2.0 and freeze <= 6.0, (fps, freeze)

        # The bottleneck goes: the target climbs back.
        relay.set(rate_kbps=0)
        t1 = time.monotonic()
        climb = []
        while time.monotonic() - t1 < 45.0:
            time.sleep(1.0)
            climb.append(a.metric("loco_bitrate_target_kbps", None, codec=codec))
            if climb[-1] and climb[-1] >= 3 * rate:
                break
        print(f"[bottleneck] bottleneck removed; target each second: {_runs([c or 0 for c in climb])}")
        assert climb[-1] and climb[-1] >= 3 * rate, f"the target did not climb back: {climb}"
        assert a.alive()
    finally:
        kill_group(xterm)
        if proxy is not None:
            proxy.close()
        relay.close()
