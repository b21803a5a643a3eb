"""The fit check: does a recording look like the nights the model was trained on? (issue 14)

:func:`observe` describes a recording as scoring reads it (no torch: it runs in the read-ahead worker):
per channel its label or derivation, unit, sampling rate and amplitude before standardisation, how much
of it is flat, how much of it two values hold, how much of its power one frequency holds; per epoch a band
summary of its spectrum. :func:`check_fit` compares that with the model's fit record
(``spectrograms/fitsummary.py``) and gives the night a :class:`FitVerdict`: it fits, or it does not and
why, or "unknown" for a model written before fit records. A night does not fit when

- a channel is another derivation or label than the training nights' (``EEG Fpz-Cz`` against C4-A1),
  or its unit is not a voltage where theirs was;
- a channel's amplitude is more than :data:`AMPLITUDE_FACTOR` times above or below the training nights'
  median (volts read as microvolts);
- a channel is not physiological: flat for most of the night, a square wave (two values hold most of
  the samples where the signal changes) or a sine (one spectral line holds much of its power and nearly all
  of the power around it);
- its spectra lie outside the training distribution (its median epoch distance above the threshold
  set on the validation nights).

Sampling rates other than the training nights' are a note, not a reason: every channel is resampled to
100 Hz and band-passed to 0.3-40 Hz either way. Epochs whose own distance exceeds the epoch threshold
are marked (``outside``) whatever the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sleepstage_cli.conditioning.recording import Conditioned
from sleepstage_cli.io.edf import unit_to_microvolts
from sleepstage_cli.spectrograms.fitsummary import band_features, derivation, epoch_distances, night_distance

AMPLITUDE_FACTOR = 10.0
"""A channel whose amplitude is this many times above (or below) the training nights' median does not fit."""
FLAT_SHARE = 0.5
"""A channel flat for more than this share of the night is not a recording of a sleeping person."""
TWO_LEVEL_SHARE = 0.9
"""A square wave: two values hold more than this share of the samples where the signal changes."""
LINE_SHARE = 0.3
"""A sine: one spectral line (+-0.05 Hz) holds more than this share of the channel's 0.3-40 Hz power..."""
LINE_PURITY = 0.8
"""... and more than this share of the power within 1 Hz of it (a rhythm, alpha or slow eye movements,
spreads over a band; a line does not)."""
LINE_HALF_WIDTH_HZ = 0.05
OUTSIDE_FLAG = "outside training distribution"
"""The epoch flag (CSV ``flag`` column) of an epoch whose spectrum lies outside the training distribution."""


@dataclass
class ChannelSeen:
    """One channel of a recording as the fit check sees it."""

    kind: str
    expression: str
    unit: str
    rate: float
    amplitude: float | None  # std before standardisation, in microvolts (the signal's unit if not a voltage)
    flat_share: float
    two_level_share: float | None  # conditioning/levels.py; None: too few changes to tell
    line_share: float
    line_hz: float


@dataclass
class NightSeen:
    """A recording as the fit check sees it: its channels and per-epoch band summaries."""

    channels: list[ChannelSeen]
    features: np.ndarray  # (N, C x bands)
    marked: np.ndarray  # (N,) bool: the epoch has flat or missing signal on some channel (not judged)


