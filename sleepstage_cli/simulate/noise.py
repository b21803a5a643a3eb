"""Signal primitives of the simulator: coloured noise, smooth envelopes, event placement, mains.

Everything works on whole nights at once (vectorised numpy, float32), so an 8-hour recording at
256 Hz is a handful of FFTs and array passes rather than a loop over samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.fft

COARSE_RATE = 4.0
"""Hz; envelopes and slow signals are built on this grid and interpolated up to the sampling rate."""

_CHUNK = 1 << 16  # samples per step of in-place accumulation (fits in cache)


def spectral_noise(rng: np.random.Generator, n: int, fs: float, f_lo: float, f_hi: float,
                   amplitude: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Stationary Gaussian noise with a given amplitude spectrum, normalised to unit RMS.

    Parameters
    ----------
    rng : random generator (consumed: 2 normals per frequency bin inside the band).
    n : samples to return.
    fs : sampling rate, Hz.
    f_lo, f_hi : band edges, Hz; bins outside are zero.
    amplitude : amplitude (not power) spectrum shape as a function of frequency in Hz; flat if None.

    Returns
    -------
    float32 array of ``n`` samples, RMS 1 (dimensionless; callers scale to µV).
    """
    m = scipy.fft.next_fast_len(max(n, 8), real=True)
    n_bins = m // 2 + 1
    k0 = max(1, int(math.ceil(f_lo * m / fs)))
    k1 = min(n_bins - 1, int(math.floor(f_hi * m / fs)))
    spec = np.zeros(n_bins, dtype=np.complex64)
    if k1 >= k0:
        freqs = (np.arange(k0, k1 + 1) * (fs / m)).astype(np.float32)
        shape = np.ones_like(freqs) if amplitude is None else amplitude(freqs)
        z = rng.standard_normal((2, k1 - k0 + 1), dtype=np.float32)
        spec[k0:k1 + 1] = (z[0] + 1j * z[1]) * shape.astype(np.float32)
    x = scipy.fft.irfft(spec, n=m)[:n]
    rms = math.sqrt(float(np.dot(x, x)) / max(n, 1))
    if rms > 0:
        x *= np.float32(1.0 / rms)
    return np.ascontiguousarray(x, dtype=np.float32)


def band_shape(f_lo: float, f_hi: float, edge: float) -> Callable[[np.ndarray], np.ndarray]:
    """Flat pass band [f_lo, f_hi] Hz with raised-cosine skirts ``edge`` Hz wide (no ringing)."""

    def shape(f: np.ndarray) -> np.ndarray:
        lo = np.clip((f - (f_lo - edge)) / edge, 0.0, 1.0)
        hi = np.clip(((f_hi + edge) - f) / edge, 0.0, 1.0)
        return (0.5 - 0.5 * np.cos(np.pi * lo)) * (0.5 - 0.5 * np.cos(np.pi * hi))

    return shape


def upsample_linear(coarse: np.ndarray, factor: int, n: int) -> np.ndarray:
    """Linear interpolation of a coarse-grid series to ``factor`` samples per step, first ``n`` kept.

    ``coarse`` must hold at least ``ceil(n / factor) + 1`` points.
    """
    c = np.asarray(coarse, dtype=np.float32)
    need = -(-n // factor) + 1
    if c.shape[0] < need:
        c = np.concatenate([c, np.full(need - c.shape[0], c[-1], dtype=np.float32)])
    c = c[:need]
    w = np.arange(factor, dtype=np.float32) / np.float32(factor)
    out = c[:-1, None] + (c[1:] - c[:-1])[:, None] * w
    return out.reshape(-1)[:n]


def step_envelope(starts: np.ndarray, ends: np.ndarray, values: np.ndarray, times: np.ndarray,
                  ramp: float = 2.5) -> np.ndarray:
    """Piecewise-constant values per segment, with linear ramps across segment borders.

    Parameters
    ----------
    starts, ends : segment bounds, seconds (contiguous, increasing).
    values : one value per segment.
    times : where to evaluate, seconds.
    ramp : half-width of the blend at each border, seconds (so a stage change never clicks).
    """
    half = np.minimum(ramp, (ends - starts) / 2.0)
    knots_t = np.column_stack([starts + half, ends - half]).reshape(-1)
    knots_v = np.repeat(np.asarray(values, dtype=float), 2)
    return np.interp(times, knots_t, knots_v)


def place_events(n: int, start_idx: np.ndarray, waves: np.ndarray) -> np.ndarray:
    """Sum of waveforms ``waves[i]`` placed from sample ``start_idx[i]`` (overlaps add; edges clipped).

    Returns a float32 array of ``n`` samples.
    """
    if waves.size == 0 or n == 0:
        return np.zeros(n, dtype=np.float32)
    length = waves.shape[1]
    idx = np.asarray(start_idx, dtype=np.int64)[:, None] + np.arange(length)
    ok = (idx >= 0) & (idx < n)
    out = np.zeros(n, dtype=np.float32)
    np.add.at(out, idx[ok], waves[ok].astype(np.float32))
    return out


def tiled_sinusoid(n: int, fs: float, freq: float, phase: float) -> np.ndarray:
    """cos(2 pi freq t + phase) for ``n`` samples, built from one exact period (fs, freq whole Hz)."""
    fs_i, f_i = int(round(fs)), int(round(freq))
    if fs_i != fs or f_i != freq or f_i <= 0:
        t = np.arange(n) / fs
        return np.cos(2 * np.pi * freq * t + phase).astype(np.float32)
    period = fs_i // math.gcd(fs_i, f_i)
    base = np.cos(2 * np.pi * f_i * np.arange(period) / fs_i + phase).astype(np.float32)
    return np.tile(base, -(-n // period))[:n]


def add_shifted(out: np.ndarray, source: np.ndarray, shift: int, weight: float) -> None:
    """``out += weight * roll(source, shift)`` without building the rolled copy.

    A circular shift of minutes turns one long noise realisation into another that is, for any
    analysis at physiological time scales, independent of it; it saves an FFT per channel.
    """
    n = out.shape[0]
    s = int(shift) % n if n else 0
    w = out.dtype.type(weight)
    # In cache-sized chunks through one small buffer: a night-long temporary costs more in fresh
    # memory than the arithmetic itself.
    tmp = np.empty(min(_CHUNK, n), dtype=out.dtype)
    for dst, src in ((out[s:], source[:n - s]), (out[:s], source[n - s:n])):
        for a in range(0, dst.shape[0], _CHUNK):
            b = min(a + _CHUNK, dst.shape[0])
            t = tmp[:b - a]
            np.multiply(src[a:b], w, out=t)
            dst[a:b] += t
