#!/usr/bin/env python3
"""loco's benchmark: the codec matrix on recorded desktop workloads, loco against
its peers (noVNC, GStreamer, bare x264) on a real VNC server, and 1/3/9 desktops at once.

    python3 benchmark/bench.py [--quick] [--parts codec,compare,scale] [--out results] ...

Parts (all by default; --parts picks some):

codec    The codec matrix at 1024x768 (H.264/VP8 as the agent configures them, MJPEG for
         comparison) on workloads recorded from TigerVNC's Xvnc (benchmark/recorder.py), with
         the agent's own encoder code (loco-codec-bench): CPU per frame, bitrate, first
         keyframe, PSNR/SSIM (benchmark/quality.py). Simulated time.
compare  One Xvnc desktop, workloads idle, typing, scroll, pattern (the latency pattern,
         benchmark/latency_pattern.py, alone) and motion (the pattern over a full-screen pan at
         30 fps); on each, in turn: loco-agent watched by aiortc and by headless Chromium,
         noVNC + websockify in headless Chromium, and on motion the GStreamer pipeline and the
         x264 CLI: received fps, bytes, freezes, glass-to-glass and input-to-photon latency,
         CPU per frame, agent RSS, and the loco/peer ratios. Wall-clock time.
scale    1, 3 and 9 desktops at once with one agent and one aiortc viewer each, on Xvnc
         (idle, then motion with the latency pattern) and on the IceWM stand-in VM under QEMU
         (idle, then a text flood run inside the guest): received fps, bitrate, freezes,
         latency (Xvnc), host CPU, agent CPU and RSS. See benchmark/live_bench.py.

Writes <out>/results.csv (one row per measurement, with date, machine and version columns)
and PNG plots beside it, shows a progress bar, and prints summary tables with the issue's
targets. It measures; it asserts nothing.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

import quality  # noqa: E402
import recorder  # noqa: E402

CODECS = ["h264", "vp8", "mjpeg"]
PARTS = ["codec", "compare", "scale"]
VERSION_COLUMNS = ["libx264", "libvpx", "libturbojpeg", "tigervnc", "qemu", "chromium", "gstreamer", "novnc",
                   "websockify", "aiortc"]
CSV_COLUMNS = (["date", "host", "host_cores", "cpu_model", "ram_gib", "agent_commit", *VERSION_COLUMNS, "settings",
                "part", "system", "receiver", "backend", "instances", "instance", "codec", "workload", "metric",
                "value", "unit"])

# metric name -> unit, in the order they are written.
CODEC_METRICS = {
    "duration_s": "s",
    "pictures": "frames",
    "frames": "frames",
    "keyframes": "frames",
    "bytes": "bytes",
    "bitrate_kbps": "kbit/s",
    "bitrate_after_first_frame_kbps": "kbit/s",
    "keyframe_bytes": "bytes",
    "cpu_s": "s",
    "cpu_ms_per_frame": "ms",
    "cpu_ms_p50": "ms",
    "cpu_ms_p95": "ms",
    "encode_fps_per_core": "fps",
    "psnr_y_db": "dB",
    "psnr_y_min_db": "dB",
    "psnr_yuv_db": "dB",
    "ssim_y": "",
    "ssim_y_min": "",
}
WORKLOAD_METRICS = {"updates": "updates", "update_mbytes": "MB", "encodes": "frames"}


# ---- machine and versions ----------------------------------------------------------------

def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    except OSError:
        pass
    debian = ""
    try:
        debian = "Debian " + Path("/etc/debian_version").read_text().strip()
    except OSError:
        pass
    return {
        "host": f"{platform.system()} {platform.release()} {platform.machine()} {debian}".strip(),
        "host_cores": os.cpu_count() or 0,
        "cpu_model": cpu,
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def agent_commit() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "agent", "shared"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def library_versions() -> dict:
    """Debian package versions of the codec libraries the bench binary links."""
    out = {"libx264": "unknown", "libvpx": "unknown", "libturbojpeg": "unknown"}
    try:
        text = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", "libx264-*", "libvpx*",
                               "libturbojpeg0"], capture_output=True, text=True).stdout
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2 or parts[0].endswith("-dev"):
            continue
        pkg, ver = parts
        for key in out:
            if pkg.startswith(key):
                out[key] = f"{pkg} {ver}"
    return out


# ---- the bench binary ----------------------------------------------------------------------

def target_dir() -> Path:
    cache = Path(os.environ.get("LOCO_CACHE", Path.home() / ".cache" / "loco"))
    return Path(os.environ.get("CARGO_TARGET_DIR", cache / "target"))


def bench_binary(build: bool) -> Path:
    env_bin = os.environ.get("LOCO_CODEC_BENCH_BIN")
    if env_bin:
        return Path(env_bin)
    path = target_dir() / "release" / "loco-codec-bench"
    if build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "loco-agent", "--features",
                        "codec-bench", "--bin", "loco-codec-bench"], cwd=ROOT, check=True,
                       env=dict(os.environ, CARGO_TARGET_DIR=str(target_dir())))
    if not path.exists():
        raise SystemExit(f"bench: {path} is missing "
                         "(cargo build --release -p loco-agent --features codec-bench --bin loco-codec-bench)")
    return path


# ---- progress ------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        self.tty = sys.stderr.isatty()

    def step(self, what: str) -> None:
        self.show(what)
        self.done += 1

    def show(self, what: str) -> None:
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        line = f"[{bar}] {self.done}/{self.total} {time.monotonic() - self.t0:5.0f}s {what}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        self.show("done")
        if self.tty:
            sys.stderr.write("\n")


# ---- plots ---------------------------------------------------------------------------------

PLOTS = [
    ("bitrate_kbps", "bitrate over the recording (kbit/s, log)", "bitrate.png", True),
    ("cpu_ms_per_frame", "CPU per frame, conversion + encode (ms)", "cpu-per-frame.png", False),
    ("encode_fps_per_core", "encode fps per core", "fps-per-core.png", False),
    ("psnr_y_db", "PSNR-Y (dB)", "psnr.png", False),
    ("ssim_y", "SSIM-Y", "ssim.png", False),
    ("keyframe_bytes", "first keyframe (KiB)", "keyframe.png", False),
]


def plot(results: dict, workloads: list[str], codecs: list[str], out: Path, title: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def bars(ax, metric: str, label: str, log: bool) -> None:
        width = 0.8 / max(len(codecs), 1)
        for i, codec in enumerate(codecs):
            vals = []
            for w in workloads:
                v = results.get((codec, w), {}).get(metric, math.nan)
                if metric == "keyframe_bytes":
                    v = v / 1024
                vals.append(v if v is not None and math.isfinite(v) else 0)
            xs = [j + (i - (len(codecs) - 1) / 2) * width for j in range(len(workloads))]
            ax.bar(xs, vals, width, label=codec)
        ax.set_xticks(range(len(workloads)), workloads)
        ax.set_title(label, fontsize=10)
        if log:
            ax.set_yscale("log")
        if metric == "ssim_y":
            lo = min((results.get((c, w), {}).get("ssim_y", 1) for c in codecs for w in workloads), default=0.9)
            ax.set_ylim(max(0.0, min(0.95, lo - 0.02)), 1.0)
        ax.grid(axis="y", alpha=0.3)

    written = []
    for metric, label, name, log in PLOTS:
        fig, ax = plt.subplots(figsize=(7, 4))
        bars(ax, metric, label, log)
        ax.legend(fontsize=8)
        fig.suptitle(title, fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (metric, label, _, log) in zip(axes.flat, PLOTS):
        bars(ax, metric, label, log)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("loco codec matrix, 1024x768 — " + title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "codec-matrix.png", dpi=90)
    plt.close(fig)
    written.append(out / "codec-matrix.png")
    return written


def plot_live(rows: list[dict], out: Path, title: str) -> list[Path]:
    """compare.png (loco against its peers) and scale.png (1/3/9 desktops)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    comp = [r for r in rows if r["part"] == "compare"]
    if comp:
        val = {(r["system"] + ("/" + r["receiver"] if r["receiver"] else ""), r["workload"], r["metric"]): r["value"]
               for r in comp}
        systems = [s for s in ("loco/aiortc", "loco-cbr/aiortc", "loco/chromium", "novnc/chromium", "gstreamer", "x264")
                   if any(k[0] == s for k in val)]
        workloads = [w for w in ("idle", "typing", "scroll", "pattern", "motion") if any(k[1] == w for k in val)]
        text_systems = ["loco/aiortc", "loco-cbr/aiortc", "novnc/chromium"]
        panels = [("bitrate_kbps", "received kbit/s (log)", True, ["loco/aiortc", "loco-cbr/aiortc", "novnc/chromium"]),
                  ("fps", "received frames/s", False, ["loco/aiortc", "loco/chromium", "novnc/chromium"]),
                  ("g2g_ms_p50", "glass-to-glass p50 (ms)", False, ["loco/aiortc", "loco/chromium", "novnc/chromium"]),
                  ("g2g_ms_p95", "glass-to-glass p95 (ms)", False, ["loco/aiortc", "loco/chromium", "novnc/chromium"]),
                  ("input_to_photon_ms_p50", "input-to-photon p50 (ms)", False,
                   ["loco/aiortc", "loco/chromium", "novnc/chromium"]),
                  ("cpu_ms_per_frame", "CPU per frame, motion (ms)", False, None),
                  ("text_psnr_db", "text region PSNR-Y (dB; no bar: every sample identical)", False, text_systems),
                  ("text_ssim", "text region SSIM", False, text_systems),
                  ("jitter_buffer_ms", "Chromium jitter-buffer delay (ms)", False, ["loco/chromium"])]
        fig, axes = plt.subplots(3, 3, figsize=(15, 12))
        for ax, (metric, label, log, syss) in zip(axes.flat, panels):
            if syss is None:  # CPU per frame: agent vs GStreamer vs x264 on motion
                names = ["loco agent", "GStreamer rfbsrc→x264enc", "x264 CLI"]
                vals = [val.get(("loco/aiortc", "motion", "agent_cpu_ms_per_frame"), math.nan),
                        val.get(("gstreamer", "motion", "cpu_ms_per_frame"), math.nan),
                        val.get(("x264", "motion", "cpu_ms_per_frame"), math.nan)]
                ax.bar(range(3), [0 if math.isnan(v) else v for v in vals], color=["C0", "C3", "C4"])
                ax.set_xticks(range(3), names, fontsize=8)
            else:
                syss = [s for s in syss if s in systems]
                ws = [w for w in workloads if any(not math.isnan(val.get((s, w, metric), math.nan)) for s in syss)]
                width = 0.8 / max(len(syss), 1)
                for i, sname in enumerate(syss):
                    vs = [val.get((sname, w, metric), math.nan) for w in ws]
                    xs = [j + (i - (len(syss) - 1) / 2) * width for j in range(len(ws))]
                    ax.bar(xs, [0 if math.isnan(v) else v for v in vs], width, label=sname,
                           color={"loco/aiortc": "C0", "loco-cbr/aiortc": "C5", "loco/chromium": "C2",
                                  "novnc/chromium": "C1"}[sname])
                ax.set_xticks(range(len(ws)), ws)
                if log:
                    ax.set_yscale("log")
                ax.legend(fontsize=7)
            ax.set_title(label, fontsize=10)
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle("loco vs noVNC / GStreamer / x264 on one Xvnc desktop\n" + title, fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "compare.png", dpi=90)
        plt.close(fig)
        written.append(out / "compare.png")

    sc = [r for r in rows if r["part"] == "scale" and r["instance"] == "all"]
    if sc:
        series = sorted({(r["backend"], r["workload"]) for r in sc if r["workload"]})
        val = {(r["backend"], r["workload"], r["instances"], r["metric"]): r["value"] for r in sc}
        panels = [("fps_mean", "received fps per desktop (mean; dashed: min)", "fps_min"),
                  ("bitrate_kbps_per_instance", "kbit/s per desktop", None),
                  ("freezes", "freezes (all desktops)", None),
                  ("g2g_ms_p50", "glass-to-glass p50 (ms; dashed: p95)", "g2g_ms_p95"),
                  ("agent_cpu_cores", "agents' CPU (cores; dashed: host busy)", "host_cpu_cores"),
                  ("agent_rss_mib", "agent RSS (MiB, mean; dashed: peak)", "agent_peak_rss_mib")]
        fig, axes = plt.subplots(2, 3, figsize=(15, 8))
        for ax, (metric, label, second) in zip(axes.flat, panels):
            for i, (backend, w) in enumerate(series):
                ns = sorted({k[2] for k in val if k[0] == backend and k[1] == w and k[3] == metric})
                if not ns:
                    continue
                ys = [val[(backend, w, n, metric)] for n in ns]
                line, = ax.plot(ns, ys, "o-", label=f"{backend} {w}", color=f"C{i}")
                if second:
                    ys2 = [val.get((backend, w, n, second), math.nan) for n in ns]
                    ax.plot(ns, ys2, "--", color=line.get_color(), alpha=0.6)
            if metric == "fps_mean":
                ax.axhline(30, color="grey", lw=0.8, ls=":")
            ax.set_xticks([1, 3, 9])
            ax.set_xlabel("desktops at once")
            ax.set_title(label, fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("loco at scale, one aiortc viewer per desktop\n" + title, fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "scale.png", dpi=90)
        plt.close(fig)
        written.append(out / "scale.png")
    return written


# ---- main ----------------------------------------------------------------------------------

def fmt(v: float, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def table(head: list[str], rows: list[list[str]], left: int = 2) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(widths[i]) if i < left else c.rjust(widths[i])  # noqa: E731
                                   for i, c in enumerate(cells))
    print(line(head))
    for r in rows:
        print(line(r))


def run_codec(args, seconds: float, workloads: list[str], codecs: list[str], progress) -> tuple[list[dict], dict]:
    binary = bench_binary(build=not args.no_build)
    recordings = {w: recorder.rec_path(w, seconds) for w in workloads}
    for w in workloads:
        if args.rerecord or not recordings[w].exists():
            progress.step(f"recording {w} ({seconds:g} s)")
            recorder.record_workload(w, seconds, recordings[w])
        else:
            progress.step(f"{w}: recording cached")
    results: dict[tuple[str, str], dict] = {}
    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="loco-bench-"))
    try:
        for w in workloads:
            progress.step(f"{w}: encoding {'/'.join(codecs)}")
            out_dir = work / w
            r = subprocess.run([str(binary), "--workload", str(recordings[w]), "--out-dir", str(out_dir),
                                "--codecs", ",".join(codecs), "--bitrate-kbps", str(args.bitrate_kbps),
                                "--max-fps", str(args.max_fps), "--mjpeg-quality", str(args.mjpeg_quality)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"bench: loco-codec-bench failed on {w}:\n{r.stderr}")
            data = json.loads(r.stdout)
            wl = {"updates": data["updates"], "update_mbytes": data["update_bytes"] / 1e6, "encodes": data["encodes"]}
            for metric in WORKLOAD_METRICS:
                rows.append(codec_row("", w, metric, wl[metric], WORKLOAD_METRICS[metric]))
            width, height = data["picture_width"], data["picture_height"]
            first_frame_bytes = {}
            for c in data["codecs"]:
                first = next(quality.read_packets(out_dir / f"{c['codec']}.pkt"), b"")
                first_frame_bytes[c["codec"]] = len(first)
            for c in data["codecs"]:
                codec = c["codec"]
                progress.step(f"{w}: decoding {codec}, PSNR/SSIM")
                q = quality.evaluate(codec, out_dir / f"{codec}.pkt", out_dir / "ref.yuv", width, height,
                                     ssim_every=args.ssim_every or (4 if args.quick else 1))
                res = {k: c[k] for k in CODEC_METRICS if k in c}
                res["bitrate_after_first_frame_kbps"] = (
                    (c["bytes"] - first_frame_bytes[codec]) * 8 / c["duration_s"] / 1000 if c["duration_s"] else 0.0)
                res.update({k: q[k] for k in CODEC_METRICS if k in q})
                results[(codec, w)] = res
            for codec in codecs:
                for metric, unit in CODEC_METRICS.items():
                    rows.append(codec_row(codec, w, metric, results[(codec, w)].get(metric, math.nan), unit))
            shutil.rmtree(out_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows, results


def codec_row(codec: str, workload: str, metric: str, value, unit: str) -> dict:
    return {"part": "codec", "system": "loco", "receiver": "", "backend": "recorded", "instances": 1, "instance": "",
            "codec": codec, "workload": workload, "metric": metric, "value": value, "unit": unit}


def check_tools(parts: list[str], backends: list[str], systems: list[str]) -> None:
    need = {"Xvnc": "tigervnc-standalone-server", "xterm": "xterm", "xdotool": "xdotool",
            "xsetroot": "x11-xserver-utils", "xdpyinfo": "x11-utils"}
    if "codec" in parts:
        need.update({"ffplay": "ffmpeg", "less": "less"})
    if "compare" in parts:
        if "gstreamer" in systems:
            need["gst-launch-1.0"] = "gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-bad " \
                                     "gstreamer1.0-plugins-ugly"
        if "x264" in systems:
            need.update({"x264": "x264", "ffmpeg": "ffmpeg"})
        if "novnc/chromium" in systems:
            need["websockify"] = "websockify"
        if any(s.endswith("/chromium") for s in systems):
            need["chromium"] = "chromium"
    if "scale" in parts and "standin" in backends:
        need.update({"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils"})
    missing = {t: p for t, p in need.items() if shutil.which(t) is None}
    problems = []
    if missing:
        problems.append(f"missing tools {sorted(missing)}: apt-get install --no-install-recommends "
                        + " ".join(sorted(set(" ".join(missing.values()).split()))))
    if "compare" in parts and "novnc/chromium" in systems:
        import peers
        if not (peers.NOVNC_DIR / "core" / "rfb.js").exists():
            problems.append(f"noVNC is missing ({peers.NOVNC_DIR}/core/rfb.js): apt-get install novnc")
    if "compare" in parts and "gstreamer" in systems and shutil.which("gst-inspect-1.0"):
        for el in ("rfbsrc", "x264enc", "videoconvert"):
            if subprocess.run(["gst-inspect-1.0", el], capture_output=True).returncode != 0:
                problems.append(f"GStreamer element {el} is missing (gstreamer1.0-plugins-bad/-ugly/-base)")
    if parts != ["codec"]:
        from loco_testkit.paths import agent_binary
        a = agent_binary()
        if not (a.is_file() and os.access(a, os.X_OK)):
            problems.append(f"loco-agent is not built at {a} (./loco build, or set LOCO_AGENT_BIN)")
        try:
            import Xlib  # noqa: F401
        except ImportError:
            problems.append("python-xlib is missing from the venv: pip install -r benchmark/requirements.txt")
    if "scale" in parts and "standin" in backends:
        import live
        if not (live.standin_dir() / "standin.qcow2").is_file():
            problems.append(f"the stand-in image is not built in {live.standin_dir()}: sudo packer/standin/build.sh")
    if problems:
        raise SystemExit("bench: " + "\n       ".join(problems))


def live_value(rows, part, system, receiver, workload, metric, backend="xvnc", instances=1):
    for r in rows:
        if (r["part"], r["system"], r["receiver"], r["workload"], r["metric"], r["backend"]) == \
                (part, system, receiver, workload, metric, backend) and r["instances"] == instances \
                and r["instance"] in ("", "all"):
            return r["value"]
    return math.nan


def print_summary(meta: dict, rows: list[dict], codec_results: dict, workloads: list[str], codecs: list[str]) -> None:
    print(f"\nloco benchmark, {meta['date']}: {meta['cpu_model']}, {meta['host_cores']} cores, {meta['ram_gib']} GiB, "
          f"{meta['host']}; agent {meta['agent_commit']}")
    print("versions: " + "; ".join(f"{k} {meta[k]}" for k in VERSION_COLUMNS))
    if codec_results:
        print(f"\ncodec matrix, 1024x768 (simulated time; {meta['codec_settings']})")
        out = []
        for w in workloads:
            for codec in codecs:
                r = codec_results[(codec, w)]
                out.append([w, codec, str(r["frames"]), fmt(r["bitrate_kbps"]), fmt(r["keyframe_bytes"] / 1024),
                            fmt(r["cpu_ms_per_frame"], 2), fmt(r["encode_fps_per_core"], 0), fmt(r["psnr_y_db"]),
                            fmt(r["ssim_y"], 4)])
        table(["workload", "codec", "frames", "kbit/s", "key KiB", "CPU ms/f", "fps/core", "PSNR-Y", "SSIM-Y"], out)

    comp = [r for r in rows if r["part"] == "compare" and r["system"] != "ratio"]
    if comp:
        print(f"\nloco and its peers on one Xvnc desktop ({meta['live_settings']})")
        keys = []
        for r in comp:
            k = (r["workload"], r["system"] + ("/" + r["receiver"] if r["receiver"] else ""))
            if k not in keys:
                keys.append(k)
        val = {(r["workload"], r["system"] + ("/" + r["receiver"] if r["receiver"] else ""), r["metric"]): r["value"]
               for r in comp}
        out = []
        for w, s in keys:
            g = lambda m, d=1: fmt(val.get((w, s, m), math.nan), d)  # noqa: E731
            cpu = val.get((w, s, "agent_cpu_ms_per_frame"), val.get((w, s, "cpu_ms_per_frame"), math.nan))
            text = g("text_psnr_db")
            if (w, s, "text_identical") in val and (w, s, "text_psnr_db") not in val:
                text = "identical"
            out.append([w, s, g("fps"), g("bitrate_kbps"), g("freezes", 0), g("g2g_ms_p50"), g("g2g_ms_p95"),
                        g("input_to_photon_ms_p50"), g("jitter_buffer_ms"), text, g("text_ssim", 4), fmt(cpu, 2),
                        g("agent_rss_mib"), g("receiver_cpu_cores", 2), g("host_cpu_cores", 2), g("other_cpu_cores", 2)])
        table(["workload", "system", "fps", "kbit/s", "freezes", "g2g p50", "g2g p95", "i2p p50", "jb ms",
               "text dB", "text SSIM", "CPU ms/f", "RSS MiB", "recv cores", "host cores", "others"], out)
        print("(jb ms: Chromium's mean jitter-buffer delay; text dB / SSIM: PSNR-Y and SSIM of the shown picture "
              "closest to the source on the workload's xterm, text_quality.py)")

    sc = [r for r in rows if r["part"] == "scale" and r["instance"] == "all" and r["workload"]]
    if sc:
        print(f"\nscale: N desktops at once, one agent and one aiortc viewer each ({meta['live_settings']})")
        val = {(r["backend"], r["instances"], r["workload"], r["metric"]): r["value"] for r in sc}
        boot = {(r["backend"], r["instances"]): r["value"] for r in rows
                if r["part"] == "scale" and r["metric"] == "boot_s"}
        out = []
        for b, n, w in sorted({(r["backend"], r["instances"], r["workload"]) for r in sc},
                              key=lambda k: (k[0], k[1], k[2] != "idle")):
            g = lambda m, d=1: fmt(val.get((b, n, w, m), math.nan), d)  # noqa: E731
            out.append([b, str(n), w, g("fps_mean"), g("fps_min"), g("fps_first"), g("fps_min_others"),
                        g("bitrate_kbps_per_instance"), g("freezes", 0),
                        g("g2g_ms_p50"), g("g2g_ms_p95"), g("input_to_photon_ms_p50"), g("agent_cpu_ms_per_frame", 2),
                        g("agent_cpu_cores", 2), g("server_cpu_cores", 2), g("receiver_cpu_cores", 2),
                        g("host_cpu_cores", 2), g("other_cpu_cores", 2), g("agent_peak_rss_mib"),
                        fmt(boot.get((b, n), math.nan), 0)])
        table(["backend", "N", "workload", "fps mean", "fps min", "fps 1st", "others min", "kbit/s each", "freezes",
               "g2g p50", "g2g p95",
               "i2p p50", "agent ms/f", "agents", "servers", "viewers", "host", "others", "peak RSS",
               "start s"], out, left=3)
        print("(CPU in cores: agents = all loco-agents, servers = Xvnc or QEMU, viewers = the aiortc "
              "viewer processes, host = the whole machine, others = the rest of it: other jobs, the kernel; "
              "fps 1st: desktop 1, the focused one in motion-attention, where the others say they are only visible)")

    if comp or sc:
        print("\ntargets (judged here, not asserted in tests)")
        out = []

        def judge(name, value, goal, ok, how=""):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                out.append([name, "-", goal, "not measured"])
            else:
                out.append([name, value if isinstance(value, str) else fmt(value, 2), goal,
                            ("met" if ok else "missed") + (f" ({how})" if how else "")])
        for backend in ("xvnc", "standin"):
            w = "motion" if backend == "xvnc" else "flood"
            f = live_value(rows, "scale", "loco", "aiortc", w, "fps_min", backend, 9)
            fz = live_value(rows, "scale", "loco", "aiortc", w, "freezes", backend, 9)
            if not math.isnan(f):
                judge(f"9 desktops {backend} {w}: min fps, freezes", f"{f:.1f} fps, {fz:.0f} freezes", ">= 30, 0",
                      f >= 29.0 and fz == 0, f"{f / 30:.0%} of 30 fps")
        for w, how in (("motion", "attention off"), ("motion-attention", "attention on")):
            first = live_value(rows, "scale", "loco", "aiortc", w, "fps_first", "xvnc", 9)
            others = live_value(rows, "scale", "loco", "aiortc", w, "fps_min_others", "xvnc", 9)
            if not math.isnan(first):
                judge(f"9 desktops xvnc motion, {how}: desktop 1 (focused) fps, least of the others",
                      f"{first:.1f}, {others:.1f}", ">= 28, >= 10", first >= 28 and others >= 10)
        for name, metric, goal, limit in (("agent CPU/frame / bare x264", "cpu_per_frame_loco_over_x264", "<= 1.2x", 1.2),
                                          ("agent CPU/frame / GStreamer", "cpu_per_frame_loco_over_gstreamer", "<= 0.7x", 0.7)):
            v = live_value(rows, "compare", "ratio", "", "motion", metric)
            how = f"{v / limit:.2f}x the limit" if not math.isnan(v) else ""
            own = live_value(rows, "compare", "ratio", "", "motion", "cpu_per_frame_loco_over_own_encoder")
            if metric == "cpu_per_frame_loco_over_x264" and how and not math.isnan(own):
                # The bare x264 runs alone; the agent's own x264 ran under the window's load.
                how += f"; {own:.2f}x the agent's own x264 in the same window"
            judge(name + " (motion)", v, goal, v <= limit, how)
        v = live_value(rows, "compare", "loco", "aiortc", "motion", "agent_peak_rss_mib")
        judge("agent peak RSS, motion (MiB)", v, "<= 40 MiB", v <= 40)
        v = live_value(rows, "compare", "loco", "aiortc", "idle", "wire_kbps")
        judge("idle desktop, all UDP to the viewer (IP headers incl.)", v, "<= 2 kbit/s", v <= 2.0)
        for w in ("typing", "scroll"):
            v = live_value(rows, "compare", "ratio", "", w, "bitrate_loco_over_novnc")
            judge(f"{w} bandwidth loco / noVNC", v, "<= 0.33x", v <= 1 / 3)
            lp_, np_ = (live_value(rows, "compare", s_, r_, w, "text_psnr_db") for s_, r_ in
                        (("loco", "aiortc"), ("novnc", "chromium")))
            nid = live_value(rows, "compare", "novnc", "chromium", w, "text_identical")
            nn = live_value(rows, "compare", "novnc", "chromium", w, "text_samples")
            if not math.isnan(lp_) and not math.isnan(nn):
                novnc_text = "identical" if nid == nn else f"{np_:.1f} dB"
                judge(f"{w} text PSNR-Y, loco/aiortc vs noVNC", f"{lp_:.1f} dB vs {novnc_text}", "no worse",
                      nid < nn and lp_ >= np_)
        for w, chromium_ms in (("pattern", 30), ("motion", 40)):
            v = live_value(rows, "compare", "loco", "aiortc", w, "g2g_ms_p50")
            judge(f"glass-to-glass p50, {w}, loco/aiortc (ms)", v, "<= 40 ms", v <= 40)
            v = live_value(rows, "compare", "loco", "chromium", w, "g2g_ms_p50")
            judge(f"glass-to-glass p50, {w}, loco/chromium (ms)", v, f"<= {chromium_ms} ms", v <= chromium_ms)
            v = live_value(rows, "compare", "loco", "chromium", w, "input_to_photon_ms_p50")
            judge(f"input-to-photon p50, {w}, loco/chromium (ms)", v, "<= 50 ms", v <= 50)
            for recv in ("aiortc", "chromium"):
                metric = f"g2g_p50_loco_{recv}_over_novnc"
                v = live_value(rows, "compare", "ratio", "", w, metric)
                judge(f"glass-to-glass p50, {w}, loco/{recv} / noVNC", v, "<= 0.5x", v <= 0.5)
        table(["target", "measured", "goal", "verdict"], out, left=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="a short run for CI: 2 s recordings, 2 s live windows, compare on motion only, "
                         "scale with one desktop per backend")
    ap.add_argument("--parts", default=",".join(PARTS), help="codec,compare,scale")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    g = ap.add_argument_group("codec matrix")
    g.add_argument("--seconds", type=float, default=None, help="workload length (default 8, --quick 2)")
    g.add_argument("--workloads", default=",".join(recorder.WORKLOADS))
    g.add_argument("--codecs", default=",".join(CODECS))
    g.add_argument("--bitrate-kbps", type=int, default=6000, help="the agent's default")
    g.add_argument("--max-fps", type=int, default=30, help="the agent's default")
    g.add_argument("--mjpeg-quality", type=int, default=80)
    g.add_argument("--rerecord", action="store_true", help="record the workloads again")
    g.add_argument("--no-build", action="store_true", help="use the built loco-codec-bench as it is")
    g.add_argument("--ssim-every", type=int, default=None,
                   help="SSIM on every Nth compared frame (default 1, --quick 4; PSNR is always on every frame)")
    g = ap.add_argument_group("live parts (compare, scale)")
    g.add_argument("--live-seconds", type=float, default=None, help="measurement window (default 15, --quick 2)")
    g.add_argument("--clicks", type=int, default=None, help="input-to-photon clicks per session (default 10, --quick 2)")
    g.add_argument("--compare-workloads", default=None,
                   help="idle,typing,scroll,pattern,motion (--quick: typing,motion)")
    g.add_argument("--systems", default=None,
                   help="loco/aiortc,loco-cbr/aiortc,loco/chromium,novnc/chromium,gstreamer,x264")
    g.add_argument("--text-samples", type=int, default=None,
                   help="decoded-text quality samples per system on typing and scroll (default 6, --quick 2)")
    g.add_argument("--scale", default=None, help="desktops at once, e.g. 1,3,9 (default; --quick: 1)")
    g.add_argument("--backends", default="xvnc,standin", help="xvnc,standin")
    g.add_argument("--boot-timeout", type=float, default=900.0, help="for the stand-in VMs to reach their desktops")
    args = ap.parse_args(argv)

    parts = [p for p in args.parts.split(",") if p]
    for p in parts:
        if p not in PARTS:
            ap.error(f"unknown part {p!r}; one of {PARTS}")
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    workloads = [w for w in args.workloads.split(",") if w]
    codecs = [c for c in args.codecs.split(",") if c]
    for w in workloads:
        if w not in recorder.WORKLOADS:
            ap.error(f"unknown workload {w!r}; one of {recorder.WORKLOADS}")
    for c in codecs:
        if c not in CODECS:
            ap.error(f"unknown codec {c!r}; one of {CODECS}")
    live_seconds = args.live_seconds or (2.0 if args.quick else 15.0)
    clicks = args.clicks if args.clicks is not None else (2 if args.quick else 10)
    import live_bench as lb  # noqa: E402 (imports aiortc; only the live parts need it)
    text_samples = args.text_samples if args.text_samples is not None else (2 if args.quick else 6)
    if text_samples < 1:
        ap.error("--text-samples: at least 1")
    cw = [w for w in (args.compare_workloads or ("typing,motion" if args.quick else ",".join(lb.COMPARE_WORKLOADS)))
          .split(",") if w]
    systems = [s for s in (args.systems or ",".join(lb.COMPARE_SYSTEMS)).split(",") if s]
    counts = [int(n) for n in (args.scale or ("1" if args.quick else "1,3,9")).split(",") if n]
    backends = [b for b in args.backends.split(",") if b]
    for w in cw:
        if w not in lb.COMPARE_WORKLOADS:
            ap.error(f"unknown compare workload {w!r}; one of {lb.COMPARE_WORKLOADS}")
    for s in systems:
        if s not in lb.COMPARE_SYSTEMS:
            ap.error(f"unknown system {s!r}; one of {lb.COMPARE_SYSTEMS}")
    for b in backends:
        if b not in lb.SCALE_BACKENDS:
            ap.error(f"unknown backend {b!r}; one of {lb.SCALE_BACKENDS}")
    if any(not 1 <= n <= 9 for n in counts):
        ap.error("--scale: from 1 to 9 desktops")
    check_tools(parts, backends, systems)

    args.out.mkdir(parents=True, exist_ok=True)
    import live  # noqa: E402
    from testguest import kvm_usable  # noqa: E402 (packer/testpattern, on the path through live)
    accel = "KVM" if kvm_usable() else "TCG"
    del live
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **machine(), "agent_commit": agent_commit(),
            **library_versions(), **lb.tool_versions(),
            "codec_settings": f"H.264 CRF 23 + QP floor 20 under a {args.bitrate_kbps} kbit/s cap (the agent's default), VP8 CBR at it, {args.max_fps} fps cap, 1 thread, "
                              f"mjpeg q{args.mjpeg_quality}, {seconds:g} s workloads",
            "live_settings": f"agent defaults (h264 CRF, 6000 kbit/s cap, 30 fps cap), {live_seconds:g} s windows, "
                             f"{clicks} clicks, pattern 60 Hz, motion pan 30 fps, stand-in QEMU {accel}, "
                             f"load average {os.getloadavg()[0]:.1f} at the start"}

    steps = 0
    if "codec" in parts:
        steps += len(workloads) * (2 + len(codecs))
    if "compare" in parts:
        steps += sum(1 for w in cw for s in systems if s not in ("gstreamer", "x264") or w == "motion")
    if "scale" in parts:
        # starting, idle, busy; and motion-attention for Xvnc with more than one desktop
        steps += sum(3 + (b == "xvnc" and n > 1) for b in backends for n in counts)
    progress = Progress(steps)
    rows: list[dict] = []
    codec_results: dict = {}
    work = lb.tmpdir()
    try:
        if "codec" in parts:
            r, codec_results = run_codec(args, seconds, workloads, codecs, progress)
            rows += r
        if "compare" in parts:
            rows += lb.run_compare(cw, systems, live_seconds, clicks, work, progress.step, text_samples)
        if "scale" in parts:
            for b in backends:
                rows += lb.run_scale(b, counts, live_seconds, clicks, work, progress.step, args.boot_timeout)
    except BaseException:
        progress.close()
        print(f"bench: failed; the live parts' logs are in {work}", file=sys.stderr)
        raise
    progress.close()
    lb.cleanup(work)

    csv_path = args.out / "results.csv"
    with open(csv_path, "w", newline="") as f:
        wr = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        wr.writeheader()
        for r in rows:
            if isinstance(r["value"], float) and not math.isfinite(r["value"]):
                continue  # not measured (no frame, no pattern read): no row
            settings = meta["codec_settings"] if r["part"] == "codec" else meta["live_settings"]
            codec = r.get("codec", "tight" if r["system"] == "novnc" else ("h264" if r["system"] != "ratio" else ""))
            v = r["value"]
            wr.writerow({**meta, "settings": settings, **r, "codec": codec,
                         "value": repr(float(v)) if isinstance(v, float) else v})
    title = f"{meta['date']} · {meta['cpu_model']} ({meta['host_cores']} cores) · agent {meta['agent_commit']}"
    pngs = []
    if codec_results:
        pngs += plot(codec_results, workloads, codecs, args.out, title + " · " + meta["codec_settings"])
    pngs += plot_live(rows, args.out, title + "\n" + meta["live_settings"])
    print_summary(meta, rows, codec_results, workloads, codecs)
    print(f"\nwrote {csv_path} and {', '.join(p.name for p in pngs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
