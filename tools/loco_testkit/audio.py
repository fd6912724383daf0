"""Sound checks shared by the tests and benchmark/audio_figures.py: the strongest frequency and
the level of decoded PCM, when a guest's serial lines appeared, a thread's CPU time."""
from __future__ import annotations

import os
import threading
import time

import numpy as np


def dominant_hz(pcm: np.ndarray, rate: int) -> float:
    """The strongest frequency in `pcm` (samples x channels, or samples), Hann window and
    parabolic interpolation between FFT bins."""
    x = pcm.astype(np.float64)
    mono = x.mean(axis=1) if x.ndim == 2 else x
    mono = mono - mono.mean()
    spec = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1:k + 2] + 1e-12)
    denom = a - 2 * b + c
    shift = 0.5 * (a - c) / denom if denom != 0 else 0.0
    return (k + shift) * rate / len(mono)


def rms(pcm: np.ndarray) -> float:
    """Root mean square of the samples (0 for none)."""
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if pcm.size else 0.0


class SerialWatch:
    """Polls a serial log file every 2 ms and notes the host time each new line appeared."""

    def __init__(self, path):
        self.path, self.lines, self._stop = path, [], threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        seen = 0
        buf = ""
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(seen)
                    data = f.read()
            except FileNotFoundError:
                data = b""
            if data:
                now = time.monotonic()
                seen += len(data)
                buf += data.decode(errors="replace")
                *done, buf = buf.split("\n")
                self.lines.extend((now, line.strip()) for line in done)
            time.sleep(0.002)

    def times(self, prefix: str) -> list[float]:
        return [t for t, line in list(self.lines) if line.startswith(prefix)]

    def stop(self):
        self._stop.set()
        self._t.join(2)


def thread_cpu_seconds(pid: int, name: str) -> float:
    """utime+stime of the process's threads called `name`."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            if comm != name:
                continue
            fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / tick
