"""The test-pattern guest's sound: QEMU's ES1370, the guest's snd-ens1370 + OSS emulation, and
the tone it plays per loco.tone, recorded by QEMU's `wav` audiodev and checked by FFT.

    ~/.cache/loco/venv/bin/python -m pytest -p no:cacheprovider -q packer/testpattern/test_audio.py

Needs QEMU, the guest's build inputs (packer/testpattern/build.sh: linux-image-amd64,
busybox-static) and numpy. About 40 s under TCG (four boots of ~5 s to READY; the tone starts
~0.4 s after READY).

The wav backend writes only while the guest's DAC runs: a burst's silence (and a guest that
plays nothing) adds no samples, so the recording is the bursts back to back.
"""
from __future__ import annotations

import re
import shutil
import struct
import threading
import time
import wave

import numpy as np
import pytest

import testguest

HZ = 440
PLAY_S = 3.0
VNC_RATE = 48000


@pytest.fixture(scope="module")
def paths():
    if not shutil.which("qemu-system-x86_64"):
        pytest.fail("qemu-system-x86_64 is missing: apt-get install -y qemu-system-x86")
    return testguest.build()


def wait_for(g, pattern, timeout):
    """Seconds since QEMU started when `pattern` (a regex) first shows on the guest's serial."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, g.serial(), re.M):
            return time.monotonic() - g.t_start
        g._check_alive()
        time.sleep(0.05)
    raise TimeoutError(f"no {pattern!r} on the serial console after {timeout}s:\n{g.serial()}")


def record(paths, tmp_path, tone, play_s=PLAY_S, after="^" + re.escape(testguest.TONE_ON_MARKER)):
    """Boot with audio into a WAV, wait for `after`, let it play, quit QEMU; (rate, samples, g, times)."""
    wav = tmp_path / "guest.wav"
    g = testguest.Guest(paths, audio=True, audiodev=f"wav,path={wav}", tone=tone, workdir=str(tmp_path))
    g.start()
    try:
        t_ready = g.wait_ready()
        t_on = wait_for(g, after, 60)
        time.sleep(play_s)
        t_quit = time.monotonic() - g.t_start
    finally:
        g.stop()  # SIGTERM: QEMU shuts down cleanly and finishes the WAV header
    assert g.proc.returncode == 0, f"QEMU exited {g.proc.returncode}: {open(g.qemu_log).read()}"
    with wave.open(str(wav)) as w:
        rate, ch, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert width == 2
    samples = data.reshape(-1, ch).astype(np.float64)
    print(f"\nboot to READY {t_ready:.2f}s, marker {after!r} at {t_on:.2f}s, quit at {t_quit:.2f}s; "
          f"WAV {rate} Hz x{ch}, {len(samples) / rate:.2f}s of samples")
    return rate, samples, g, (t_ready, t_on, t_quit)


def peak_hz(x, rate):
    w = np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x * w))
    f = np.fft.rfftfreq(len(x), 1 / rate)
    k = int(np.argmax(spec[1:])) + 1
    # Parabolic interpolation on the log magnitude for a sub-bin estimate.
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
    d = 0.5 * (a - c) / (a - 2 * b + c)
    power = spec**2
    band = (f > f[k] - 20) & (f < f[k] + 20)
    return f[k] + d * (f[1] - f[0]), float(power[band].sum() / power.sum())


def test_qemu_command_audio(paths):
    base = testguest.qemu_command(paths, vnc_port=5903, serial_log="/tmp/s.log")
    assert not any("audio" in a or "ES1370" in a for a in base)
    assert base == testguest.qemu_command(paths, vnc_port=5903, serial_log="/tmp/s.log", audio=False)
    cmd = testguest.qemu_command(paths, vnc_port=5903, audio=True, tone=(440, 1000, 1000))
    assert cmd[cmd.index("-audiodev") + 1] == "none,id=snd0"
    assert cmd[cmd.index("-device", cmd.index("-audiodev")) + 1] == "ES1370,audiodev=snd0"
    assert cmd[cmd.index("-vnc") + 1] == "127.0.0.1:3,audiodev=snd0"
    assert cmd[-1].endswith(" loco.tone=440,1000,1000")
    cmd = testguest.qemu_command(paths, vnc_unix="/tmp/v.sock", audio=True, audiodev="wav,path=/tmp/x.wav", tone=880)
    assert cmd[cmd.index("-audiodev") + 1] == "wav,path=/tmp/x.wav,id=snd0"
    assert cmd[cmd.index("-vnc") + 1] == "unix:/tmp/v.sock,audiodev=snd0"
    assert cmd[-1].endswith(" loco.tone=880")
    assert "-vnc" not in testguest.qemu_command(paths, audio=True)
    for bad in [dict(tone=440), dict(audiodev="wav,path=x"), dict(audio=True, tone=(440, 1000)),
                dict(audio=True, tone=5), dict(audio=True, tone=440.5), dict(audio=True, audiodev="none,id=x")]:
        with pytest.raises(ValueError):
            testguest.qemu_command(paths, **bad)


def test_tone_bursts(paths, tmp_path):
    """440 Hz in 1 s bursts with 0.5 s gaps: the markers alternate, the WAV holds a clean 440 Hz."""
    t0 = time.monotonic()
    rate, s, g, (t_ready, t_on, t_quit) = record(paths, tmp_path, (HZ, 1000, 500))
    serial = g.serial()
    marks = re.findall(r"^(LOCO-TONE: .*)$", serial, re.M)
    on, off = f"{testguest.TONE_ON_MARKER} {HZ}", testguest.TONE_OFF_MARKER
    assert marks[:4] == [on, off, on, off], serial
    assert "ERROR" not in serial, serial
    n_on = marks.count(on)
    # Each burst that started is in the recording (the last perhaps cut short by the quit).
    assert (n_on - 1) * rate <= len(s) <= n_on * rate + rate // 10, (n_on, len(s) / rate)
    assert np.array_equal(s[:, 0], s[:, -1]), "the guest is mono: both channels the same"
    x = s[:, 0]
    f_all, purity = peak_hz(x, rate)  # the whole recording: bursts, each ending in ~20 ms of zeros
    burst = x[rate // 10 : rate - rate // 10]  # inside the first burst, past its fade
    f, _ = peak_hz(burst, rate)
    rms = float(np.sqrt(np.mean(burst**2)))
    # Nothing resamples or mixes it (44100 Hz S16 from the guest's DAC to the WAV): the samples
    # are the guest's own, amp * sin(2 pi HZ i / 44100) rounded toward zero.
    i = np.arange(rate // 10, rate - rate // 10)
    err = float(np.abs(burst - 16384 * np.sin(2 * np.pi * HZ * i / rate)).max())
    print(f"bursts: peak {f:.3f} Hz in the first burst ({f_all:.2f} Hz over the whole recording, "
          f"{purity * 100:.3f}% of its power within 20 Hz); RMS {rms:.0f} ({20 * np.log10(rms / 32768):.1f} dBFS), "
          f"max {np.abs(x).max():.0f}, max error from the ideal sine {err:.2f} LSB; {n_on} bursts; "
          f"test {time.monotonic() - t0:.1f}s")
    assert abs(f - HZ) <= 5 and abs(f_all - HZ) <= 5
    assert purity > 0.99
    assert 16384 / np.sqrt(2) * 0.9 < rms < 16384 / np.sqrt(2) * 1.1  # -6 dBFS sine (-9 dBFS RMS)
    assert err < 2


def test_tone_continuous(paths, tmp_path):
    """loco.tone=440: one unbroken tone from the 'on' marker until QEMU quits."""
    t0 = time.monotonic()
    rate, s, g, (t_ready, t_on, t_quit) = record(paths, tmp_path, HZ)
    marks = re.findall(r"^(LOCO-TONE: .*)$", g.serial(), re.M)
    assert marks == [f"{testguest.TONE_ON_MARKER} {HZ}"], g.serial()
    played = len(s) / rate
    assert PLAY_S - 0.5 <= played <= t_quit - t_on + 0.5, (played, t_quit - t_on)
    x = s[:, 0]
    f, purity = peak_hz(x, rate)
    # Unbroken: no 20 ms block anywhere (but the very end) much quieter than the tone.
    blk = rate // 50
    env = np.sqrt(np.mean(x[: len(x) // blk * blk].reshape(-1, blk) ** 2, axis=1))
    print(f"continuous: peak {f:.2f} Hz, {purity * 100:.3f}% within 20 Hz; {played:.2f}s played "
          f"({t_quit - t_on:.2f}s from the marker to the quit); quietest 20 ms block RMS "
          f"{env[:-1].min():.0f}; test {time.monotonic() - t0:.1f}s")
    assert abs(f - HZ) <= 5
    assert purity > 0.99
    assert env[:-1].min() > 0.9 * 16384 / np.sqrt(2)


def test_silent_without_tone(paths, tmp_path):
    """audio=True and no tone: the driver loads, /dev/dsp is there, and nothing is played."""
    t0 = time.monotonic()
    rate, s, g, _ = record(paths, tmp_path, None, play_s=2.0, after=r"^LOCO-TESTGUEST: sound: ES1370 /dev/dsp ready")
    assert "LOCO-TONE" not in g.serial(), g.serial()
    peak = float(np.abs(s).max()) if len(s) else 0.0
    print(f"silent: {len(s)} samples, max |sample| {peak:.0f}; test {time.monotonic() - t0:.1f}s")
    assert peak == 0


def test_tone_over_vnc(paths, tmp_path):
    """The decided wiring end to end on QEMU's side: `-vnc ...,audiodev=snd0` hands the tone to a VNC
    client that asks for it (QEMU audio extension: pseudo-encoding -259, client message 255/1,
    server message 255/1 with BEGIN / DATA / END). Audiodev "none", as for the agent, which asks
    for 48 kHz (Opus): QEMU resamples the guest's 44.1 kHz to it."""
    t0 = time.monotonic()
    g = testguest.Guest(paths, audio=True, tone=(HZ, 500, 500), workdir=str(tmp_path))
    g.start()
    events = []  # (seconds since QEMU started, what)
    try:
        t_ready = g.wait_ready()
        c = g.rfb()
        stop = threading.Event()

        def watch_serial():
            seen = 0
            while not stop.is_set():
                lines = g.serial().split("\n")[:-1]  # whole lines only
                for line in lines[seen:]:
                    if line.startswith("LOCO-TONE:"):
                        events.append((time.monotonic() - g.t_start, line))
                seen = len(lines)
                time.sleep(0.005)

        th = threading.Thread(target=watch_serial, daemon=True)
        th.start()
        enc = [0, -259]  # Raw, QEMU audio
        c.sock.sendall(struct.pack(">BxH", 2, len(enc)) + struct.pack(">2i", *enc))
        c.sock.sendall(struct.pack(">BBHBBI", 255, 1, 2, 3, 2, VNC_RATE))  # set format: S16, 2 channels
        c.sock.sendall(struct.pack(">BBH", 255, 1, 0))  # enable
        pcm = bytearray()
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            (mtype,) = c._unpack(">B")
            now = time.monotonic() - g.t_start
            if mtype == 0:  # FramebufferUpdate: the server acknowledges the audio pseudo-encoding
                (n,) = c._unpack(">xH")
                for _ in range(n):
                    x, y, w, h, e = c._unpack(">HHHHi")
                    assert e in (-259, -223), e  # no pixels: none were requested
            elif mtype == 255:
                sub, op = c._unpack(">BH")
                assert sub == 1, sub
                if op == 2:
                    (size,) = c._unpack(">I")
                    if not pcm:
                        events.append((now, "vnc first data"))
                    pcm += c._recv(size)
                else:
                    events.append((now, {0: "vnc end", 1: "vnc begin"}[op]))
            else:
                raise AssertionError(f"unexpected server message {mtype}")
        stop.set()
        th.join()
        c.close()
    finally:
        g.cleanup()
    events.sort()
    for t, what in events:
        print(f"  {t:6.2f}s {what}")
    x = np.frombuffer(bytes(pcm[: len(pcm) // 4 * 4]), "<i2").reshape(-1, 2)[:, 0].astype(np.float64)
    f, purity = peak_hz(x, VNC_RATE)
    first_on = next(t for t, w in events if w.startswith("LOCO-TONE: on"))
    first_data = next(t for t, w in events if w == "vnc first data")
    print(f"vnc: {len(x) / VNC_RATE:.2f}s of audio at {VNC_RATE} Hz, peak {f:.2f} Hz ({purity * 100:.2f}% within 20 Hz); "
          f"first 'on' marker seen {first_on:.3f}s, first audio data {first_data:.3f}s "
          f"(+{(first_data - first_on) * 1000:.0f} ms); READY {t_ready:.2f}s; test {time.monotonic() - t0:.1f}s")
    assert len(x) > VNC_RATE // 2
    assert abs(f - HZ) <= 5
    assert any(w == "vnc begin" for _, w in events) and any(w == "vnc end" for _, w in events)

