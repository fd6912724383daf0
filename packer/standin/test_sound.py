"""The stand-in's sound, for real: boot it in QEMU with its sound card (ES1370, packer/qemu-args.json)
playing into a WAV file (`-audiodev wav,path=OUT.wav,id=snd0` instead of `none`), play tones on
demand over the serial console (loco-tone in the guest, StandinVM.tone()), stop QEMU, and look at
what the card played.

    ~/.cache/loco/venv/bin/python -m pytest -q -s packer/standin/test_sound.py

Needs the built image (packer/standin/build.sh; the test FAILS, with that command, when it is
missing), QEMU and the venv's numpy. No agent: this is the guest half of the audio path (the
agent's half, QEMU's VNC audio to Opus over WebRTC, is tested with the agent).

QEMU's wav backend writes only while the guest's DAC runs: while nothing plays it adds no samples
(or silent ones), so the recording is the tones back to back, not a timeline.

What is checked:
- while the desktop idles nothing is heard: what QEMU wrote to the WAV file before the first tone
  and between the tones is silence (no samples, or silent ones), and the whole recording is no
  longer than the two tones and a little;
- `loco-tone 440 2` makes the card play 440 Hz (FFT peak within 5 Hz) for 2 s (within 0.25 s),
  and nothing else: the loudest other component is far below it;
- a second tone of another pitch (660 Hz, 1 s) follows it, so the tone is the one asked for, not
  a fixed sound;
- the guest says when each tone starts and ends, and the two lines are as far apart as the tone;
- the sound card survives a saved state (what ./loco up starts its VMs from, packer/vmstate.py):
  the VM is saved over QMP, a new QEMU starts from the stream (recording into a second WAV file) and
  its guest plays 880 Hz.
"""
from __future__ import annotations

import shutil
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import vmstate  # packer/
from loco_testkit.standin import BOOT_TIMEOUT, StandinVM, missing_files

HERE = Path(__file__).resolve().parent
SILENT_RMS = 30.0  # of 32768: anything quieter is silence (the tones are at half of full scale, RMS ~11600)


def read_wav(path: Path) -> tuple[int, np.ndarray, int]:
    """(sample rate, samples as float32 [frames, channels], bytes of the data chunk's header
    position) from QEMU's WAV file. QEMU writes the sizes in the header only when it closes the
    file, so the data chunk is taken to run to the end of the file."""
    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE", f"{path} is not a WAV file"
    pos, fmt, data_at = 12, None, None
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], struct.unpack("<I", raw[pos + 4:pos + 8])[0]
        if cid == b"fmt ":
            fmt = struct.unpack("<HHIIHH", raw[pos + 8:pos + 24])
        elif cid == b"data":
            data_at = pos + 8
            break
        pos += 8 + size + (size & 1)
    assert fmt is not None and data_at is not None, f"{path}: no fmt or data chunk"
    tag, channels, rate, _, _, bits = fmt
    assert tag == 1 and bits == 16, f"{path}: not 16-bit PCM ({fmt})"
    data = raw[data_at:]
    data = data[:len(data) // (2 * channels) * 2 * channels]
    return rate, np.frombuffer(data, "<i2").reshape(-1, channels).astype(np.float32), data_at


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def peak_hz(mono: np.ndarray, rate: int) -> tuple[float, float]:
    """The strongest frequency (Hann window, zero-padded to 1 s or more, parabolic interpolation)
    and how far the next strongest peak (more than 20 Hz away) is below it, in dB."""
    n = max(len(mono), rate)
    spec = np.abs(np.fft.rfft(mono * np.hanning(len(mono)), n))
    k = int(np.argmax(spec[1:])) + 1
    a, b, c = np.log(spec[k - 1:k + 2] + 1e-9)
    shift = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) != 0 else 0.0
    hz = (k + shift) * rate / n
    away = np.abs(np.arange(len(spec)) * rate / n - hz) > 20
    away[0] = False
    other = float(spec[away].max()) if away.any() else 0.0
    return hz, 20 * np.log10(spec[k] / max(other, 1e-9))


