#!/usr/bin/env python3
"""One aiortc WHEP viewer in its own process, driven over stdin/stdout (JSON lines), for the
benchmark (live.Viewers starts one per desktop).

    python3 benchmark/viewer_proc.py --url http://127.0.0.1:PORT [--pattern] [--codec h264]

Its own process, so that nine viewers are not nine streams on one event-loop thread and one
GIL, and at a higher priority (live.RECEIVER_NICE) when allowed: the viewers stand for other
machines. It connects, prints {"ok": true} (or {"error": ...}), then answers one line per
command:

    {"cmd": "drain"}          frames since the last drain: {"times": [monotonic...], "readings":
                              [[time.time(), ts_ms, counter, clicks]...], "unreadable": n (in all),
                              "frames": n (in all), "bytes": n, "packets": n (UDP received in all),
                              "state": {...}}
    {"cmd": "click", "x": X, "y": Y}   a left click on the input channel: {"t0": time.time()}
    {"cmd": "send", "msg": {...}}   one message on the input channel (e.g. attention): {"sent": true}
    {"cmd": "capture", "seconds": S, "rect": [x, y, w, h], "path": P}
                              the luma of the frame shown now and of every frame decoded in the
                              next S seconds, cropped to rect, into the .npz file P (f0, f1, ...):
                              {"frames": n}
    {"cmd": "close"}          DELETE the session, close, exit: {"closed": true}
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import numpy as np

import live


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--codec", default="h264")
    ap.add_argument("--pattern", action="store_true")
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()
    try:
        os.setpriority(os.PRIO_PROCESS, 0, live.RECEIVER_NICE)  # before any thread: they all inherit it
    except PermissionError:
        pass
    live._patch_aioice()
    return asyncio.run(serve(a))


def out(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve(a) -> int:
    cls = live.make_viewer_class()
    v = cls(a.url, a.codec, a.pattern)
    try:
        await v._start(True, a.timeout)
    except Exception as e:  # noqa: BLE001
        await v.pc.close()
        out({"error": repr(e)})
        return 1
    out({"ok": True, "nice": os.getpriority(os.PRIO_PROCESS, 0)})
    loop = asyncio.get_running_loop()
    sent_times = sent_readings = 0
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        c = cmd.get("cmd")
        try:
            if c == "drain":
                times, readings = v.times[sent_times:], v.readings[sent_readings:]
                sent_times += len(times)
                sent_readings += len(readings)
                b, p = v.udp_received()
                out({"times": times, "readings": [[t, r.ts_ms, r.counter, r.clicks] for t, r in readings],
                     "unreadable": v.unreadable, "frames": v.frame_count, "bytes": b, "packets": p,
                     "state": {"connection": v.pc.connectionState, "dc": v.dc.readyState if v.dc else "none",
                               "track_ended": v.track_ended, "track_error": v.track_error,
                               "size": list(v.size)}})
            elif c == "click":
                t0 = time.time()
                await v.send({"type": "pointer", "x": cmd["x"], "y": cmd["y"], "buttons": 1})
                await v.send({"type": "pointer", "x": cmd["x"], "y": cmd["y"], "buttons": 0})
                out({"t0": t0})
            elif c == "send":
                await v.send(cmd["msg"])
                out({"sent": True})
            elif c == "capture":
                v.start_capture(float(cmd["seconds"]), cmd["rect"])
                await asyncio.sleep(float(cmd["seconds"]))
                v.capture_until = 0.0
                frames, v.captured = v.captured, []
                np.savez(cmd["path"], **{f"f{i}": f for i, f in enumerate(frames)})
                out({"frames": len(frames)})
            elif c == "close":
                try:
                    await asyncio.wait_for(v.close(), 15)
                finally:
                    out({"closed": True})
                break
            else:
                out({"error": f"unknown command {c!r}"})
        except Exception as e:  # noqa: BLE001
            out({"error": repr(e)})
    if not v.closed:
        await v.pc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
