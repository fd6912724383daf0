"""Attention-aware streaming: a viewer says over its `input` channel whether this desktop's panel
is focused, visible or hidden ({"type":"attention","state":...}); the agent's encoder follows the
most attentive of its viewers (focused: --max-fps; visible: --visible-fps; hidden: --hidden-fps)
and sends a keyframe at once when the panel comes back into view. Real Xvnc with a busy xterm as
the moving source, the real agent, aiortc viewers (frames counted as aiortc decodes them, RTP
packets as they arrive). Frame rates are printed; what is asserted is behaviour: the order of
the rates, the caps, the keyframe on return, and that bad messages are dropped."""
from __future__ import annotations

import time

import pytest

from checks import wait_metric
from loco_testkit.waits import wait_until
from rtpcapture import capture, is_h264_keyframe_packet


def attention(state: str) -> dict:
    return {"type": "attention", "state": state}


@pytest.fixture
def busy_screen(xvnc, tmp_path):
    """An xterm printing the time as fast as it can: the screen changes far more often than
    30 times a second."""
    p = xvnc.spawn("xterm", "-geometry", "100x40+0+0", "-e", "sh", "-c",
                   "while :; do date +%s.%N; done", log_path=tmp_path / "xterm.log")
    time.sleep(1.0)
    yield p
    p.kill()
    p.wait(5)


