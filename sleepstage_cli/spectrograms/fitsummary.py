"""What a model was trained on, summarised for the fit check ``score`` runs on every night (issue 14).

Training writes it into the model file (:func:`fit_record`, plain lists and numbers only); scoring
(``scoring/fitcheck.py``) compares each recording with it. It holds:

- per channel kind, the labels and derivations, sampling rates and units of the training nights and
  the distribution of their amplitude before standardisation (the standard deviation of the filtered
  signal, in microvolts, that ``prepare`` records per night and channel);
- a compact summary of the training spectra: each 30-s epoch is summarised by the log power of each
  channel in seven bands (:data:`BANDS`); per sleep stage the mean of those summaries and one shared
  (tied), shrunk covariance of the epochs around their stage's mean. An epoch's distance to the training
  data is its Mahalanobis distance to the nearest stage mean (:func:`epoch_distances`); a night's is the
  median over its epochs (:func:`night_distance`).

Thresholds are set on the validation nights, which the model never trained on:

- a night is outside the training distribution when its distance exceeds the 99th percentile of the
  validation nights' distances, so that about 1 % of in-distribution nights are flagged. With fewer
  than :data:`MIN_VALIDATION_NIGHTS` validation nights no 99th percentile can be estimated: the threshold
  is then :data:`FALLBACK_MARGIN` times the largest distance of the training and validation nights, and
  the record says so (its ``night_rule``, which the verdict quotes);
- an epoch is marked outside the distribution when its distance exceeds the 99.9th percentile of the
  validation epochs' (about 1 in 1000 in-distribution epochs is marked); with fewer than
  :data:`MIN_VALIDATION_EPOCHS` validation epochs, of the training and validation epochs together.

Only scored epochs (label 0-4) take part: prepare unscores every epoch that overlaps a flat or missing
stretch, so those never shape the distribution.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from sleepstage_cli.constants import SAMPLING_RATE
from sleepstage_cli.data.dataset import NightRecord, PreparedDataset

FIT_VERSION = 1

BANDS: tuple[tuple[float, float], ...] = ((0.3, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, 12.0), (12.0, 15.0),
                                          (15.0, 30.0), (30.0, 40.0))
"""Hz: slow and fast delta, theta, alpha, sigma, beta, gamma (up to the 40-Hz band-pass)."""

SHRINKAGE = 0.1
"""The covariance is (1 - s) x the sample covariance + s x its diagonal: stable with few nights."""

NIGHT_PERCENTILE = 99.0
EPOCH_PERCENTILE = 99.9
MIN_VALIDATION_NIGHTS = 20
"""Fewer validation nights than this give no usable 99th percentile: the fallback threshold is used."""
MIN_VALIDATION_EPOCHS = 1000
FALLBACK_MARGIN = 1.2
"""The fallback night threshold: this many times the largest training or validation night distance."""

_POWER_FLOOR = 1e-12
_CHUNK = 256

# 10-20 and 10-10 electrode sites; the mastoids M1/M2 count as the ear lobes A1/A2.
_SITE = re.compile(r"^(fp|af|f|ft|fc|t|tp|c|cp|p|po|o|i|a|m)(z|\d{1,2})$")


def derivation(expression: str) -> str:
    """A channel expression by its electrode sites, for comparing montages: ``EEG C4-CLE - EEG A1-CLE``
    and ``C4-M1`` are both ``C4-A1``; ``EEG Fpz-Cz`` is ``Fpz-Cz``.

    A left-hemisphere derivation is its right-hemisphere mirror (AASM's C3-M2 stands in for C4-M1):
    ``C3-A2`` is ``C4-A1``. An expression without electrode sites (``EOG horizontal``) is itself, with
    case and spaces ignored.
    """
    sites = []
    for token in re.split(r"[^0-9a-z]+", expression.casefold()):
        if _SITE.match(token):
            sites.append("a" + token[1:] if token[0] == "m" and token[1:] in ("1", "2") else token)
    if not sites:
        return re.sub(r"\s+", " ", expression.strip()).casefold()
    numbers = [int(s[-1]) for s in sites if s[-1].isdigit()]
    if numbers and numbers[0] % 2 == 1:  # left first: mirror every lateral site (odd <-> even)
        sites = [re.sub(r"\d+$", lambda m: str(int(m.group()) + (1 if int(m.group()) % 2 else -1)), s)
                 if s[-1].isdigit() else s for s in sites]
    return "-".join(s[0].upper() + s[1:] for s in sites)


def epoch_power(x: np.ndarray, rate: float = SAMPLING_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (F,) and the Hann-windowed power spectrum (N, C, F) of epochs ``x`` (N, C, S)."""
    x = np.asarray(x, dtype=np.float32)
    window = np.hanning(x.shape[-1]).astype(np.float32)
    power = np.abs(np.fft.rfft(x * window, axis=-1)) ** 2
    return np.fft.rfftfreq(x.shape[-1], 1.0 / rate), power


def band_features(x: np.ndarray, rate: float = SAMPLING_RATE,
                  keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per epoch, log10 mean power of each channel in each band: (N, C x len(BANDS)) float64, channel-major;
    also the frequencies and the summed power spectrum per channel (C, F) of the epochs ``keep`` (bool (N,),
    default all; for the non-physiological checks). Computed in chunks of epochs (a memory-mapped night is
    read piecewise)."""
    n, c = x.shape[0], x.shape[1]
    feats = np.zeros((n, c * len(BANDS)))
    freqs = np.fft.rfftfreq(x.shape[-1], 1.0 / rate)
    total = np.zeros((c, freqs.size))
    masks = [(freqs >= lo) & (freqs < hi) for lo, hi in BANDS]
    for s in range(0, n, _CHUNK):
        _, power = epoch_power(np.asarray(x[s:s + _CHUNK]), rate)
        bands = np.stack([power[..., m].mean(axis=-1) for m in masks], axis=-1)  # (n, C, B)
        feats[s:s + _CHUNK] = np.log10(bands.astype(np.float64) + _POWER_FLOOR).reshape(bands.shape[0], -1)
        total += (power if keep is None else power[np.asarray(keep[s:s + _CHUNK], bool)]).sum(axis=0)
    return feats, freqs, total


def epoch_distances(spectra: dict, feats: np.ndarray) -> np.ndarray:
    """(N,) Mahalanobis distance of each epoch's band summary to the nearest stage mean of the training epochs."""
    means = np.asarray(spectra["stage_means"], dtype=np.float64)
    precision = np.asarray(spectra["precision"], dtype=np.float64)
    feats = np.asarray(feats, dtype=np.float64)
    if feats.shape[0] == 0:
        return np.zeros(0)
    d2 = np.stack([np.einsum("ij,jk,ik->i", feats - m, precision, feats - m) for m in means])
    return np.sqrt(np.maximum(d2.min(axis=0), 0.0))


def night_distance(distances: np.ndarray) -> float:
    """A night's distance to the training data: the median of its epochs' (NaN without epochs)."""
    return float(np.median(distances)) if np.size(distances) else float("nan")


def night_threshold(validation: Sequence[float], training: Sequence[float]) -> tuple[float, str]:
    """The night threshold and how it was set: the 99th percentile of the validation nights' distances,
    or with fewer than MIN_VALIDATION_NIGHTS of them FALLBACK_MARGIN x the largest training or validation
    night distance."""
    val = np.asarray(validation, dtype=np.float64)
    if val.size >= MIN_VALIDATION_NIGHTS:
        return float(np.percentile(val, NIGHT_PERCENTILE)), f"the 99th percentile of {val.size} validation nights"
    pool = np.concatenate([val, np.asarray(training, dtype=np.float64)])
    return (float(FALLBACK_MARGIN * pool.max()),
            f"{FALLBACK_MARGIN:g} x the largest of {pool.size} training/validation nights: too few "
            "validation nights for a 99th percentile")


def epoch_threshold(validation: np.ndarray, training: np.ndarray) -> tuple[float, str]:
    """The epoch threshold: the 99.9th percentile of the validation epochs' distances (of the training
    and validation epochs with fewer than MIN_VALIDATION_EPOCHS validation epochs)."""
    val = np.asarray(validation, dtype=np.float64)
    if val.size >= MIN_VALIDATION_EPOCHS:
        return float(np.percentile(val, EPOCH_PERCENTILE)), f"the 99.9th percentile of {val.size} validation epochs"
    pool = np.concatenate([val, np.asarray(training, dtype=np.float64)])
    return (float(np.percentile(pool, EPOCH_PERCENTILE)),
            f"the 99.9th percentile of {pool.size} training and validation epochs")


def fit_spectra(train: Sequence[tuple[np.ndarray, np.ndarray]],
                validation: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict:
    """The spectral summary from per-night ``(band features (N, F), labels (N,))`` of the training and
    validation nights: stage means, the shrunk tied covariance's inverse, and both thresholds."""
    feats = np.concatenate([f[lab >= 0] for f, lab in train])
    labels = np.concatenate([lab[lab >= 0] for _, lab in train]).astype(np.int64)
    if feats.shape[0] < 2:
        raise ValueError("fewer than 2 scored training epochs")
    stages = [s for s in range(5) if (labels == s).any()]
    means = np.stack([feats[labels == s].mean(axis=0) for s in stages])
    resid = feats - means[np.searchsorted(stages, labels)]
    cov = np.atleast_2d(np.cov(resid, rowvar=False))
    cov = (1.0 - SHRINKAGE) * cov + SHRINKAGE * np.diag(np.diag(cov))
    cov += 1e-9 * np.eye(cov.shape[0]) * max(float(np.trace(cov)) / cov.shape[0], 1e-12)
    spectra = {"bands": [list(b) for b in BANDS], "stages": stages, "stage_means": means.tolist(),
               "precision": np.linalg.inv(cov).tolist(), "shrinkage": SHRINKAGE}

    def per_night(nights):
        dists = [epoch_distances(spectra, f[lab >= 0]) for f, lab in nights]
        return [night_distance(d) for d in dists if d.size], (np.concatenate(dists) if dists else np.zeros(0))

    train_nights, train_epochs = per_night(train)
    val_nights, val_epochs = per_night(validation)
    spectra["night_threshold"], spectra["night_rule"] = night_threshold(val_nights, train_nights)
    spectra["epoch_threshold"], spectra["epoch_rule"] = epoch_threshold(val_epochs, train_epochs)
    spectra["validation_distances"] = [round(d, 4) for d in val_nights]
    spectra["training_distances"] = [round(d, 4) for d in train_nights]
    return spectra


def _channel_summary(nights: list[NightRecord], kind: str) -> dict:
    """What the training nights' manifest entries say about one channel kind: expressions and derivations
    (the most used first), rates, units (None for a dataset prepared before they were recorded) and the
    distribution of amplitudes (None when not recorded)."""
    entries = [n.meta.get("channels", {}).get(kind) for n in nights]
    entries = [e for e in entries if isinstance(e, dict)]
    expressions = [e["expression"] for e in entries if isinstance(e.get("expression"), str)]

    def most_used_first(names: list[str]) -> list[str]:
        return [name for name, _ in Counter(names).most_common()]

    def values(key: str) -> list:
        return sorted({e[key] for e in entries if isinstance(e.get(key), (str, int, float))}, key=str)

    amps = np.asarray([e["amplitude"] for e in entries
                       if isinstance(e.get("amplitude"), (int, float)) and e["amplitude"] > 0], dtype=np.float64)
    return {"expressions": most_used_first(expressions),
            "derivations": most_used_first([derivation(e) for e in expressions]),
            "rates": values("rate"), "units": values("unit") if any("unit" in e for e in entries) else None,
            "amplitude": None if amps.size == 0 else {
                "median": float(np.median(amps)), "min": float(amps.min()), "max": float(amps.max()),
                "nights": int(amps.size)}}


def fit_record(ds: PreparedDataset, train_nights: list[NightRecord], val_nights: list[NightRecord],
               kinds: Sequence[str], index: Sequence[int]) -> dict:
    """The fit record a model file keeps (plain lists, numbers and strings): see the module's docstring."""
    rate = ds.conditioning.rate

    def features(nights: list[NightRecord]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for night in nights:
            rec = ds.open(night)
            labels = np.asarray(rec["label"], dtype=np.int64)
            scored = np.flatnonzero(labels >= 0)
            if scored.size:
                feats, _, _ = band_features(_ChannelView(rec["x"], scored, list(index)), rate)
                out.append((feats, labels[scored]))
        return out

    try:
        spectra = fit_spectra(features(train_nights), features(val_nights))
    except (ValueError, np.linalg.LinAlgError):  # too few scored epochs to summarise: the rest is still checked
        spectra = None
    return {"version": FIT_VERSION, "kinds": list(kinds),
            "channels": {k: _channel_summary(train_nights, k) for k in kinds}, "spectra": spectra,
            "training_nights": len(train_nights), "validation_nights": len(val_nights)}


class _ChannelView:
    """Epochs ``rows`` and channels ``index`` of a memory-mapped night, read a slice at a time."""

    def __init__(self, x: np.ndarray, rows: np.ndarray, index: list[int]) -> None:
        self.x, self.rows, self.index = x, rows, index
        self.shape = (rows.size, len(index), x.shape[-1])

    def __getitem__(self, sl: slice) -> np.ndarray:
        return np.asarray(self.x[self.rows[sl]])[:, self.index]
