#!/usr/bin/env python3
"""loco's benchmark: the codec matrix at 1024x768 on desktop workloads recorded from real VNC
sessions, with the agent's own encoder code.

    python3 benchmark/bench.py [--quick] [--seconds 8] [--workloads idle,typing,...]
                               [--codecs h264,vp8,mjpeg] [--out results] [--rerecord]

1. Workloads (benchmark/recorder.py): idle desktop, typing in an editor, scrolling a long
   page, dragging a window, full-screen video, each recorded for --seconds (8; --quick: 2)
   from TigerVNC's Xvnc at 1024x768 with the agent's RFB settings, cached in
   ${LOCO_CACHE:-~/.cache/loco}/bench/.
2. Codec matrix (loco-codec-bench, agent/src/bin/codec_bench.rs): per workload and codec
   (H.264/x264 and VP8/libvpx exactly as the agent configures them: 6000 kbit/s CBR, 30 fps
   cap, one thread; MJPEG/libturbojpeg quality 80 for comparison), the agent's frame pacer
   decides which pictures are encoded; CPU time per frame of colour conversion + encoding,
   encode fps per core, bitrate over the recording, first keyframe size.
3. Quality (benchmark/quality.py): the packets are decoded with FFmpeg's decoders (PyAV) and
   compared with the encoded pictures: PSNR-Y, PSNR-YUV and SSIM-Y.

Writes <out>/results.csv (one row per measurement, with date, machine and version columns)
and PNG plots beside it, shows a progress bar, and prints a summary table. It measures; it
asserts nothing. Not implemented yet (issue 6): the 1/3/9-instance scale runs, glass-to-glass
and input-to-photon latency, and the GStreamer and noVNC peers.
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
sys.path.insert(0, str(HERE))

import quality  # noqa: E402
import recorder  # noqa: E402

CODECS = ["h264", "vp8", "mjpeg"]
CSV_COLUMNS = ["date", "host_cores", "cpu_model", "ram_gib", "agent_commit", "libx264", "libvpx",
               "libturbojpeg", "settings", "codec", "workload", "metric", "value", "unit"]

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
    return {
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


# ---- main ----------------------------------------------------------------------------------

def fmt(v: float, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 s workloads (for CI)")
    ap.add_argument("--seconds", type=float, default=None, help="workload length (default 8, --quick 2)")
    ap.add_argument("--workloads", default=",".join(recorder.WORKLOADS))
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--bitrate-kbps", type=int, default=6000, help="the agent's default")
    ap.add_argument("--max-fps", type=int, default=30, help="the agent's default")
    ap.add_argument("--mjpeg-quality", type=int, default=80)
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--rerecord", action="store_true", help="record the workloads again")
    ap.add_argument("--no-build", action="store_true", help="use the built loco-codec-bench as it is")
    ap.add_argument("--ssim-every", type=int, default=None,
                    help="SSIM on every Nth compared frame (default 1; PSNR is always on every frame)")
    args = ap.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    workloads = [w for w in args.workloads.split(",") if w]
    codecs = [c for c in args.codecs.split(",") if c]
    for w in workloads:
        if w not in recorder.WORKLOADS:
            ap.error(f"unknown workload {w!r}; one of {recorder.WORKLOADS}")
    for c in codecs:
        if c not in CODECS:
            ap.error(f"unknown codec {c!r}; one of {CODECS}")
    ssim_every = args.ssim_every or 1

    binary = bench_binary(build=not args.no_build)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **machine(), "agent_commit": agent_commit(),
            **library_versions(),
            "settings": f"{args.bitrate_kbps} kbit/s CBR, {args.max_fps} fps cap, 1 thread, "
                        f"mjpeg q{args.mjpeg_quality}, {seconds:g} s workloads"}

    recordings = {w: recorder.rec_path(w, seconds) for w in workloads}
    to_record = [w for w, p in recordings.items() if args.rerecord or not p.exists()]
    progress = Progress(len(to_record) + len(workloads) * (1 + len(codecs)))
    for w in to_record:
        progress.step(f"recording {w} ({seconds:g} s)")
        recorder.record_workload(w, seconds, recordings[w])

    results: dict[tuple[str, str], dict] = {}
    per_workload: dict[str, dict] = {}
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
            per_workload[w] = {"updates": data["updates"], "update_mbytes": data["update_bytes"] / 1e6,
                               "encodes": data["encodes"]}
            width, height = data["picture_width"], data["picture_height"]
            first_frame_bytes = {}
            for c in data["codecs"]:
                first = next(quality.read_packets(out_dir / f"{c['codec']}.pkt"), b"")
                first_frame_bytes[c["codec"]] = len(first)
            for c in data["codecs"]:
                codec = c["codec"]
                progress.step(f"{w}: decoding {codec}, PSNR/SSIM")
                q = quality.evaluate(codec, out_dir / f"{codec}.pkt", out_dir / "ref.yuv", width, height,
                                     ssim_every=ssim_every)
                row = {k: c[k] for k in CODEC_METRICS if k in c}
                row["bitrate_after_first_frame_kbps"] = (
                    (c["bytes"] - first_frame_bytes[codec]) * 8 / c["duration_s"] / 1000 if c["duration_s"] else 0.0)
                row.update({k: q[k] for k in CODEC_METRICS if k in q})
                row["decoded_frames"] = q["decoded_frames"]
                results[(codec, w)] = row
            shutil.rmtree(out_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress.close()

    csv_path = args.out / "results.csv"
    with open(csv_path, "w", newline="") as f:
        wr = csv.DictWriter(f, CSV_COLUMNS)
        wr.writeheader()
        for w in workloads:
            for metric, unit in WORKLOAD_METRICS.items():
                wr.writerow({**meta, "codec": "", "workload": w, "metric": metric,
                             "value": per_workload[w][metric], "unit": unit})
            for codec in codecs:
                row = results[(codec, w)]
                for metric, unit in CODEC_METRICS.items():
                    v = row.get(metric, math.nan)
                    wr.writerow({**meta, "codec": codec, "workload": w, "metric": metric,
                                 "value": repr(float(v)) if isinstance(v, float) else v, "unit": unit})
    title = (f"{meta['date']} · {meta['cpu_model']} ({meta['host_cores']} cores) · agent {meta['agent_commit']} · "
             f"{meta['settings']}")
    pngs = plot(results, workloads, codecs, args.out, title)

    # Summary.
    print(f"\nloco codec matrix, 1024x768, {meta['settings']}")
    print(f"{meta['cpu_model']}, {meta['host_cores']} cores, {meta['ram_gib']} GiB; agent {meta['agent_commit']}; "
          f"{meta['libx264']}; {meta['libvpx']}; {meta['libturbojpeg']}")
    head = ["workload", "codec", "frames", "kbit/s", "key KiB", "CPU ms/f", "fps/core", "PSNR-Y", "SSIM-Y"]
    rows = []
    for w in workloads:
        for codec in codecs:
            r = results[(codec, w)]
            rows.append([w, codec, str(r["frames"]), fmt(r["bitrate_kbps"]), fmt(r["keyframe_bytes"] / 1024),
                         fmt(r["cpu_ms_per_frame"], 2), fmt(r["encode_fps_per_core"], 0), fmt(r["psnr_y_db"]),
                         fmt(r["ssim_y"], 4)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(widths[i]) if i < 2 else h.rjust(widths[i]) for i, h in enumerate(head)))
    for r in rows:
        print("  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(r)))
    print(f"\nwrote {csv_path} and {', '.join(p.name for p in pngs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
