"""Sound: the QEMU test-pattern guest plays tones on its ES1370 (`-audiodev none`, VNC with
`audiodev=`), the agent takes them from QEMU's VNC audio extension, encodes Opus and sends an
audio track; aiortc decodes it and the tone is found by FFT. Also: what silence costs, a viewer
that offers no audio, and a VNC server without audio (Xvnc).

Figures (printed, never asserted beyond the issue's bounds): tone onset latency from the guest's
serial line to the first loud decoded frame, audio bitrate playing and silent, the agent's audio
thread CPU."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

from checks import frame_is
from loco_testkit.audio import SerialWatch, dominant_hz, rms, thread_cpu_seconds

pytestmark = [pytest.mark.qemu]

# RTP 12 + SRTP tag 10 + UDP 8 + IPv4 20 bytes on top of each Opus payload.
PACKET_OVERHEAD = 50


def audio_bits_per_second(a, since: tuple[float, float, float]) -> float:
    t0, p0, b0 = since
    packets = a.metric("loco_audio_packets_sent_total") - p0
    payload = a.metric("loco_audio_bytes_sent_total") - b0
    return (payload + packets * PACKET_OVERHEAD) * 8 / (time.monotonic() - t0)


def audio_counters(a) -> tuple[float, float, float]:
    return time.monotonic(), a.metric("loco_audio_packets_sent_total"), a.metric("loco_audio_bytes_sent_total")


@pytest.mark.timeout(240)
def test_guest_tone_reaches_aiortc(qemu_guests, agent, aiortc_viewer):
    g = qemu_guests(audio=True, tone=(440, 600, 900))
    watch = SerialWatch(g.serial_path)
    try:
        a = agent(g.port)
        a.wait_vnc(True, 60)
        v = aiortc_viewer(a, audio=True)
        assert "m=audio" in v.v.answer_sdp and "opus/48000/2" in v.v.answer_sdp.lower(), v.v.answer_sdp
        v.wait_frame(timeout=60)
        t_start = time.monotonic()
        counters = audio_counters(a)
        cpu0 = thread_cpu_seconds(a.pid, "loco-audio")
        # Collect bursts: each onset's serial time, then the first loud decoded frame after it.
        deadline = time.monotonic() + 60
        while len([t for t in watch.times("LOCO-TONE: on") if t > t_start]) < 8 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        onsets = [t for t in watch.times("LOCO-TONE: on") if t > t_start]
        assert len(onsets) >= 4, f"the guest played {len(onsets)} bursts: {watch.lines[-10:]}"
        playing_bps = audio_bits_per_second(a, counters)
        cpu = thread_cpu_seconds(a.pid, "loco-audio") - cpu0
        wall = time.monotonic() - t_start
        frames = list(v.v.audio_frames)
        assert frames, f"no audio decoded ({v.describe()}); agent health {a.healthz()}"
        rate = v.v.audio_rate
        latencies = []
        for on in onsets:
            loud = [t for t, pcm in frames if t >= on - 0.05 and rms(pcm) > 1000]
            if loud and loud[0] < on + 0.6:
                latencies.append(loud[0] - on)
        assert len(latencies) >= len(onsets) - 1, f"bursts heard {len(latencies)} of {len(onsets)}"
        # The tone itself: the decoded samples of the second burst's middle 300 ms.
        on = onsets[1]
        mid = [pcm for t, pcm in frames if on + 0.15 <= t - min(latencies) <= on + 0.45]
        pcm = np.concatenate(mid)
        hz = dominant_hz(pcm, rate)
        lat = np.array(latencies) * 1000
        enc = a.metrics()
        print(f"[audio] tone {hz:.1f} Hz (want 440), level {rms(pcm):.0f} RMS; onset latency "
              f"p50 {np.percentile(lat, 50):.0f} ms p95 {np.percentile(lat, 95):.0f} ms over {len(lat)} bursts; "
              f"bitrate while bursting (40% on) {playing_bps / 1000:.1f} kbit/s incl. RTP/SRTP/UDP/IP; "
              f"audio thread CPU {100 * cpu / wall:.2f}% of a core; encode "
              f"{1e3 * enc.get('loco_audio_encode_seconds_sum', 0) / max(1, enc.get('loco_audio_encode_seconds_count', 0)):.3f} ms/frame")
        assert abs(hz - 440) <= 5, f"dominant frequency {hz:.1f} Hz"
        assert a.healthz()[1]["audio"] in ("playing", "quiet")
    finally:
        watch.stop()


@pytest.mark.timeout(180)
def test_a_silent_guest_costs_under_1_kbit_and_a_viewer_without_audio_gets_video(qemu_guests, agent, aiortc_viewer):
    g = qemu_guests(audio=True)  # a sound card, nothing playing
    a = agent(g.port)
    a.wait_vnc(True, 60)
    v = aiortc_viewer(a, audio=True)
    v.wait_frame(timeout=60)
    assert a.healthz()[1]["audio"] == "quiet"
    counters = audio_counters(a)
    time.sleep(8)
    bps = audio_bits_per_second(a, counters)
    print(f"[audio] silent guest: {bps:.0f} bit/s of audio")
    assert bps < 1000
    # An offer without audio: video only, and the answer has no audio m-line.
    quiet = aiortc_viewer(a, audio=False, name="no-audio")
    assert "m=audio" not in quiet.v.answer_sdp
    quiet.wait_frames(2, timeout=30)
    assert not quiet.v.audio_track_seen


@pytest.mark.timeout(120)
def test_a_vnc_server_without_audio_streams_video_and_says_so_once(xvnc, vnc_proxy, agent, aiortc_viewer):
    proxy = vnc_proxy(xvnc.port)
    a = agent(proxy.port)
    a.wait_vnc(True, 30)
    v = aiortc_viewer(a, audio=True)
    v.wait_frame(timeout=30)
    assert a.healthz()[1]["audio"] == "unavailable"
    assert a.metric("loco_audio_state") == 0
    # A reconnect (the connection cut) does not say it again.
    proxy.arm_cut(1)
    xvnc.solid("#102030")
    deadline = time.monotonic() + 30
    while a.metric("loco_vnc_reconnects_total") < 1 and time.monotonic() < deadline:
        xvnc.solid("#302010")
        time.sleep(0.3)
    assert a.metric("loco_vnc_reconnects_total") >= 1
    a.wait_vnc(True, 30)
    # Video goes on over the new connection: a change after it reaches the viewer (a still
    # screen sends nothing more at constant quality, so the change is what shows it).
    xvnc.solid("#206040")
    v.wait_frame(frame_is("#206040"), timeout=30, what="the colour set after the reconnect")
    said = len(re.findall(r"offers no audio", a.log()))
    assert said == 1, f"said {said} times:\n{a.log()[-3000:]}"


@pytest.mark.timeout(60)
def test_audio_off_is_video_only(xvnc, agent, aiortc_viewer):
    a = agent(xvnc.port, extra_args=["--audio", "off"])
    a.wait_vnc(True, 30)
    v = aiortc_viewer(a, audio=True)
    v.wait_frame(timeout=30)
    assert a.healthz()[1]["audio"] == "off"
    # The offer's audio m-line gets no track: nothing is sent on it.
    time.sleep(2)
    assert not v.v.audio_frames
    assert a.metric("loco_audio_packets_sent_total") == 0
