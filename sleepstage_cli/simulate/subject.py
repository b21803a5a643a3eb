"""Who is sleeping: per-subject traits that make one simulated person differ from the next.

A network trained on several simulated subjects and tested on another must generalise across
these (amplitudes, alpha and spindle frequencies, muscle tone, event densities, noise), as it must
across real people.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SubjectProfile:
    """Traits of one simulated subject (factors are multipliers around 1).

    Attributes
    ----------
    eeg_scale : factor on every EEG amplitude (skull thickness, age).
    alpha_freq : posterior alpha peak, Hz.
    alpha_gain : factor on alpha amplitude (some people barely produce alpha).
    spindle_freq : sleep spindle frequency, Hz.
    spindle_density, kc_density : factors on spindle and K-complex rates.
    delta_gain : factor on slow-wave amplitude.
    sws_factor : factor on the time spent in N3.
    rem_density : factor on rapid eye movement bursts.
    emg_tone : factor on chin EMG amplitude.
    eye_gain : factor on eye movement amplitudes (EOG electrode placement, corneo-retinal potential).
    noise_uv : white measurement noise per channel, µV RMS.
    bg_uv : 1/f background activity, µV RMS.
    pink_exponent : exponent of the background power spectrum 1/f^x.
    mains_uv : mains interference picked up by the reference, µV amplitude.
    drift_uv : slow common-mode baseline drift, µV RMS.
    heart_rate : resting heart rate in sleep, beats per minute.
    ecg_uv : R-wave amplitude on ECG lead I, µV.
    resp_rate : breathing rate, breaths per minute.
    site_gain : factors on the brain signal of each scalp site (electrode placement), by site name.
    """

    eeg_scale: float
    alpha_freq: float
    alpha_gain: float
    spindle_freq: float
    spindle_density: float
    kc_density: float
    delta_gain: float
    sws_factor: float
    rem_density: float
    emg_tone: float
    eye_gain: float
    noise_uv: float
    bg_uv: float
    pink_exponent: float
    mains_uv: float
    drift_uv: float
    heart_rate: float
    ecg_uv: float
    resp_rate: float
    site_gain: dict[str, float] = dataclasses.field(default_factory=dict)


def _lognormal(rng: np.random.Generator, sigma: float) -> float:
    return float(np.exp(rng.normal(0.0, sigma)))


def draw_subject(rng: np.random.Generator, sites: tuple[str, ...]) -> SubjectProfile:
    """Draw a subject's traits; ``sites`` are the scalp sites that get a placement factor."""
    return SubjectProfile(
        eeg_scale=_lognormal(rng, 0.18),
        alpha_freq=float(rng.uniform(8.5, 10.5)),
        alpha_gain=_lognormal(rng, 0.35),
        spindle_freq=float(rng.uniform(11.8, 14.2)),
        spindle_density=_lognormal(rng, 0.3),
        kc_density=_lognormal(rng, 0.3),
        delta_gain=_lognormal(rng, 0.15),
        sws_factor=_lognormal(rng, 0.25),
        rem_density=_lognormal(rng, 0.35),
        emg_tone=_lognormal(rng, 0.3),
        eye_gain=_lognormal(rng, 0.2),
        noise_uv=float(rng.uniform(0.5, 1.8)),
        bg_uv=float(rng.uniform(5.0, 8.0)),
        pink_exponent=float(rng.uniform(1.2, 1.8)),
        mains_uv=float(rng.uniform(15.0, 60.0)),
        drift_uv=float(rng.uniform(20.0, 80.0)),
        heart_rate=float(rng.uniform(52.0, 72.0)),
        ecg_uv=float(rng.uniform(600.0, 1500.0)),
        resp_rate=float(rng.uniform(12.0, 17.0)),
        site_gain={s: _lognormal(rng, 0.08) for s in sites},
    )


def night_variant(profile: SubjectProfile, rng: np.random.Generator) -> SubjectProfile:
    """The same subject on another night: electrode impedances, mood and mains pick-up differ a little."""
    small = 0.05
    return dataclasses.replace(
        profile,
        eeg_scale=profile.eeg_scale * _lognormal(rng, small),
        emg_tone=profile.emg_tone * _lognormal(rng, 0.1),
        noise_uv=profile.noise_uv * _lognormal(rng, 0.15),
        mains_uv=profile.mains_uv * _lognormal(rng, 0.3),
        drift_uv=profile.drift_uv * _lognormal(rng, 0.2),
        alpha_freq=profile.alpha_freq + float(rng.normal(0.0, 0.15)),
        spindle_freq=profile.spindle_freq + float(rng.normal(0.0, 0.1)),
        sws_factor=profile.sws_factor * _lognormal(rng, 0.1),
        site_gain={s: g * _lognormal(rng, 0.03) for s, g in profile.site_gain.items()},
    )
