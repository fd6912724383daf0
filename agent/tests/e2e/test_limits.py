"""Roles and limits: a view-only token watches but cannot steer, a flood of input is held to the
configured rate, the viewer limit answers 503, a session that never connects is ended, and a
churn of sessions does not pile up memory."""
from __future__ import annotations

import time

import pytest

from checks import make_offer, wait_metric
from loco_testkit.waits import wait_until
from loco_testkit.whep_aiortc import WhepError
from loco_testkit.xvnc import Animator

SDP = {"Content-Type": "application/sdp"}


@pytest.mark.timeout(90)
def test_view_token_watches_but_cannot_send_input(xvnc, agent, aiortc_viewer):
    a = agent(xvnc.port, token="ctl-secret", extra_args=["--view-token", "view-secret"])
    a.wait_vnc(True, 30)
    watcher = aiortc_viewer(a, token="view-secret", name="view-only")
    pilot = aiortc_viewer(a, token="ctl-secret", name="control")
    with Animator(xvnc, 0.2):
        watcher.wait_frames(3, timeout=15)
    watcher.wait_channel_open()
    pilot.wait_channel_open()

    xvnc.move_pointer(5, 5)
    rej0 = a.metric("loco_input_events_total", 0, result="rejected")
    watcher.send({"type": "pointer", "x": 300, "y": 200, "buttons": 0})
    watcher.flush()
    wait_metric(a, "loco_input_events_total", lambda v: v >= rej0 + 1, timeout=10, result="rejected")
    time.sleep(0.5)
    assert xvnc.pointer() == (5, 5), "a view-only viewer moved the pointer"

    pilot.send({"type": "pointer", "x": 300, "y": 200, "buttons": 0})
    xvnc.wait_pointer(300, 200)

    # Neither token is accepted for the other's name, and a wrong one is 401.
    with pytest.raises(WhepError) as e:
        aiortc_viewer(a, token="nope")
    assert e.value.status == 401


def test_view_token_without_control_token_is_refused(agent_bin):
    import subprocess
    p = subprocess.run([str(agent_bin), "--vnc", "127.0.0.1:5999", "--listen", "127.0.0.1:0",
                        "--view-token", "v"], capture_output=True, text=True, timeout=20)
    assert p.returncode != 0
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "control token" in lines[0], p.stderr


@pytest.mark.timeout(90)
def test_input_flood_is_rate_limited(xvnc, agent, aiortc_viewer):
    a = agent(xvnc.port, extra_args=["--max-input-per-sec", "100"])
    a.wait_vnc(True, 30)
    v = aiortc_viewer(a, name="flooder")
    v.wait_channel_open()
    sent = 3000
    t0 = time.monotonic()
    for i in range(sent):
        v.send({"type": "pointer", "x": i % 1024, "y": 100, "buttons": 0})
    v.flush()
    wait_metric(a, "loco_input_events_total", lambda x: x > 0, timeout=10, result="rate_limited")

    def settled():
        acc = a.metric("loco_input_events_total", 0, result="accepted")
        lim = a.metric("loco_input_events_total", 0, result="rate_limited")
        return acc + lim >= sent
    wait_until(settled, timeout=20, what="every flood message counted")
    elapsed = time.monotonic() - t0
    accepted = a.metric("loco_input_events_total", 0, result="accepted")
    # 100/s plus a burst of 25, over the time the flood took to arrive (with slack for timing).
    assert accepted <= 25 + 100 * (elapsed + 1), (accepted, elapsed)
    assert accepted >= 25, accepted
    # The session is still usable once the flood is over.
    time.sleep(1.0)
    v.send({"type": "pointer", "x": 42, "y": 43, "buttons": 0})
    xvnc.wait_pointer(42, 43)


@pytest.mark.timeout(90)
def test_viewer_limit_answers_503(xvnc, agent, aiortc_viewer, aio_loop):
    a = agent(xvnc.port, extra_args=["--max-viewers", "1"])
    a.wait_vnc(True, 30)
    aiortc_viewer(a, name="first")
    r = a.request("POST", "/whep", make_offer(aio_loop).encode(), SDP)
    assert r.status == 503, (r.status, r.text)
    assert "viewers" in r.text
    assert a.metric("loco_sessions_ended_total", 0, reason="refused_full") >= 1


@pytest.mark.timeout(90)
def test_session_that_never_connects_is_ended(xvnc, agent, aio_loop):
    a = agent(xvnc.port, extra_args=["--session-timeout-s", "2"])
    a.wait_vnc(True, 30)
    # An offer whose peer goes away right after the POST: nobody answers ICE checks.
    r = a.request("POST", "/whep", make_offer(aio_loop).encode(), SDP)
    assert r.status == 201, (r.status, r.text)
    assert a.healthz()[1]["viewers"] == 1
    wait_until(lambda: a.healthz()[1]["viewers"] == 0, timeout=15, what="the unconnected session to end")
    ended = sum(a.metric("loco_sessions_ended_total", 0, reason=r) for r in ("timeout", "failed"))
    assert ended == 1, a.metrics().text


def _rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(120)
def test_session_churn_does_not_pile_up_memory(agent, aio_loop):
    """1000 sessions created and deleted back to back (what a buggy or hostile client can do
    with a valid token): each ended session's peer connection is freed at once, so the agent's
    memory stays flat instead of holding every connection of the last half second (about a
    megabyte each: once ~300 MiB at this rate)."""
    from loco_testkit.waits import free_port
    a = agent(free_port())        # no VNC server needed for signalling
    offer = make_offer(aio_loop).encode()

    def cycle(n: int) -> None:
        for _ in range(n):
            r = a.request("POST", "/whep", offer, SDP)
            assert r.status == 201, (r.status, r.text)
            assert a.request("DELETE", r.headers["location"]).status == 200
    cycle(50)
    base = _rss_mib(a.proc.pid)
    t0 = time.monotonic()
    cycle(1000)
    took = time.monotonic() - t0
    peak = _rss_mib(a.proc.pid)
    print(f"\n[churn] 1000 POST+DELETE in {took:.1f} s; agent RSS {base:.1f} -> {peak:.1f} MiB")
    assert peak - base < 64, f"agent RSS grew {peak - base:.0f} MiB over 1000 created+deleted sessions"
    assert a.healthz()[1]["viewers"] == 0
    assert a.metric("loco_sessions_ended_total", 0, reason="deleted") == 1050
