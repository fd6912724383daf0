"""Live instances for the benchmark: VNC servers (TigerVNC's Xvnc with host-side X clients, or
the IceWM stand-in VM under QEMU), one loco-agent each, and aiortc viewers that decode every
frame and read the latency pattern (latency_pattern.py) from it.

Nothing is mocked: the agent is the built release binary, the viewers are aiortc peers on
loopback (the e2e viewer, tools/loco_testkit/whep_aiortc.py), the VMs are QEMU with the stand-in
image. Every process runs in its own process group and is killed with it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# On PYTHONPATH (./loco bench and ./loco test set it): tools/ (the harness), packer/, packer/testpattern/.
import numpy as np  # noqa: E402

import latency_pattern  # noqa: E402
from loco_testkit.standin import StandinVM, image_dir  # noqa: E402
from loco_testkit.agent import Agent  # noqa: E402
from loco_testkit.httpio import http_request, parse_metrics  # noqa: E402
from loco_testkit.procs import kill_group, spawn  # noqa: E402
from loco_testkit.sdp import sdp_candidates  # noqa: E402
from loco_testkit.waits import wait_until  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- /proc ---------------------------------------------------------------------------------

def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def host_cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    total = sum(f[:8])
    return total - idle, total


def metrics_of(url: str):
    return parse_metrics(http_request("GET", url + "/metrics", timeout=10).text)


# ---- aiortc viewers that measure ----------------------------------------------------------

_udp_lock = threading.Lock()
_udp_bytes: dict[int, list[int]] = {}  # local port -> [bytes, packets]
_patched = False


def _patch_aioice() -> None:
    """Counts every UDP datagram the aiortc viewers receive, per local port (RTP, RTCP, DTLS,
    SCTP, STUN: all of it)."""
    global _patched
    if _patched:
        return
    import aioice.ice
    orig = aioice.ice.StunProtocol.datagram_received

    def counting(self, data, addr):
        port = getattr(self, "_loco_port", None)
        if port is None:
            try:
                port = self.transport.get_extra_info("sockname")[1]
            except Exception:  # noqa: BLE001
                port = 0
            self._loco_port = port
        with _udp_lock:
            c = _udp_bytes.setdefault(port, [0, 0])
            c[0] += len(data)
            c[1] += 1
        return orig(self, data, addr)

    aioice.ice.StunProtocol.datagram_received = counting

    orig_made = aioice.ice.StunProtocol.connection_made

    def made(self, transport):
        # A receive buffer that holds a few keyframe bursts: with the kernel's default (208 KiB,
        # about 90 loopback datagrams) nine streams' bursts overflow it while the one event
        # loop thread of the viewers is busy with another stream.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, VIEWER_RCVBUF)
            except OSError:
                pass
        return orig_made(self, transport)

    aioice.ice.StunProtocol.connection_made = made
    _patched = True


UDP_IP_HEADER = 28  # IPv4 + UDP header bytes per datagram, added for "wire" figures
VIEWER_RCVBUF = 4 << 20  # capped by net.core.rmem_max (4 MiB on Debian 12)


def udp_rcvbuf_errors() -> int:
    """Datagrams the kernel dropped, host-wide, because a UDP socket's receive buffer was full."""
    try:
        lines = [l.split() for l in Path("/proc/net/snmp").read_text().splitlines() if l.startswith("Udp:")]
        return int(lines[1][lines[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return 0


def make_viewer_class():
    from loco_testkit import whep_aiortc
    from aiortc.mediastreams import MediaStreamError

    class BenchViewer(whep_aiortc.WhepViewer):
        """A WHEP viewer that timestamps every decoded frame and reads the latency pattern."""

        def __init__(self, url: str, codec: str | None, read_pattern: bool):
            super().__init__(url, codec, None)
            self.read_pattern = read_pattern
            self.times: list[float] = []          # monotonic arrival time of each decoded frame
            self.readings: list[tuple[float, latency_pattern.Reading]] = []  # (time.time(), reading)
            self.unreadable = 0
            self.last_av = None
            self.size = (0, 0)
            # capture(): luma of the pictures decoded until capture_until, cropped to capture_rect
            self.capture_until = 0.0
            self.capture_rect = (0, 0, 0, 0)
            self.captured: list = []

        async def _consume(self, track) -> None:
            try:
                while True:
                    av_frame = await track.recv()
                    now_real, now = time.time(), time.monotonic()
                    self.frame_count += 1
                    self.times.append(now)
                    self.size = (av_frame.width, av_frame.height)
                    self.last_av = av_frame
                    if now <= self.capture_until:
                        self.captured.append(self.luma(av_frame))
                    if self.read_pattern:
                        r = latency_pattern.read_yuv_frame(av_frame)
                        if r is None:
                            self.unreadable += 1
                        else:
                            self.readings.append((now_real, r))
                    with self._cond:
                        self._cond.notify_all()
            except MediaStreamError:
                self.track_ended = True
            except Exception as e:  # noqa: BLE001
                self.track_error = repr(e)
            finally:
                with self._cond:
                    self._cond.notify_all()

        def luma(self, av_frame):
            """The frame's Y plane cropped to capture_rect (a copy)."""
            x, y, w, h = self.capture_rect
            plane = av_frame.to_ndarray(format="yuv420p")[:av_frame.height]
            return plane[y:y + h, x:x + w].copy()

        def start_capture(self, seconds: float, rect) -> None:
            self.capture_rect = tuple(rect)
            self.captured = [self.luma(self.last_av)] if self.last_av is not None else []
            self.capture_until = time.monotonic() + seconds

        def local_ports(self) -> list[int]:
            return sorted({c["port"] for c in sdp_candidates(self.offer_sdp)})

        def udp_received(self) -> tuple[int, int]:
            """(bytes, datagrams) received on this viewer's ICE sockets so far."""
            with _udp_lock:
                b = p = 0
                for port in self.local_ports():
                    c = _udp_bytes.get(port)
                    if c:
                        b += c[0]
                        p += c[1]
            return b, p

    return BenchViewer


# The receivers stand for other machines: on this one they run at a higher priority (when
# allowed) so that a starved viewer is not what limits the desktops under test.
RECEIVER_NICE = -10


def renice_tasks(pid: int, nice: int = RECEIVER_NICE) -> bool:
    """Sets the nice value of every thread of a process (Linux: nice is per thread)."""
    ok = True
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return False
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except (PermissionError, ProcessLookupError):
            ok = False
    return ok


class ViewerProcess:
    """One aiortc viewer in its own process (viewer_proc.py); the frames it decoded are pulled
    over a pipe by sync() (every property below syncs first)."""

    def __init__(self, url: str, read_pattern: bool, log_path: Path, codec: str = "h264", timeout: float = 30.0):
        self.base_url = url
        argv = [sys.executable, str(HERE / "viewer_proc.py"), "--url", url, "--codec", codec,
                "--timeout", str(timeout)]
        if read_pattern:
            argv.append("--pattern")
        self._log = open(log_path, "ab")
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                  text=True, bufsize=1, start_new_session=True)
        self._lock = threading.Lock()
        self._times: list[float] = []
        self._readings: list = []
        self._unreadable = self._frames = 0
        self._udp = (0, 0)
        self.state: dict = {}
        hello = self._line(timeout + 15)
        if "error" in hello:
            self.stop()
            raise RuntimeError(f"viewer of {url}: {hello['error']}")
        self.nice = hello.get("nice")

    def _line(self, timeout: float = 30.0) -> dict:
        import select
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            raise TimeoutError(f"viewer of {self.base_url} did not answer within {timeout:.0f}s")
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"viewer of {self.base_url} exited (rc {self.p.poll()})")
        return json.loads(line)

    def _call(self, timeout: float = 30.0, **cmd) -> dict:
        with self._lock:
            self.p.stdin.write(json.dumps(cmd) + "\n")
            self.p.stdin.flush()
            d = self._line(timeout)
        if "error" in d:
            raise RuntimeError(f"viewer of {self.base_url}: {d['error']}")
        return d

    def sync(self) -> None:
        d = self._call(cmd="drain")
        self._times += d["times"]
        self._readings += [(t, latency_pattern.Reading(ts, c, k)) for t, ts, c, k in d["readings"]]
        self._unreadable, self._frames = d["unreadable"], d["frames"]
        self._udp = (d["bytes"], d["packets"])
        self.state = d["state"]

    def snap(self) -> tuple[int, int, int, tuple[int, int]]:
        """One sync: (frames, readings, unreadable, (udp bytes, datagrams)) so far."""
        self.sync()
        return len(self._times), len(self._readings), self._unreadable, self._udp

    @property
    def times(self) -> list[float]:
        """Monotonic arrival time of every decoded frame."""
        self.sync()
        return self._times

    @property
    def readings(self) -> list:
        """[(time.time() of the frame, Reading)] for every frame whose pattern read."""
        self.sync()
        return self._readings

    @property
    def unreadable(self) -> int:
        self.sync()
        return self._unreadable

    @property
    def frame_count(self) -> int:
        self.sync()
        return self._frames

    def udp_received(self) -> tuple[int, int]:
        """(bytes, datagrams) of UDP payload this viewer received so far."""
        self.sync()
        return self._udp

    def lost(self) -> bool:
        """The peer connection, the input channel or the track did not survive."""
        self.sync()
        st = self.state
        return (st.get("connection") != "connected" or st.get("dc") != "open" or bool(st.get("track_ended"))
                or bool(st.get("track_error")))

    def click(self, x: int, y: int) -> float:
        return self._call(cmd="click", x=x, y=y)["t0"]

    def send(self, msg: dict) -> None:
        """One message on the input channel, e.g. {"type": "attention", "state": "visible"}."""
        self._call(cmd="send", msg=msg)

    def capture(self, seconds: float, rect: tuple[int, int, int, int], path: Path) -> list:
        """The luma (cropped to rect) of the picture shown now and of every frame decoded in the
        next `seconds` (text_quality.py), through a file at path."""
        self._call(timeout=seconds + 30, cmd="capture", seconds=seconds, rect=list(rect), path=str(path))
        with np.load(path) as z:
            return [z[k] for k in sorted(z.files, key=lambda k: int(k[1:]))]

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.p.pid)

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                self._call(timeout=20, cmd="close")
            except Exception:  # noqa: BLE001
                pass
        kill_group(self.p, grace=3)
        self._log.close()


