"""Signal conditioning as SeqSleepNet's preprocessing describes it: zero-phase FIR filters, polyphase
resampling to 100 Hz, per-night standardisation.

Rates that are not a ratio of small integers to 100 Hz (199.99 Hz from an amplifier whose clock drifts,
or a record duration such as 1.00005 s) are resampled by windowed-sinc interpolation at the exact
output times instead, with the same anti-alias filter, so no rate is refused and none drifts.

EEG and EOG are band-passed 0.3-40 Hz; EMG is high-passed at 10 Hz with notches at 50 and 60 Hz.
Cut-offs are the -6 dB points of windowed-sinc (Hamming) FIR filters, applied forwards with their
delay removed, so the phase is zero. The original used order-100 FIRs, which at 256 Hz pass 76 % of
DC (forwards and backwards) and barely touch anything below 1 Hz; ours are long enough to meet the
stated band (transition 0.3 Hz wide for EEG/EOG, 1 Hz for EMG).

EEG and EOG are resampled first and band-passed at 100 Hz: both steps are linear and the band ends
at 40 Hz, below the resampler's 50 Hz cut-off, so the order does not change the result, and the
long filter then runs on 2.5 times fewer samples at 2.5 times fewer taps. EMG is filtered at its
own rate first: its 50 and 60 Hz notches must act before the rate drops to 100 Hz. Samples are
float32 throughout (EDF holds 16-bit values), which halves the memory of a long night.

Two choices reproduce the released code instead (SPEC.md), both recorded in the Conditioning:
``filters="original"`` designs the released order-100 FIRs (MATLAB ``fir1(100, ...)``: 101 Hamming-windowed
taps) at each channel's native rate and applies them forwards and backwards (``scipy.signal.filtfilt``, so
the magnitude response is squared) before resampling: at 256 Hz 76 % of DC passes the EEG/EOG band-pass
and the 2-Hz-wide EMG notches take 50 and 60 Hz down by only 4.5 dB per pass (9 dB forwards and backwards).
``standardise=False`` keeps the signals in the units they are read in (microvolts), as the published
results had them: the released loop meant to standardise each night standardised only its first 3 samples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from sleepstage_cli.conditioning import dsp
from sleepstage_cli.constants import EPOCH_SAMPLES, EPOCH_SECONDS  # noqa: F401  (re-exported)
from sleepstage_cli.constants import SAMPLING_RATE as TARGET_RATE
from sleepstage_cli.errors import InputError

FILTERS = ("sleepstage", "original")
"""Filter designs: ours (long enough to meet the stated bands) or the released order-100 FIRs."""

ORIGINAL_NUMTAPS = 101
"""Taps of the released filters: MATLAB ``fir1(100, ...)`` designs order 100, 101 taps."""


@dataclass(frozen=True)
class Conditioning:
    """Filter settings; stored in every prepared dataset and model so scoring repeats them exactly.

    ``filters`` is one of FILTERS; ``standardise`` says whether each night's channels are brought to
    zero mean and unit standard deviation (else they stay in microvolts). Dicts written before either
    existed load with the defaults, which is what those datasets and models were made with.
    """

    band: tuple[float, float] = (0.3, 40.0)
    band_transition: float = 0.3
    emg_highpass: float = 10.0
    notches: tuple[float, ...] = (50.0, 60.0)
    notch_width: float = 2.0
    emg_transition: float = 1.0
    rate: float = TARGET_RATE
    standardise: bool = True
    filters: str = "sleepstage"

    def __post_init__(self) -> None:
        if self.filters not in FILTERS:
            raise ValueError(f"unknown filters {self.filters!r} (expected {' or '.join(FILTERS)})")
        if not isinstance(self.standardise, bool):
            raise ValueError(f"standardise must be true or false, not {self.standardise!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Conditioning":
        d = dict(data)
        if "band" in d:
            d["band"] = tuple(d["band"])
        if "notches" in d:
            d["notches"] = tuple(d["notches"])
        return cls(**d)

    def describe(self) -> str:
        """The two choices for people, e.g. "standardised per night, sleepstage filters"."""
        scale = "standardised per night" if self.standardise else "not standardised (microvolts)"
        return f"{scale}, {self.filters} filters"


def _numtaps(rate: float, transition: float) -> int:
    # Hamming window: transition width ~ 3.3 * rate / numtaps; odd length keeps it type I (zero phase).
    n = int(math.ceil(3.3 * rate / transition))
    return n + 1 if n % 2 == 0 else n


def design_filter(kind: str, rate: float, cond: Conditioning = Conditioning()) -> np.ndarray:
    """FIR taps for one channel kind at sampling rate ``rate`` (Hz)."""
    if cond.filters == "original":
        return _original_filter(kind, rate, cond)
    nyquist = rate / 2.0
    if kind in ("eeg", "eog"):
        low, high = cond.band
        numtaps = _numtaps(rate, cond.band_transition)
        if high >= nyquist - cond.band_transition:
            return dsp.firwin(numtaps, low, pass_zero=False, fs=rate, window="hamming")
        return dsp.firwin(numtaps, [low, high], pass_zero=False, fs=rate, window="hamming")
    if kind == "emg":
        half = cond.notch_width / 2.0
        edges = [cond.emg_highpass]
        for f in cond.notches:
            if f + half < nyquist - cond.emg_transition:  # a notch at or past Nyquist is the resampler's job
                edges += [f - half, f + half]
        return dsp.firwin(_numtaps(rate, cond.emg_transition), edges, pass_zero=False, fs=rate, window="hamming")
    raise ValueError(f"unknown channel kind {kind!r}")


def _original_filter(kind: str, rate: float, cond: Conditioning) -> np.ndarray:
    """The released design: MATLAB ``fir1(100, edges / (rate / 2))``, i.e. ``scipy.signal.firwin(101, ...)``.

    Same edges as ours (EEG/EOG band-pass, EMG high-pass with notches ``notch_width`` wide), 101 Hamming
    taps whatever the rate; a band edge or notch at or past the Nyquist frequency is left to the resampler.
    """
    from scipy import signal as sps  # about 2 s to import: only when these filters are asked for

    nyquist = rate / 2.0
    if kind in ("eeg", "eog"):
        low, high = cond.band
        edges = [low, high] if high < nyquist else [low]
    elif kind == "emg":
        half = cond.notch_width / 2.0
        edges = [cond.emg_highpass]
        for f in cond.notches:
            if f + half < nyquist:
                edges += [f - half, f + half]
    else:
        raise ValueError(f"unknown channel kind {kind!r}")
    return sps.firwin(ORIGINAL_NUMTAPS, edges, pass_zero=False, fs=rate, window="hamming")


def forward_backward(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """``scipy.signal.filtfilt(taps, 1, x)``, as the released code filters (float32 out).

    The FIR runs forwards, then backwards over the result: zero phase, magnitude response squared.
    """
    from scipy import signal as sps

    x = np.asarray(x)
    if x.shape[0] <= 1:
        return x.astype(np.float32)
    padlen = min(3 * len(taps), x.shape[0] - 1)  # filtfilt's default, shortened for a very short signal
    return sps.filtfilt(taps, 1.0, x, padlen=padlen).astype(np.float32)


def zero_phase_fir(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Apply a symmetric FIR without delay; the ends are padded by odd reflection to avoid edge steps.

    Works in the dtype of ``x`` (float32 or float64).
    """
    return dsp.fft_filter(x, taps)


