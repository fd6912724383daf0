#!/usr/bin/env python3
"""Soak: N aiortc viewers for a long time (default 9 for 30 minutes) against N loco-agents,
each streaming its own real Xvnc desktop with motion (an xterm printing a line every
--line-interval seconds, so the screen scrolls all the time). Samples every agent's resident
memory (VmRSS), open file descriptors and threads, and every viewer's decoded frames, and
reports per agent the RSS growth (% between the sample at the end of the warm-up and the
last one, and the fitted slope in MiB/hour), the fd growth, and whether every viewer was
still live at the end (connected, decoding in the last 10 s, its session still counted by
the agent).

Each viewer runs in a process of its own (`soak.py --viewer URL`, reporting a JSON status
line every second), as each browser tab would: nine aiortc peers sharing one Python process
(one GIL) on a busy 2-core machine fall behind their ICE consent checks and close.

Not part of every test run (it takes --minutes). Run it directly:

    $LOCO_CACHE/venv/bin/python agent/tests/e2e/soak.py --minutes 30 --out results/soak.json

or through pytest, where it is deselected unless asked for:

    $LOCO_CACHE/venv/bin/python -m pytest agent/tests/e2e --soak --soak-minutes 30 -k soak -s

Exit status 0 when every viewer was live at the end and every agent stayed under
--max-rss-growth-pct and --max-fd-growth, 1 otherwise. --churn-every-s S also connects and
deletes one extra short-lived viewer every S seconds (round robin over the agents), to catch
per-session leaks.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

from loco_testkit.httpio import http_request  # noqa: E402
from loco_testkit.procs import kill_group, spawn, tail  # noqa: E402
from loco_testkit.waits import free_port, wait_until  # noqa: E402
from loco_testkit.paths import agent_binary  # noqa: E402
from loco_testkit.xvnc import Xvnc  # noqa: E402


def proc_sample(pid: int) -> dict:
    """VmRSS (KiB), open fds and threads of a process."""
    out = {"rss_kib": None, "fds": None, "threads": None}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kib"] = int(line.split()[1])
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        pass
    return out


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    if den == 0:
        return None
    return 3600 * sum((t - mx) * (v - my) for t, v in points) / den


# ---------------------------------------------------------------- viewer processes

async def _viewer_main(url: str, codec: str, status_s: float) -> None:
    """--viewer mode: one WHEP viewer; a JSON status line every status_s; SIGTERM or stdin EOF
    ends it with a DELETE."""
    import asyncio
    from loco_testkit.whep_aiortc import connect
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    v = await connect(url, codec=codec, timeout=30)

    def status(final: bool = False) -> None:
        now = time.monotonic()
        print(json.dumps({"frames": v.frame_count, "state": v.pc.connectionState,
                          "states": v.connection_states[-5:],
                          "last_frame_age_s": round(now - v.arrivals[-1], 2) if v.arrivals else None,
                          "track_ended": v.track_ended, "track_error": v.track_error,
                          "final": final}), flush=True)
    while not stop.is_set():
        status()
        try:
            await asyncio.wait_for(stop.wait(), status_s)
        except asyncio.TimeoutError:
            pass
    status(final=True)
    await v.close()


class ViewerProc:
    """A --viewer child process and its latest status."""

    def __init__(self, url: str, codec: str, name: str, log_path: Path):
        import subprocess
        import threading
        self.name = name
        self.log_path = log_path
        self.proc = spawn([sys.executable, str(Path(__file__).resolve()), "--viewer", url, "--codec", codec],
                          stdout=subprocess.PIPE, stderr=open(log_path, "ab"), text=True, name=name)
        self.status: dict = {}
        self.updated = 0.0
        self._t = threading.Thread(target=self._read, daemon=True, name=f"{name}-status")
        self._t.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.status = json.loads(line)
                self.updated = time.monotonic()
            except ValueError:
                pass

    @property
    def frame_count(self) -> int:
        return int(self.status.get("frames", 0))

    def wait_frames(self, n: int, timeout: float) -> None:
        def enough():
            if self.proc.poll() is not None:
                raise RuntimeError(f"viewer {self.name} exited rc={self.proc.returncode}:\n{tail(self.log_path)}")
            return self.frame_count >= n
        wait_until(enough, timeout, 0.2, f"{n} frames in viewer {self.name}")

    def live(self) -> bool:
        s = self.status
        return (self.proc.poll() is None and time.monotonic() - self.updated < 5.0
                and s.get("state") == "connected" and s.get("last_frame_age_s") is not None
                and s["last_frame_age_s"] < 10.0)

    def close(self) -> None:
        import subprocess
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.proc, grace=2)


@dataclass
class Desk:
    index: int
    xvnc: Xvnc
    agent_port: int = 0
    agent: object = None          # subprocess.Popen
    agent_log: Path | None = None
    scroller: object = None       # subprocess.Popen
    viewer: ViewerProc | None = None
    samples: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.agent_port}"


def run(minutes: float = 30.0, viewers: int = 9, codec: str = "h264", line_interval: float = 0.25,
        sample_s: float = 10.0, warmup_s: float | None = None, churn_every_s: float = 0.0,
        max_rss_growth_pct: float = 25.0, max_fd_growth: int = 8, workdir: Path | None = None,
        log=print) -> dict:
    """Runs the soak and returns its report (see `summary`)."""
    duration = minutes * 60.0
    if warmup_s is None:
        warmup_s = min(120.0, max(20.0, duration * 0.1))
    binary = agent_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise SystemExit(f"loco-agent not found at {binary}: cargo build --release -p loco-agent "
                         f"(or set LOCO_AGENT_BIN)")
    work = Path(workdir or tempfile.mkdtemp(prefix="loco-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    desks: list[Desk] = []
    report: dict = {}
    try:
        log(f"[soak] {viewers} agents + Xvnc + aiortc viewers ({codec}), {minutes:g} min, "
            f"samples every {sample_s:g} s, warm-up {warmup_s:g} s, work dir {work}")
        for i in range(viewers):
            x = Xvnc(work)
            x.start()
            x.solid(["#203050", "#305020", "#502030"][i % 3])
            d = Desk(i, x)
            d.scroller = x.spawn(
                "xterm", "-geometry", "100x30+40+40", "-e", "sh", "-c",
                f"i=0; while :; do i=$((i+1)); echo \"desk {i} line $i $(date +%T.%N)\"; sleep {line_interval}; done",
                log_path=work / f"xterm-{i}.log")
            d.agent_port = free_port()
            d.agent_log = work / f"agent-{i}.log"
            argv = [str(binary), "--vnc", f"127.0.0.1:{x.port}", "--listen", f"127.0.0.1:{d.agent_port}",
                    "--codec", codec]
            d.agent_log.write_text("$ " + " ".join(argv) + "\n")
            d.agent = spawn(argv, log_path=d.agent_log, name=f"loco-agent-{i}")
            desks.append(d)
        for d in desks:
            def healthy(d=d):
                if d.agent.poll() is not None:
                    raise RuntimeError(f"agent {d.index} exited rc={d.agent.returncode}:\n{tail(d.agent_log)}")
                return http_request("GET", d.url + "/healthz", timeout=2).status == 200
            wait_until(healthy, 60, 0.2, f"agent {d.index} /healthz 200")
        for d in desks:
            d.viewer = ViewerProc(d.url, codec, f"soak-viewer-{d.index}", work / f"viewer-{d.index}.log")
        for d in desks:
            d.viewer.wait_frames(3, timeout=90)
        log(f"[soak] all {viewers} viewers decoding; agent pids {[d.agent.pid for d in desks]}")

        t_start = time.monotonic()
        next_sample = t_start
        next_churn = t_start + churn_every_s if churn_every_s > 0 else None
        churned, churn_failures = 0, []
        while True:
            now = time.monotonic()
            if now >= next_sample:
                elapsed = now - t_start
                line = []
                for d in desks:
                    s = proc_sample(d.agent.pid)
                    s["t"] = round(elapsed, 1)
                    s["frames"] = d.viewer.frame_count
                    d.samples.append(s)
                    line.append(s)
                rss = [s["rss_kib"] or 0 for s in line]
                fds = [s["fds"] or 0 for s in line]
                fr = sum(s["frames"] for s in line)
                log(f"[soak] t={elapsed:7.0f}s  agent RSS MiB min/max/sum {min(rss) / 1024:.1f}/"
                    f"{max(rss) / 1024:.1f}/{sum(rss) / 1024:.1f}  fds min/max {min(fds)}/{max(fds)}  "
                    f"frames decoded {fr}")
                for d in desks:
                    if d.agent.poll() is not None:
                        raise RuntimeError(f"agent {d.index} died rc={d.agent.returncode}:\n{tail(d.agent_log)}")
                if elapsed >= duration:
                    break
                next_sample += sample_s
            if next_churn is not None and now >= next_churn:
                d = desks[churned % len(desks)]
                extra = ViewerProc(d.url, codec, f"churn-{churned}", work / f"churn-{churned}.log")
                try:
                    extra.wait_frames(2, timeout=30)
                except Exception as e:  # noqa: BLE001 - reported, not fatal
                    churn_failures.append(f"churn viewer {churned} on agent {d.index}: {e!r}")
                finally:
                    extra.close()
                churned += 1
                next_churn += churn_every_s
            time.sleep(max(0.0, min(next_sample, next_churn or next_sample) - time.monotonic()))

        report = summary(desks, warmup_s, max_rss_growth_pct, max_fd_growth)
        report.update({"minutes": minutes, "viewers": viewers, "codec": codec, "sample_s": sample_s,
                       "line_interval_s": line_interval, "churned_viewers": churned,
                       "churn_failures": churn_failures, "work_dir": str(work)})
        if churn_failures:
            report["ok"] = False
        return report
    finally:
        for d in desks:
            if d.viewer is not None:
                try:
                    d.viewer.close()
                except Exception:  # noqa: BLE001
                    pass
        for d in desks:
            if d.agent is not None:
                kill_group(d.agent, signal.SIGTERM, grace=10)
            if d.scroller is not None:
                kill_group(d.scroller, grace=2)
            d.xvnc.kill()


def summary(desks: list[Desk], warmup_s: float, max_rss_growth_pct: float, max_fd_growth: int) -> dict:
    agents = []
    ok = True
    for d in desks:
        base = next((s for s in d.samples if s["t"] >= warmup_s and s["rss_kib"]), d.samples[0])
        first, last = d.samples[0], d.samples[-1]
        after = [(s["t"], s["rss_kib"] / 1024) for s in d.samples if s["t"] >= warmup_s and s["rss_kib"]]
        growth = 100.0 * (last["rss_kib"] - base["rss_kib"]) / base["rss_kib"]
        fd_growth = last["fds"] - base["fds"]
        v = d.viewer
        try:
            r = http_request("GET", d.url + "/healthz", timeout=5)
            hz_viewers = r.json().get("viewers")
        except Exception:  # noqa: BLE001
            hz_viewers = None
        live = v.live() and hz_viewers == 1
        a = {"agent": d.index, "pid": d.agent.pid,
             "rss_mib_first": round(first["rss_kib"] / 1024, 1),
             "rss_mib_after_warmup": round(base["rss_kib"] / 1024, 1),
             "rss_mib_last": round(last["rss_kib"] / 1024, 1),
             "rss_mib_max": round(max(s["rss_kib"] for s in d.samples if s["rss_kib"]) / 1024, 1),
             "rss_growth_pct": round(growth, 1),
             "rss_slope_mib_per_hour": (round(sl, 2) if (sl := slope_per_hour(after)) is not None else None),
             "fds_first": first["fds"], "fds_after_warmup": base["fds"], "fds_last": last["fds"],
             "fd_growth": fd_growth, "threads_last": last["threads"],
             "frames_decoded": v.frame_count, "viewer_state": v.status.get("state"),
             "viewer_states": v.status.get("states"), "viewer_exit": v.proc.poll(),
             "last_frame_age_s": v.status.get("last_frame_age_s"), "healthz_viewers": hz_viewers,
             "viewer_live": live}
        a["ok"] = live and growth <= max_rss_growth_pct and fd_growth <= max_fd_growth
        ok = ok and a["ok"]
        agents.append(a)
    total = [sum(s["rss_kib"] or 0 for s in samples) for samples in zip(*[d.samples for d in desks])]
    t = [s["t"] for s in desks[0].samples]
    base_i = next((i for i, x in enumerate(t) if x >= warmup_s), 0)
    return {"ok": ok, "agents": agents,
            "total_rss_mib_after_warmup": round(total[base_i] / 1024, 1),
            "total_rss_mib_last": round(total[-1] / 1024, 1),
            "total_rss_growth_pct": round(100.0 * (total[-1] - total[base_i]) / total[base_i], 1),
            "max_rss_growth_pct": max(a["rss_growth_pct"] for a in agents),
            "max_fd_growth": max(a["fd_growth"] for a in agents),
            "viewers_live": sum(a["viewer_live"] for a in agents),
            "samples": {f"agent{d.index}": d.samples for d in desks}}


def print_report(r: dict, log=print) -> None:
    log(f"[soak] {r['viewers']} viewers, {r['minutes']:g} min: {r['viewers_live']}/{r['viewers']} viewers live "
        f"at the end; total agent RSS {r['total_rss_mib_after_warmup']} -> {r['total_rss_mib_last']} MiB "
        f"({r['total_rss_growth_pct']:+.1f} %) after warm-up; worst agent {r['max_rss_growth_pct']:+.1f} % RSS, "
        f"{r['max_fd_growth']:+d} fds; churned viewers {r['churned_viewers']}")
    log("[soak] agent  RSS MiB first/warm/last/max  growth%  MiB/h   fds first/warm/last  threads  frames  live")
    for a in r["agents"]:
        log(f"[soak] {a['agent']:5d}  {a['rss_mib_first']:6.1f}/{a['rss_mib_after_warmup']:6.1f}/"
            f"{a['rss_mib_last']:6.1f}/{a['rss_mib_max']:6.1f}  {a['rss_growth_pct']:+6.1f}  "
            f"{a['rss_slope_mib_per_hour'] if a['rss_slope_mib_per_hour'] is not None else '-':>6}  "
            f"{a['fds_first']:4d}/{a['fds_after_warmup']:4d}/{a['fds_last']:4d}  {a['threads_last']:7d}  "
            f"{a['frames_decoded']:6d}  {'yes' if a['viewer_live'] else 'NO'}")
    for f in r.get("churn_failures", []):
        log(f"[soak] {f}")
    log(f"[soak] {'OK' if r['ok'] else 'FAILED'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--viewers", type=int, default=9, help="agents, desktops and viewers (one each)")
    ap.add_argument("--codec", default="h264", choices=["h264", "vp8"])
    ap.add_argument("--line-interval", type=float, default=0.25, help="seconds between xterm lines (motion)")
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--warmup-s", type=float, default=None, help="default: 10 %% of the run, 20-120 s")
    ap.add_argument("--churn-every-s", type=float, default=0.0)
    ap.add_argument("--max-rss-growth-pct", type=float, default=25.0)
    ap.add_argument("--max-fd-growth", type=int, default=8)
    ap.add_argument("--out", type=Path, help="write the report (with every sample) here as JSON")
    ap.add_argument("--viewer", metavar="URL", help=argparse.SUPPRESS)   # a viewer process (internal)
    args = ap.parse_args()
    if args.viewer:
        import asyncio
        asyncio.run(_viewer_main(args.viewer, args.codec, 1.0))
        return 0
    r = run(args.minutes, args.viewers, args.codec, args.line_interval, args.sample_s, args.warmup_s,
            args.churn_every_s, args.max_rss_growth_pct, args.max_fd_growth)
    print_report(r)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(r, indent=1))
        print(f"[soak] report: {args.out}")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