class Viewers:
    """aiortc viewers, one process each (ViewerProcess)."""

    def __init__(self, work: Path):
        self.work = work
        self.viewers: list[ViewerProcess] = []

    def connect(self, url: str, read_pattern: bool = False, timeout: float = 30.0) -> ViewerProcess:
        v = ViewerProcess(url, read_pattern, self.work / f"viewer-{len(self.viewers) + 1}.log", timeout=timeout)
        self.viewers.append(v)
        return v

    def wait_frames(self, v: ViewerProcess, n: int, timeout: float) -> None:
        """Waits until the viewer has decoded at least n frames in all."""
        deadline = time.monotonic() + timeout
        while v.frame_count < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"viewer of {v.base_url}: {v.frame_count} frames, wanted {n} ({v.state})")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        return sum(v.cpu_seconds() for v in self.viewers)

    def close(self) -> None:
        for v in self.viewers:
            v.stop()
        self.viewers.clear()


# ---- frame statistics ----------------------------------------------------------------------

def freezes(times: list[float]) -> tuple[int, float]:
    """WebRTC's freeze definition (W3C webrtc-stats freezeCount): an inter-frame gap longer than
    max(3 x the mean frame interval, mean + 150 ms), the mean taken over the 30 frames before.
    Returns (count, total frozen seconds)."""
    n, frozen = 0, 0.0
    gaps = np.diff(np.asarray(times, np.float64)) if len(times) > 1 else np.zeros(0)
    for i, g in enumerate(gaps):
        prev = gaps[max(0, i - 30):i]
        if len(prev) < 5:
            continue
        mean = float(prev.mean())
        if g > max(3 * mean, mean + 0.150):
            n += 1
            frozen += g
    return n, frozen


