#!/usr/bin/env python3
"""Figures for a VM's sound, from the QEMU test-pattern guest (ES1370 on `-audiodev none`, its
VNC server carrying the sound) through loco-agent to aiortc:

    PYTHONPATH=tools:packer:packer/testpattern ~/.cache/loco/venv/bin/python benchmark/audio_figures.py

- audio bitrate on the wire (Opus payload + RTP/SRTP/UDP/IPv4 headers, from the agent's
  counters) while a 440 Hz tone plays continuously, and while the guest plays nothing;
- onset latency: from the guest's `LOCO-TONE: on` serial line (seen by polling the serial
  file every 2 ms) to the first decoded 20 ms frame louder than 1000 RMS, over N bursts
  (p50, p95);
- the agent's CPU: its audio thread (`loco-audio`) per second of sound, Opus encode time per
  frame (`loco_audio_encode_seconds`), and the whole agent's CPU with the tone on vs off.

Not part of ./loco test (agent/tests/e2e/test_audio.py checks the same paths with bounds).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import testguest  # packer/testpattern
from loco_testkit.agent import Agent
from loco_testkit.audio import SerialWatch, dominant_hz, rms, thread_cpu_seconds
from loco_testkit.procs import kill_group, spawn
from loco_testkit.waits import free_port, wait_port, wait_until
from loco_testkit.whep_aiortc import LoopThread, SyncViewer

OVERHEAD = 50  # RTP 12 + SRTP tag 10 + UDP 8 + IPv4 20 bytes per packet


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counters(a: Agent) -> tuple[float, float, float, float]:
    m = a.metrics()
    return (time.monotonic(), m.get("loco_audio_packets_sent_total"), m.get("loco_audio_bytes_sent_total"),
            process_cpu(a.pid))


def rates(a: Agent, c0) -> tuple[float, float]:
    """(bit/s on the wire, agent CPU share of a core) since c0."""
    t1, p1, b1, cpu1 = counters(a)
    t0, p0, b0, cpu0 = c0
    return ((b1 - b0) + (p1 - p0) * OVERHEAD) * 8 / (t1 - t0), (cpu1 - cpu0) / (t1 - t0)


class Run:
    """One guest + its agent + one aiortc listener."""

    def __init__(self, work: Path, tone, lt: LoopThread):
        paths = testguest.build()
        port = free_port()
        while port < 5900:
            port = free_port()
        self.serial = work / "serial.log"
        argv = [str(x) for x in testguest.qemu_command(paths, vnc_port=port, serial_log=str(self.serial),
                                                       audio=True, tone=tone)]
        self.qemu = spawn(argv, log_path=work / "qemu.log", name="qemu")
        wait_port(port, 60, self.qemu, what="QEMU VNC")
        wait_until(lambda: self.serial.exists() and testguest.READY_MARKER in self.serial.read_text(errors="replace"),
                   150, 0.1, "guest READY")
        self.agent = Agent.start(f"127.0.0.1:{port}", work / "agent.log")
        self.agent.wait_http(30)
        self.agent.wait_vnc(True, 60)
        self.viewer = SyncViewer.connect(lt, self.agent.url, name="listener", audio=True)
        self.viewer.wait_frame(timeout=60)

    def close(self):
        try:
            self.viewer.close()
        finally:
            self.agent.stop()
            kill_group(self.qemu, grace=3)


def main() -> int:
    ap = argparse.ArgumentParser(description="Audio figures: bitrate, onset latency, agent CPU.")
    ap.add_argument("--seconds", type=float, default=15.0, help="measuring time for each bitrate figure")
    ap.add_argument("--bursts", type=int, default=20, help="tone bursts for the latency figure")
    a = ap.parse_args()
    lt = LoopThread()
    work = Path(tempfile.mkdtemp(prefix="loco-audio-fig-"))
    out = []
    try:
        # Continuous tone, then silence (a guest with a sound card that plays nothing).
        for label, tone in (("continuous 440 Hz tone", 440), ("silent guest", None)):
            d = work / label.split()[0]
            d.mkdir()
            r = Run(d, tone, lt)
            try:
                time.sleep(2.0)
                c0 = counters(r.agent)
                thread0 = thread_cpu_seconds(r.agent.pid, "loco-audio")
                t0 = time.monotonic()
                time.sleep(a.seconds)
                bps, cpu = rates(r.agent, c0)
                thread = (thread_cpu_seconds(r.agent.pid, "loco-audio") - thread0) / (time.monotonic() - t0)
                line = f"{label}: {bps / 1000:.2f} kbit/s audio on the wire; agent CPU {100 * cpu:.1f}% of a core " \
                       f"(audio thread {100 * thread:.2f}%)"
                if tone:
                    pcm, rate = r.viewer.audio_since(t0)
                    m = r.agent.metrics()
                    enc = m.get("loco_audio_encode_seconds_sum") / max(1.0, m.get("loco_audio_encode_seconds_count"))
                    line += f"; decoded {dominant_hz(pcm[-rate:], rate):.1f} Hz at {rms(pcm):.0f} RMS; " \
                            f"Opus encode {1000 * enc:.3f} ms per 20 ms frame"
                out.append(line)
            finally:
                r.close()
        # Onset latency over bursts.
        d = work / "bursts"
        d.mkdir()
        r = Run(d, (440, 400, 600), lt)
        watch = SerialWatch(r.serial)
        try:
            t_start = time.monotonic()
            deadline = t_start + a.bursts * 1.5 + 30
            while len([t for t in watch.times("LOCO-TONE: on") if t > t_start]) < a.bursts + 1 \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.8)
            onsets = [t for t in watch.times("LOCO-TONE: on") if t > t_start][:a.bursts]
            frames = list(r.viewer.v.audio_frames)
            lat = []
            for on in onsets:
                loud = [t for t, p in frames if t >= on - 0.05 and rms(p) > 1000]
                if loud and loud[0] < on + 0.8:
                    lat.append(1000 * (loud[0] - on))
            if lat:
                out.append(f"tone onset latency (guest serial line -> first loud frame decoded by aiortc): "
                           f"p50 {np.percentile(lat, 50):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms, "
                           f"heard {len(lat)} of {len(onsets)} bursts")
            else:
                out.append(f"tone onset latency: no burst heard ({len(onsets)} played)")
        finally:
            watch.stop()
            r.close()
    finally:
        lt.stop()
    print(f"audio figures ({os.cpu_count()} CPUs, QEMU {'KVM' if testguest.kvm_usable() else 'TCG'}):")
    for line in out:
        print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
