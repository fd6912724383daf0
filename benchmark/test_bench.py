"""Tests for the benchmark: the quality metrics on known pictures, the latency-pattern reader on
known frames (clean, blurred, JPEG- and H.264-compressed, corrupted), the receiver statistics,
loco-codec-bench on a synthetic recording, and `bench.py --quick` end to end (real Xvnc
recordings, real agents, aiortc, headless Chromium, noVNC, GStreamer, x264, a stand-in VM).

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

import bench  # noqa: E402
import latency_pattern as lp  # noqa: E402
import peers  # noqa: E402
import quality  # noqa: E402
import text_quality  # noqa: E402


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


# ---- the latency pattern on known frames -------------------------------------------------

def busy_background(seed: int = 0, h: int = 768, w: int = 1024) -> np.ndarray:
    """An RGB desktop-ish picture: gradients, coloured blocks, fine stripes."""
    return lp.texture(2 * w, h, seed)[:, :w, 2::-1].copy()


def pattern_frame(ts: int, counter: int, clicks: int, bg: np.ndarray | None = None) -> np.ndarray:
    rgb = busy_background() if bg is None else bg.copy()
    y = lp.render(lp.encode(ts, counter, clicks))
    x0, y0 = lp.ORIGIN
    rgb[y0:y0 + lp.HEIGHT, x0:x0 + lp.WIDTH] = y[y0:y0 + lp.HEIGHT, x0:x0 + lp.WIDTH, None]
    return rgb


CASES = [(0, 0, 0), (1, 1, 1), (123456789, 200, 17), ((1 << 32) - 1, 255, 63), (0x80000000, 128, 32)]


@pytest.mark.parametrize("ts,counter,clicks", CASES)
def test_pattern_round_trip(ts, counter, clicks):
    r = lp.read(pattern_frame(ts, counter, clicks))
    assert r == lp.Reading(ts, counter, clicks)
    # The luma plane alone reads the same.
    assert lp.read(lp.render(lp.encode(ts, counter, clicks))) == r


def test_pattern_values_wrap():
    assert lp.encode(1 << 32, 256, 64) == lp.encode(0, 0, 0)
    assert len(lp.encode(5, 6, 7)) == lp.N_CELLS == 64


def test_pattern_survives_blur_and_noise():
    import PIL.Image
    import PIL.ImageFilter
    rng = np.random.default_rng(2)
    for i, (ts, counter, clicks) in enumerate(CASES):
        img = PIL.Image.fromarray(pattern_frame(ts, counter, clicks, busy_background(i)))
        blurred = np.asarray(img.filter(PIL.ImageFilter.GaussianBlur(3)), np.float32)
        noisy = np.clip(blurred + rng.normal(0, 12, blurred.shape), 0, 255).astype(np.uint8)
        assert lp.read(noisy) == lp.Reading(ts, counter, clicks)


def test_pattern_survives_strong_jpeg():
    import io

    import PIL.Image
    for ts, counter, clicks in CASES:
        buf = io.BytesIO()
        PIL.Image.fromarray(pattern_frame(ts, counter, clicks)).save(buf, "JPEG", quality=10)
        assert lp.read(np.asarray(PIL.Image.open(io.BytesIO(buf.getvalue())))) == lp.Reading(ts, counter, clicks)


def _through_h264(bit_rate: int, n: int = 45):
    """A panning background and a new pattern every frame through x264 at `bit_rate`, decoded
    by FFmpeg. Returns (what was drawn, decoded frames)."""
    import av
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = 1024, 768, "yuv420p"
    enc.bit_rate = bit_rate
    enc.framerate = 30
    enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    dec = av.CodecContext.create("h264", "r")
    tex = lp.texture(2048, 768, 9)[..., 2::-1]
    truth, got = [], []
    for i in range(n):
        ts, counter, clicks = 1_000_000 + 17 * i, i % 256, i // 10
        rgb = pattern_frame(ts, counter, clicks, np.ascontiguousarray(tex[:, 8 * i:8 * i + 1024]))
        truth.append(lp.Reading(ts, counter, clicks))
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        for pkt in enc.encode(frame):
            got += dec.decode(pkt)
    for pkt in enc.encode(None):
        got += dec.decode(pkt)
    assert len(got) == len(truth)
    return truth, got


@pytest.mark.parametrize("bit_rate", [400_000, 120_000])
def test_pattern_through_h264_never_misreads(bit_rate):
    """Every decoded frame reads as a pattern that was drawn at or before it, or as nothing. At a
    starved bitrate the encoder leaves the old pattern on screen for a while (that frame really
    shows the old drawing: glass-to-glass counts a drawing at the first frame that shows it), or
    blurs it past reading; it never makes up a value."""
    truth, got = _through_h264(bit_rate)
    readings = [lp.read_yuv_frame(f) for f in got]
    invented = [(i, r) for i, r in enumerate(readings) if r is not None and r not in truth[:i + 1]]
    assert not invented, invented
    exact = sum(r == t for r, t in zip(readings, truth))
    if bit_rate >= 400_000:  # what the agent's rate control leaves a 512x128 region, and less
        assert exact >= 0.8 * len(truth), (exact, len(truth))
        # The RGB path agrees with the Y-plane path.
        assert lp.read(got[-1].to_ndarray(format="rgb24")) == readings[-1]


def test_pattern_rejects_any_single_flipped_cell():
    cells = lp.encode(987654321, 42, 5)
    for i in range(2, lp.N_CELLS):
        bad = list(cells)
        bad[i] ^= 1
        assert lp.read(lp.render(bad)) is None, i


def test_pattern_rejects_torn_low_contrast_and_ambiguous_frames():
    a = lp.render(lp.encode(1000, 1, 0))
    b = lp.render(lp.encode(1016, 2, 0))
    y0 = lp.ORIGIN[1]
    torn = a.copy()
    torn[y0 + 2 * lp.CELL:] = b[y0 + 2 * lp.CELL:]  # the bottom two rows drawn, the top two not yet
    assert lp.read(torn) is None
    # Too little contrast between the references (e.g. a washed-out frame).
    assert lp.read(lp.render(lp.encode(1000, 1, 0), white=140, black=110)) is None
    # A cell halfway between black and white (caught mid-drawing).
    mid = a.copy()
    x, y, w, h = lp.cell_rects()[20]
    mid[y:y + h, x:x + w] = 128
    assert lp.read(mid) is None
    # Nothing there at all, or a frame too small to hold the pattern.
    assert lp.read(np.full((768, 1024), 90, np.uint8)) is None
    assert lp.read(np.zeros((100, 100), np.uint8)) is None


def test_pattern_age():
    now = 1_700_000_000.0375
    ts = int((now - 0.030) * 1000) % (1 << 32)
    assert lp.Reading(ts, 0, 0).age_ms(now) == pytest.approx(30.0, abs=1.0)
    # Across the 2**32 ms wrap of the timestamp.
    wrap_now = (1 << 32) / 1000 + 0.010
    assert lp.Reading((1 << 32) - 5, 0, 0).age_ms(wrap_now) == pytest.approx(14.5, abs=0.01)
    # A timestamp from the future (clock step) is negative, not four billion.
    assert lp.Reading(int(now * 1000 + 100) % (1 << 32), 0, 0).age_ms(now) < 0


# ---- receiver statistics ------------------------------------------------------------------

def test_freezes_and_glass_to_glass():
    import live
    times = [i / 30 for i in range(60)] + [2.5 + i / 30 for i in range(30)]
    assert live.freezes(times) == (1, pytest.approx(2.5 - 59 / 30))
    assert live.freezes([i / 30 for i in range(100)]) == (0, 0.0)
    # The first frame showing a drawing counts; later frames holding it (refinements) do not.
    r1, r2 = lp.Reading(1000, 1, 0), lp.Reading(1016, 2, 0)
    readings = [(1.030, r1), (1.060, r1), (1.050, r2)]
    assert live.glass_to_glass(readings) == pytest.approx([29.5, 33.5])


def test_receiver_summary_is_consistent():
    import live_bench
    times = [i / 30 for i in range(90)]
    m = live_bench.summarize_receiver(times, [], 0, 3.0, 300_000, 400, False, True)
    assert m["fps"] == pytest.approx(30.0)
    assert m["bitrate_kbps"] == pytest.approx(300_000 * 8 / 3.0 / 1000)
    assert m["wire_kbps"] == pytest.approx((300_000 + 400 * 28) * 8 / 3.0 / 1000)
    assert m["freezes"] == 0


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


# ---- decoded-text quality (text_quality.py) -------------------------------------------------

def test_text_luma_is_bt601_limited_range():
    px = np.zeros((1, 4, 4), np.uint8)
    px[0, 0, :3] = 0            # black
    px[0, 1, :3] = 255          # white
    px[0, 2] = (0, 0, 255, 0)   # red (B, G, R, X)
    px[0, 3] = (255, 0, 0, 0)   # blue
    assert text_quality.luma_from_bgrx(px).tolist() == [[16, 235, 81, 41]]


def test_text_best_match_picks_the_closest_picture():
    rng = np.random.default_rng(3)
    source = rng.integers(16, 236, (40, 60)).astype(np.uint8)
    late = np.roll(source, 3, axis=1)  # the state before: text moved
    noisy = np.clip(source.astype(int) + rng.integers(-2, 3, source.shape), 0, 255).astype(np.uint8)
    psnr, ssim = text_quality.best_match(source, [late, noisy, late])
    assert psnr == pytest.approx(quality.psnr(source, noisy))
    assert ssim == pytest.approx(quality.ssim(source, noisy))
    assert text_quality.best_match(source, [source, noisy]) == (math.inf, 1.0)
    assert all(math.isnan(x) for x in text_quality.best_match(source, []))


def test_text_summary_keeps_identical_samples_apart():
    s = text_quality.summarize([(40.0, 0.98), (math.inf, 1.0), (math.nan, math.nan), (50.0, 0.99)])
    assert s == {"text_psnr_db": 45.0, "text_ssim": pytest.approx((0.98 + 1.0 + 0.99) / 3),
                 "text_samples": 3, "text_identical": 1}
    assert text_quality.summarize([(math.inf, 1.0)] * 2) == {"text_ssim": 1.0, "text_samples": 2,
                                                             "text_identical": 2}
    assert text_quality.summarize([]) == {}


# ---- bench.py --quick end to end ----------------------------------------------------------

NEEDED = ("Xvnc", "xterm", "xdotool", "xsetroot", "xdpyinfo", "ffplay", "ffmpeg", "less", "x264", "websockify",
          "gst-launch-1.0", "chromium", "qemu-system-x86_64", "qemu-img")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    missing = [t for t in NEEDED if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing tools {missing} (./loco deps installs them)")
    out = tmp_path_factory.mktemp("bench") / "results"
    r = subprocess.run([sys.executable, str(HERE / "bench.py"), "--quick", "--rerecord", "--out", str(out)],
                       capture_output=True, text=True, timeout=560, env=dict(os.environ))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == bench.CSV_COLUMNS
        rows = list(reader)
    return r.stdout, out, rows


def _table(rows, part):
    t: dict[tuple, dict[str, float]] = {}
    for row in rows:
        if row["part"] == part:
            key = (row["system"], row["receiver"], row["backend"], row["instances"], row["instance"], row["workload"],
                   row["codec"]) if part != "codec" else (row["codec"], row["workload"])
            t.setdefault(key, {})[row["metric"]] = float(row["value"])
    return t


@pytest.mark.timeout(600)
def test_bench_quick_writes_well_formed_rows(quick_run):
    stdout, out, rows = quick_run
    for heading in ("codec matrix", "loco and its peers", "scale: N desktops", "targets"):
        assert heading in stdout, heading  # the summary tables
    assert rows
    for row in rows:
        assert all(row[c] for c in ("date", "host", "cpu_model", "agent_commit", *bench.VERSION_COLUMNS, "settings",
                                    "part", "system", "backend", "instances", "metric")), row
        assert int(row["host_cores"]) > 0 and float(row["ram_gib"]) > 0
        assert math.isfinite(float(row["value"])), row  # every value is a number; unmeasured ones have no row
    assert {row["part"] for row in rows} == {"codec", "compare", "scale"}
    for name in ("codec-matrix.png", "bitrate.png", "cpu-per-frame.png", "psnr.png", "ssim.png",
                 "keyframe.png", "fps-per-core.png", "compare.png", "scale.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


@pytest.mark.timeout(600)
def test_bench_quick_codec_matrix(quick_run):
    _, _, rows = quick_run
    table = _table(rows, "codec")
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


def _consistent_receiver(m: dict) -> None:
    assert m["duration_s"] > 1.0
    assert m["frames"] > 0 and m["fps"] == pytest.approx(m["frames"] / m["duration_s"], rel=1e-9)
    if "bytes" in m:
        assert m["bytes"] > 0
        assert m["bitrate_kbps"] == pytest.approx(m["bytes"] * 8 / m["duration_s"] / 1000, rel=1e-9)
    if "packets" in m:
        assert m["wire_kbps"] == pytest.approx((m["bytes"] + 28 * m["packets"]) * 8 / m["duration_s"] / 1000,
                                               rel=1e-9)
    if "g2g_samples" in m:
        assert m["g2g_samples"] > 0
        assert 0 < m["g2g_ms_p50"] <= m["g2g_ms_p95"] <= m["g2g_ms_max"] < 5000
    if "clicks" in m:
        assert m["clicks"] >= 1 and 0 < m["input_to_photon_ms_p50"] <= m["input_to_photon_ms_max"] < 5000
    if "encoded_frames" in m:
        assert m["encoded_frames"] > 0 and m["agent_cpu_s"] > 0
        assert m["agent_cpu_ms_per_frame"] == pytest.approx(1000 * m["agent_cpu_s"] / m["encoded_frames"], rel=1e-9)
        # The encoder thread's own clock: the encoder ran, and its stages fit in the process's CPU
        # (read from /proc in clock ticks: two ticks of slack).
        encoder_s, convert_s = (m[k] * m["encoded_frames"] / 1000 for k in
                                ("agent_encoder_cpu_ms_per_frame", "agent_convert_cpu_ms_per_frame"))
        assert encoder_s > 0 and convert_s >= 0, m
        assert encoder_s + convert_s <= m["agent_cpu_s"] + 2 / os.sysconf("SC_CLK_TCK"), m
        assert 5 < m["agent_rss_mib"] <= m["agent_peak_rss_mib"] < 1024
    if "host_cpu_cores" in m:
        assert 0 < m["host_cpu_cores"] <= os.cpu_count() + 0.05
        assert 0 < m["host_busy_percent"] <= 100.0 + 1e-9


@pytest.mark.timeout(600)
def test_bench_quick_compare(quick_run):
    _, _, rows = quick_run
    t = _table(rows, "compare")
    get = lambda system, receiver: t[(system, receiver, "xvnc", "1", "", "motion",  # noqa: E731
                                      "tight" if system == "novnc" else ("" if system == "ratio" else "h264"))]
    loco, chrome, novnc = get("loco", "aiortc"), get("loco", "chromium"), get("novnc", "chromium")
    for m in (loco, chrome, novnc):
        _consistent_receiver(m)
        assert "g2g_samples" in m and "clicks" in m and "receiver_cpu_cores" in m
    assert "packets" in loco and "bytes" in novnc and "encoded_frames" in chrome
    gst, x264 = get("gstreamer", ""), get("x264", "")
    for m in (gst, x264):
        assert m["frames"] > 0 and m["cpu_s"] > 0
        assert m["cpu_ms_per_frame"] == pytest.approx(1000 * m["cpu_s"] / m["frames"], rel=1e-9)
    # Decoded-text quality on typing (--quick: 2 samples per system).
    for system, receiver, codec in (("loco", "aiortc", "h264"), ("loco-cbr", "aiortc", "h264"),
                                    ("novnc", "chromium", "tight")):
        m = t[(system, receiver, "xvnc", "1", "", "typing", codec)]
        assert m["text_samples"] == 2 and 0 <= m["text_identical"] <= 2, (system, m)
        assert 0.5 < m["text_ssim"] <= 1.0, (system, m)
        assert ("text_psnr_db" in m) == (m["text_identical"] < 2), (system, m)
        assert m.get("text_psnr_db", 99) > 20, (system, m)
    assert "text_samples" not in t[("loco", "aiortc", "xvnc", "1", "", "motion", "h264")]
    ratio = get("ratio", "")
    assert ratio["cpu_per_frame_loco_over_x264"] == pytest.approx(
        loco["agent_cpu_ms_per_frame"] / x264["cpu_ms_per_frame"], rel=1e-9)
    assert ratio["cpu_per_frame_loco_over_own_encoder"] == pytest.approx(
        loco["agent_cpu_ms_per_frame"] / loco["agent_encoder_cpu_ms_per_frame"], rel=1e-9)
    assert ratio["cpu_per_frame_loco_over_gstreamer"] == pytest.approx(
        loco["agent_cpu_ms_per_frame"] / gst["cpu_ms_per_frame"], rel=1e-9)
    assert ratio["bitrate_loco_over_novnc"] == pytest.approx(loco["bitrate_kbps"] / novnc["bitrate_kbps"], rel=1e-9)
    assert ratio["g2g_p50_loco_aiortc_over_novnc"] == pytest.approx(loco["g2g_ms_p50"] / novnc["g2g_ms_p50"],
                                                                     rel=1e-9)


@pytest.mark.timeout(600)
def test_bench_quick_scale(quick_run):
    _, _, rows = quick_run
    t = _table(rows, "scale")
    for backend, busy in (("xvnc", "motion"), ("standin", "flood")):
        for w in ("idle", busy):
            one = t[("loco", "aiortc", backend, "1", "1", w, "h264")]
            agg = t[("loco", "aiortc", backend, "1", "all", w, "h264")]
            assert agg["duration_s"] == pytest.approx(one["duration_s"])
            assert agg["bytes"] == one["bytes"] and agg["frames"] == one["frames"]
            assert agg["bitrate_kbps"] == pytest.approx(agg["bytes"] * 8 / agg["duration_s"] / 1000, rel=1e-9)
            assert agg["fps_mean"] == pytest.approx(one["fps"]) and agg["fps_min"] == pytest.approx(one["fps"])
            assert agg["agent_rss_mib"] > 5 and agg["host_cpu_cores"] > 0
            if w == busy:
                _consistent_receiver({k: v for k, v in one.items() if k != "agent_peak_rss_mib"} |
                                     {"agent_peak_rss_mib": agg["agent_peak_rss_mib"]})
                assert "freezes" in agg
                for key in ("agent_encoder_cpu_ms_per_frame", "agent_convert_cpu_ms_per_frame"):
                    assert agg[key] == pytest.approx(one[key], rel=1e-9), key
        assert t[("loco", "aiortc", backend, "1", "all", "", "h264")]["boot_s"] >= 0
    motion = t[("loco", "aiortc", "xvnc", "1", "all", "motion", "h264")]
    assert motion["g2g_samples"] > 0 and motion["clicks"] >= 1


def test_bare_x264_input_loses_repeated_frames_only(tmp_path):
    # Frames a a b a c c c + half a frame: the repeats after a frame go, a frame seen before
    # but not just before stays, and so does the order.
    size = 6
    frames = [bytes([v]) * size for v in b"aabaccc"]
    raw = tmp_path / "f.yuv"
    raw.write_bytes(b"".join(frames) + b"x" * (size // 2))
    assert peers.drop_repeated_frames(raw, size) == (4, 3)
    assert raw.read_bytes() == b"".join(bytes([v]) * size for v in b"abac")
    empty = tmp_path / "e.yuv"
    empty.write_bytes(b"")
    assert peers.drop_repeated_frames(empty, size) == (0, 0)


def test_time_x264_codes_the_distinct_pictures_and_removes_the_input(tmp_path):
    # Three distinct 1024x768 pictures, the second one twice: x264 gets three.
    rng = np.random.default_rng(7)
    pictures = [rng.integers(0, 256, 1024 * 768 * 3 // 2, dtype=np.uint8).tobytes() for _ in range(3)]
    raw = tmp_path / "frames.yuv"
    raw.write_bytes(pictures[0] + pictures[1] + pictures[1] + pictures[2])
    r = peers.time_x264(raw, tmp_path)
    assert (r["frames"], r["repeats_dropped"]) == (3, 1)
    assert r["cpu_s"] > 0 and not raw.exists()
    assert "--crf 23 --qpmin 20" in r["command"]


def test_cpu_split_of_the_agent(tmp_path):
    import agent_figures
    from loco_testkit.httpio import parse_metrics

    def snapshot(convert: float, encode: float):
        return parse_metrics(
            f'loco_encoder_cpu_seconds_total{{codec="h264",stage="convert"}} {convert}\n'
            f'loco_encoder_cpu_seconds_total{{codec="h264",stage="encode"}} {encode}\n'
            f'loco_encoder_cpu_seconds_total{{codec="vp8",stage="encode"}} 99\n')
    # 100 frames; 0.5 s of process CPU, of which 0.3 s encoding and 0.05 s converting.
    split = agent_figures.cpu_split(snapshot(1.0, 2.0), snapshot(1.05, 2.3), 0.5, 100)
    assert split == pytest.approx({"agent_cpu_ms_per_frame": 5.0, "encoder_ms_per_frame": 3.0,
                                   "convert_ms_per_frame": 0.5, "rest_ms_per_frame": 1.5})
    assert set(agent_figures.cpu_split(snapshot(1, 2), snapshot(1, 2), 0.0, 0).values()) == {None}
