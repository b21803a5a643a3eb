"""The filter primitives conditioning needs, on numpy alone: FIR design, FFT filtering, polyphase
resampling, and resampling by any ratio.

They compute what ``scipy.signal.firwin``, ``oaconvolve`` and ``resample_poly`` compute (the tests check
them against scipy.signal), but ``import scipy.signal`` costs about two seconds, which was a third of
scoring a whole night; numpy's FFT (pocketfft) does the heavy lifting here.
"""

from __future__ import annotations

import math

import numpy as np


def firwin(numtaps: int, cutoff: float | list[float], pass_zero: bool = True, fs: float = 2.0,
           window: str | tuple[str, float] = "hamming") -> np.ndarray:
    """Windowed-sinc FIR (``scipy.signal.firwin`` semantics, ``scale=True``).

    ``cutoff`` holds band edges in Hz (the -6 dB points); ``pass_zero`` says whether the first band,
    from 0, passes. ``window`` is "hamming" or ("kaiser", beta), both symmetric.
    """
    edges = np.atleast_1d(np.asarray(cutoff, dtype=np.float64)) / (fs / 2.0)
    if np.any(edges <= 0) or np.any(edges >= 1) or np.any(np.diff(edges) <= 0):
        raise ValueError("cut-offs must increase strictly between 0 and the Nyquist frequency")
    pass_nyquist = bool(edges.size & 1) ^ pass_zero
    if pass_nyquist and numtaps % 2 == 0:
        raise ValueError("a filter that passes the Nyquist frequency needs an odd number of taps")
    edges = np.concatenate([[0.0] * pass_zero, edges, [1.0] * pass_nyquist])
    bands = edges.reshape(-1, 2)
    m = np.arange(numtaps) - 0.5 * (numtaps - 1)
    h = np.zeros(numtaps)
    for left, right in bands:
        h += right * np.sinc(right * m) - left * np.sinc(left * m)
    if window == "hamming":
        h *= np.hamming(numtaps)
    elif isinstance(window, tuple) and window[0] == "kaiser":
        h *= np.kaiser(numtaps, window[1])
    else:
        raise ValueError(f"unsupported window {window!r}")
    left, right = bands[0]
    centre = 0.0 if left == 0 else 1.0 if right == 1 else 0.5 * (left + right)
    return h / np.sum(h * np.cos(np.pi * m * centre))  # unit gain in the middle of the first passband


def _odd_reflect(x: np.ndarray, pad: int) -> np.ndarray:
    """Pad by point reflection about the end samples (keeps value and slope continuous)."""
    if pad <= 0:
        return x
    reach = min(pad, x.shape[0] - 1)
    out = np.pad(x, (reach, reach), mode="reflect", reflect_type="odd")
    return np.pad(out, (pad - reach, pad - reach)) if reach < pad else out  # very short: zeros beyond


