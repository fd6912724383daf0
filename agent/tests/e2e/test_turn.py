"""TURN-only path through a real coturn (Debian's `turnserver`) on loopback.

The agent runs with `--ice-server turn:127.0.0.1:PORT?transport=udp --turn-username loco
--turn-password secret`; the viewers are forced to relay (`iceTransportPolicy: "relay"`), so
every media and data-channel packet goes viewer -> coturn -> agent and back. Checked: the
agent advertises the server in its WHEP answer's `Link: <turn:...>; rel="ice-server"` header
(with the credentials) and gathers a relay candidate itself, the viewer offers only relay
candidates and ICE selects a relay pair, frames decode at 1024x768, a pointer message over
the relayed data channel moves the real X pointer, and coturn's log shows the allocation,
the permission for the agent's address and relayed traffic.

With a shared secret instead (coturn `use-auth-secret`, what STUNner's `ephemeral` mode checks
too), the agent mints credentials per session (`--turn-secret-file`) and hands them out on
`GET /ice` (key required) and in its Link headers: relay-only aiortc and Chromium get through
with them; expired or forged ones are refused by coturn; the secret appears nowhere."""
from __future__ import annotations

import http.client
import re
import shutil
import socket
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

from checks import W, H, frame_is, make_offer, wait_metric
from loco_testkit.procs import kill_group, spawn, tail
from loco_testkit.sdp import sdp_candidates
from loco_testkit.waits import free_port, wait_until

TURN_USER, TURN_PASSWORD, TURN_REALM = "loco", "secret", "loco"
TURN_SECRET = "shared-turn-secret-0123456789"


# ------------------------------------------------------------------ coturn fixture

@dataclass
class Coturn:
    port: int
    log_path: Path
    out_path: Path
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def ice_server(self) -> dict:
        """As a browser RTCIceServer."""
        return {"urls": [self.url], "username": TURN_USER, "credential": TURN_PASSWORD}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def successes(self, method: str) -> int:
        """How many `<METHOD> processed, success` lines coturn logged (verbose mode) for user loco."""
        return len(re.findall(rf"realm <{TURN_REALM}> user <{TURN_USER}>: incoming packet "
                              rf"{method} processed, success", self.log()))


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture
def coturn(tmp_path, request):
    """A real coturn on 127.0.0.1:<free port> (UDP and TCP), long-term credentials loco:secret,
    realm loco, no TLS/DTLS, loopback peers allowed, verbose log in tmp_path. Killed (process
    group) at teardown."""
    yield from _coturn(tmp_path, request, ["lt-cred-mech", f"user={TURN_USER}:{TURN_PASSWORD}"])


@pytest.fixture
def coturn_secret(tmp_path, request):
    """The same coturn with the TURN REST API scheme: `use-auth-secret` with TURN_SECRET."""
    yield from _coturn(tmp_path, request, ["use-auth-secret", f"static-auth-secret={TURN_SECRET}"])


def _coturn(tmp_path, request, auth: list[str]):
    exe = shutil.which("turnserver")
    if not exe:
        pytest.fail("turnserver not found: apt-get install -y coturn", pytrace=False)
    port = free_port()
    while not _udp_free(port):
        port = free_port()
    log = tmp_path / "turnserver.log"
    out = tmp_path / "turnserver.out"
    conf = tmp_path / "turnserver.conf"
    conf.write_text("\n".join([
        "listening-ip=127.0.0.1",
        f"listening-port={port}",
        "relay-ip=127.0.0.1",
        *auth,
        f"realm={TURN_REALM}",
        "no-tls",
        "no-dtls",
        "no-tcp-relay",
        "allow-loopback-peers",
        "no-cli",
        "fingerprint",
        "verbose",
        "simple-log",          # exactly this file name, no date suffix
        f"log-file={log}",
        "no-stdout-log",
        f"pidfile={tmp_path / 'turnserver.pid'}",
        f"userdb={tmp_path / 'turndb'}",   # never the system /var/lib/turn/turndb
        "",
    ]))
    for title, p in (("coturn log", log), ("coturn stdout/stderr", out), ("coturn config", conf)):
        request.node.__dict__.setdefault("_loco_logs", []).append((title, p))
    proc = spawn([exe, "-c", str(conf)], log_path=out, name="turnserver")
    t = Coturn(port, log, out, proc)
    try:
        def ready():
            if proc.poll() is not None:
                raise RuntimeError(f"turnserver exited rc={proc.returncode}")
            return f"UDP listener opened on: 127.0.0.1:{port}" in t.log()
        wait_until(ready, 15, 0.05, f"coturn UDP listener on 127.0.0.1:{port}")
    except (RuntimeError, TimeoutError) as e:
        kill_group(proc, grace=2)
        pytest.fail(f"{e}\n--- coturn log ---\n{tail(log)}\n--- stdout ---\n{tail(out)}", pytrace=False)
    yield t
    died = proc.poll()
    kill_group(proc, grace=3)
    if died is not None:
        pytest.fail(f"turnserver exited during the test rc={died}\n{tail(log)}", pytrace=False)


