"""Hostile and broken input: HTTP errors of the WHEP endpoint, bearer token, CORS, and garbage
on the input data channel (counted as rejected; nobody else is disturbed)."""
from __future__ import annotations

import json
import time

import pytest

from checks import make_offer, wait_metric
from loco_testkit.sdp import host_addresses, sdp_candidates
from loco_testkit.whep_aiortc import WhepError
from loco_testkit.xvnc import Animator

SDP = {"Content-Type": "application/sdp"}


def _printable_reason(text: str) -> bool:
    t = text.strip()
    return 0 < len(t) <= 2000 and t.isprintable() is not False and "<html" not in t.lower()


@pytest.mark.timeout(90)
def test_whep_http_errors_and_cors(xvnc, agent, aio_loop):
    a = agent(xvnc.port)
    a.wait_vnc(True, 30)
    offer = make_offer(aio_loop).encode()

    r = a.request("POST", "/whep", offer, {"Content-Type": "text/plain"})
    assert r.status == 415, f"wrong content type: {r.status} {r.text[:200]!r}"

    r = a.request("POST", "/whep", b"v=0\r\n" + b"a=x-pad:" + b"A" * (1 << 20) + b"\r\n", SDP, timeout=20)
    assert r.status == 413, f"1 MiB body: {r.status} {r.text[:200]!r}"

    padded = offer + b"a=x-pad:" + b"B" * (64 * 1024) + b"\r\n"   # > 64 KiB
    r = a.request("POST", "/whep", padded, SDP)
    assert r.status == 413, f"{len(padded)} byte body: {r.status} {r.text[:200]!r}"

    for garbage in (b"hello, I am not SDP", b"", b"v=0\r\nm=banana\r\n", b"\xff\xfe\x00garbage"):
        r = a.request("POST", "/whep", garbage, SDP)
        assert r.status == 400, f"garbage SDP {garbage[:30]!r}: {r.status} {r.text[:200]!r}"
        assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
        assert _printable_reason(r.text), f"400 reason not readable: {r.text[:300]!r}"

    r = a.request("DELETE", "/whep/sessions/does-not-exist")
    assert r.status == 404, r.status
    r = a.request("DELETE", "/whep/sessions/" + "0" * 32)
    assert r.status == 404, r.status

    # CORS: preflight from another origin, then the real POST exposes Location.
    origin = {"Origin": "http://127.0.0.1:9"}
    r = a.request("OPTIONS", "/whep", None, {**origin, "Access-Control-Request-Method": "POST",
                                            "Access-Control-Request-Headers": "content-type,authorization"})
    assert 200 <= r.status < 300, f"preflight: {r.status}"
    assert r.headers.get("access-control-allow-origin") in ("*", origin["Origin"]), r.headers
    methods = r.headers.get("access-control-allow-methods", "").upper()
    assert "POST" in methods or methods == "*", r.headers
    allow_h = r.headers.get("access-control-allow-headers", "").lower()
    assert allow_h == "*" or ("content-type" in allow_h and "authorization" in allow_h), r.headers

    r = a.request("POST", "/whep", offer, {**SDP, **origin})
    assert r.status == 201, f"valid offer: {r.status} {r.text[:300]!r}"
    assert r.headers.get("access-control-allow-origin") in ("*", origin["Origin"]), r.headers
    assert "location" in r.headers.get("access-control-expose-headers", "").lower(), r.headers
    loc = r.headers["location"]
    assert loc.startswith("/whep/sessions/"), f"Location {loc!r} (want relative /whep/sessions/<id>)"
    assert r.headers.get("content-type", "").startswith("application/sdp"), r.headers
    assert "a=candidate:" in r.text, "answer must carry the agent's ICE candidates (non-trickle)"
    foreign = [c["line"] for c in sdp_candidates(r.text) if c["ip"] not in host_addresses()]
    assert not foreign, f"answer advertises candidates that are not this host's addresses: {foreign}"
    r = a.request("DELETE", loc, None, origin)
    assert r.status == 200, f"DELETE {loc}: {r.status}"
    r = a.request("DELETE", loc)
    assert r.status == 404, f"second DELETE {loc}: {r.status}"

    wait_metric(a, "loco_viewers", lambda v: v == 0)
    assert a.alive()