@dataclass
class FitVerdict:
    """``fits``: True, False, or None (unknown: the model has no fit record)."""

    fits: bool | None
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    outside: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (N,) epochs marked
    distance: float | None = None
    threshold: float | None = None

    @property
    def label(self) -> str:
        """``yes``, ``no`` or ``unknown`` (summary.csv's ``fit`` column)."""
        return {True: "yes", False: "no", None: "unknown"}[self.fits]

    @property
    def why(self) -> str:
        """summary.csv's ``fit_reasons``: why it does not fit, why the fit is unknown, or nothing."""
        return "; ".join(self.reasons if self.fits is False else self.notes if self.fits is None else [])

    def summary(self) -> str:
        """One line: ``fits the model``, ``does not fit the model: R1; R2``, ``fit unknown (...)``."""
        if self.fits is None:
            return f"fit unknown ({'; '.join(self.notes) or 'model has no fit record'})"
        if self.fits:
            return "fits the model" + (f" (spectral distance {self.distance:.2f}, threshold {self.threshold:.2f})"
                                       if self.distance is not None and self.threshold is not None else "")
        return "does not fit the model: " + "; ".join(self.reasons)

    def report_verdict(self) -> dict:
        """For the staging report's verdict banner: ``verdict`` (text), ``level`` (ok, warn, bad), ``reasons``."""
        text = {True: "Yes: the recording fits what the model was trained on",
                False: "No: the recording does not fit what the model was trained on; its stages are not to be "
                       "trusted",
                None: "Unknown: the model file does not record what it was trained on"}[self.fits]
        if self.fits and self.distance is not None and self.threshold is not None:
            text += f" (spectral distance {self.distance:.2f}, threshold {self.threshold:.2f})"
        n_out = int(np.sum(self.outside))
        if n_out:
            text += f"; {n_out} epoch(s) lie outside the training distribution (flagged)"
        notes = [f"Note: {n}" for n in self.notes] if self.fits is not None else []
        return {"verdict": text, "level": {True: "ok", False: "bad", None: "warn"}[self.fits],
                "reasons": [*self.reasons, *notes]}


def _line(freqs: np.ndarray, power: np.ndarray) -> tuple[float, float]:
    """How much of a channel one spectral line holds: the share of the 0.3-40 Hz power within +-0.05 Hz of
    the strongest frequency (0 unless that is also LINE_PURITY of the power within 1 Hz), and the frequency."""
    band = (freqs >= 0.3) & (freqs <= 40.0)
    total = float(power[band].sum())
    if not total > 0:
        return 0.0, 0.0
    peak = int(np.flatnonzero(band)[np.argmax(power[band])])
    line = float(power[np.abs(freqs - freqs[peak]) <= LINE_HALF_WIDTH_HZ].sum())
    around = float(power[np.abs(freqs - freqs[peak]) <= 1.0].sum())
    return (line / total if line > LINE_PURITY * around else 0.0), float(freqs[peak])


def observe(signals: Conditioned, x: np.ndarray, missing: np.ndarray, flat: np.ndarray) -> NightSeen:
    """Describe a conditioned recording and its epochs ``x`` (N, C, 3000) with their missing and flat
    fractions (N, C)."""
    marked = ((missing > 0) | (flat > 0)).any(axis=1)
    feats, freqs, power = band_features(x, signals.rate, keep=~marked if (~marked).any() else None)
    amplitudes = list(signals.amplitudes or [None] * len(signals.channels))
    levels = list(signals.levels or [None] * len(signals.channels))
    seen = []
    for i, ch in enumerate(signals.channels):
        share, hz = _line(freqs, power[i])
        seen.append(ChannelSeen(kind=ch.kind, expression=ch.expression, unit=ch.plus.unit.strip(),
                                rate=float(ch.sampling_rate), amplitude=amplitudes[i],
                                flat_share=float(signals.flat[i].mean()) if signals.flat.size else 0.0,
                                two_level_share=levels[i], line_share=share, line_hz=hz))
    return NightSeen(channels=seen, features=feats, marked=marked)


def _montage_reasons(record: dict, seen: NightSeen) -> tuple[list[str], list[str]]:
    """Other derivations or labels, units that are no voltage, other sampling rates (a note)."""
    reasons, notes = [], []
    for ch in seen.channels:
        trained = (record.get("channels") or {}).get(ch.kind) or {}
        name = ch.kind.upper()
        known = trained.get("derivations") or []
        mine = derivation(ch.expression)
        if known and mine not in known:
            was = ", ".join(known)
            reasons.append(f"{name} is {mine} ({ch.expression!r}); the model was trained on {was}"
                           if mine != ch.expression.casefold() else
                           f"{name} is {ch.expression!r}; the model was trained on "
                           f"{', '.join(repr(e) for e in trained.get('expressions', [])) or was}")
        units = trained.get("units")
        if units and unit_to_microvolts(ch.unit) is None and any(unit_to_microvolts(u) is not None for u in units):
            reasons.append(f"{name}'s unit {ch.unit!r} is not a voltage; the training nights' was {units[0]!r}")
        rates = trained.get("rates") or []
        if rates and ch.rate not in rates:
            notes.append(f"{name} is sampled at {ch.rate:g} Hz, the training nights at "
                         f"{', '.join(f'{r:g}' for r in rates)} Hz (all are resampled to 100 Hz)")
    return reasons, notes


