"""Sound checks shared by the tests: the strongest frequency and the level of decoded PCM."""
from __future__ import annotations

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