@pytest.mark.timeout(90)
def test_token_required(xvnc, agent, aio_loop, aiortc_viewer):
    token = "s3cret-T0ken"
    a = agent(xvnc.port, token=token)
    a.wait_vnc(True, 30)
    offer = make_offer(aio_loop).encode()
    for hdr in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {token}x"},
                {"Authorization": f"Basic {token}"}, {"Authorization": token}, {"Authorization": "Bearer "}):
        r = a.request("POST", "/whep", offer, {**SDP, **hdr})
        assert r.status == 401, f"POST with {hdr or 'no Authorization'}: {r.status} {r.text[:200]!r}"
    assert a.metric("loco_viewers") == 0
    with pytest.raises(WhepError) as ei:
        aiortc_viewer(a, token="nope")
    assert ei.value.status == 401

    v = aiortc_viewer(a, token=token)     # 201, then a real session
    v.wait_frame(timeout=10)
    r = a.request("DELETE", v.location)
    assert r.status == 401, f"DELETE without token: {r.status}"
    assert v.delete() == 200
    v.v.location = None
    wait_metric(a, "loco_viewers", lambda n: n == 0)


@pytest.mark.timeout(90)
def test_wrong_keys_are_throttled_per_address(xvnc, agent, aio_loop):
    """Ten wrong keys from one address at once, then 429 (with Retry-After) without the key even
    being looked at, the right one included, until the address's bucket refills (12 a minute)."""
    token = "r1ght-key"
    a = agent(xvnc.port, token=token)
    a.wait_vnc(True, 30)
    offer = make_offer(aio_loop).encode()
    for i in range(10):
        r = a.request("POST", "/whep", offer, {**SDP, "Authorization": f"Bearer guess{i}"})
        assert r.status == 401, f"wrong key #{i + 1}: {r.status} {r.text[:200]!r}"
    r = a.request("POST", "/whep", offer, {**SDP, "Authorization": "Bearer guess10"})
    assert r.status == 429, f"the eleventh wrong key at once: {r.status} {r.text[:200]!r}"
    wait_s = int(r.headers.get("retry-after", "0"))
    assert 1 <= wait_s <= 5, r.headers
    assert "too many wrong keys from 127.0.0.1" in r.text
    r = a.request("POST", "/whep", offer, {**SDP, "Authorization": f"Bearer {token}"})
    assert r.status == 429, f"the right key from a locked-out address is not looked at: {r.status}"
    m = a.metrics()
    assert m.get("loco_auth_refused_total", reason="wrong_key") == 10
    assert m.get("loco_auth_refused_total", reason="throttled") == 2
    assert token not in a.log() and "guess" not in a.log(), "a key reached the agent's log"
    time.sleep(wait_s + 0.2)
    r = a.request("POST", "/whep", offer, {**SDP, "Authorization": f"Bearer {token}"})
    assert r.status == 201, f"after Retry-After, the right key: {r.status} {r.text[:200]!r}"
    assert a.request("DELETE", r.headers["location"], headers={"Authorization": f"Bearer {token}"}).status == 200


GARBAGE = [
    "not json",
    "{",
    "null",
    "42",
    '"a string"',
    "[]",
    "[1, 2, 3]",
    "{}",
    '{"type": "pointer"}',
    '{"type": "pointer", "x": 1, "y": 2}',
    '{"type": "pointer", "x": "10", "y": 10, "buttons": 0}',
    '{"x": 1, "y": 1, "buttons": 0}',
    '{"type": "teleport", "x": 1, "y": 1, "buttons": 0}',
    '{"type": 7}',
    '{"type": "key", "keysym": 65}',
    '{"type": "key", "down": true}',
    '{"type": "key", "keysym": 65, "down": "yes"}',
    '{"type": "pointer", "x": -1, "y": 10, "buttons": 0}',
    '{"type": "pointer", "x": 10, "y": -5, "buttons": 0}',
    '{"type": "pointer", "x": 10, "y": 10, "buttons": -1}',
    '{"type": "key", "keysym": -1, "down": true}',
    '{"type": "pointer", "x": 18446744073709551616, "y": 10, "buttons": 0}',
    '{"type": "pointer", "x": 10, "y": 1e400, "buttons": 0}',
    '{"type": "key", "keysym": 18446744073709551616, "down": true}',
    "\u0000\u0001\u0002",
    json.dumps("A" * 60_000),   # large but under the 64 KiB message limit
]