def resampling_ratio(rate_in: float, rate_out: float = TARGET_RATE) -> tuple[int, int] | None:
    """Integer (up, down) with rate_in * up / down == rate_out (to 1 ppm), both at most 10000.

    None when there is no such pair (e.g. 199.99 Hz): a polyphase filter would need too many phases.
    """
    frac = Fraction(rate_out / rate_in).limit_denominator(10000)
    if frac.numerator > 10000 or abs(rate_in * frac.numerator / frac.denominator - rate_out) > 1e-6 * rate_out:
        return None
    return frac.numerator, frac.denominator


def resample(x: np.ndarray, rate_in: float, rate_out: float = TARGET_RATE) -> np.ndarray:
    """Resampling with a Kaiser-windowed anti-alias filter (in the dtype of ``x``).

    Polyphase for a rational ratio of small integers (every standard rate), else interpolation at the
    exact output times (about three times slower, still a fraction of a second per hour-long channel).
    """
    ratio = resampling_ratio(rate_in, rate_out)
    if ratio is None:
        return dsp.resample_interp(x, rate_in, rate_out)
    return dsp.resample_poly(x, *ratio)


def condition(x: np.ndarray, rate: float, kind: str, cond: Conditioning = Conditioning()) -> np.ndarray:
    """Filter ``x`` (µV at ``rate`` Hz) for its kind and resample it to ``cond.rate`` (float32 out)."""
    x = np.asarray(x, dtype=np.float32)
    if cond.filters == "original":  # every kind at its native rate, as released
        return resample(forward_backward(x, design_filter(kind, rate, cond)), rate, cond.rate)
    if kind == "emg":
        return resample(zero_phase_fir(x, design_filter(kind, rate, cond)), rate, cond.rate)
    return zero_phase_fir(resample(x, rate, cond.rate), design_filter(kind, cond.rate, cond))


def filter_reach(kind: str, rate: float, cond: Conditioning = Conditioning()) -> float:
    """Seconds either side of a sample that its conditioned value depends on (filters and resampler)."""
    # Either resampler's filter spans 10 periods of the lower rate each side.
    resampler = 10.0 / min(rate, cond.rate) if rate != cond.rate else 0.0
    if cond.filters == "original":  # at the native rate, forwards then backwards: twice the half length
        return 2 * (ORIGINAL_NUMTAPS // 2) / rate + resampler
    filt_rate = rate if kind == "emg" else cond.rate
    return (len(design_filter(kind, filt_rate, cond)) // 2) / filt_rate + resampler


def standardise(x: np.ndarray, what: str = "signal", path: str | Path | None = None) -> np.ndarray:
    """Zero mean, unit standard deviation over the whole night, as float32.

    Raises InputError (naming ``path``, the recording) for a flat or non-finite signal, which cannot
    be standardised.
    """
    finite = np.isfinite(x)
    if not finite.all():
        raise InputError(f"{what} contains {int((~finite).sum())} NaN or infinite samples", path)
    mean = float(np.mean(x))
    std = float(np.std(x))
    if not std > 1e-9 * max(1.0, abs(mean)):
        raise InputError(f"{what} is flat (constant {mean:g}); the electrode was probably disconnected", path)
    out = (x - mean) / std
    return out.astype(np.float32)