def loud_runs(mono: np.ndarray, rate: int, block_s: float = 0.01) -> list[tuple[float, float]]:
    """(start s, end s) of the stretches whose 10 ms blocks are louder than silence (gaps under
    50 ms, e.g. a late period under TCG, are bridged)."""
    blk = int(rate * block_s)
    nb = len(mono) // blk
    loud = [rms(mono[i * blk:(i + 1) * blk]) > SILENT_RMS for i in range(nb)]
    runs, start, quiet = [], None, 0
    for i, on in enumerate(loud + [False] * 6):
        if on:
            if start is None:
                start = i
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet > 5:
                runs.append((start * block_s, (i - quiet + 1) * block_s))
                start, quiet = None, 0
    return runs


@pytest.fixture(scope="module")
def recording():
    missing = missing_files()
    if missing:
        pytest.fail(f"the stand-in image is not built ({', '.join(map(str, missing))} missing); build it with:\n"
                    f"    sudo {HERE / 'build.sh'}", pytrace=False)
    if not shutil.which("qemu-system-x86_64"):
        pytest.fail("qemu-system-x86_64 is not installed (apt-get install -y qemu-system-x86)", pytrace=False)
    work = Path(tempfile.mkdtemp(prefix="loco-sound-test-"))
    wav = work / "out.wav"
    vm = StandinVM("loco-standin-sound", work=work, audio_backend=f"wav,path={wav}", qmp=True)
    t0 = time.monotonic()
    out = {"wav": wav, "work": work}
    try:
        vm.start()
        out["boot_s"] = vm.wait_ready(BOOT_TIMEOUT)
        time.sleep(2.0)  # the desktop idles: nothing may play
        out["before"] = wav.stat().st_size
        out["t440"] = vm.tone(440, 2.0)
        out["t440_end"] = vm.wait_tone_end(60)
        out["after_440"] = wav.stat().st_size
        time.sleep(2.0)
        out["idle"] = wav.stat().st_size
        out["t660"] = vm.tone(660, 1.0)
        out["t660_end"] = vm.wait_tone_end(60)
        out["serial"] = vm.console.text()
        # Save the running VM (as ./loco up does), then quit it: SIGTERM closes the WAV file.
        t_save = time.monotonic()
        with vmstate.QMP(vm.qmp_path, timeout=30) as q:
            q.execute("stop")
            q.execute("migrate", uri=f"file:{work / 'state.mig'}")
            while (q.execute("query-migrate") or {}).get("status") not in ("completed", "failed", "cancelled"):
                time.sleep(0.05)
            assert q.execute("query-migrate")["status"] == "completed"
        out["save_s"] = time.monotonic() - t_save
    finally:
        out["rc"] = vm.stop()
    restored = StandinVM("loco-standin-restored", work=work, audio_backend=f"wav,path={work / 'restored.wav'}",
                         qmp=True, disk=work / "overlay.qcow2", incoming=work / "state.mig")
    try:
        restored.start()
        t_restore = time.monotonic()
        while vmstate.qmp_status(restored.qmp_path, resume=True) != "running":
            assert restored.alive() and time.monotonic() - t_restore < 120, "the saved state did not load"
            time.sleep(0.2)
        out["restore_s"] = time.monotonic() - t_restore
        restored.tone(880, 1.0)
        restored.wait_tone_end(60)
    finally:
        restored.stop()
    out["restored"] = read_wav(work / "restored.wav")
    out["total_s"] = time.monotonic() - t0
    out["rate"], out["samples"], out["data_at"] = read_wav(wav)
    print(f"\nstand-in up after {out['boot_s']:.1f}s; whole run {out['total_s']:.1f}s; WAV {wav.stat().st_size} bytes "
          f"at {out['rate']} Hz, {out['samples'].shape[1]} channel(s)")
    yield out
    shutil.rmtree(work, ignore_errors=True)


def frames_at(rec, size: int) -> int:
    return max(0, size - rec["data_at"]) // (2 * rec["samples"].shape[1])


