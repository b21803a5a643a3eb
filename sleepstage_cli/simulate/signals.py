"""Physiological sources of one night (EEG rhythms, eye, chin, heart, breathing, interference).

A :class:`SourceBank` makes each source on demand at the sampling rate asked for and caches it.
Channels (see ``montage.py``) are weighted sums of these sources, so a derivation computed from
two referential channels cancels what they share (mains, drift, the reference's own activity),
exactly as on a real amplifier.

Rhythms are stationary coloured noise multiplied by an envelope that follows the segment levels
of ``features.draw_features`` with ramps across segment borders; transients (spindles,
K-complexes, eye movements...) are placed as waveforms. Every source draws from its own random
stream keyed by its name, so the bytes of a channel do not depend on which other channels exist
or in which order they are made.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.ndimage
import scipy.signal

from sleepstage_cli.simulate import events as ev
from sleepstage_cli.simulate.features import Timeline
from sleepstage_cli.simulate.hypnogram import W
from sleepstage_cli.simulate.noise import (
    COARSE_RATE,
    band_shape,
    place_events,
    spectral_noise,
    step_envelope,
    tiled_sinusoid,
    upsample_linear,
)
from sleepstage_cli.simulate.subject import SubjectProfile

BRAIN_COMPONENTS = ("delta", "theta", "alpha", "beta", "spindle", "slow", "bg", "blink", "eye", "ecg")

# Gain of each component at each recording site against an ideal reference (C4 = 1 for rhythms).
# Sleep-EDF's bipolar Fpz-Cz / Pz-Oz and the eye leads' brain pick-up are sites of their own.
SITES: dict[str, tuple[float, ...]] = {
    #        delta theta alpha beta  spin  slow  bg    blink  eye   ecg
    "C4":    (1.00, 1.00, 1.00, 1.00, 1.00, 1.00, 1.00, 0.02, 0.00, 0.000),
    "C3":    (0.98, 1.00, 0.95, 0.95, 0.95, 1.00, 1.00, 0.02, 0.00, 0.000),
    "F3":    (1.15, 0.95, 0.60, 1.05, 0.85, 1.15, 1.00, 0.25, 0.05, 0.000),
    "O1":    (0.70, 0.80, 2.00, 0.85, 0.45, 0.60, 1.00, 0.00, 0.00, 0.000),
    "A1":    (0.12, 0.10, 0.10, 0.15, 0.10, 0.10, 0.45, 0.00, 0.00, 0.006),
    "A2":    (0.12, 0.10, 0.10, 0.15, 0.10, 0.10, 0.45, 0.00, 0.00, -0.004),
    "CLE":   (0.12, 0.10, 0.10, 0.15, 0.10, 0.10, 0.30, 0.00, 0.00, 0.001),
    "ER":    (0.70, 0.50, 0.30, 0.80, 0.40, 0.60, 0.70, 0.00, 0.00, 0.000),
    "EL":    (0.35, 0.35, 0.20, 0.70, 0.20, 0.30, 0.70, 0.00, 0.00, 0.000),
    "Fpz-Cz": (0.95, 0.75, 0.50, 0.95, 0.60, 0.85, 0.90, 0.45, 0.12, 0.000),
    "Pz-Oz": (0.60, 0.65, 1.80, 0.65, 0.45, 0.45, 0.85, 0.00, 0.00, 0.000),
}
SITES["M1"], SITES["M2"], SITES["LE"] = SITES["A1"], SITES["A2"], SITES["CLE"]
_SITE_ORDER = tuple(SITES)


class SourceBank:
    """Sources of one night, made lazily per sampling rate.

    Parameters
    ----------
    timeline : segments covering the recording.
    features : per-segment levels from ``features.draw_features``.
    profile : the subject.
    key : integers seeding this night's random streams.
    mains_hz : mains frequency, Hz (50 or 60).
    """

    def __init__(self, timeline: Timeline, features: dict[str, np.ndarray], profile: SubjectProfile,
                 key: tuple[int, ...], mains_hz: float) -> None:
        self.timeline = timeline
        self.features = features
        self.profile = profile
        self.key = tuple(int(k) for k in key)
        self.mains_hz = mains_hz
        self.duration = timeline.duration
        self._cache: dict[tuple[str, float], np.ndarray] = {}
        self._shared: dict[str, Any] = {}
        self._guard = threading.Lock()
        self._locks: dict[object, threading.Lock] = {}

    # ----------------------------------------------------------------------------------- plumbing

    def n(self, fs: float) -> int:
        """Samples at ``fs`` Hz covering the recording."""
        return int(round(self.duration * fs))

    def rng(self, name: str) -> np.random.Generator:
        """The random stream of one named source (independent of every other)."""
        return np.random.default_rng([*self.key, zlib.crc32(name.encode())])

    def site_shift(self, site: str, fs: float) -> int:
        """Circular shift giving a site its own background noise out of one shared realisation."""
        return (_SITE_ORDER.index(site) + 1) * self.n(fs) // (len(_SITE_ORDER) + 1)

    def _coarse_times(self) -> np.ndarray:
        return np.arange(int(np.ceil(self.duration * COARSE_RATE)) + 2) / COARSE_RATE

    def _to_rate(self, coarse: np.ndarray, fs: float) -> np.ndarray:
        """A coarse-grid series at ``fs`` Hz (linear interpolation)."""
        n = self.n(fs)
        factor = fs / COARSE_RATE
        if factor >= 1 and factor == int(factor):
            return upsample_linear(coarse, int(factor), n)
        t = np.arange(n) / fs
        return np.interp(t, self._coarse_times()[:coarse.shape[0]], coarse).astype(np.float32)

    def envelope(self, feature: str, fs: float, ramp: float = 2.5) -> np.ndarray:
        """Per-segment level of ``feature`` as a smooth per-sample envelope at ``fs`` Hz."""
        tl = self.timeline
        coarse = step_envelope(tl.start, tl.end, self.features[feature], self._coarse_times(), ramp)
        return self._to_rate(coarse, fs)

    def _lock(self, key: object) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def get(self, name: str, fs: float) -> np.ndarray:
        """Source ``name`` at ``fs`` Hz (float32, µV unless stated), made once and cached.

        Thread-safe: sources only depend on lower-level ones, so per-source locks cannot deadlock.
        """
        key = (name, float(fs))
        if key not in self._cache:
            with self._lock(key):
                if key not in self._cache:
                    base, _, arg = name.partition("@")
                    maker = getattr(self, f"_make_{base}")
                    self._cache[key] = maker(fs, arg) if arg else maker(fs)
        return self._cache[key]

    def release(self) -> None:
        """Drop every cached source (a night can hold hundreds of MB)."""
        self._cache.clear()
        self._shared.clear()
        self._locks.clear()

    def _once(self, name: str, make: Callable[[], Any]) -> Any:
        """A value made once and shared by several sources (event times, heart beats...)."""
        if name not in self._shared:
            with self._lock(name):
                if name not in self._shared:
                    self._shared[name] = make()
        return self._shared[name]

    def _times(self, name: str, rate: str) -> tuple[np.ndarray, np.ndarray]:
        return self._once(f"times:{name}", lambda: ev.event_times(self.rng(f"times:{name}"), self.timeline,
                                                                  self.features[rate]))

    # ----------------------------------------------------------------------------------- EEG rhythms

    def _rhythm(self, fs: float, name: str, f_lo: float, f_hi: float,
                shape: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        x = spectral_noise(self.rng(f"latent:{name}:{fs}"), self.n(fs), fs, f_lo, f_hi, shape)
        x *= self.envelope(name, fs)
        return x

    def _make_delta(self, fs: float) -> np.ndarray:
        band = band_shape(0.5, 2.5, 0.35)
        return self._rhythm(fs, "delta", 0.15, 3.0, lambda f: band(f) / np.sqrt(np.maximum(f, 0.3)))

    def _make_theta(self, fs: float) -> np.ndarray:
        return self._rhythm(fs, "theta", 3.0, 8.5, band_shape(4.2, 7.2, 0.8))

    def _make_alpha(self, fs: float) -> np.ndarray:
        f0 = self.profile.alpha_freq
        return self._rhythm(fs, "alpha", f0 - 3.0, f0 + 3.0, lambda f: np.exp(-0.5 * ((f - f0) / 0.45) ** 2))

    def _make_beta(self, fs: float) -> np.ndarray:
        return self._rhythm(fs, "beta", 12.0, min(34.0, fs / 2), band_shape(15.0, 28.0, 3.0))

    def _make_bg(self, fs: float) -> np.ndarray:
        """1/f background (unit of µV RMS times the subject's level), shared by sites via shifts."""
        x = self.profile.pink_exponent / 2

        def shape(f: np.ndarray) -> np.ndarray:
            return np.maximum(f, 0.5) ** -x / np.sqrt(1 + (f / 45.0) ** 4) + 0.02

        out = spectral_noise(self.rng(f"latent:bg:{fs}"), self.n(fs), fs, 0.1, fs / 2, shape)
        out *= np.float32(self.profile.bg_uv)
        return out

    # ----------------------------------------------------------------------------------- EEG transients

    def _make_spindle(self, fs: float) -> np.ndarray:
        times, _ = self._times("spindle", "spindle_rate")
        kc_times, _ = self._times("kc", "kc_rate")
        rng = self.rng(f"wave:spindle:{fs}")
        # A K-complex is often followed by a spindle.
        follow = kc_times[self.rng("times:kc-spindle").random(kc_times.shape[0]) < 0.35] + 0.7
        start, waves = ev.spindles(rng, np.concatenate([times, follow]), fs, self.profile)
        return place_events(self.n(fs), start, waves)

    def _make_slow(self, fs: float) -> np.ndarray:
        """K-complexes, vertex waves and saw-tooth waves (similar fronto-central fields)."""
        n = self.n(fs)
        out = np.zeros(n, dtype=np.float32)
        for name, rate, make in (("kc", "kc_rate", ev.k_complexes), ("vertex", "vertex_rate", ev.vertex_waves),
                                 ("sawtooth", "sawtooth_rate", ev.sawtooth_bursts)):
            times, _ = self._times(name, rate)
            out += place_events(n, *make(self.rng(f"wave:{name}:{fs}"), times, fs, self.profile))
        return out

    # ----------------------------------------------------------------------------------- eyes

    def _make_blink(self, fs: float) -> np.ndarray:
        times, _ = self._times("blink", "blink_rate")
        return place_events(self.n(fs), *ev.blinks(self.rng(f"wave:blink:{fs}"), times, fs, self.profile))

    def _saccades(self) -> tuple[np.ndarray, np.ndarray]:
        def make() -> tuple[np.ndarray, np.ndarray]:
            wake, _ = self._times("saccade", "saccade_rate")
            rem, _ = self._times("rem", "rem_rate")
            return ev.saccade_targets(self.rng("saccade-targets"), wake, rem, self.profile)
        return self._once("saccades", make)

    def _make_eye(self, fs: float) -> np.ndarray:
        """Horizontal gaze as seen at the right outer canthus, µV (the left sees its negative)."""
        n = self.n(fs)
        times, targets = self._saccades()
        velocity = place_events(n, *ev.saccade_velocity(self.rng(f"wave:saccade:{fs}"), times, targets, fs))
        position = np.cumsum(velocity, dtype=np.float64)
        # EOG amplifiers are AC-coupled: a held gaze decays back to baseline within seconds
        # (a 4-s exponential baseline, tracked on the coarse grid; EOG rates are multiples of 4 Hz).
        a = np.exp(-1.0 / (4.0 * COARSE_RATE))
        base = scipy.signal.lfilter([1 - a], [1, -a], position[::int(fs // COARSE_RATE)])
        out = (position - self._to_rate(base, fs)).astype(np.float32)
        # Slow rolling eye movements of drowsiness and light sleep (0.1-0.5 Hz).
        n_c = self._coarse_times().shape[0]
        sem = spectral_noise(self.rng("latent:sem"), n_c, COARSE_RATE, 0.08, 0.6, band_shape(0.12, 0.45, 0.05))
        tl = self.timeline
        sem *= step_envelope(tl.start, tl.end, self.features["sem"], self._coarse_times(), 4.0).astype(np.float32)
        out += self._to_rate(sem * np.float32(self.profile.eye_gain), fs)
        return out

    # ----------------------------------------------------------------------------------- muscle

    def _movement_events(self) -> tuple[np.ndarray, np.ndarray]:
        """Times and durations (s) of body movements: one in every flagged segment, a few others."""
        def make() -> tuple[np.ndarray, np.ndarray]:
            rng = self.rng("times:movement")
            tl = self.timeline
            flagged = np.nonzero(tl.movement)[0]
            length = tl.end[flagged] - tl.start[flagged]
            dur = np.maximum(3.0, length * rng.uniform(0.4, 0.8, flagged.shape[0]))
            t0 = tl.start[flagged] + rng.random(flagged.shape[0]) * (length - np.minimum(dur, length))
            small_t, _ = ev.event_times(rng, tl, self.features["move_rate"])
            small_d = rng.uniform(1.0, 4.0, small_t.shape[0])
            return np.concatenate([t0, small_t]), np.concatenate([dur, small_d])
        return self._once("movement", make)

    def _make_emg_env(self, fs: float) -> np.ndarray:
        """Chin EMG level, µV RMS: tone of the stage, twitches, movement bursts."""
        n = self.n(fs)
        env = self.envelope("emg", fs, ramp=1.5)
        times, _ = self._times("twitch", "twitch_rate")
        env += place_events(n, *ev.twitches(self.rng(f"wave:twitch:{fs}"), times, fs, self.profile))
        t, d = self._movement_events()
        _, burst = ev.movements(self.rng(f"wave:movement:{fs}"), t, d, fs)
        env += place_events(n, *burst)
        return env

    def _emg_latent(self, fs: float) -> np.ndarray:
        return self._once(f"emg-latent:{fs}", lambda: spectral_noise(
            self.rng(f"latent:emg:{fs}"), self.n(fs), fs, 8.0, fs / 2, band_shape(15.0, 0.42 * fs, 6.0)))

    def _make_emg(self, fs: float, which: str) -> np.ndarray:
        """Chin muscle activity under electrode ``which`` (1, 2, 3), µV: a shared and an own part."""
        n = self.n(fs)
        latent = self._emg_latent(fs)
        own = np.roll(latent, (int(which) + 1) * n // 5)
        own *= np.float32(0.8)
        own += np.float32(0.6) * latent
        own *= self.get("emg_env", fs)
        return own

    def _make_move(self, fs: float) -> np.ndarray:
        """Slow deflection of body movements (µV before each electrode's own gain)."""
        t, d = self._movement_events()
        (start, slow), _ = ev.movements(self.rng(f"wave:movement:{fs}"), t, d, fs)
        return place_events(self.n(fs), start, slow)

    # ----------------------------------------------------------------------------------- heart, breath

    def _resp_coarse(self) -> tuple[np.ndarray, np.ndarray]:
        def make() -> tuple[np.ndarray, np.ndarray]:
            tl, tc = self.timeline, self._coarse_times()
            irregular = step_envelope(tl.start, tl.end, self.features["resp_irregularity"], tc, 5.0)
            wobble = spectral_noise(self.rng("latent:resp"), tc.shape[0], COARSE_RATE, 0.01, 0.3)
            rate = self.profile.resp_rate * (1.0 + irregular * wobble) / 60.0
            phase = np.cumsum(np.maximum(rate, 0.05)) / COARSE_RATE
            amp = step_envelope(tl.start, tl.end, self.features["resp_amp"], tc, 5.0)
            return phase, amp * (1.0 + 0.25 * irregular * wobble)
        return self._once("resp", make)

    def _make_resp(self, fs: float) -> np.ndarray:
        """Breathing movement (thoracic belt or oro-nasal flow), arbitrary µV."""
        phase, amp = self._resp_coarse()
        p = self._to_rate(phase, fs).astype(np.float64) * 2 * np.pi
        wave = np.sin(p) + 0.15 * np.sin(2 * p + 0.6)
        return (250.0 * self._to_rate(amp, fs) * wave).astype(np.float32) + 0.3 * self.get("move", fs)

    def _make_ecg(self, fs: float) -> np.ndarray:
        """ECG lead I, µV. Heart rate follows the stage, breathing (sinus arrhythmia) and slow drifts."""
        def beats() -> np.ndarray:
            tl, tc = self.timeline, self._coarse_times()
            phase, _ = self._resp_coarse()
            hr = (self.profile.heart_rate
                  + step_envelope(tl.start, tl.end, self.features["hr_offset"], tc, 20.0)
                  + 2.5 * np.sin(2 * np.pi * phase)
                  + 3.0 * spectral_noise(self.rng("latent:hr"), tc.shape[0], COARSE_RATE, 0.003, 0.1))
            beat_phase = np.cumsum(hr / 60.0) / COARSE_RATE
            k = np.arange(1, int(beat_phase[-1]))
            return np.interp(k, beat_phase, tc)
        times = self._once("beats", beats)
        return place_events(self.n(fs), *ev.heartbeats(self.rng(f"wave:ecg:{fs}"), times, fs, self.profile))

    # ----------------------------------------------------------------------------------- interference

    def _make_mains(self, fs: float) -> np.ndarray:
        """Mains pick-up at the reference electrode, µV; nothing if the rate cannot carry it."""
        n = self.n(fs)
        if fs <= 2 * self.mains_hz:
            return np.zeros(n, dtype=np.float32)
        rng = self.rng("latent:mains")
        level = spectral_noise(rng, self._coarse_times().shape[0], COARSE_RATE, 0.001, 0.02)
        amp = self._to_rate(self.profile.mains_uv * np.exp(0.3 * level), fs)
        amp *= tiled_sinusoid(n, fs, self.mains_hz, float(rng.uniform(0, 2 * np.pi)))
        return amp

    def _make_drift(self, fs: float) -> np.ndarray:
        """Slow baseline drift (sweat, electrode polarisation), µV."""
        x = spectral_noise(self.rng("latent:drift"), self._coarse_times().shape[0], COARSE_RATE, 0.002, 0.15,
                           lambda f: 1.0 / f)
        return self._to_rate(x * self.profile.drift_uv, fs)

    def _make_white(self, fs: float) -> np.ndarray:
        """Unit white noise (amplifier and electrode noise; channels take shifted copies)."""
        return self.rng(f"latent:white:{fs}").standard_normal(self.n(fs), dtype=np.float32)

    # ----------------------------------------------------------------------------------- other channels

    def _make_temp(self, fs: float) -> np.ndarray:
        """Rectal temperature, °C: falls by ~0.5 °C over the sleep period."""
        tl, tc = self.timeline, self._coarse_times()
        asleep = step_envelope(tl.start, tl.end, (tl.stage != W).astype(float), tc, 1.0)
        smooth = scipy.ndimage.uniform_filter1d(asleep, size=int(90 * 60 * COARSE_RATE), mode="nearest")
        wobble = spectral_noise(self.rng("latent:temp"), tc.shape[0], COARSE_RATE, 0.0005, 0.01)
        return self._to_rate(37.2 - 0.6 * smooth + 0.03 * wobble, fs)

    def _make_marker(self, fs: float) -> np.ndarray:
        """Event marker: flat, with a few button presses."""
        n = self.n(fs)
        out = np.zeros(n, dtype=np.float32)
        rng = self.rng("times:marker")
        for t in rng.uniform(0, self.duration, 3):
            i = int(t * fs)
            out[i:i + max(1, int(2 * fs))] = 1.0
        return out