def fps(viewer, seconds: float = 3.0) -> float:
    """Frames the viewer decoded per second over the next `seconds`."""
    n0, t0 = viewer.frame_count, time.monotonic()
    time.sleep(seconds)
    return (viewer.frame_count - n0) / (time.monotonic() - t0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_frame_rate_follows_attention(xvnc, agent, aiortc_viewer, busy_screen, codec):
    a = agent(xvnc.port, codec=codec)   # --max-fps 30, --visible-fps 12, --hidden-fps 1
    a.wait_vnc(True, 30)
    v = aiortc_viewer(a, codec=codec)
    v.wait_frames(5, 20)
    # A viewer that never said anything gets the full stream.
    assert a.healthz()[1].get("attention") == "focused"
    rates, reads = {}, {}
    for state in ("focused", "visible", "hidden", "focused"):
        v.send(attention(state))
        wait_until(lambda: a.healthz()[1].get("attention") == state, 5, 0.05, f"healthz attention {state}")
        time.sleep(0.5)   # let frames already queued at the old rate drain
        m0 = a.metrics()
        rates[state] = fps(v, 3.0)
        m1 = a.metrics()
        sent = m1.get("loco_frames_sent_total", 0, codec=codec) - m0.get("loco_frames_sent_total", 0, codec=codec)
        sent_bytes = m1.get("loco_bytes_sent_total", 0, codec=codec) - m0.get("loco_bytes_sent_total", 0, codec=codec)
        # The screen is read no faster than it is encoded (the VNC server gathers the damage).
        reads[state] = (m1.get("loco_frames_captured_total", 0) - m0.get("loco_frames_captured_total", 0)) / 3.0
        assert a.metric("loco_vnc_request_fps", None) == pytest.approx({"hidden": 1, "visible": 12, "focused": 30}[state], rel=1e-3)
        label = {"hidden": 0, "visible": 1, "focused": 2}[state]
        assert a.metric("loco_attention_state", None, codec=codec) == label
        assert a.metric("loco_encoder_fps_cap", None, codec=codec) == {"hidden": 1, "visible": 12, "focused": 30}[state]
        # VP8's target follows the frame rate (libvpx spreads it over the frames it gets);
        # x264 budgets per frame at --max-fps already, so its target stays.
        target = {"hidden": 300, "visible": 2400, "focused": 6000}[state] if codec == "vp8" else 6000
        assert a.metric("loco_bitrate_target_kbps", None, codec=codec) == target
        print(f"{codec} attention {state}: {rates[state]:.1f} frames/s received, "
              f"{8 * sent_bytes / 3000:.0f} kbit/s, {sent_bytes / max(sent, 1) / 1000:.1f} kB/frame, "
              f"{reads[state]:.1f} screens/s read from VNC")
    # The caps hold (a two-frame burst allowance over 3 s), and attention buys frames.
    assert rates["visible"] <= 12 * 1.25, rates
    assert rates["hidden"] <= 1 * 1.5 + 0.4, rates
    assert rates["focused"] > rates["visible"] > rates["hidden"], rates
    assert reads["visible"] <= 12 * 1.25 and reads["hidden"] <= 1 * 1.5 + 0.4, reads
    assert reads["focused"] > reads["visible"] > reads["hidden"], reads
    assert a.metric("loco_attention_messages_total", 0, state="visible") == 1
    assert a.metric("loco_attention_messages_total", 0, state="focused") == 2
    # Attention is not input for the VM.
    assert a.metric("loco_input_events_total", 0, result="accepted") == 0
    assert a.metric("loco_input_events_total", 0, result="rejected") == 0


@pytest.mark.timeout(120)
def test_keyframe_as_soon_as_the_panel_is_back_in_view(xvnc, agent, aio_loop, busy_screen):
    a = agent(xvnc.port, codec="h264", extra_args=["--hidden-fps", "0"])
    a.wait_vnc(True, 30)
    sv, v = capture(aio_loop, a)
    try:
        sv.wait_frames(5, 20)
        delays = []
        for back_to in ("visible", "focused", "visible"):
            sv.send(attention("hidden"))
            wait_until(lambda: a.healthz()[1].get("attention") == "hidden", 5, 0.05, "hidden")
            time.sleep(0.5)
            quiet_from = time.monotonic()
            time.sleep(1.0)
            # --hidden-fps 0: nothing is sent while hidden, although the screen keeps changing.
            sent_while_hidden = [p for t, p in list(v.rtp) if t >= quiet_from]
            assert not sent_while_hidden, f"{len(sent_while_hidden)} packets while hidden"
            requests = a.metric("loco_keyframe_requests_total", 0, cause="attention")
            t0 = time.monotonic()
            sv.send(attention(back_to))
            wait_until(lambda: any(t >= t0 for t, _ in list(v.rtp)), 5, 0.005, "video after coming back")
            after = [(t, p) for t, p in list(v.rtp) if t >= t0]
            # The first packet back is the start of a keyframe (SPS/IDR).
            assert is_h264_keyframe_packet(after[0][1]), f"first packet back is not a keyframe: {after[0][1][:40].hex()}"
            delays.append(after[0][0] - t0)
            wait_metric(a, "loco_keyframe_requests_total", lambda n: n == requests + 1, cause="attention")
        print("keyframe after coming back into view: " + ", ".join(f"{1000 * d:.0f} ms" for d in delays))
        assert max(delays) < 0.2, f"keyframe delays {delays}"
        sv.wait_frames(5, 10)
    finally:
        sv.close()


BAD = [
    '{"type":"attention","state":"sleepy"}',
    '{"type":"attention"}',
    '{"type":"attention","state":"focused","extra":1}',
    '{"type":"attention","state":2}',
    '{"type":"Attention","state":"hidden"}',
]


@pytest.mark.timeout(90)
def test_bad_attention_messages_are_dropped_and_the_session_goes_on(xvnc, agent, aiortc_viewer, busy_screen):
    a = agent(xvnc.port)
    a.wait_vnc(True, 30)
    v = aiortc_viewer(a)
    v.wait_frames(3, 20)
    v.send(attention("visible"))
    wait_until(lambda: a.healthz()[1].get("attention") == "visible", 5, 0.05, "visible")
    for m in BAD:
        v.send(m)
    v.flush()
    wait_metric(a, "loco_input_events_total", lambda n: n == len(BAD), result="rejected")
    # Nothing changed: still visible, still streaming, the channel still works.
    assert a.healthz()[1].get("attention") == "visible"
    v.wait_frames(5, 10)
    v.send(attention("focused"))
    wait_until(lambda: a.healthz()[1].get("attention") == "focused", 5, 0.05, "focused after bad messages")
    assert v.v.dc.readyState == "open" and v.connection_state == "connected"
    # Logged, once (the input log is rate-limited), not once per message.
    log = a.log()
    assert 1 <= log.count("input rejected") < len(BAD), log[-3000:]


@pytest.mark.timeout(120)
def test_the_most_attentive_viewer_wins(xvnc, agent, aiortc_viewer, busy_screen):
    """Two viewers share the encoder: it runs for the more attentive one. A view-only viewer's
    attention counts too (attention is not control)."""
    a = agent(xvnc.port, token="control-key", extra_args=["--view-token", "view-key"])
    a.wait_vnc(True, 30)
    one = aiortc_viewer(a, token="control-key", name="one")
    two = aiortc_viewer(a, token="view-key", name="two")
    one.wait_frames(3, 20)
    two.wait_frames(3, 20)

    def effective(state: str) -> None:
        wait_until(lambda: a.healthz()[1].get("attention") == state, 5, 0.05, f"attention {state}")

    one.send(attention("hidden"))
    effective("focused")               # two has said nothing: focused
    two.send(attention("visible"))
    effective("visible")
    # /healthz shows the state when the message arrives; the encoder thread sets its cap (and
    # the gauge) when it next takes its inbox, a moment later.
    wait_metric(a, "loco_encoder_fps_cap", lambda cap: cap == 12, 5, codec="h264")
    two.send(attention("hidden"))
    effective("hidden")
    one.send(attention("focused"))
    effective("focused")
    # The hidden viewer gets what the focused one gets: one encoding serves both.
    time.sleep(0.5)
    n1, n2, t0 = one.frame_count, two.frame_count, time.monotonic()
    time.sleep(2.0)
    dt = time.monotonic() - t0
    r_one, r_two = (one.frame_count - n1) / dt, (two.frame_count - n2) / dt
    print(f"focused viewer {r_one:.1f} frames/s, hidden viewer on the same encoder {r_two:.1f} frames/s")
    assert r_two > 12 * 1.25, (r_one, r_two)
    # The focused viewer leaves: the hidden one is all that is left.
    one.close()
    effective("hidden")
    assert a.metric("loco_attention_messages_total", 0) == 4
    assert a.metric("loco_input_events_total", 0, result="rejected") == 0
