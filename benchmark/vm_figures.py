#!/usr/bin/env python3
"""The agent's CPU per frame on the stand-in VM, beside bare x264 on frames of the same screen.

    PYTHONPATH=tools:packer:packer/testpattern:benchmark python3 benchmark/vm_figures.py \\
        [--runs 2] [--seconds 15] [--record-seconds 8]

`./loco bench-agent` (agent_figures.py) compares the agent with bare x264 on Xvnc showing
`testsrc2`. A pod's agent reads QEMU instead, and a desktop is mostly text. This runs the same
comparison there: it boots the stand-in VM once (loco_testkit.standin; TCG where KVM is
unusable) with its VNC server on 127.0.0.1, starts the `flood` workload of `./loco bench`'s
scale part in the guest (a 168x56 xterm printing `od` of /dev/urandom), and then, --runs times:

1. the agent window: loco-agent (LOCO_AGENT_BIN or the release build) on the VM's VNC with one
   aiortc viewer; after 8 s, the agent's CPU per frame over --seconds and its split (encoder,
   conversion, the rest; as agent_figures.py);
2. with the agent stopped, the same screen recorded as the agent reads it (recorder.record: raw
   updates, one request per 1/30 s) for --record-seconds;
3. `loco-codec-bench` on that recording: the pictures the agent's pacer would encode (its
   `ref.yuv`) and the agent's own H.264 encoder on them alone (conversion + encoding, with its
   damage hints);
4. bare x264 with the agent's settings on those pictures (peers.time_x264; repeats dropped).

The recording is of the same workload, not of the frames the agent coded in step 1 (the flood is
random), so the ratio compares like with like, not the very same pixels. Prints one JSON object
per run. It measures; it asserts nothing. The stand-in image must be built (./loco test builds
it); loco-codec-bench is built (or brought up to date) as `./loco bench` builds it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import peers
import recorder
from agent_figures import cpu_split, metrics_of, proc_cpu_seconds
from bench import bench_binary
from live_bench import FLOOD
from loco_testkit.agent import Agent
from loco_testkit.standin import StandinVM
from loco_testkit.whep_aiortc import LoopThread, SyncViewer

TCP_DISPLAY = 37  # QEMU -vnc 127.0.0.1:37, port 5937


def agent_window(vnc: str, seconds: float, work: Path) -> tuple:
    """Starts loco-agent on `vnc` with one aiortc viewer, waits 8 s, and returns the agent's
    metrics before and after a window of `seconds`, its CPU seconds in the window and the frames
    it encoded (at least one, or an error). The agent is stopped afterwards."""
    agent, lt = None, LoopThread()
    try:
        agent = Agent.start(vnc, work / "agent.log", codec="h264", rust_log="warn")
        agent.wait_http(30)
        viewer = SyncViewer.connect(lt, agent.url, codec="h264")
        viewer.wait_frames(1, timeout=60)
        time.sleep(8)
        m0, c0 = metrics_of(agent.url), proc_cpu_seconds(agent.pid)
        time.sleep(seconds)
        m1, c1 = metrics_of(agent.url), proc_cpu_seconds(agent.pid)
        viewer.close()
    finally:
        lt.stop()
        if agent:
            agent.stop()
    frames = m1.get("loco_frames_encoded_total") - m0.get("loco_frames_encoded_total")
    if not frames:
        raise RuntimeError(f"the agent encoded no frame in {seconds} s of flood (log in {work})")
    return m0, m1, c1 - c0, frames


def recorded_figures(port: int, seconds: float, work: Path) -> dict:
    rec = work / "flood.rec"
    stats = recorder.record(port, rec, seconds)
    out = work / "codec-bench"
    r = subprocess.run([str(bench_binary(build=True)), "--workload", str(rec), "--out-dir", str(out), "--codecs", "h264"],
                       capture_output=True, text=True, timeout=600)
    rec.unlink()
    if r.returncode != 0:
        raise RuntimeError(f"loco-codec-bench failed: {r.stderr[-1000:]}")
    h264 = json.loads(r.stdout)["codecs"][0]
    bare = peers.time_x264(out / "ref.yuv", work)
    shutil.rmtree(out)
    if not bare["frames"]:
        raise RuntimeError(f"the recording of {seconds} s held no picture that changed: is the flood running?")
    return {"recorded_updates": stats["updates"], "recorded_fps": round(stats["updates"] / seconds, 2),
            "pictures": h264["pictures"], "own_encoder_alone_ms_per_frame": round(h264["cpu_ms_per_frame"], 3),
            "bare_x264_frames": bare["frames"], "bare_x264_repeats_dropped": bare["repeats_dropped"],
            "bare_x264_ms_per_frame": round(1000 * bare["cpu_s"] / bare["frames"], 3),
            "bare_x264_command": bare["command"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=15.0, help="the agent's measured window")
    ap.add_argument("--record-seconds", type=float, default=8.0)
    args = ap.parse_args()
    if args.runs < 1 or args.seconds <= 0 or args.record_seconds <= 0:
        ap.error("--runs, --seconds and --record-seconds must be positive")
    work = Path(tempfile.mkdtemp(prefix="loco-vm-figures-"))
    vm = StandinVM("loco-vm-figures", work=work)
    vm.vnc = f"127.0.0.1:{TCP_DISPLAY}"
    vm.start()
    try:
        vm.wait_ready(900)
        vm.console.background(FLOOD)
        time.sleep(3)
        for run in range(args.runs):
            m0, m1, cpu_s, frames = agent_window(f"127.0.0.1:{5900 + TCP_DISPLAY}", args.seconds, work)
            result = {"run": run + 1, "fps": round(frames / args.seconds, 2), **cpu_split(m0, m1, cpu_s, frames)}
            result.update(recorded_figures(5900 + TCP_DISPLAY, args.record_seconds, work))
            result["agent_over_bare_x264"] = round(result["agent_cpu_ms_per_frame"] / result["bare_x264_ms_per_frame"], 2)
            if result["encoder_ms_per_frame"]:
                result["agent_over_own_encoder"] = round(result["agent_cpu_ms_per_frame"] / result["encoder_ms_per_frame"], 2)
            print(json.dumps(result), flush=True)
    finally:
        vm.stop()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