def _turn_agent(agent, xvnc, coturn):
    a = agent(xvnc.port, extra_args=["--ice-server", coturn.url,
                                     "--turn-username", TURN_USER, "--turn-password", TURN_PASSWORD])
    a.wait_vnc(True, 30)
    return a


def _expected_link(coturn) -> str:
    return (f'<{coturn.url}>; rel="ice-server"; username="{TURN_USER}"; '
            f'credential="{TURN_PASSWORD}"; credential-type="password"')


def _check_pointer(send, xvnc, agent) -> None:
    for (x, y) in ((700, 100), (12, 745), (512, 384)):
        xvnc.move_pointer(100 if x > 500 else 900, 600 if y < 400 else 50)
        send({"type": "pointer", "x": x, "y": y, "buttons": 0})
        xvnc.wait_pointer(x, y)
    wait_metric(agent, "loco_input_events_total", lambda v: v >= 3, result="accepted")


def _check_coturn_relayed(coturn) -> None:
    def seen():
        return (coturn.successes("ALLOCATE") >= 2          # the viewer's and the agent's
                and coturn.successes("CREATE_PERMISSION") + coturn.successes("CHANNEL_BIND") >= 1)
    try:
        wait_until(seen, 5, 0.1, "coturn ALLOCATE and CREATE_PERMISSION/CHANNEL_BIND successes")
    except TimeoutError as e:
        raise AssertionError(f"{e}; coturn log:\n{tail(coturn.log_path, 6000)}") from e


def _relayed_local(local: dict, turn_url: str) -> bool:
    """Whether Chromium's local candidate of a pair sends through the TURN server: a `relay`
    candidate, or a peer-reflexive one that Chromium found on its TURN port. libwebrtc makes the
    latter when a STUN response through the relay maps to an address it has not gathered (seen
    when the agent's host has more interfaces, e.g. Docker's bridge); its stats then carry the TURN
    server's `url` and `relayProtocol`, which only a relayed candidate has."""
    if local.get("candidateType") == "relay":
        return True
    return (local.get("candidateType") == "prflx" and local.get("url") == turn_url
            and local.get("relayProtocol") == "udp")


def _relay_viewer(aio_loop, url: str, ice_server: dict, token: str | None, name: str):
    """An aiortc WHEP viewer forced to relay through `ice_server` ({"urls", "username",
    "credential"}), connected (offer answered), as a SyncViewer."""
    from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
    from aiortc.rtcconfiguration import RTCIceTransportPolicy
    from loco_testkit.whep_aiortc import SyncViewer, WhepViewer

    class RelayViewer(WhepViewer):
        def __init__(self):
            super().__init__(url, None, token)
            self.pc = RTCPeerConnection(RTCConfiguration(
                iceServers=[RTCIceServer(urls=ice_server["urls"][0], username=ice_server["username"],
                                         credential=ice_server["credential"])],
                iceTransportPolicy=RTCIceTransportPolicy.RELAY))

    async def _connect():
        v = RelayViewer()
        try:
            await v._start(True, 15)
        except BaseException:
            await v.pc.close()
            raise
        return v
    return SyncViewer(aio_loop, aio_loop.run(_connect(), 30), name=name)


# ------------------------------------------------------------------ tests

