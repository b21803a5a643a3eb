"""Transient events of a night, drawn per segment and rendered as waveforms (µV).

Each ``*_events`` function returns ``(start_index, waves)``: the first sample of every event and
a (events x samples) array of their waveforms, ready for :func:`noise.place_events`. Event counts
are Poisson per segment with the segment's own rate, so their density varies epoch to epoch.
"""

from __future__ import annotations

import numpy as np

from sleepstage_cli.simulate.features import Timeline
from sleepstage_cli.simulate.subject import SubjectProfile

Events = tuple[np.ndarray, np.ndarray]


def event_times(rng: np.random.Generator, timeline: Timeline, rate_per_min: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Times (s) of events with a per-segment rate, and the segment index of each."""
    lengths = timeline.end - timeline.start
    counts = rng.poisson(np.maximum(rate_per_min, 0.0) * lengths / 60.0)
    seg = np.repeat(np.arange(lengths.shape[0]), counts)
    times = timeline.start[seg] + rng.random(seg.shape[0]) * lengths[seg]
    return times, seg


def _grid(fs: float, seconds: float) -> np.ndarray:
    return np.arange(int(np.ceil(seconds * fs))) / fs


def _start(times: np.ndarray, fs: float, lead: float = 0.0) -> np.ndarray:
    return np.round((times - lead) * fs).astype(np.int64)


def spindles(rng: np.random.Generator, times: np.ndarray, fs: float, profile: SubjectProfile) -> Events:
    """Sleep spindles: waxing-waning 11-15 Hz bursts of 0.5-2 s, slowing slightly as they go."""
    m = times.shape[0]
    tau = _grid(fs, 2.0)[None, :]
    dur = np.clip(0.5 + rng.gamma(2.0, 0.25, m), 0.5, 2.0)[:, None]
    freq = (profile.spindle_freq + rng.normal(0.0, 0.35, m))[:, None]
    amp = (rng.uniform(15.0, 40.0, m) * profile.eeg_scale)[:, None]
    phase = rng.uniform(0, 2 * np.pi, m)[:, None]
    env = np.where(tau < dur, np.sin(np.pi * np.minimum(tau / dur, 1.0)) ** 2, 0.0)
    chirp = 2 * np.pi * (freq * tau - 0.25 * tau ** 2 / dur)  # ~0.5 Hz slower at the end
    return _start(times, fs), amp * env * np.cos(chirp + phase)


def k_complexes(rng: np.random.Generator, times: np.ndarray, fs: float, profile: SubjectProfile) -> Events:
    """K-complexes: a sharp negative wave then a slower positive one, ~1 s, 90-250 µV peak to peak."""
    m = times.shape[0]
    tau = _grid(fs, 1.4)[None, :]
    amp = (rng.uniform(60.0, 150.0, m) * profile.eeg_scale)[:, None]
    t1 = rng.uniform(0.3, 0.4, m)[:, None]
    t2 = t1 + rng.uniform(0.35, 0.5, m)[:, None]
    wave = -np.exp(-(((tau - t1) / 0.09) ** 2)) + 0.55 * np.exp(-(((tau - t2) / 0.17) ** 2))
    return _start(times, fs), amp * wave


def vertex_waves(rng: np.random.Generator, times: np.ndarray, fs: float, profile: SubjectProfile) -> Events:
    """Vertex sharp waves of drowsiness: ~0.2 s, 30-80 µV."""
    m = times.shape[0]
    tau = _grid(fs, 0.5)[None, :]
    amp = (rng.uniform(30.0, 80.0, m) * profile.eeg_scale)[:, None]
    wave = -np.exp(-(((tau - 0.15) / 0.045) ** 2)) + 0.3 * np.exp(-(((tau - 0.28) / 0.06) ** 2))
    return _start(times, fs), amp * wave


def sawtooth_bursts(rng: np.random.Generator, times: np.ndarray, fs: float, profile: SubjectProfile) -> Events:
    """Saw-tooth waves of REM: 2-6 Hz trains of ramp-shaped waves lasting 1-3 s."""
    m = times.shape[0]
    tau = _grid(fs, 3.0)[None, :]
    dur = rng.uniform(1.0, 3.0, m)[:, None]
    freq = rng.uniform(2.0, 5.0, m)[:, None]
    amp = (rng.uniform(15.0, 35.0, m) * profile.eeg_scale)[:, None]
    arg = 2 * np.pi * freq * tau
    wave = np.sin(arg) + np.sin(2 * arg) / 2 + np.sin(3 * arg) / 3  # a smoothed ramp
    env = np.where(tau < dur, np.sin(np.pi * np.minimum(tau / dur, 1.0)) ** 0.5, 0.0)
    return _start(times, fs), amp * 0.6 * env * wave


def blinks(rng: np.random.Generator, times: np.ndarray, fs: float, profile: SubjectProfile) -> Events:
    """Eye blinks as seen above the eye: a fast rise and slower fall, 80-250 µV, ~0.3 s."""
    m = times.shape[0]
    tau = _grid(fs, 0.7)[None, :]
    peak = rng.uniform(0.08, 0.13, m)[:, None]
    amp = (rng.uniform(80.0, 250.0, m) * profile.eye_gain)[:, None]
    x = tau / peak
    return _start(times, fs), amp * x ** 3 * np.exp(3.0 * (1.0 - x))


def saccade_targets(rng: np.random.Generator, wake_times: np.ndarray, rem_times: np.ndarray,
                    profile: SubjectProfile) -> tuple[np.ndarray, np.ndarray]:
    """Saccade times (s) and the horizontal gaze each one lands on (µV at the right canthus).

    Waking saccades jump between fixations; rapid eye movements of REM come in bursts of
    alternating direction, sharp and large, and return near the centre after the burst.
    """
    g = profile.eye_gain
    wake_target = rng.normal(0.0, 45.0 * g, wake_times.shape[0])
    if rem_times.shape[0] == 0:
        order = np.argsort(wake_times, kind="stable")
        return wake_times[order], wake_target[order]
    per_burst = 2 + rng.poisson(2.0, rem_times.shape[0])
    n_sacc = int(per_burst.sum())
    burst = np.repeat(np.arange(rem_times.shape[0]), per_burst)
    gaps = rng.uniform(0.15, 0.7, n_sacc)
    first = np.concatenate([[0], np.cumsum(per_burst)[:-1]]).astype(int)
    csum = np.cumsum(gaps)
    within = csum - np.repeat(csum[first] - gaps[first], per_burst)
    rem_t = rem_times[burst] + within
    sign = np.repeat(rng.choice([-1.0, 1.0], rem_times.shape[0]), per_burst)
    k = np.arange(n_sacc) - np.repeat(first, per_burst)
    rem_target = sign * (-1.0) ** k * rng.uniform(40.0, 140.0, n_sacc) * g
    last = np.cumsum(per_burst) - 1
    rem_target[last] = rng.normal(0.0, 10.0 * g, last.shape[0])  # back towards the centre
    t = np.concatenate([wake_times, rem_t])
    target = np.concatenate([wake_target, rem_target])
    order = np.argsort(t, kind="stable")
    return t[order], target[order]


def saccade_velocity(rng: np.random.Generator, times: np.ndarray, targets: np.ndarray, fs: float) -> Events:
    """Eye velocity pulses (µV per sample) whose running sum steps the gaze to each target."""
    jumps = np.diff(np.concatenate([[0.0], targets]))
    m = times.shape[0]
    tau = _grid(fs, 0.12)[None, :]
    dur = np.clip(0.025 + np.abs(jumps) / 4000.0, 0.025, 0.09)[:, None] + rng.uniform(0, 0.01, m)[:, None]
    bump = np.where(tau < dur, np.sin(np.pi * np.minimum(tau / dur, 1.0)) ** 2, 0.0)
    bump /= np.maximum(bump.sum(axis=1, keepdims=True), 1e-12)
    return _start(times, fs), jumps[:, None] * bump


def twitches(rng: np.random.Generator, times: np.ndarray, fs: float, profile: SubjectProfile) -> Events:
    """Phasic muscle twitches: brief rises of the chin EMG envelope (µV RMS), 50-300 ms."""
    m = times.shape[0]
    tau = _grid(fs, 0.3)[None, :]
    dur = rng.uniform(0.05, 0.3, m)[:, None]
    amp = (rng.uniform(4.0, 20.0, m) * profile.emg_tone)[:, None]
    env = np.where(tau < dur, np.sin(np.pi * np.minimum(tau / dur, 1.0)), 0.0)
    return _start(times, fs), amp * env


def movements(rng: np.random.Generator, times: np.ndarray, durations: np.ndarray, fs: float
              ) -> tuple[Events, Events]:
    """Body movements: a large slow deflection (µV, for every electrode) and an EMG burst (µV RMS)."""
    m = times.shape[0]
    longest = float(durations.max()) if m else 1.0
    tau = _grid(fs, longest)[None, :]
    dur = durations[:, None]
    inside = tau < dur
    arch = np.where(inside, np.sin(np.pi * np.minimum(tau / dur, 1.0)), 0.0)
    slow = np.zeros((m, tau.shape[1]))
    for _ in range(3):  # a few slow swings of random rate and phase
        f = rng.uniform(0.3, 2.5, m)[:, None]
        slow += rng.normal(0.0, 1.0, m)[:, None] * np.sin(2 * np.pi * f * tau + rng.uniform(0, 6.3, m)[:, None])
    amp = rng.uniform(80.0, 300.0, m)[:, None]
    burst = rng.uniform(25.0, 80.0, m)[:, None] * arch ** 0.3  # muscles tense quickly, for the whole movement
    start = _start(times, fs)
    return (start, amp * arch * slow / np.sqrt(3.0)), (start, burst)


def heartbeats(rng: np.random.Generator, beat_times: np.ndarray, fs: float, profile: SubjectProfile) -> Events:
    """ECG complexes (P, QRS, T) centred on each R wave, µV on lead I."""
    m = beat_times.shape[0]
    lead = 0.25
    tau = _grid(fs, 0.7)[None, :] - lead
    amp = (profile.ecg_uv * rng.uniform(0.93, 1.07, m))[:, None]
    wave = (0.10 * np.exp(-(((tau + 0.16) / 0.025) ** 2))
            - 0.10 * np.exp(-(((tau + 0.028) / 0.010) ** 2))
            + 1.00 * np.exp(-((tau / 0.011) ** 2))
            - 0.22 * np.exp(-(((tau - 0.03) / 0.012) ** 2))
            + 0.25 * np.exp(-(((tau - 0.26) / 0.05) ** 2)))
    return _start(beat_times, fs, lead), amp * wave
