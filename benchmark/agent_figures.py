#!/usr/bin/env python3
"""Measure loco-agent on this machine: the figures the agent issue asks for.

    ./loco bench-agent [--seconds 20] [--codec h264] [--vnc tcp|unix] [--out results/agent-figures.json]

What it does, all on loopback with real peers:
 1. Starts TigerVNC's Xvnc at 1024x768 and plays a full-motion 1024x768 test video at 30 fps
    in it (ffplay, testsrc2), starts loco-agent on it (over TCP on loopback; --vnc unix for
    Xvnc's Unix socket, the way a pod reads QEMU's: the same CPU, but Xvnc, unlike QEMU, stalls
    mid-update on a Unix socket's small send buffer; benchmark/README.md), and connects one
    aiortc WHEP viewer.
 2. Over --seconds: agent CPU time (from /proc) per encoded frame, the agent's
    VNC-update-to-send latency (p50/p99 interpolated in its Prometheus histogram, the way
    Prometheus' histogram_quantile does), agent RSS (current and peak), frames encoded.
 3. Bare x264 on the same frames: grabs the same source for as many frames (ffmpeg x11grab
    from the same X display to raw I420, less any frame equal to the one before it, as the
    agent codes no frame when nothing changed; peers.bare_x264), then times the x264
    command-line encoder on them with the agent's default settings (peers.x264_agent_args:
    ultrafast, zerolatency, baseline, 1 thread, CRF 23 + QP floor 20 under the VBV cap,
    UMH ±64), and reports CPU per frame and the ratio agent/x264. Beside it, the agent's own
    split of the same window (loco_encoder_cpu_seconds_total: its encoder thread's CPU clock around the
    encoder and around the colour conversion; the rest is the process's total less these) and
    the agent's total over its own encoder's CPU, both taken under the same load.
 4. Idle desktop: stops the video, waits for the refinement frames to pass, and counts every
    UDP byte the agent sends (tcpdump on its media port) for --idle-seconds.

Prints a table and writes JSON. It measures; it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import peers  # noqa: E402
from loco_testkit.httpio import http_request, parse_metrics  # noqa: E402
from loco_testkit.procs import kill_group, spawn  # noqa: E402
from loco_testkit.sdp import sdp_candidates  # noqa: E402
from loco_testkit.agent import Agent  # noqa: E402
from loco_testkit.xvnc import Xvnc  # noqa: E402
from loco_testkit.whep_aiortc import LoopThread, SyncViewer  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def proc_rss_kib(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


def histogram(metrics, name: str) -> list[tuple[float, float]]:
    out = []
    for labels, value in metrics.series(name + "_bucket"):
        le = labels["le"]
        out.append((float("inf") if le == "+Inf" else float(le), value))
    return sorted(out)


def quantile(q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float | None:
    """histogram_quantile over the difference of two cumulative histograms."""
    diff = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = diff[-1][1] if diff else 0
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in diff:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            span = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / span if span else 1.0)
        prev_le, prev_count = le, count
    return None


def cpu_split(m0, m1, cpu_s: float, frames: float, codec: str = "h264") -> dict:
    """The agent's CPU per frame between two metric snapshots, split by its encoder thread's
    own clock (loco_encoder_cpu_seconds_total): the encoder, the colour conversion and the rest
    of the process (`cpu_s`: the process's CPU seconds in the same window), in ms a frame."""
    stage = {name: m1.get("loco_encoder_cpu_seconds_total", codec=codec, stage=name)
             - m0.get("loco_encoder_cpu_seconds_total", codec=codec, stage=name)
             for name in ("convert", "encode")}

    def ms(seconds: float) -> float | None:
        return round(1000 * seconds / frames, 3) if frames else None
    return {"agent_cpu_ms_per_frame": ms(cpu_s), "encoder_ms_per_frame": ms(stage["encode"]),
            "convert_ms_per_frame": ms(stage["convert"]),
            "rest_ms_per_frame": ms(cpu_s - stage["encode"] - stage["convert"])}


def metrics_of(url: str):
    return parse_metrics(http_request("GET", url + "/metrics").text)


def pcap_bytes(path: Path) -> tuple[int, int]:
    """(packets, IP-layer bytes) in a pcap file written by tcpdump -i any (Linux cooked v1)."""
    data = path.read_bytes()
    if len(data) < 24:
        return 0, 0
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    header = {113: 16, 276: 20, 1: 14}.get(linktype, 0)
    off, packets, total = 24, 0, 0
    while off + 16 <= len(data):
        _, _, incl, orig = struct.unpack(endian + "IIII", data[off:off + 16])
        packets += 1
        total += orig - header
        off += 16 + incl
    return packets, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window with motion")
    ap.add_argument("--idle-seconds", type=float, default=30.0, help="measurement window while idle")
    ap.add_argument("--codec", default="h264", choices=["h264", "vp8"])
    ap.add_argument("--bitrate-kbps", type=int, default=6000)
    ap.add_argument("--vnc", default="tcp", choices=["tcp", "unix"],
                    help="how the agent reaches Xvnc: TCP on loopback, or a Unix socket (as in a loco pod, "
                         "where it reads QEMU's /run/loco/vnc.sock; Xvnc stalls on it where QEMU does not)")
    ap.add_argument("--out", default=str(ROOT / "results" / "agent-figures.json"))
    args = ap.parse_args()

    for tool in ("Xvnc", "ffplay", "ffmpeg", "x264", "tcpdump"):
        if not shutil.which(tool):
            print(f"agent_figures: {tool} is missing (./loco deps installs it)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="loco-bench-"))
    procs: list[subprocess.Popen] = []
    lt = LoopThread()
    result: dict = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB",
        "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "unknown"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "codec": args.codec, "bitrate_kbps": args.bitrate_kbps,
        "source": "Xvnc 1024x768, ffplay testsrc2 1024x768 @ 30 fps",
        "vnc": args.vnc,
    }
    try:
        x = Xvnc(work, unix_socket=args.vnc == "unix").start()
        procs.append(x.proc)
        display = x.display
        env = dict(x.env, SDL_AUDIODRIVER="dummy")
        player = spawn(["ffplay", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=1024x768:rate=30",
                        "-an", "-noborder", "-left", "0", "-top", "0", "-x", "1024", "-y", "768"],
                       env=env, log_path=work / "ffplay.log")
        procs.append(player)
        agent = Agent.start(x.vnc, work / "agent.log", codec=args.codec,
                            extra_args=["--bitrate-kbps", args.bitrate_kbps], rust_log="warn")
        procs.append(agent.proc)
        url = agent.url
        agent.wait_http(15)
        viewer = SyncViewer.connect(lt, url, codec=args.codec)
        viewer.wait_frames(30, timeout=30)
        time.sleep(3)  # warm-up

        m0, c0, t0 = metrics_of(url), proc_cpu_seconds(agent.pid), time.monotonic()
        f0 = viewer.frame_count
        time.sleep(args.seconds)
        m1, c1, t1 = metrics_of(url), proc_cpu_seconds(agent.pid), time.monotonic()
        f1 = viewer.frame_count
        rss, hwm = proc_rss_kib(agent.pid)
        frames = m1.get("loco_frames_encoded_total", codec=args.codec) - m0.get("loco_frames_encoded_total", codec=args.codec)
        sent_bytes = m1.get("loco_bytes_sent_total", codec=args.codec) - m0.get("loco_bytes_sent_total", codec=args.codec)
        h0, h1 = histogram(m0, "loco_update_to_send_seconds"), histogram(m1, "loco_update_to_send_seconds")
        e0, e1 = histogram(m0, "loco_encode_seconds"), histogram(m1, "loco_encode_seconds")
        wall = t1 - t0
        cpu = c1 - c0
        split = cpu_split(m0, m1, cpu, frames, args.codec)
        tiles = {kind: m1.get("loco_encoder_tiles_total", codec=args.codec, tiles=kind)
                 - m0.get("loco_encoder_tiles_total", codec=args.codec, tiles=kind)
                 for kind in ("changed", "all")}
        result["motion"] = {
            "seconds": round(wall, 2),
            "frames_encoded": int(frames),
            "encoded_fps": round(frames / wall, 2),
            "viewer_decoded_fps": round((f1 - f0) / wall, 2),
            "agent_cpu_seconds": round(cpu, 3),
            "agent_cpu_percent_of_one_core": round(100 * cpu / wall, 1),
            "agent_cpu_ms_per_frame": split["agent_cpu_ms_per_frame"],
            "encoder_in_agent_ms_per_frame": split["encoder_ms_per_frame"],
            "convert_in_agent_ms_per_frame": split["convert_ms_per_frame"],
            "rest_of_agent_ms_per_frame": split["rest_ms_per_frame"],
            "changed_tiles_percent": round(100 * tiles["changed"] / tiles["all"], 1) if tiles["all"] else None,
            "encode_ms_p50": round(1000 * (quantile(0.5, e0, e1) or 0), 3),
            "update_to_send_ms_p50": round(1000 * (quantile(0.5, h0, h1) or 0), 2),
            "update_to_send_ms_p99": round(1000 * (quantile(0.99, h0, h1) or 0), 2),
            "bitrate_kbps": round(sent_bytes * 8 / wall / 1000, 1),
            "agent_rss_mib": round(rss / 1024, 1),
            "agent_peak_rss_mib": round(hwm / 1024, 1),
        }

        # Bare x264 on the same frames: grab as many frames of the same display.
        bare = peers.bare_x264(display, env, max(150, min(int(frames), 600)), work, args.bitrate_kbps)
        n, x264_cpu = bare["frames"], bare["cpu_s"]
        result["bare_x264"] = {
            "frames": n,
            "repeats_dropped": bare["repeats_dropped"],
            "cpu_seconds": round(x264_cpu, 3),
            "cpu_ms_per_frame": round(1000 * x264_cpu / n, 3),
            "command": bare["command"],
        }
        if frames:
            result["agent_over_x264"] = round((cpu / frames) / (x264_cpu / n), 2)
        if split["encoder_ms_per_frame"]:
            # The same ratio against the encoder inside the agent, in the same run: what the agent
            # adds to its encoder, without the difference between a loaded and an idle machine.
            result["agent_over_own_encoder"] = round(split["agent_cpu_ms_per_frame"] / split["encoder_ms_per_frame"], 2)

        # Idle desktop: stop the motion, let the refinement frames pass, then count bytes on the wire.
        kill_group(player)
        time.sleep(3)
        pcap = work / "idle.pcap"
        # The agent's media ports: every candidate port in its answer.
        ports = sorted({c["port"] for c in sdp_candidates(viewer.v.answer_sdp)})
        port_filter = " or ".join(f"src port {p}" for p in ports)
        dump = subprocess.Popen(["tcpdump", "-i", "any", "-U", "-q", "-w", str(pcap), f"udp and ({port_filter})"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        mi0 = metrics_of(url)
        time.sleep(args.idle_seconds)
        mi1 = metrics_of(url)
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
        packets, wire = pcap_bytes(pcap)
        idle_frames = mi1.get("loco_frames_encoded_total", codec=args.codec) - mi0.get("loco_frames_encoded_total", codec=args.codec)
        result["idle"] = {
            "seconds": args.idle_seconds,
            "frames_encoded": int(idle_frames),
            "udp_packets_from_agent": packets,
            "wire_kbps": round(wire * 8 / args.idle_seconds / 1000, 3),
            "what_is_counted": "every UDP packet from the agent's ICE candidate ports, IP headers included "
                               "(RTCP sender reports, ICE keepalives, SCTP heartbeats, any video)",
        }
        rss, hwm = proc_rss_kib(agent.pid)
        result["idle"]["agent_rss_mib"] = round(rss / 1024, 1)
        viewer.close()
    except BaseException:
        print(f"agent_figures: failed; logs kept in {work}", file=sys.stderr)
        raise
    else:
        shutil.rmtree(work, ignore_errors=True)
    finally:
        lt.stop()
        for p in reversed(procs):
            kill_group(p)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    mo, bx, idle = result["motion"], result["bare_x264"], result["idle"]
    rows = [
        ("machine", result["machine"] + " / " + result["cpu"], ""),
        ("agent reads Xvnc over", {"unix": "a Unix socket", "tcp": "TCP (loopback)"}[result["vnc"]], ""),
        ("encoded fps (full motion, 1 viewer)", f"{mo['encoded_fps']}", "30"),
        ("agent CPU per frame", f"{mo['agent_cpu_ms_per_frame']} ms", ""),
        (f"  of which the encoder ({args.codec}, its thread's clock)", f"{mo['encoder_in_agent_ms_per_frame']} ms", ""),
        ("  of which BGRA -> I420", f"{mo['convert_in_agent_ms_per_frame']} ms", ""),
        ("  the rest (VNC reads, WebRTC, HTTP, scheduling)", f"{mo['rest_of_agent_ms_per_frame']} ms", ""),
        ("changed 16x16 tiles (converted, coded)", f"{mo['changed_tiles_percent']} % of each frame", ""),
        ("bare x264 CPU per frame (same frames)",
         f"{bx['cpu_ms_per_frame']} ms ({bx['frames']} frames; repeated ones dropped: {bx['repeats_dropped']})", ""),
        ("agent / bare x264", f"{result.get('agent_over_x264')}x", "<= 1.2x"),
        ("agent / its own encoder (same run)", f"{result.get('agent_over_own_encoder')}x", ""),
        ("VNC update -> send p50", f"{mo['update_to_send_ms_p50']} ms", "<= 8 ms"),
        ("VNC update -> send p99", f"{mo['update_to_send_ms_p99']} ms", "<= 25 ms"),
        ("agent RSS (peak)", f"{mo['agent_rss_mib']} MiB ({mo['agent_peak_rss_mib']} MiB)", "<= 40 MiB"),
        ("idle desktop, all agent UDP", f"{idle['wire_kbps']} kbit/s", "<= 2 kbit/s"),
        ("motion bitrate (encoded)", f"{mo['bitrate_kbps']} kbit/s", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:<28} {goal}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