@pytest.mark.timeout(60)
def test_whep_answer_advertises_turn_and_agent_gathers_relay(xvnc, agent, coturn, aio_loop):
    """Link header per configured server (with credentials) and a relay candidate from coturn
    in the (non-trickle) answer."""
    a = _turn_agent(agent, xvnc, coturn)
    u = urllib.parse.urlsplit(a.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    try:
        conn.request("POST", "/whep", body=make_offer(aio_loop).encode(),
                     headers={"Content-Type": "application/sdp"})
        r = conn.getresponse()
        answer = r.read().decode()
        links = r.headers.get_all("Link") or []
        location = r.headers.get("Location")
    finally:
        conn.close()
    assert r.status == 201, f"WHEP POST answered {r.status}: {answer[:300]}"
    assert links == [_expected_link(coturn)], f"Link headers: {links}"
    relay = [c for c in sdp_candidates(answer) if c["typ"] == "relay"]
    assert relay, f"agent's answer has no relay candidate (its TURN allocation failed?):\n{answer}"
    assert all(c["ip"] == "127.0.0.1" for c in relay), relay
    assert coturn.successes("ALLOCATE") >= 1, tail(coturn.log_path, 6000)
    assert a.request("DELETE", location).status == 200


@pytest.mark.chromium
@pytest.mark.timeout(60)
def test_turn_relay_only_chromium(xvnc, agent, coturn, chromium):
    a = _turn_agent(agent, xvnc, coturn)
    c = chromium()
    c.start(a.url, ice_servers=[coturn.ice_server()], ice_transport_policy="relay")
    st = c.state()
    assert st["iceTransportPolicy"] == "relay"
    assert st["localCandidateTypes"] and set(st["localCandidateTypes"]) == {"relay"}, \
        f"a relay-only browser offered {st['localCandidateTypes']} (TURN allocation failed?)"
    # Cross-origin: readable only because the agent exposes Link via CORS.
    assert st["linkHeader"] == _expected_link(coturn), st["linkHeader"]
    c.wait("t.dcState === 'open'", 20, "input channel open over TURN")
    c.wait_playing(W, H)
    c.wait("t.selectedPair && t.selectedPair.state === 'succeeded' && t.selectedPair.local", 10,
           "a selected candidate pair in getStats()")
    pair = c.selected_pair()
    assert _relayed_local(pair["local"], coturn.url), f"selected pair is not relayed: {pair}"
    assert pair["local"]["relayProtocol"] == "udp", pair
    assert pair["local"]["address"] == "127.0.0.1", pair
    _check_pointer(c.send, xvnc, a)
    xvnc.solid("#20c040")
    c.wait_more_frames(1)
    assert c.get("connectionState") == "connected"
    _check_coturn_relayed(coturn)
    pair = c.selected_pair()
    # (a solid 1024x768 desktop is a few KB of H.264: just check media crossed this pair)
    assert _relayed_local(pair["local"], coturn.url) and pair["bytesReceived"] > 1000, pair


@pytest.mark.timeout(60)
def test_turn_relay_only_aiortc(xvnc, agent, coturn, aio_loop):
    a = _turn_agent(agent, xvnc, coturn)
    xvnc.solid("#c04020")
    v = _relay_viewer(aio_loop, a.url, coturn.ice_server(), None, "aiortc-relay")
    try:
        offered = {c["typ"] for c in sdp_candidates(v.v.offer_sdp)}
        assert offered == {"relay"}, f"relay-only aiortc offered {offered}"
        v.wait_channel_open(15)
        v.wait_frame(frame_is("#c04020"), timeout=15, what="a 1024x768 frame of the red desktop")

        def nominated():
            conn = v.v.pc.getTransceivers()[0].receiver.transport.transport._connection
            return list(conn._nominated.values())
        pairs = aio_loop.call(nominated)
        assert pairs, "aioice has no nominated pair"
        assert all(p.local_candidate.type == "relay" for p in pairs), \
            [(p.local_candidate, p.remote_candidate) for p in pairs]
        _check_pointer(v.send, xvnc, a)
        _check_coturn_relayed(coturn)
        assert v.connection_state == "connected"
    finally:
        v.close()


# ------------------------------------------------------------------ TURN REST API (shared secret)

def _rest_agent(agent, xvnc, coturn_secret, tmp_path, token="turn-test-key-0123456789"):
    secret = tmp_path / "turn-secret"
    secret.write_text(TURN_SECRET + "\n")
    a = agent(xvnc.port, token=token, extra_args=["--ice-server", coturn_secret.url, "--turn-secret-file", secret,
                                                  "--turn-ttl-s", "600"])
    a.wait_vnc(True, 30)
    return a


def _agent_ice(a, token) -> list[dict]:
    r = a.request("GET", "/ice", headers={"Authorization": f"Bearer {token}"})
    assert r.status == 200, (r.status, r.text)
    assert r.headers.get("cache-control") == "no-store"
    return r.json()["iceServers"]


def _minted(servers, coturn_secret) -> dict:
    import base64
    import hashlib
    import hmac
    import time

    assert len(servers) == 1 and servers[0]["urls"] == [coturn_secret.url], servers
    s = servers[0]
    expiry, user = s["username"].split(":")
    assert user == "loco" and 590 <= int(expiry) - time.time() <= 610, s["username"]
    want = base64.b64encode(hmac.new(TURN_SECRET.encode(), s["username"].encode(), hashlib.sha1).digest()).decode()
    assert s["credential"] == want, "not base64(HMAC-SHA1(secret, username))"
    return s


async def _allocate(port: int, username: str, password: str):
    """One TURN allocation with aioice's client: the relayed address, or the exception coturn's
    answer raised."""
    import asyncio

    import aioice.turn
    try:
        transport, _ = await aioice.turn.create_turn_endpoint(
            asyncio.DatagramProtocol, server_addr=("127.0.0.1", port), username=username, password=password)
    except Exception as e:  # noqa: BLE001 - the refusal is the result
        return e
    relayed = transport.get_extra_info("sockname")
    transport.close()
    return relayed


@pytest.mark.timeout(60)
def test_turn_rest_credentials_minted_per_session(xvnc, agent, coturn_secret, aio_loop, tmp_path):
    """GET /ice needs the key and answers fresh credentials coturn accepts; expired or forged
    ones are refused; the WHEP answer's Link header carries minted ones too; the secret is in no
    answer and no log."""
    import base64
    import hashlib
    import hmac
    import time

    token = "turn-test-key-0123456789"
    a = _rest_agent(agent, xvnc, coturn_secret, tmp_path, token)
    assert a.request("GET", "/ice").status == 401
    assert a.request("GET", "/ice", headers={"Authorization": "Bearer wrong-key-0123"}).status == 401
    s = _minted(_agent_ice(a, token), coturn_secret)
    relayed = aio_loop.run(_allocate(coturn_secret.port, s["username"], s["credential"]), 15)
    assert isinstance(relayed, tuple) and relayed[0] == "127.0.0.1", f"coturn refused fresh credentials: {relayed!r}"

    past = f"{int(time.time()) - 5}:loco"
    expired = base64.b64encode(hmac.new(TURN_SECRET.encode(), past.encode(), hashlib.sha1).digest()).decode()
    refused = aio_loop.run(_allocate(coturn_secret.port, past, expired), 15)
    assert isinstance(refused, Exception) and "401" in str(refused), f"expired credentials: {refused!r}"
    forged = aio_loop.run(_allocate(coturn_secret.port, s["username"], "AAAA" + s["credential"][4:]), 15)
    assert isinstance(forged, Exception) and "401" in str(forged), f"forged credentials: {forged!r}"

    r = a.request("POST", "/whep", make_offer(aio_loop).encode(),
                  {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"})
    assert r.status == 201, (r.status, r.text[:300])
    link = r.headers.get("link", "")
    m = re.search(r'username="(\d+:loco)"; credential="([^"]+)"', link)
    assert m, link
    assert any(c["typ"] == "relay" for c in sdp_candidates(r.text)), "the agent did not allocate with minted credentials"
    assert TURN_SECRET not in link and TURN_SECRET not in r.text
    assert a.request("DELETE", r.headers["location"], headers={"Authorization": f"Bearer {token}"}).status == 200
    assert TURN_SECRET not in a.log()


@pytest.mark.timeout(60)
def test_turn_rest_relay_only_aiortc(xvnc, agent, coturn_secret, aio_loop, tmp_path):
    token = "turn-test-key-0123456789"
    a = _rest_agent(agent, xvnc, coturn_secret, tmp_path, token)
    s = _minted(_agent_ice(a, token), coturn_secret)
    xvnc.solid("#4020c0")
    v = _relay_viewer(aio_loop, a.url, s, token, "aiortc-rest-relay")
    try:
        assert {c["typ"] for c in sdp_candidates(v.v.offer_sdp)} == {"relay"}
        v.wait_channel_open(15)
        v.wait_frame(frame_is("#4020c0"), timeout=15, what="a frame of the blue desktop over TURN")
        _check_pointer(v.send, xvnc, a)
        assert v.connection_state == "connected"
        assert len(re.findall(r"user <\d+:loco>: incoming packet ALLOCATE processed, success", coturn_secret.log())) >= 2
    finally:
        v.close()


@pytest.mark.chromium
@pytest.mark.timeout(60)
def test_turn_rest_relay_only_chromium(xvnc, agent, coturn_secret, chromium, tmp_path):
    token = "turn-test-key-0123456789"
    a = _rest_agent(agent, xvnc, coturn_secret, tmp_path, token)
    s = _minted(_agent_ice(a, token), coturn_secret)
    c = chromium()
    c.start(a.url, ice_servers=[s], ice_transport_policy="relay", token=token)
    c.wait("t.dcState === 'open'", 20, "input channel open over TURN")
    c.wait_playing(W, H)
    c.wait("t.selectedPair && t.selectedPair.state === 'succeeded' && t.selectedPair.local", 10,
           "a selected candidate pair in getStats()")
    pair = c.selected_pair()
    assert _relayed_local(pair["local"], coturn_secret.url), f"selected pair is not relayed: {pair}"
