"""Tests for the benchmark: the quality metrics on known pictures, loco-codec-bench on a
synthetic recording, and `bench.py --quick` end to end (real Xvnc recordings).

    ~/.cache/loco/venv/bin/python -m pytest -q benchmark/test_bench.py
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402
import quality  # noqa: E402


# ---- PSNR / SSIM on known pictures --------------------------------------------------------

def test_identical_pictures():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    assert quality.psnr(a, a.copy()) == math.inf
    assert quality.ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-12)


def test_psnr_of_a_known_error():
    a = np.full((32, 32), 100, np.uint8)
    b = a.copy()
    b[::2] += 4  # half the pixels off by 4: MSE = 8
    assert quality.mse(a, b) == pytest.approx(8.0)
    assert quality.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 8))
    # Off by 5 everywhere: 20 log10(255/5) = 34.15 dB.
    assert quality.psnr(a, a + 5) == pytest.approx(34.1514, abs=1e-3)


def test_psnr_of_gaussian_noise():
    rng = np.random.default_rng(7)
    a = np.full((768, 1024), 128, np.uint8)
    noise = rng.normal(0, 5.0, a.shape)
    b = np.clip(np.round(a + noise), 0, 255).astype(np.uint8)
    # sigma 5 (rounded to integers, variance 25 + 1/12): 20 log10(255/5) = 34.15 dB.
    assert quality.psnr(a, b) == pytest.approx(34.15, abs=0.1)


def test_ssim_of_flat_pictures_is_the_luminance_term():
    # No variance anywhere: SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a = np.full((16, 16), 100, np.uint8)
    b = np.full((16, 16), 120, np.uint8)
    expected = (2 * 100 * 120 + quality.C1) / (100**2 + 120**2 + quality.C1)
    assert quality.ssim(a, b) == pytest.approx(expected, rel=1e-9)


def test_ssim_of_an_inverted_pattern():
    # A checkerboard against its inverse: equal means and variances, covariance -var.
    # SSIM = (2 mu^2 + C1)(-2 var + C2) / ((2 mu^2 + C1)(2 var + C2)) = (C2 - 2 var)/(C2 + 2 var)
    # for every 8x8 window (each holds 32 of each value).
    y, x = np.mgrid[0:32, 0:32]
    a = np.where((x + y) % 2 == 0, 60, 180).astype(np.uint8)
    b = (240 - a.astype(int)).astype(np.uint8)
    var = 60.0**2
    assert quality.ssim(a, b) == pytest.approx((quality.C2 - 2 * var) / (quality.C2 + 2 * var), rel=1e-9)


def test_noise_lowers_ssim_monotonically():
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:96, 0:128]
    a = ((x * 2 + y) % 256).astype(np.uint8)
    vals = []
    for sigma in (1, 4, 16):
        b = np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).astype(np.uint8)
        vals.append(quality.ssim(a, b))
    assert 1.0 > vals[0] > vals[1] > vals[2] > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        quality.psnr(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError):
        quality.ssim(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))  # smaller than a window


# ---- loco-codec-bench on a synthetic recording --------------------------------------------

def write_rec(path: Path, w: int, h: int, updates: list[tuple[float, list]], duration: float) -> None:
    with open(path, "wb") as f:
        f.write(b"LOCOREC1" + struct.pack("<IIQ", w, h, int(duration * 1e6)))
        for t, rects in updates:
            f.write(struct.pack("<QI", int(t * 1e6), len(rects)))
            for x, y, rw, rh, px in rects:
                f.write(struct.pack("<HHHH", x, y, rw, rh) + px)


@pytest.fixture(scope="module")
def bench_bin() -> Path:
    return bench.bench_binary(build=True)


def test_codec_bench_on_a_synthetic_recording(bench_bin, tmp_path):
    w, h = 160, 96
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 1.5) % 256, (yy * 2) % 256, ((xx + yy) * 3) % 256, np.full_like(xx, 255)], -1)
    base = base.astype(np.uint8)
    updates = [(0.0, [(0, 0, w, h, base.tobytes())])]
    # A 16x16 white square moving right, 20 updates at 50 Hz (more than the 30 fps cap).
    for i in range(20):
        sq = np.full((16, 16, 4), 255, np.uint8)
        updates.append((0.1 + i * 0.02, [(8 + i * 4, 40, 16, 16, sq.tobytes())]))
    rec = tmp_path / "synthetic.rec"
    write_rec(rec, w, h, updates, duration=1.0)
    out = tmp_path / "out"
    r = subprocess.run([str(bench_bin), "--workload", str(rec), "--out-dir", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["updates"] == 21 and data["width"] == w and data["height"] == h
    # The 30 fps cap: 20 updates over 0.4 s come out as about 12-15 pictures, plus the first
    # keyframe and two refinement frames.
    assert 10 <= data["encodes"] <= 19, data["encodes"]
    assert (out / "ref.yuv").stat().st_size == data["encodes"] * w * h * 3 // 2
    for c in data["codecs"]:
        assert c["pictures"] == data["encodes"]
        assert c["frames"] + c["empty_outputs"] == c["pictures"]
        assert c["bitrate_kbps"] == pytest.approx(c["bytes"] * 8 / c["duration_s"] / 1000)
        assert 0 < c["keyframe_bytes"] <= c["bytes"]
        assert c["cpu_s"] > 0 and c["encode_fps_per_core"] == pytest.approx(c["pictures"] / c["cpu_s"])
        q = quality.evaluate(c["codec"], out / f"{c['codec']}.pkt", out / "ref.yuv", w, h)
        assert q["decoded_frames"] == c["frames"]
        assert 25 < q["psnr_y_db"] < math.inf, (c["codec"], q)
        assert 0.8 < q["ssim_y"] <= 1.0, (c["codec"], q)


def test_codec_bench_rejects_a_bad_file(bench_bin, tmp_path):
    bad = tmp_path / "bad.rec"
    bad.write_bytes(b"NOTAREC!" + bytes(16))
    r = subprocess.run([str(bench_bin), "--workload", str(bad), "--out-dir", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "LOCOREC1" in r.stderr


# ---- bench.py --quick end to end ----------------------------------------------------------

NEEDED = ("Xvnc", "xterm", "xdotool", "xsetroot", "xdpyinfo", "ffplay", "less")


@pytest.mark.timeout(400)
def test_bench_quick_end_to_end(tmp_path):
    missing = [t for t in NEEDED if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing tools {missing} (./loco deps installs them)")
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, str(HERE / "bench.py"), "--quick", "--rerecord", "--out", str(out)],
                       capture_output=True, text=True, timeout=380, env=dict(os.environ))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "loco codec matrix" in r.stdout and "PSNR-Y" in r.stdout  # the summary table

    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == bench.CSV_COLUMNS
        rows = list(reader)
    assert rows
    for row in rows:
        assert all(row[c] for c in ("date", "cpu_model", "agent_commit", "libx264", "libvpx", "libturbojpeg",
                                    "settings", "workload", "metric")), row
        assert int(row["host_cores"]) > 0 and float(row["ram_gib"]) > 0
        float(row["value"])  # every value is a number
    table: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        table.setdefault((row["codec"], row["workload"]), {})[row["metric"]] = float(row["value"])
    workloads = {"idle", "typing", "scroll", "drag", "video"}
    assert {w for _, w in table} == workloads
    for w in workloads:
        wl = table[("", w)]
        assert wl["updates"] >= 1 and wl["encodes"] >= 3
        for codec in bench.CODECS:
            m = table[(codec, w)]
            assert set(m) == set(bench.CODEC_METRICS), (codec, w)
            assert m["pictures"] == wl["encodes"]
            assert 0 < m["frames"] <= m["pictures"]
            assert m["bytes"] > 0 and m["duration_s"] == pytest.approx(2.0)
            # Internally consistent: bitrate = bytes * 8 / duration.
            assert m["bitrate_kbps"] == pytest.approx(m["bytes"] * 8 / m["duration_s"] / 1000, rel=1e-9)
            assert 0 <= m["bitrate_after_first_frame_kbps"] < m["bitrate_kbps"]
            assert 0 < m["keyframe_bytes"] <= m["bytes"]
            assert m["cpu_s"] > 0 and m["cpu_ms_per_frame"] > 0
            assert m["cpu_ms_per_frame"] == pytest.approx(1000 * m["cpu_s"] / m["pictures"], rel=1e-6)
            assert m["encode_fps_per_core"] == pytest.approx(m["pictures"] / m["cpu_s"], rel=1e-6)
            assert m["cpu_ms_p50"] <= m["cpu_ms_p95"]
            assert math.isfinite(m["psnr_y_db"]) and m["psnr_y_db"] > 20, (codec, w, m["psnr_y_db"])
            assert m["psnr_y_min_db"] <= m["psnr_y_db"] + 1e-9
            assert 0.5 < m["ssim_y_min"] <= m["ssim_y"] <= 1.0
    for codec in bench.CODECS:
        idle = table[(codec, "idle")]
        assert 25 < idle["psnr_y_db"] < math.inf, (codec, idle["psnr_y_db"])
        # The idle desktop is one keyframe and the pacer's two refinement frames.
        assert idle["pictures"] == 3
    # Motion costs more than idle for the rate-controlled codecs.
    for codec in ("h264", "vp8"):
        assert table[(codec, "video")]["bytes"] > table[(codec, "idle")]["bytes"]

    for name in ("codec-matrix.png", "bitrate.png", "cpu-per-frame.png", "psnr.png", "ssim.png",
                 "keyframe.png", "fps-per-core.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