@pytest.mark.timeout(120)
def test_garbage_on_input_channel(xvnc, agent, aiortc_viewer):
    a = agent(xvnc.port)
    a.wait_vnc(True, 30)
    bad = aiortc_viewer(a, name="garbage-sender")
    good = aiortc_viewer(a, name="bystander")
    bad.wait_channel_open()
    with Animator(xvnc, 0.2):
        good.wait_frames(3, timeout=15)
        acc0 = a.metric("loco_input_events_total", 0, result="accepted")
        rej0 = a.metric("loco_input_events_total", 0, result="rejected")
        for g in GARBAGE:
            bad.send(g)
        bad.flush()
        n = len(GARBAGE)
        wait_metric(a, "loco_input_events_total", lambda v: v >= rej0 + n, timeout=10, result="rejected")
        time.sleep(0.5)
        rej1 = a.metric("loco_input_events_total", 0, result="rejected")
        assert rej1 == rej0 + n, f"{n} garbage messages, rejected counter moved by {rej1 - rej0}"
        assert a.metric("loco_input_events_total", 0, result="accepted") == acc0, "garbage was accepted"

        good.wait_frames(3, timeout=15)
        bad.wait_frames(3, timeout=15)
        assert a.alive()
        assert bad.connection_state == "connected" and not bad.v.dc_closed, bad.describe()

        # the garbage sender's session is still usable for input
        xvnc.move_pointer(10, 10)
        bad.send({"type": "pointer", "x": 77, "y": 88, "buttons": 0})
        xvnc.wait_pointer(77, 88)

        good.wait_frames(3, timeout=15)
        assert a.alive()
        st, hz = a.healthz()
        assert st == 200 and hz["viewers"] >= 1, hz


@pytest.mark.timeout(90)
@pytest.mark.parametrize("size", [65535, 65536, 100_002], ids=["64KiB-1", "64KiB", "100KB"])
def test_big_message_on_input_channel(size, xvnc, agent, aiortc_viewer):
    """A big text message (a JSON string: valid JSON, not an input event) on the input channel is
    rejected like any other garbage; the agent, the other viewers and the sender's own session
    (video and input) carry on. 65536 bytes is exactly the RFC 8841 default max-message-size that
    applies because the agent's answer has no a=max-message-size; for 100 KB aiortc is told to
    send past that limit anyway, as a hostile or buggy peer would."""
    big = json.dumps("A" * (size - 2))
    assert len(big) == size
    a = agent(xvnc.port)
    a.wait_vnc(True, 30)
    bad = aiortc_viewer(a, name="big-sender")
    good = aiortc_viewer(a, name="bystander")
    bad.wait_channel_open()
    limit = bad.v.remote_max_message_size()
    with Animator(xvnc, 0.2):
        good.wait_frames(2, timeout=15)
        rej0 = a.metric("loco_input_events_total", 0, result="rejected")
        if limit and limit < len(big):
            bad.v.pc.sctp._remote_max_message_size = 0     # let aiortc send past the limit
        bad.send(big)
        bad.flush()
        time.sleep(1.0)
        good.wait_frames(3, timeout=15)
        bad.wait_frames(3, timeout=15)
        assert a.alive()
        assert bad.connection_state == "connected", bad.describe()
        assert not bad.v.dc_closed, (f"the agent closed the input channel after a {len(big)} byte "
                                     f"message (advertised max-message-size: {limit or 'none'}); "
                                     f"{bad.describe()}")
        wait_metric(a, "loco_input_events_total", lambda v: v >= rej0 + 1, timeout=10, result="rejected")
        xvnc.move_pointer(10, 10)
        bad.send({"type": "pointer", "x": 99, "y": 111, "buttons": 0})
        xvnc.wait_pointer(99, 111)


@pytest.mark.chromium
@pytest.mark.timeout(90)
def test_token_from_the_real_page(xvnc, agent, loco_page):
    """The WebXR page sends desktops.json's token as a bearer token, cross-origin (the CORS
    preflight must allow the header): a wrong token gets 401 and the panel is locked (no
    retries) with the reason; the right one goes live."""
    token = "p4ge-t0ken"
    a = agent(xvnc.port, token=token)
    a.wait_vnc(True, 30)
    wrong = loco_page([{"name": "vm", "whep": a.url + "/whep", "token": "wrong"}], name="page-wrong-token")
    wait_metric(a, "loco_auth_refused_total", lambda n: n >= 1, timeout=20, reason="wrong_key")
    wrong.wait("p[0].state === 'locked' && /401/.test(p[0].error || '')", 20, "panel locked by a 401")
    right = loco_page([{"name": "vm", "whep": a.url + "/whep", "token": token}], name="page-token")
    right.wait_live(0)
    assert wrong.panels()[0]["state"] == "locked"
    assert wrong.panels()[0]["attempts"] == 1, "a locked panel retried with the refused token"
    wait_metric(a, "loco_whep_requests_total", lambda n: n >= 1, status="201")