def _amplitude_reasons(record: dict, seen: NightSeen) -> tuple[list[str], list[str]]:
    reasons, notes = [], []
    for ch in seen.channels:
        amp = ((record.get("channels") or {}).get(ch.kind) or {}).get("amplitude")
        if not amp or ch.amplitude is None:
            notes.append(f"{ch.kind.upper()} amplitude not checked (not recorded in the "
                         f"{'model' if not amp else 'recording'})")
            continue
        ratio = ch.amplitude / amp["median"]
        if ratio > AMPLITUDE_FACTOR or ratio < 1.0 / AMPLITUDE_FACTOR:
            unit = "uV" if unit_to_microvolts(ch.unit) is not None else ch.unit
            times = f"{ratio:.3g} times" if ratio > 1 else f"1/{1 / ratio:.3g} of"
            hint = (" (volts or millivolts read as microvolts?)" if ratio > 300 else
                    " (microvolts read as millivolts or volts?)" if ratio < 1 / 300 else "")
            reasons.append(f"{ch.kind.upper()} amplitude {ch.amplitude:.3g} {unit} is {times} the training "
                           f"nights' ({amp['median']:.3g} {unit}){hint}")
    return reasons, notes


def _signal_reasons(seen: NightSeen) -> list[str]:
    """Channels that are no recording of a person: flat, a square wave, a sine."""
    reasons = []
    for ch in seen.channels:
        name = ch.kind.upper()
        if ch.flat_share > FLAT_SHARE:
            reasons.append(f"{name} is flat for {100 * ch.flat_share:.0f} % of the recording")
        elif ch.two_level_share is not None and ch.two_level_share > TWO_LEVEL_SHARE:
            reasons.append(f"{name} is not physiological: a square wave (two values hold "
                           f"{100 * ch.two_level_share:.0f} % of its samples)")
        elif ch.line_share > LINE_SHARE:
            reasons.append(f"{name} is not physiological: a sine wave ({ch.line_hz:.1f} Hz holds "
                           f"{100 * ch.line_share:.0f} % of its power)")
    return reasons


def check_fit(record: dict | None, seen: NightSeen | None) -> FitVerdict:
    """The verdict on one night: ``record`` is the model file's ``fit`` entry (None for an older model)."""
    n = 0 if seen is None else seen.features.shape[0]
    if not isinstance(record, dict):
        return FitVerdict(fits=None, notes=["model has no fit record"], outside=np.zeros(n, bool))
    if seen is None:
        return FitVerdict(fits=None, notes=["the recording was not described"], outside=np.zeros(n, bool))
    reasons, notes = _montage_reasons(record, seen)
    amp_reasons, amp_notes = _amplitude_reasons(record, seen)
    reasons += amp_reasons + _signal_reasons(seen)
    notes += amp_notes
    spectra = record.get("spectra")
    if not isinstance(spectra, dict):
        notes.append("spectra not checked (the model's fit record has no spectral summary)")
        return FitVerdict(fits=not reasons, reasons=reasons, notes=notes, outside=np.zeros(n, bool))
    distances = epoch_distances(spectra, seen.features)
    outside = (distances > spectra["epoch_threshold"]) & ~seen.marked
    kept = distances[~seen.marked]
    distance, threshold = (night_distance(kept) if kept.size else None), float(spectra["night_threshold"])
    if distance is None:
        notes.append("spectra not checked: every epoch has flat or missing signal")
    elif distance > threshold:
        reasons.append(f"spectra outside the training distribution (distance {distance:.2f} > threshold "
                       f"{threshold:.2f}: {spectra.get('night_rule', 'set on the validation nights')})")
    return FitVerdict(fits=not reasons, reasons=reasons, notes=notes, outside=outside, distance=distance,
                      threshold=threshold)