def fft_filter(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Apply a symmetric (linear-phase) FIR with its delay removed: zero phase, same length as ``x``.

    Overlap-save with numpy's FFT; the ends are padded by odd reflection. Works in ``x``'s float dtype.
    """
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    x = np.asarray(x, dtype=dtype)
    n_taps = len(taps)
    half = (n_taps - 1) // 2
    if x.shape[0] <= 1:
        return x.copy()
    padded = _odd_reflect(x, half)
    n_fft = 1 << max(15, math.ceil(math.log2(4 * n_taps)))  # ~32k points: few numpy calls, cache-friendly
    step = n_fft - n_taps + 1
    spectrum = np.fft.rfft(taps.astype(dtype), n_fft)
    out = np.empty(x.shape[0], dtype=dtype)
    for start in range(0, x.shape[0], step):
        stop = min(start + step, x.shape[0])
        segment = padded[start:stop + n_taps - 1]
        y = np.fft.irfft(np.fft.rfft(segment, n_fft) * spectrum, n_fft)
        out[start:stop] = y[n_taps - 1:n_taps - 1 + stop - start]
    return out


def resample_poly(x: np.ndarray, up: int, down: int, chunk: int = 1 << 16) -> np.ndarray:
    """Rational resampling by ``up / down`` with a polyphase Kaiser-windowed anti-alias filter.

    The filter is ``scipy.signal.resample_poly``'s (cut-off at the lower Nyquist frequency, 10 zero
    crossings each side, Kaiser beta 5); output sample k sits at input time k * down / up. The ends
    are padded by odd reflection. Works in ``x``'s float dtype.
    """
    g = math.gcd(up, down)
    up, down = up // g, down // g
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    x = np.asarray(x, dtype=dtype)
    if up == down:
        return x.copy()
    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up
    n_out = -(-x.shape[0] * up // down)
    taps_per_phase = -(-h.size // up)
    h = np.concatenate([h, np.zeros(taps_per_phase * up - h.size)])
    pad = taps_per_phase + down
    xp = _odd_reflect(x, pad)
    out = np.empty(n_out, dtype=dtype)
    # y[k] = sum_j h[(t mod up) + j up] * x[t // up - j] with t = k down + half_len; outputs k = r + m up
    # share one phase of the filter and step through x by `down`.
    windows = np.lib.stride_tricks.sliding_window_view(xp, taps_per_phase)  # a view: no copy
    for r in range(min(up, n_out)):
        t = r * down + half_len
        phase = h[t % up::up][::-1].astype(dtype)  # reversed: multiply a forward window of x
        first = t // up - (taps_per_phase - 1) + pad
        rows = windows[first::down][:len(range(r, n_out, up))]
        for m0 in range(0, rows.shape[0], chunk):  # bounded memory when BLAS needs a contiguous copy
            block = rows[m0:m0 + chunk]
            out[r + up * m0:r + up * (m0 + block.shape[0]):up] = block @ phase
    return out


_TABLE_PHASES = 512
"""Fractional positions per input sample at which ``resample_interp`` tabulates its filter."""


def _interp_table(cutoff: float) -> tuple[np.ndarray, int]:
    """The windowed-sinc filter of ``resample_interp`` tabulated at ``_TABLE_PHASES + 1`` fractional delays.

    Row q holds the weights of the input samples ``floor(t) - half + 1 .. floor(t) + half`` for an output
    at ``t = floor(t) + q / _TABLE_PHASES``; ``cutoff`` is in cycles per input sample times two (1 = Nyquist).
    """
    half = math.ceil(10.0 / cutoff)  # 10 zero crossings each side, as resample_poly
    tau = np.arange(_TABLE_PHASES + 1)[:, None] / _TABLE_PHASES - np.arange(1 - half, half + 1)[None, :]
    inside = np.clip(1.0 - (tau * cutoff / 10.0) ** 2, 0.0, None)
    h = cutoff * np.sinc(cutoff * tau) * np.i0(5.0 * np.sqrt(inside)) / np.i0(5.0)  # Kaiser beta 5
    h[np.abs(tau) >= 10.0 / cutoff] = 0.0
    return h / h.sum(axis=1, keepdims=True), half  # unit gain at DC for every delay


def resample_interp(x: np.ndarray, rate_in: float, rate_out: float, chunk: int = 1 << 14) -> np.ndarray:
    """Resample by any ratio: output sample k is the band-limited value at input time k * rate_in / rate_out.

    The anti-alias filter is ``resample_poly``'s (cut-off at the lower Nyquist frequency, 10 zero
    crossings each side, Kaiser beta 5), evaluated at each output's own fractional delay by linear
    interpolation in a finely sampled table: no rational approximation, so no drift over a night.
    The ends are padded by odd reflection. Works in ``x``'s float dtype.
    """
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    x = np.asarray(x, dtype=dtype)
    step = rate_in / rate_out
    table, half = _interp_table(min(1.0, 1.0 / step))
    table = table.astype(dtype)
    n_out = math.ceil(x.shape[0] / step - 1e-9)
    pad = 2 * half + 1
    windows = np.lib.stride_tricks.sliding_window_view(_odd_reflect(x, pad), 2 * half)  # a view: no copy
    out = np.empty(n_out, dtype=dtype)
    for k0 in range(0, n_out, chunk):  # bounded memory: each chunk gathers (chunk, 2 * half) samples
        t = np.arange(k0, min(k0 + chunk, n_out)) * step
        whole = np.floor(t)
        position = (t - whole) * _TABLE_PHASES
        q = np.minimum(position.astype(np.int64), _TABLE_PHASES - 1)
        frac = (position - q).astype(dtype)
        rows = windows[whole.astype(np.int64) - half + 1 + pad]
        below = np.einsum("ij,ij->i", rows, table[q])
        above = np.einsum("ij,ij->i", rows, table[q + 1])
        out[k0:k0 + t.size] = below + frac * (above - below)
    return out
