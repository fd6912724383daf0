"""The VNC side going away: unreachable at start, a connection cut in the middle of a
FramebufferUpdate, the server killed and restarted. The agent keeps running, reconnects with
backoff, /healthz and the gauges follow, and viewers keep their sessions and get new frames."""
from __future__ import annotations

import time

import pytest

from checks import W, H, frame_is, wait_metric
from loco_testkit.xvnc import Xvnc, write_noise_xbm

BAD_STATES = {"failed", "closed"}


def assert_still_connected(v):
    assert v.connection_state == "connected" and not (BAD_STATES & set(v.v.connection_states)), v.describe()


@pytest.mark.timeout(120)
def test_vnc_unreachable_at_start(agent, aiortc_viewer, tmp_path):
    x = Xvnc(tmp_path)           # port chosen, server not started yet
    a = agent(x.port)
    st, hz = a.healthz()
    assert st == 503 and hz["vnc_connected"] is False, (st, hz)
    assert a.metric("loco_vnc_connected", None) == 0
    time.sleep(2.0)
    assert a.alive(), "agent must keep retrying while VNC is unreachable"
    try:
        x.start()
        x.solid("#c08000")
        hz = a.wait_vnc(True, 40)
        assert (hz["width"], hz["height"]) == (W, H), hz
        assert a.metric("loco_vnc_connected") == 1
        v = aiortc_viewer(a)
        v.wait_frame(frame_is("#c08000"), timeout=15, what="frame of the desktop")
    finally:
        x.kill()


@pytest.mark.timeout(150)
def test_vnc_connection_cut_mid_update(xvnc, vnc_proxy, agent, aiortc_viewer, tmp_path):
    proxy = vnc_proxy(xvnc.port)
    xvnc.solid("#000000")
    a = agent(proxy.port)
    a.wait_vnc(True, 30)
    v = aiortc_viewer(a)
    v.wait_frame(frame_is("#000000"), timeout=15)
    r0 = a.metric("loco_vnc_reconnects_total")

    proxy.arm_cut(8192)
    noise = write_noise_xbm(tmp_path / "noise.xbm")
    for i in range(20):                # a few large, incompressible updates until the cut fires
        xvnc.bitmap(noise if i % 2 == 0 else write_noise_xbm(tmp_path / f"n{i}.xbm", seed=i),
                    "#ff8000", "#0020ff")
        if proxy.cut_event.wait(0.5):
            break
    assert proxy.cut_event.is_set(), f"the proxy never cut (s2c bytes {proxy.s2c_bytes})"
    assert proxy.cut_info["withheld"] > 0, f"cut was not inside a server message: {proxy.cut_info}"
    print(f"proxy cut: {proxy.cut_info}")

    wait_metric(a, "loco_vnc_reconnects_total", lambda n: n > r0, timeout=30)
    a.wait_vnc(True, 30)
    assert a.alive()
    assert proxy.connections >= 2
    assert_still_connected(v)

    xvnc.solid("#00c000")
    v.wait_frame(frame_is("#00c000"), timeout=20, what="green frame after the reconnect")
    assert_still_connected(v)
    assert a.metric("loco_vnc_connected") == 1


@pytest.mark.timeout(150)
def test_vnc_server_restart(xvnc, agent, aiortc_viewer):
    xvnc.solid("#0000ff")
    a = agent(xvnc.port)
    a.wait_vnc(True, 30)
    v = aiortc_viewer(a)
    v.wait_frame(frame_is("#0000ff"), timeout=15, what="blue frame")
    r0 = a.metric("loco_vnc_reconnects_total")

    xvnc.restart()
    wait_metric(a, "loco_vnc_reconnects_total", lambda n: n > r0, timeout=30)
    a.wait_vnc(True, 30)
    xvnc.solid("#ff0000")
    f = v.wait_frame(frame_is("#ff0000"), timeout=20, what="red frame from the restarted server")
    assert (f.width, f.height) == (W, H)
    assert_still_connected(v)
    st, hz = a.healthz()
    assert st == 200 and hz["viewers"] == 1, hz


@pytest.mark.timeout(150)
def test_vnc_down_reports_503_then_recovers(xvnc, agent, aiortc_viewer):
    xvnc.solid("#404040")
    a = agent(xvnc.port)
    a.wait_vnc(True, 30)
    v = aiortc_viewer(a)
    v.wait_frame(timeout=15)

    xvnc.kill()
    hz = a.wait_vnc(False, 15)
    assert hz["viewers"] == 1, hz
    assert a.metric("loco_vnc_connected") == 0
    time.sleep(3.0)                      # a few backoff rounds against a dead port
    assert a.alive()
    assert_still_connected(v)

    xvnc.start()
    xvnc.solid("#00ffff")
    a.wait_vnc(True, 40)
    v.wait_frame(frame_is("#00ffff"), timeout=20, what="cyan frame after the server came back")
    assert_still_connected(v)
    assert a.metric("loco_vnc_connected") == 1
