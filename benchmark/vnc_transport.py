#!/usr/bin/env python3
"""The agent's VNC-update-to-send latency on the stand-in VM over a Unix socket and over TCP.

    PYTHONPATH=tools:packer:packer/testpattern:benchmark python3 benchmark/vnc_transport.py \\
        [--runs 2] [--seconds 20]

A pod's agent reads QEMU's VNC over a Unix socket (/run/loco/vnc.sock). Xvnc stalls mid-update on
such a socket (its send buffer is smaller than a full-motion update; benchmark/README.md); this
measures whether QEMU does. For each run and each transport, alternating: boots the stand-in VM
(loco_testkit.standin; TCG where KVM is unusable) with its VNC server on a Unix socket or on
127.0.0.1, starts the `flood` workload of `./loco bench`'s scale part in the guest (a 168x56
xterm printing `od` of /dev/urandom), starts loco-agent on it (LOCO_AGENT_BIN or the release
build) with one aiortc viewer (vm_figures.agent_window), waits 8 s, then reads the agent's
metrics over --seconds: frames per second, agent CPU per frame and its split (encoder,
conversion, the rest), update-to-send p50/p99 (all as agent_figures.py), rectangles per frame.
Prints one JSON object per measurement. It measures; it asserts nothing. The stand-in image must
be built (./loco test builds it).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from agent_figures import cpu_split, histogram, quantile
from live_bench import FLOOD
from loco_testkit.standin import StandinVM
from vm_figures import TCP_DISPLAY, agent_window


def measure(transport: str, seconds: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="loco-vnc-transport-"))
    vm = StandinVM("loco-vnc-transport", work=work)
    if transport == "tcp":
        vm.vnc = f"127.0.0.1:{TCP_DISPLAY}"
    vm.start()
    try:
        vm.wait_ready(900)
        vm.console.background(FLOOD)
        agent_vnc = vm.vnc if transport == "unix" else f"127.0.0.1:{5900 + TCP_DISPLAY}"
        m0, m1, cpu_s, frames = agent_window(agent_vnc, seconds, work)
    finally:
        vm.stop()
    h0, h1 = histogram(m0, "loco_update_to_send_seconds"), histogram(m1, "loco_update_to_send_seconds")
    rects = m1.get("loco_vnc_rects_total") - m0.get("loco_vnc_rects_total")
    return {"transport": transport, "fps": round(frames / seconds, 2), **cpu_split(m0, m1, cpu_s, frames),
            "update_to_send_ms_p50": round(1000 * (quantile(0.5, h0, h1) or 0), 2),
            "update_to_send_ms_p99": round(1000 * (quantile(0.99, h0, h1) or 0), 2),
            "rects_per_frame": round(rects / frames, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    for _ in range(args.runs):
        for transport in ("unix", "tcp"):
            print(json.dumps(measure(transport, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