def test_silence_while_no_tone_plays(recording):
    mono = recording["samples"].mean(axis=1)
    before = mono[:frames_at(recording, recording["before"])]
    between = mono[frames_at(recording, recording["after_440"]):frames_at(recording, recording["idle"])]
    print(f"before the first tone: {len(before)} frames, RMS {rms(before):.1f}; between the tones: "
          f"{len(between)} frames, RMS {rms(between):.1f}")
    assert rms(before) < SILENT_RMS, f"the idle desktop is not silent: RMS {rms(before):.1f} before the first tone"
    assert rms(between) < SILENT_RMS, f"not silent between the tones: RMS {rms(between):.1f}"
    total = len(mono) / recording["rate"]
    print(f"the whole recording: {total:.3f}s for 3 s of tones")
    assert total < 3.0 + 0.5, f"QEMU recorded {total:.2f}s of sound for 3 s of tones"


def test_440_hz_for_2_s(recording):
    rate, mono = recording["rate"], recording["samples"].mean(axis=1)
    first = mono[frames_at(recording, recording["before"]):frames_at(recording, recording["after_440"])]
    runs = loud_runs(first, rate)
    assert runs, f"nothing loud in the {len(first) / rate:.2f}s QEMU played while the 440 Hz tone played"
    start, end = runs[0][0], runs[-1][1]
    tone = first[int(start * rate):int(end * rate)]
    hz, margin_db = peak_hz(tone, rate)
    print(f"440 Hz tone: FFT peak {hz:.2f} Hz, next peak {margin_db:.0f} dB below; heard {end - start:.3f}s in "
          f"{len(runs)} stretch(es); RMS {rms(tone):.0f}; guest's start->end lines "
          f"{recording['t440_end'] - recording['t440']:.3f}s apart")
    assert abs(hz - 440) <= 5, f"the card played {hz:.1f} Hz, not 440 Hz"
    assert margin_db > 20, f"the 440 Hz tone is not clean: another component only {margin_db:.0f} dB below"
    assert abs((end - start) - 2.0) <= 0.25, f"the tone lasted {end - start:.3f}s, not 2 s ({runs})"
    assert 1.8 <= recording["t440_end"] - recording["t440"] <= 4.0


def test_second_tone_is_the_pitch_asked_for(recording):
    rate, mono = recording["rate"], recording["samples"].mean(axis=1)
    second = mono[frames_at(recording, recording["idle"]):]
    runs = loud_runs(second, rate)
    assert runs, "nothing loud while the 660 Hz tone played"
    tone = second[int(runs[0][0] * rate):int(runs[-1][1] * rate)]
    hz, _ = peak_hz(tone, rate)
    print(f"660 Hz tone: FFT peak {hz:.2f} Hz, heard {runs[-1][1] - runs[0][0]:.3f}s")
    assert abs(hz - 660) <= 5, f"the card played {hz:.1f} Hz, not 660 Hz"
    assert abs((runs[-1][1] - runs[0][0]) - 1.0) <= 0.25


def test_tone_after_restoring_a_saved_state(recording):
    rate, samples, _ = recording["restored"]
    mono = samples.mean(axis=1)
    runs = loud_runs(mono, rate)
    assert runs, "the VM started from the saved state played nothing"
    tone = mono[int(runs[0][0] * rate):int(runs[-1][1] * rate)]
    hz, _ = peak_hz(tone, rate)
    print(f"saved in {recording['save_s']:.1f}s, running again {recording['restore_s']:.1f}s after QEMU started from it; "
          f"880 Hz tone after the restore: FFT peak {hz:.2f} Hz, heard {runs[-1][1] - runs[0][0]:.3f}s")
    assert abs(hz - 880) <= 5, f"after the restore the card played {hz:.1f} Hz, not 880 Hz"
    assert abs((runs[-1][1] - runs[0][0]) - 1.0) <= 0.25


def test_guest_says_when_tones_start_and_end(recording):
    text = recording["serial"]
    for line in ("loco-standin: tone start 440 t1", "loco-standin: tone end 440 t1",
                 "loco-standin: tone start 660 t2", "loco-standin: tone end 660 t2"):
        assert line in text, f"no {line!r} on the serial console"
    assert "tone failed" not in text
    assert recording["t440"] < recording["t440_end"] < recording["t660"] < recording["t660_end"]