def glass_to_glass(readings: list[tuple[float, "latency_pattern.Reading"]]) -> list[float]:
    """Latency (ms) of each distinct pattern drawing at the first frame that shows it."""
    seen: set[int] = set()
    out = []
    for t, r in readings:
        if r.ts_ms in seen:
            continue
        seen.add(r.ts_ms)
        age = r.age_ms(t)
        if -5 <= age <= 10_000:  # a misread that passed the CRC would land far outside
            out.append(age)
    return out


def pct(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


# ---- instances -----------------------------------------------------------------------------

@dataclass
class Instance:
    """One desktop: a VNC server, its workload, one loco-agent."""
    name: str
    work: Path
    vnc_arg: str = ""             # what the agent's --vnc gets
    vnc_port: int | None = None   # TCP port of the VNC server (Xvnc), for the peers
    agent: Agent | None = None
    server: subprocess.Popen | None = None  # Xvnc or QEMU
    clients: list = field(default_factory=list)  # workload processes on the host
    display: int | None = None

    @property
    def url(self) -> str:
        return self.agent.url

    def start_agent(self, codec: str = "h264", extra: list[str] | None = None) -> None:
        self.agent = Agent.start(self.vnc_arg, self.work / "agent.log", codec=codec, extra_args=extra or (),
                                 rust_log="warn", name=f"{self.name} agent")

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.stop(grace=3)
            self.agent = None

    def wait_agent(self, timeout: float, size=(1024, 768)) -> None:
        self.agent.wait_screen(size, timeout)

    def pids(self) -> dict[str, list[int]]:
        return {"agent": [self.agent.pid] if self.agent else [],
                "server": [self.server.pid] if self.server else [],
                "clients": [c.pid for c in self.clients]}

    def stop(self) -> None:
        self.stop_agent()
        for p in [*reversed(self.clients), self.server]:
            if p is not None:
                kill_group(p, grace=3)


class XvncInstance(Instance):
    """TigerVNC Xvnc 1024x768x24 (a real VNC server and X server), X clients on the host."""

    def start(self) -> "XvncInstance":
        from loco_testkit.xvnc import Xvnc
        self.x = Xvnc(self.work).start()
        self.server, self.display, self.vnc_port = self.x.proc, self.x.display, self.x.port
        self.vnc_arg = f"127.0.0.1:{self.x.port}"
        self.x.run("xsetroot", "-mod", "16", "16", "-fg", "#46607a", "-bg", "#2f4356")
        return self

    @property
    def env(self) -> dict:
        return self.x.env

    def start_pattern(self, motion: bool, hz: float = 60.0) -> subprocess.Popen:
        argv = [sys.executable, str(HERE / "latency_pattern.py"), "--display", f":{self.display}", "--hz", str(hz)]
        if motion:
            argv.append("--motion")
        log = self.work / f"pattern-{len(self.clients)}.log"
        p = spawn(argv, log_path=log, name=f"{self.name} pattern")
        self.clients.append(p)
        wait_until(lambda: "ready" in log.read_text() or p.poll() is not None, 30, 0.05, "pattern client ready")
        if p.poll() is not None:
            raise RuntimeError(f"pattern client exited: {log.read_text()[-2000:]}")
        return p

    def stop(self) -> None:
        super().stop()
        try:
            self.x.kill()
        except Exception:  # noqa: BLE001
            pass


def standin_dir() -> Path:
    return image_dir()


class StandinInstance(Instance):
    """The IceWM stand-in desktop (packer/standin) in QEMU on a throw-away overlay
    (loco_testkit.standin); its VNC server on a Unix socket, its serial console on another (the
    workload is started there)."""

    def start(self, accel: str) -> "StandinInstance":
        try:
            self.vm = StandinVM(f"loco-bench-{self.name}", work=self.work, accel=accel).start()
        except FileNotFoundError as e:
            raise RuntimeError(str(e)) from None
        self.server = self.vm.proc
        self.console = self.vm.console
        self.vnc_arg = self.vm.vnc
        return self

    def wait_desktop(self, timeout: float) -> None:
        self.vm.wait_ready(timeout)

    def stop(self) -> None:
        super().stop()
        self.vm.stop()
