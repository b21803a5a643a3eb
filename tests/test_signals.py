"""Conditioning: filter responses, resampling, standardisation, checked against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal as sps

from sleepstage_cli.conditioning.signals import (
    Conditioning,
    condition,
    design_filter,
    resample,
    resampling_ratio,
    standardise,
    zero_phase_fir,
)
from sleepstage_cli.errors import InputError


def _gain(taps: np.ndarray, rate: float, f: float) -> float:
    return float(np.abs(sps.freqz(taps, worN=[f], fs=rate)[1][0]))


@pytest.mark.parametrize("rate", [100.0, 200.0, 256.0, 512.0])
def test_eeg_band_pass_response(rate: float) -> None:
    taps = design_filter("eeg", rate)
    assert len(taps) % 2 == 1 and np.allclose(taps, taps[::-1])  # symmetric: linear phase
    assert _gain(taps, rate, 0.05) < 0.01  # drift removed
    assert _gain(taps, rate, 0.3) == pytest.approx(0.5, abs=0.02)  # cut-offs are the -6 dB points
    for f in (0.5, 1.0, 2.0, 10.0, 30.0):
        assert _gain(taps, rate, f) == pytest.approx(1.0, abs=0.02)
    assert _gain(taps, rate, 40.0) == pytest.approx(0.5, abs=0.02)
    assert _gain(taps, rate, 45.0) < 0.01


@pytest.mark.parametrize("rate", [200.0, 256.0])
def test_emg_high_pass_with_notches(rate: float) -> None:
    taps = design_filter("emg", rate)
    assert _gain(taps, rate, 2.0) < 0.01
    assert _gain(taps, rate, 10.0) == pytest.approx(0.5, abs=0.03)
    for f in (20.0, 40.0, 55.0, 70.0):
        assert _gain(taps, rate, f) == pytest.approx(1.0, abs=0.03)
    assert _gain(taps, rate, 50.0) < 0.02
    assert _gain(taps, rate, 60.0) < 0.02


def test_zero_phase_keeps_timing() -> None:
    rate = 256.0
    t = np.arange(0, 60, 1 / rate)
    x = 20 * np.sin(2 * np.pi * 8 * t)
    y = zero_phase_fir(x, design_filter("eeg", rate))
    mid = slice(len(t) // 4, 3 * len(t) // 4)
    np.testing.assert_allclose(y[mid], x[mid], atol=0.3)  # in-band sine passes unshifted


@pytest.mark.parametrize("rate_in", [128.0, 200.0, 256.0, 500.0, 512.0])
@pytest.mark.parametrize("freq", [1.0, 11.0, 35.0])
def test_resampling_keeps_frequency_and_amplitude(rate_in: float, freq: float) -> None:
    t = np.arange(0, 30, 1 / rate_in)
    y = resample(25 * np.sin(2 * np.pi * freq * t), rate_in)
    assert len(y) == 3000
    core = y[200:-200]
    tt = np.arange(len(y))[200:-200] / 100.0
    # Least-squares fit of a sine at the expected frequency explains the signal.
    design = np.column_stack([np.sin(2 * np.pi * freq * tt), np.cos(2 * np.pi * freq * tt)])
    coef, *_ = np.linalg.lstsq(design, core, rcond=None)
    assert np.hypot(*coef) == pytest.approx(25, rel=0.01)
    assert np.abs(core - design @ coef).max() < 0.5
    spectrum = np.abs(np.fft.rfft(core * np.hanning(len(core))))
    peak = np.fft.rfftfreq(len(core), 1 / 100.0)[np.argmax(spectrum)]
    assert peak == pytest.approx(freq, abs=0.05)


def test_resampling_removes_aliases() -> None:
    rate_in = 256.0
    t = np.arange(0, 30, 1 / rate_in)
    y = resample(25 * np.sin(2 * np.pi * 70 * t), rate_in)  # would alias to 30 Hz without the filter
    assert np.abs(y[200:-200]).max() < 0.25


def test_resampling_ratio_exact() -> None:
    assert resampling_ratio(256.0) == (25, 64)
    assert resampling_ratio(100.0) == (1, 1)
    assert resampling_ratio(200.0) == (1, 2)


def test_condition_end_to_end() -> None:
    rate = 256.0
    t = np.arange(0, 120, 1 / rate)
    x = 30 * np.sin(2 * np.pi * 10 * t) + 200 + 50 * t / 120  # alpha on an offset and a drift
    y = condition(x, rate, "eeg")
    assert len(y) == 12000
    core = y[1000:-1000]
    assert abs(core.mean()) < 0.5
    assert core.std() == pytest.approx(30 / np.sqrt(2), rel=0.02)


def test_standardise() -> None:
    x = np.random.default_rng(1).normal(5, 3, 10000)
    z = standardise(x)
    assert z.dtype == np.float32
    assert abs(float(z.mean())) < 1e-5 and float(z.std()) == pytest.approx(1, abs=1e-5)
    with pytest.raises(InputError, match="flat"):
        standardise(np.zeros(100))
    bad = x.copy()
    bad[3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        standardise(bad)


def test_conditioning_round_trip() -> None:
    c = Conditioning()
    assert Conditioning.from_dict(c.to_dict()) == c


# ---------------------------------------------------------------- numpy DSP against scipy.signal

@pytest.mark.parametrize("numtaps, cutoff, pass_zero, fs, window", [
    (1101, [0.3, 40.0], False, 100.0, "hamming"),
    (845, [10.0, 49.0, 51.0, 59.0, 61.0], False, 256.0, "hamming"),
    (2817, 0.3, False, 256.0, "hamming"),
    (101, 20.0, True, 100.0, "hamming"),
    (1281, 1 / 64, True, 2.0, ("kaiser", 5.0)),
])
def test_firwin_matches_scipy(numtaps, cutoff, pass_zero, fs, window) -> None:
    from sleepstage_cli.conditioning import dsp
    ours = dsp.firwin(numtaps, cutoff, pass_zero=pass_zero, fs=fs, window=window)
    np.testing.assert_allclose(ours, sps.firwin(numtaps, cutoff, pass_zero=pass_zero, fs=fs, window=window),
                               atol=1e-15)


def test_fft_filter_matches_direct_convolution() -> None:
    from sleepstage_cli.conditioning import dsp
    x = np.random.default_rng(3).normal(size=50_000)
    taps = sps.firwin(1101, [0.3, 40.0], pass_zero=False, fs=100.0)
    padded = np.pad(x, 550, mode="reflect", reflect_type="odd")
    np.testing.assert_allclose(dsp.fft_filter(x, taps), np.convolve(padded, taps, mode="valid"), atol=1e-10)
    assert dsp.fft_filter(x.astype(np.float32), taps).dtype == np.float32


@pytest.mark.parametrize("up, down", [(25, 64), (1, 2), (25, 32), (5, 16), (2, 1)])
def test_resample_poly_matches_scipy_inside(up: int, down: int) -> None:
    from sleepstage_cli.conditioning import dsp
    x = np.random.default_rng(4).normal(size=40_000)
    ours, ref = dsp.resample_poly(x, up, down), sps.resample_poly(x, up, down)
    assert ours.shape == ref.shape
    edge = 20 * max(up, down) // down + 5  # the ends differ only by how the signal is padded
    np.testing.assert_allclose(ours[edge:-edge], ref[edge:-edge], atol=1e-10)
