#!/usr/bin/env python3
"""A userspace UDP impairment relay for the WebRTC media path: drops a fraction of the
packets and delays each of the others by a random time (jitter), independently in each
direction. It stands in for `tc qdisc ... netem loss 10% delay 50ms 50ms`, which needs the
sch_netem kernel module (missing on the test machines).

How it sits in the path (everything on 127.0.0.1):

    viewer  V ──▶ R (viewer side) ──[loss, jitter]──▶ U (agent side) ──▶ A  agent
    viewer  V ◀── R ◀──[loss, jitter]── U ◀── A  agent

The test rewrites the SDP on both sides of the WHEP exchange: the offer POSTed to the agent
carries one candidate, U, instead of the viewer's own; the answer handed to the viewer
carries one candidate, R, instead of the agent's; A is the agent's 127.0.0.1 candidate taken
from its answer. So neither peer ever learns an address of the other, and every packet either
one can send to the other (ICE checks, DTLS, SRTP/SRTCP, SCTP) crosses the relay: ICE cannot
find a path around it. The relay behaves like a NAT: each viewer source address gets its own
agent-side socket (the first one is U), which the agent sees as a peer-reflexive or the known
remote candidate; packets to a socket from anything but A are dropped and counted.

Delays are drawn uniformly from [0, jitter] per packet, so packets are reordered, as with
netem's jitter. Loss is Bernoulli per packet. Both use a seeded random generator.

A bottleneck (`rate_kbps`, `queue_ms`) models a congested link towards the viewer, like
netem's `rate` or a token-bucket shaper: packets are serialised at that rate in arrival order,
and one that would wait longer than `queue_ms` in the queue is dropped (tail drop), so a
sender above the rate sees queueing delay first, then loss. Off when `rate_kbps` is 0.

Run it as a process (what the tests do, to keep it off the viewer's GIL):

    python udp_impair.py --loss 0.1 --jitter-ms 100 --seed 7
    -> {"viewer_side": R_port, "agent_side": U_port}          (first line on stdout)
    <- {"agent": ["127.0.0.1", A_port]}                       (stdin, one JSON per line)
    <- {"stats": true}  -> {"to_agent": {...}, "to_viewer": {...}, ...}
    <- {"set": {"loss": 0.0, "jitter_ms": 0}}                 (change the impairment)
    <- {"set": {"rate_kbps": 1500, "queue_ms": 150}}          (a bottleneck towards the viewer)

`ImpairedPath` drives such a process from a test.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import threading
from pathlib import Path


class Direction:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.received = 0
        self.dropped = 0
        self.sent = 0
        self.bytes = 0
        self.delay_sum = 0.0
        self.delay_max = 0.0
        self.queue_dropped = 0
        self.queue_delay_max = 0.0
        self.link_free_at = 0.0

    def stats(self) -> dict:
        return {"received": self.received, "dropped": self.dropped, "sent": self.sent,
                "bytes": self.bytes,
                "loss": round(self.dropped / self.received, 4) if self.received else 0.0,
                "mean_delay_ms": round(1000 * self.delay_sum / max(1, self.received - self.dropped), 1),
                "max_delay_ms": round(1000 * self.delay_max, 1),
                "queue_dropped": self.queue_dropped,
                "queue_delay_max_ms": round(1000 * self.queue_delay_max, 1)}


class _Sock(asyncio.DatagramProtocol):
    def __init__(self, on_packet):
        self.on_packet = on_packet
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.on_packet(self, data, addr)

    def error_received(self, exc):  # ICMP port unreachable etc.: UDP goes on
        pass


class Relay:
    def __init__(self, loss: float, jitter_ms: float, seed: int, host: str = "127.0.0.1"):
        self.loss = loss
        self.jitter = jitter_ms / 1000.0
        self.rate_bps = 0.0        # bottleneck towards the viewer; 0: none
        self.queue_s = 0.15
        self.host = host
        self.agent: tuple[str, int] | None = None
        self.to_agent = Direction(random.Random(seed))
        self.to_viewer = Direction(random.Random(seed + 1))
        self.viewer_side: _Sock | None = None
        self.upstream: dict[tuple, _Sock] = {}     # viewer source -> agent-side socket
        self.owner: dict[_Sock, tuple] = {}        # agent-side socket -> viewer source
        self.first_upstream: _Sock | None = None
        self.foreign = 0                           # packets from unknown sources, dropped
        self.unmapped = 0                          # agent packets before any viewer packet
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> tuple[int, int]:
        self.loop = asyncio.get_running_loop()
        _, self.viewer_side = await self.loop.create_datagram_endpoint(
            lambda: _Sock(self._from_viewer), sock=self._socket())
        self.first_upstream = await self._new_upstream()
        return self.port(self.viewer_side), self.port(self.first_upstream)

    def _socket(self) -> socket.socket:
        """A UDP socket with a large receive buffer: the agent sends a keyframe's packets in
        one burst, and the relay must not add kernel drops to the loss it models."""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        force = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)
        for opt in (force, socket.SO_RCVBUF):
            if opt is None:
                continue
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, 8 * 1024 * 1024)
                break
            except OSError:
                continue
        s.bind((self.host, 0))
        s.setblocking(False)
        return s

    @staticmethod
    def port(sock: _Sock) -> int:
        return sock.transport.get_extra_info("sockname")[1]

    async def _new_upstream(self) -> _Sock:
        _, s = await self.loop.create_datagram_endpoint(lambda: _Sock(self._from_agent), sock=self._socket())
        return s

    def _forward(self, d: Direction, transport, data: bytes, addr) -> None:
        d.received += 1
        if d.rng.random() < self.loss:
            d.dropped += 1
            return
        delay = d.rng.uniform(0.0, self.jitter) if self.jitter > 0 else 0.0
        if d is self.to_viewer and self.rate_bps > 0:
            now = self.loop.time()
            start = max(now, d.link_free_at)
            if start - now > self.queue_s:
                d.dropped += 1
                d.queue_dropped += 1
                return
            d.link_free_at = start + len(data) * 8 / self.rate_bps
            d.queue_delay_max = max(d.queue_delay_max, start - now)
            delay += d.link_free_at - now
        d.delay_sum += delay
        d.delay_max = max(d.delay_max, delay)

        def send():
            if not transport.is_closing():
                transport.sendto(data, addr)
                d.sent += 1
                d.bytes += len(data)
        if delay > 0:
            self.loop.call_later(delay, send)
        else:
            send()

    def _from_viewer(self, _sock, data, addr) -> None:
        if self.agent is None:
            self.unmapped += 1
            return
        up = self.upstream.get(addr)
        if up is None:
            if self.first_upstream is not None and self.first_upstream not in self.owner:
                up = self.first_upstream
                self._bind(addr, up)
            else:
                # Another viewer source: its own agent-side socket (bound asynchronously; this
                # packet is lost, as the first packet through a NAT may be).
                async def add():
                    if addr not in self.upstream:
                        self._bind(addr, await self._new_upstream())
                self.loop.create_task(add())
                self.unmapped += 1
                return
        self._forward(self.to_agent, up.transport, data, self.agent)

    def _bind(self, viewer_addr, up: _Sock) -> None:
        self.upstream[viewer_addr] = up
        self.owner[up] = viewer_addr

    def _from_agent(self, sock, data, addr) -> None:
        if self.agent is None or (addr[0], addr[1]) != self.agent:
            self.foreign += 1
            return
        viewer = self.owner.get(sock)
        if viewer is None:
            self.unmapped += 1
            return
        self._forward(self.to_viewer, self.viewer_side.transport, data, viewer)

    def stats(self) -> dict:
        return {"to_agent": self.to_agent.stats(), "to_viewer": self.to_viewer.stats(),
                "foreign_dropped": self.foreign, "unmapped_dropped": self.unmapped,
                "viewer_sources": len(self.upstream), "loss": self.loss,
                "jitter_ms": self.jitter * 1000, "rate_kbps": self.rate_bps / 1000,
                "queue_ms": self.queue_s * 1000}


async def _serve(args) -> None:
    relay = Relay(args.loss, args.jitter_ms, args.seed)
    vport, uport = await relay.start()
    print(json.dumps({"viewer_side": vport, "agent_side": uport}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        try:
            cmd = json.loads(line)
        except ValueError:
            print(json.dumps({"error": f"not JSON: {line[:80]!r}"}), flush=True)
            continue
        if "agent" in cmd:
            relay.agent = (str(cmd["agent"][0]), int(cmd["agent"][1]))
            print(json.dumps({"ok": True}), flush=True)
        elif "set" in cmd:
            relay.loss = float(cmd["set"].get("loss", relay.loss))
            relay.jitter = float(cmd["set"].get("jitter_ms", relay.jitter * 1000)) / 1000
            relay.rate_bps = float(cmd["set"].get("rate_kbps", relay.rate_bps / 1000)) * 1000
            relay.queue_s = float(cmd["set"].get("queue_ms", relay.queue_s * 1000)) / 1000
            print(json.dumps({"ok": True}), flush=True)
        elif "stats" in cmd:
            print(json.dumps(relay.stats()), flush=True)


class ImpairedPath:
    """Runs udp_impair.py as a child process and talks to it (JSON lines)."""

    def __init__(self, loss: float, jitter_ms: float, seed: int = 1, log_path: Path | None = None):
        from loco_testkit.procs import spawn
        self.proc = spawn([sys.executable, str(Path(__file__).resolve()), "--loss", str(loss),
                           "--jitter-ms", str(jitter_ms), "--seed", str(seed)],
                          log_path=None, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=open(log_path, "ab") if log_path else subprocess.DEVNULL,
                          text=True, name="udp_impair")
        self._lock = threading.Lock()
        ready = self._read()
        self.viewer_side = ready["viewer_side"]
        self.agent_side = ready["agent_side"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"udp_impair exited (rc={self.proc.poll()})")
        return json.loads(line)

    def _ask(self, cmd: dict) -> dict:
        with self._lock:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            return self._read()

    def set_agent(self, host: str, port: int) -> None:
        self._ask({"agent": [host, port]})

    def set(self, loss: float | None = None, jitter_ms: float | None = None,
            rate_kbps: float | None = None, queue_ms: float | None = None) -> None:
        s = {k: v for k, v in (("loss", loss), ("jitter_ms", jitter_ms), ("rate_kbps", rate_kbps),
                               ("queue_ms", queue_ms)) if v is not None}
        self._ask({"set": s})

    def stats(self) -> dict:
        return self._ask({"stats": True})

    def close(self) -> None:
        from loco_testkit.procs import kill_group
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            pass
        kill_group(self.proc, grace=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loss", type=float, default=0.1, help="fraction of packets dropped, each way")
    ap.add_argument("--jitter-ms", type=float, default=100.0, help="each packet delayed by U(0, this)")
    ap.add_argument("--seed", type=int, default=1)
    asyncio.run(_serve(ap.parse_args()))


if __name__ == "__main__":
    main()
